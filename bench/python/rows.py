"""Python's side of the loom benchmark (rows B1..B10 of bench/results.md).

Usage: python3 bench/python/rows.py ROW [VARIANT] [--quick]
Runs one repetition of one row and prints `key value` lines, the first
being the row's figure.  bench/run.lua runs this once per repetition.
"""
import multiprocessing as mp
import queue
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

QUICK = "--quick" in sys.argv
ARGS = [a for a in sys.argv[1:] if a != "--quick"]


def scaled(n, quick_n):
    return quick_n if QUICK else n


def emit(key, value):
    print(f"{key} {value:.6g}")


def b1():
    n = scaled(2000, 500)

    def fn():
        return 1

    t0 = time.perf_counter()
    for _ in range(n):
        t = threading.Thread(target=fn)
        t.start()
        t.join()
    emit("us_per_thread", (time.perf_counter() - t0) / n * 1e6)


def inc(x):
    return x + 1


def b2():
    n = scaled(20000, 2000)
    with ThreadPoolExecutor(2) as ex:
        ex.submit(inc, 0).result()
        t0 = time.perf_counter()
        for i in range(n):
            assert ex.submit(inc, i).result() == i + 1
        dt = time.perf_counter() - t0
    emit("us_per_task", dt / n * 1e6)


def b3():
    n = scaled(100000, 10000)
    with ThreadPoolExecutor(2) as ex:
        ex.submit(inc, 0).result()
        t0 = time.perf_counter()
        futures = [ex.submit(inc, i) for i in range(n)]
        total = sum(f.result() for f in futures)
        dt = time.perf_counter() - t0
    assert total == n * (n + 1) // 2
    emit("tasks_per_s", n / dt)


def cpu_task(n):
    res = 0
    for i in range(n):
        res = res + ((i * i) + 2.0) * 1.45
    return res


def b4(kind, n):
    n = int(float(n))
    n = scaled(n, n // 10)
    t0 = time.perf_counter()
    cpu_task(n)
    cpu_task(n)
    seq = time.perf_counter() - t0
    cls = threading.Thread if kind == "threads" else mp.get_context("fork").Process
    workers = [cls(target=cpu_task, args=(n,)) for _ in range(2)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    par = time.perf_counter() - t0
    emit("speedup", seq / par)
    emit("seq_s", seq)
    emit("par_s", par)


def b5():
    n = scaled(1000, 200)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    emit("overhead_ms", (dt - 0.2) * 1e3)
    emit("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def small_result(conn):
    conn.send({"ok": True, "n": 42, "name": "done"})
    conn.close()


def b6():
    n = scaled(500, 100)
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    for _ in range(n):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=small_result, args=(w,))
        p.start()
        w.close()
        res = r.recv()
        p.join()
        r.close()
        assert res["n"] == 42
    emit("us_per_process", (time.perf_counter() - t0) / n * 1e6)


def b7():
    n = scaled(1000000, 100000)
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    emit("ns_per_pair", (time.perf_counter() - t0) / n * 1e9)


def b8_lock():
    per = scaled(500000, 50000)
    lock = threading.Lock()
    box = [0]

    def work():
        for _ in range(per):
            with lock:
                box[0] += 1

    threads = [threading.Thread(target=work) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    assert box[0] == 2 * per, box[0]
    emit("ns_per_inc", dt / (2 * per) * 1e9)


def value_work(v, per):
    for _ in range(per):
        with v.get_lock():
            v.value += 1


def b8_value():
    per = scaled(500000, 50000)
    ctx = mp.get_context("fork")
    v = ctx.Value("q", 0)
    procs = [ctx.Process(target=value_work, args=(v, per)) for _ in range(2)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    dt = time.perf_counter() - t0
    assert v.value == 2 * per, v.value
    emit("ns_per_inc", dt / (2 * per) * 1e9)


def produce(q, n):
    put = q.put
    for i in range(n):
        put(i)
    put(None)


def b9(kind):
    n = scaled(1000000, 100000)
    if kind == "threads":
        q = queue.Queue(1024)
        worker = threading.Thread(target=produce, args=(q, n))
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue(1024)
        worker = ctx.Process(target=produce, args=(q, n))
    t0 = time.perf_counter()
    worker.start()
    get = q.get
    count = 0
    while get() is not None:
        count += 1
    dt = time.perf_counter() - t0
    worker.join()
    assert count == n
    emit("msgs_per_s", n / dt)


def summer(conn, rounds):
    for _ in range(rounds):
        conn.send(sum(conn.recv()))
    conn.close()


def b10(kind):
    rounds = scaled(20, 5)
    payload = [i * 0.5 for i in range(100000)]
    expect = sum(payload)
    if kind == "threads":
        with ThreadPoolExecutor(1) as ex:
            t0 = time.perf_counter()
            for _ in range(rounds):
                assert ex.submit(sum, payload).result() == expect
            dt = time.perf_counter() - t0
    else:
        ctx = mp.get_context("fork")
        here, there = ctx.Pipe()
        p = ctx.Process(target=summer, args=(there, rounds))
        p.start()
        t0 = time.perf_counter()
        for _ in range(rounds):
            here.send(payload)
            assert here.recv() == expect
        dt = time.perf_counter() - t0
        p.join()
    emit("mb_per_s", rounds * len(payload) * 8 / dt / 1e6)


def b10_pickle():
    import pickle
    rounds = scaled(20, 5)
    payload = [i * 0.5 for i in range(100000)]
    t0 = time.perf_counter()
    for _ in range(rounds):
        back = pickle.loads(pickle.dumps(payload, pickle.HIGHEST_PROTOCOL))
        assert len(back) == len(payload)
    dt = time.perf_counter() - t0
    emit("mb_per_s", rounds * len(payload) * 8 / dt / 1e6)


def b12(kind):
    """mpi4py.futures' MPIPoolExecutor on 2 ranks, Debian's python3-mpi4py
    (so Debian's python3, whatever python3 runs this file)."""
    import os
    import subprocess
    py = "/usr/bin/python3"
    probe = subprocess.run([py, "-c", "import mpi4py"], capture_output=True)
    if probe.returncode != 0:
        print("na python3-mpi4py not installed")
        return
    cmd = ["mpiexec", "-n", "3", "--oversubscribe"]
    if os.getuid() == 0:
        cmd.append("--allow-run-as-root")
    here = os.path.dirname(os.path.abspath(__file__))
    cmd += [py, "-m", "mpi4py.futures", os.path.join(here, "mpi_rows.py"), kind]
    if QUICK:
        cmd.append("--quick")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    sys.stdout.write(out.stdout)


ROWS = {
    "B1": lambda: b1(),
    "B2": lambda: b2(),
    "B3": lambda: b3(),
    "B4": lambda kind, n: b4(kind, n),
    "B5": lambda: b5(),
    "B6": lambda: b6(),
    "B7": lambda: b7(),
    "B8": lambda kind: b8_lock() if kind == "lock" else b8_value(),
    "B9": lambda kind: b9(kind),
    "B10": lambda kind: b10(kind),
    "B10pickle": lambda: b10_pickle(),
    "B12": lambda kind: b12(kind),
}

if __name__ == "__main__":
    ROWS[ARGS[0]](*ARGS[1:])
