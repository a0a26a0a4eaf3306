# Python's ThreadPoolExecutor on the pool benchmarks B2 and B3 (see
# pool_bench.lua): best of 5 runs each.
import time
from concurrent.futures import ThreadPoolExecutor


def inc(x):
    return x + 1


def b2(pool, n=20000):
    t = time.perf_counter()
    for i in range(n):
        assert pool.submit(inc, i).result() == i + 1
    return (time.perf_counter() - t) / n * 1e6


def b3(pool, n=100000):
    t = time.perf_counter()
    fs = [pool.submit(inc, i) for i in range(n)]
    for i, f in enumerate(fs):
        assert f.result() == i + 1
    return n / (time.perf_counter() - t)


if __name__ == "__main__":
    with ThreadPoolExecutor(2) as pool:
        b3(pool, 20000)
        r2 = min(b2(pool) for _ in range(5))
        r3 = max(b3(pool) for _ in range(5))
    print("B2 pool round trip      %8.2f us" % r2)
    print("B3 pool throughput      %8.0f tasks/s" % r3)
