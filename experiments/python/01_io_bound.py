"""1. I/O-bound: two sleeping tasks, one after the other, then on two threads."""
import threading
import time

from common import pick, timed


def Task(name, seconds):
    print(f"{name} started")
    time.sleep(seconds)
    print(f"{name} finished after {seconds} s")


T1, T2 = pick(5, 1.0), pick(4, 0.8)


def sequential():
    Task("T1", T1)
    Task("T2", T2)


def threads():
    t1 = threading.Thread(target=Task, args=("T1", T1))
    t2 = threading.Thread(target=Task, args=("T2", T2))
    t1.start()
    t2.start()
    t1.join()
    t2.join()


timed("sequential", sequential)
timed("threads", threads)
