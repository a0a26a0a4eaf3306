"""7. Race condition: two threads read, add 1, sleep, write back; then under a lock."""
import threading
import time

from common import pick, timed

DELAY = pick(0.1, 0.05)
database_value = 0


def increase():
    global database_value
    local_copy = database_value
    local_copy += 1
    time.sleep(DELAY)
    database_value = local_copy


def increase_locked(lock):
    global database_value
    with lock:
        local_copy = database_value
        local_copy += 1
        time.sleep(DELAY)
        database_value = local_copy


def two(target, *args):
    global database_value
    database_value = 0
    print("start value", database_value)
    t1 = threading.Thread(target=target, args=args)
    t2 = threading.Thread(target=target, args=args)
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    print("end value", database_value)


timed("race", two, increase)
timed("locked", two, increase_locked, threading.Lock())
