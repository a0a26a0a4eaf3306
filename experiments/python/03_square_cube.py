"""3. calc_square and calc_cube over [2, 3, 8, 9]: sequential, threads, pools, processes."""
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import pick, timed

numbers = [2, 3, 8, 9]
DELAY = pick(0.2, 0.05)


def calc_square(numbers):
    for n in numbers:
        time.sleep(DELAY)
        print(f"square: {n * n}")


def calc_cube(numbers):
    for n in numbers:
        time.sleep(DELAY)
        print(f"cube: {n * n * n}")


def sequential():
    calc_square(numbers)
    calc_cube(numbers)


def two(kind):
    t1 = kind(target=calc_square, args=(numbers,))
    t2 = kind(target=calc_cube, args=(numbers,))
    t1.start()
    t2.start()
    t1.join()
    t2.join()


def pool(workers):
    with ThreadPoolExecutor(max_workers=workers) as executor:
        executor.submit(calc_square, numbers)
        executor.submit(calc_cube, numbers)


if __name__ == "__main__":
    timed("sequential", sequential)
    timed("threads", two, threading.Thread)
    timed("pool2", pool, 2)
    timed("pool3", pool, 3)
    timed("processes", two, multiprocessing.Process)
