"""4. task(name) sleeping 2 s: on two threads, then on two processes."""
import multiprocessing
import threading
import time

from common import pick, timed

DELAY = pick(2, 0.4)


def task(name):
    print(f"{name} started")
    time.sleep(DELAY)
    print(f"{name} finished")


def two(kind):
    workers = [kind(target=task, args=(f"task {i}",)) for i in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    timed("threads", two, threading.Thread)
    timed("processes", two, multiprocessing.Process)
