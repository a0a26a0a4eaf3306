"""6. Processes vs threads: cpu_count() processes with a sleep, 10 threads without; start costs."""
import multiprocessing
import os
import queue
import time
from multiprocessing import Process, cpu_count
from threading import Thread

from common import pick, row

ITERATIONS = 100
DELAY = pick(0.1, 0.01)


def square_numbers(asked):
    entered = time.perf_counter()
    for i in range(ITERATIONS):
        i * i
        time.sleep(DELAY)
    report(asked, entered)


def square_numbers_nosleep(asked):
    entered = time.perf_counter()
    for i in range(ITERATIONS):
        i * i
    report(asked, entered)


def report(asked, entered):
    # perf_counter is CLOCK_MONOTONIC: one clock for threads and processes
    asked.put(entered)


def run(kind, target, n, key, queue):
    workers = [kind(target=target, args=(queue,)) for _ in range(n)]
    start = time.perf_counter()
    asked = []
    for w in workers:
        asked.append(time.perf_counter())
        w.start()
    entered = sorted(queue.get() for _ in workers)
    for w in workers:
        w.join()
    if key:
        row(key, time.perf_counter() - start)
    # workers enter in the order they were started, closely enough for a mean
    return sum(e - a for e, a in zip(entered, asked)) / n


if __name__ == "__main__":
    n = cpu_count()
    print(f"{n} processes, pid {os.getpid()}")
    per_process = run(Process, square_numbers, n, "processes", multiprocessing.Queue())
    per_thread = run(Thread, square_numbers_nosleep, 10, "threads", queue.Queue())
    print(f"started at once: {per_process * 1e6:.0f} us per process, {per_thread * 1e6:.0f} us per thread")
    one_thread = sum(run(Thread, square_numbers_nosleep, 1, None, queue.Queue()) for _ in range(20)) / 20
    row("thread_start", one_thread)
    one_process = sum(run(Process, square_numbers_nosleep, 1, None, multiprocessing.Queue()) for _ in range(20)) / 20
    row("process_start", one_process)
    print(f"from start() to its first line: a process {one_process * 1e6:.0f} us, a thread {one_thread * 1e6:.0f} us")
