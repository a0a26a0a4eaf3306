"""5. Concurrency vs parallelism: three sleeping tasks, then CPU-bound ones on a process pool."""
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import cpu_count

from common import pick, timed

DELAY = pick(2, 0.4)
N = pick(20_000_000, 2_000_000)
names = ["A", "B", "C"]


def task(name):
    print(f"task {name} started")
    time.sleep(DELAY)
    print(f"task {name} done")
    return name


def cpu_task(name):
    Res = 0
    for i in range(N):
        Res = Res + ((i * i) + 2.0) * 1.45
    print(f"cpu task {name}: {Res}")
    return Res


def threads():
    ts = [threading.Thread(target=task, args=(n,)) for n in names]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def pool_map():
    with ThreadPoolExecutor(max_workers=3) as executor:
        return list(executor.map(task, names))


def process_pool():
    with ProcessPoolExecutor(max_workers=cpu_count()) as executor:
        return list(executor.map(cpu_task, names))


if __name__ == "__main__":
    timed("sequential", lambda: [task(n) for n in names])
    timed("threads", threads)
    timed("pool_map", pool_map)
    timed("cpu_sequential", lambda: [cpu_task(n) for n in names])
    timed("cpu_process_pool", process_pool)
