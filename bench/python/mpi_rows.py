"""B12, Python's side: run as `mpiexec -n 3 python3 -m mpi4py.futures
bench/python/mpi_rows.py KIND [--quick]`: an MPIPoolExecutor on the 2
other ranks, the same workload as bench/mpi_rows.lua."""
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def inc(x):
    return x + 1


def main():
    kind = sys.argv[1]
    quick = "--quick" in sys.argv
    with MPIPoolExecutor(2) as ex:
        assert ex.submit(inc, 0).result() == 1
        if kind == "roundtrip":
            n = 300 if quick else 3000
            t0 = time.perf_counter()
            for i in range(n):
                assert ex.submit(inc, i).result() == i + 1
            print(f"us_per_task {(time.perf_counter() - t0) / n * 1e6:.6g}")
        else:
            n = 3000 if quick else 30000
            t0 = time.perf_counter()
            fs = [ex.submit(inc, i) for i in range(n)]
            for i, f in enumerate(fs):
                assert f.result() == i + 1
            print(f"tasks_per_s {n / (time.perf_counter() - t0):.6g}")


if __name__ == "__main__":
    main()
