"""What the Python twins of the loom experiments share.

Each script prints its task output as the notebook did, and one line
"##row <variant> <seconds>" per timed variant for experiments/run.lua.
"""
import sys
import time

QUICK = "--quick" in sys.argv[1:]


def pick(full, quick):
    """The notebook's parameter, or its --quick stand-in."""
    return quick if QUICK else full


def row(key, seconds):
    print(f"##row {key} {seconds:.6f}", flush=True)


def timed(key, fn, *args):
    """Run fn(*args), report its wall time under key, return its result."""
    start = time.perf_counter()
    result = fn(*args)
    row(key, time.perf_counter() - start)
    return result
