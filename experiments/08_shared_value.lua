-- 8. A shared Value across two processes: each adds 1 to a shared int n
-- times with a short sleep.  Without the lock updates can be lost; with
-- get_lock() the end value is exactly 2n; so it is with the atomic add.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print = lib.pyprint

local experiment = {
  id = "08", name = "shared_value", title = "A shared Value across two processes",
  python = "08_shared_value.py", needs = { "process", "value" },
}

local N, DELAY = 100, 0.01

local function add_n(number)
  for _ = 1, N do
    loom.sleep(DELAY)
    number.value = number.value + 1
  end
end

local function add_n_locked(number)
  for _ = 1, N do
    loom.sleep(DELAY)
    local guard <close> = number:get_lock():hold()   -- with number.get_lock():
    number.value = number.value + 1
  end
end

local function add_n_atomic(number)
  for _ = 1, N do
    loom.sleep(DELAY)
    number:add(1)
  end
end

local function two(target)
  local shared_number = loom.value("i", 0)
  print("Number at beginning is", shared_number.value)
  local p1 = loom.process(target, shared_number)
  local p2 = loom.process(target, shared_number)
  p1:start()
  p2:start()
  p1:join()
  p2:join()
  print("Number at end is", shared_number.value, "of", 2 * N)
  return shared_number.value, p1.exitcode, p2.exitcode
end

function experiment.run(x)
  N, DELAY = x:pick(100, 50), x:pick(0.01, 0.002)
  local ends = {}
  for _, v in ipairs({
    { "no_lock", "no lock: value = value + 1", add_n },
    { "get_lock", "with get_lock()", add_n_locked },
    { "atomic_add", "atomic add(1)", add_n_atomic },
  }) do
    local elapsed, value, c1, c2 = x:variant(v[1], v[2], { base = "none" }, two, v[3])
    if elapsed then
      ends[v[1]] = value
      x:check(c1 == 0 and c2 == 0, "%s: both processes exit with 0", v[2])
    end
  end
  if ends.no_lock then
    x:check(ends.no_lock <= 2 * N, "without the lock: %d of %d (%d lost)", ends.no_lock,
      2 * N, 2 * N - ends.no_lock)
  end
  if ends.get_lock then
    x:check(ends.get_lock == 2 * N, "with get_lock(): exactly %d", ends.get_lock)
  end
  if ends.atomic_add then
    x:check(ends.atomic_add == 2 * N, "with the atomic add: exactly %d", ends.atomic_add)
  end
end

return lib.main(experiment, ...)
