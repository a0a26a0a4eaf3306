"""2. CPU-bound: the same sums sequentially, on two threads (the GIL), on two processes."""
import multiprocessing
import threading

from common import pick, timed


def cpu_task(name, n):
    print(f"{name} started")
    Res = 0
    for i in range(n):
        Res = Res + ((i * i) + 2.0) * 1.45
    print(f"{name} result: {Res}")
    return Res


N1, N2 = pick(50_000_000, 5_000_000), pick(40_000_000, 4_000_000)


def sequential():
    cpu_task("T1", N1)
    cpu_task("T2", N2)


def run_two(kind):
    t1 = kind(target=cpu_task, args=("T1", N1))
    t2 = kind(target=cpu_task, args=("T2", N2))
    t1.start()
    t2.start()
    t1.join()
    t2.join()


if __name__ == "__main__":
    timed("sequential", sequential)
    timed("threads", run_two, threading.Thread)
    timed("processes", run_two, multiprocessing.Process)
