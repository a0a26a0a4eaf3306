"""8. A shared Value across two processes: without a lock, then with get_lock()."""
import time
from multiprocessing import Process, Value

from common import pick, timed

N = pick(100, 50)
DELAY = pick(0.01, 0.002)


def add_n(number):
    for _ in range(N):
        time.sleep(DELAY)
        number.value += 1


def add_n_locked(number):
    for _ in range(N):
        time.sleep(DELAY)
        with number.get_lock():
            number.value += 1


def two(target):
    shared_number = Value("i", 0)
    print("number at beginning is", shared_number.value)
    p1 = Process(target=target, args=(shared_number,))
    p2 = Process(target=target, args=(shared_number,))
    p1.start()
    p2.start()
    p1.join()
    p2.join()
    print("number at end is", shared_number.value, "of", 2 * N)


if __name__ == "__main__":
    timed("no_lock", two, add_n)
    timed("get_lock", two, add_n_locked)
