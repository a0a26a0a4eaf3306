-- 7. Race condition: two threads each read a shared value, add 1, sleep
-- 0.1 s and write it back: the end value is 1, one update lost.  With a
-- lock around the read-modify-write the end value is 2.
-- loom's threads share no globals, so the notebook's global database_value
-- becomes a shared loom.value; its plain get and set race exactly as the
-- notebook's global did.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print = lib.pyprint

local experiment = {
  id = "07", name = "race_condition", title = "Race condition, then a lock",
  python = "07_race_condition.py", needs = { "thread", "value", "lock" },
}

local DELAY = 0.1

local function increase(database_value)
  local local_copy = database_value.value
  local_copy = local_copy + 1
  loom.sleep(DELAY)
  database_value.value = local_copy
end

local function increase_locked(database_value, lock)
  local guard <close> = lock:hold()   -- with lock:
  local local_copy = database_value.value
  local_copy = local_copy + 1
  loom.sleep(DELAY)
  database_value.value = local_copy
end

local function two(target, ...)
  local database_value = loom.value("i", 0)
  print("Start value", database_value.value)
  local t1 = loom.thread(target, database_value, ...)
  local t2 = loom.thread(target, database_value, ...)
  t1:start()
  t2:start()
  t1:join()
  t2:join()
  print("end value", database_value.value)
  print("end main")
  return database_value.value
end

function experiment.run(x)
  DELAY = x:pick(0.1, 0.05)
  local _, raced = x:variant("race", "two threads, no lock", { base = "none", notebook_note = "end value 1" },
    two, increase)
  local _, locked = x:variant("locked", "two threads, with a lock", { base = "none", notebook_note = "end value 2" },
    two, increase_locked, loom.lock())
  x:check(raced == 1, "without the lock one update is lost: end value %s", tostring(raced))
  x:check(locked == 2, "with the lock both updates land: end value %s", tostring(locked))
  x:check_time("race", DELAY * 0.98, DELAY * 1.5 + 0.1, "the sleeps overlap")
  x:check_time("locked", 2 * DELAY * 0.98, 2 * DELAY * 1.5 + 0.1, "the lock makes them take turns")
end

return lib.main(experiment, ...)
