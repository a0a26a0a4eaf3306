"""6. Processes vs threads: cpu_count() processes with a sleep, 10 threads without; start costs."""
import os
import time
from multiprocessing import Process, cpu_count
from threading import Thread

from common import pick, row

ITERATIONS = 100
DELAY = pick(0.1, 0.01)


def square_numbers():
    for i in range(ITERATIONS):
        i * i
        time.sleep(DELAY)


def square_numbers_nosleep():
    for i in range(ITERATIONS):
        i * i


def run(workers, key):
    start = time.perf_counter()
    starting = 0.0
    for w in workers:
        t = time.perf_counter()
        w.start()
        starting += time.perf_counter() - t
    for w in workers:
        w.join()
    row(key, time.perf_counter() - start)
    return starting / len(workers)


if __name__ == "__main__":
    n = cpu_count()
    print(f"{n} processes, pid {os.getpid()}")
    per_process = run([Process(target=square_numbers) for _ in range(n)], "processes")
    per_thread = run([Thread(target=square_numbers_nosleep) for _ in range(10)], "threads")
    row("process_start", per_process)
    row("thread_start", per_thread)
    print(f"starting a process: {per_process * 1e6:.0f} us, a thread: {per_thread * 1e6:.0f} us")
