-- 1. I/O-bound: Task("T1", 5 s) and Task("T2", 4 s) sleep; one after the
-- other, then on two threads.  Notebook: 9.0 s sequential, 5.0 s threaded.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print, datetime = lib.pyprint, lib.datetime

local experiment = {
  id = "01", name = "io_bound", title = "I/O-bound: sleeping tasks on threads",
  python = "01_io_bound.py", needs = { "thread" },
}

-- Prints what the notebook's Task printed, and each cell's print(Before,
-- After) line after it.
local function Task(name, seconds)
  loom.sleep(seconds)            -- the I/O wait: time.sleep(seconds)
  print("Thread " .. name .. " Executed")
end

function experiment.run(x)
  local T1, T2 = x:pick(5, 1.0), x:pick(4, 0.8)

  x:variant("sequential", "sequential", { notebook = 9.0 }, function()
    local Before = datetime()
    Task("T1", T1)
    Task("T2", T2)
    print(Before, datetime())
  end)

  x:variant("threads", "two threads", { notebook = 5.0 }, function()
    local t1 = loom.thread(Task, "T1", T1)
    local t2 = loom.thread(Task, "T2", T2)
    local Before = datetime()
    t1:start()
    t2:start()
    t1:join()
    t2:join()
    print(Before, datetime())
  end)

  local sum, longest = T1 + T2, math.max(T1, T2)
  x:check_time("sequential", sum * 0.98, sum * 1.5, "the sum of the sleeps")
  x:check_time("threads", longest * 0.98, longest + (sum - longest) * 0.5,
    "the longest sleep, not the sum")
end

return lib.main(experiment, ...)
