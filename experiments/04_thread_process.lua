-- 4. task(name) sleeps 2 s: on two threads, then on two processes.
-- Notebook: about 2 s each.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print = lib.pyprint

local experiment = {
  id = "04", name = "thread_process", title = "task(name): two threads, then two processes",
  python = "04_thread_process.py", needs = { "thread" },
}

local DELAY = 2

local function task(name)
  print("Task " .. name .. " started.")
  loom.sleep(DELAY)
  print("Task " .. name .. " completed.")
  return name
end

local function two(spawn)
  return function()
    local workers = {}
    for i, name in ipairs({ "A", "B" }) do workers[i] = spawn(task, name) end
    for _, w in ipairs(workers) do w:start() end
    local names = {}
    for i, w in ipairs(workers) do names[i] = w:result() end
    print("All tasks completed.")
    return names
  end
end

function experiment.run(x)
  DELAY = x:pick(2, 0.4)
  local opts = { notebook = 2.0, base = "none" }
  local _, threads = x:variant("threads", "two threads", opts, two(loom.thread))
  local _, procs = x:variant("processes", "two processes",
    { notebook = 2.0, base = "none", needs = { "process" } },
    function() return two(loom.process)() end)
  for key, names in pairs({ threads = threads, processes = procs }) do
    x:check(names[1] == "A" and names[2] == "B",
      "%s returned both task names", x.byvar[key].label)
  end
  x:check_time("threads", DELAY * 0.98, DELAY * 1.5 + 0.1, "one sleep: they overlap")
  x:check_time("processes", DELAY * 0.98, DELAY * 1.5 + 0.2, "one sleep: they overlap")
end

return lib.main(experiment, ...)
