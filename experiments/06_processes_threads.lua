-- 6. Processes vs threads: cpu_count() processes each running
-- square_numbers (100 iterations of i*i with a 0.1 s sleep), and 10 threads
-- running it without the sleep; what starting each one costs.  A loom
-- thread builds a fresh interpreter; a loom process forks the running one.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print = lib.pyprint

local experiment = {
  id = "06", name = "processes_threads", title = "Processes vs threads: start costs",
  python = "06_processes_threads.py", needs = { "thread" },
}

local ITERATIONS, DELAY = 100, 0.1

local function square_numbers()
  local entered, last = loom.now(), nil
  for i = 0, ITERATIONS - 1 do
    last = i * i
    loom.sleep(DELAY)
  end
  return last, entered
end

local function square_numbers_nosleep()
  local entered, last = loom.now(), nil
  for i = 0, ITERATIONS - 1 do
    last = i * i
  end
  return last, entered
end

-- Starts every worker, then joins them all; returns the mean time from
-- calling start() to the worker's first line (loom.now() is one monotonic
-- clock for threads and forked processes alike) and every worker's result.
local function run(workers)
  local asked = {}
  for i, w in ipairs(workers) do
    asked[i] = loom.now()
    w:start()
  end
  local results, startup = {}, 0
  for i, w in ipairs(workers) do
    local last, entered = w:result()
    results[i] = last
    startup = startup + (entered - asked[i])
  end
  return startup / #workers, results
end

function experiment.run(x)
  DELAY = x:pick(0.1, 0.01)
  local n = loom.cpu_count()
  local expected = (ITERATIONS - 1) * (ITERATIONS - 1)

  local _, per_process, presults = x:variant("processes",
    ("%d processes, with sleep"):format(n),
    { base = "none", needs = { "process" } }, function()
      local processes = {}
      for i = 1, n do processes[i] = loom.process(square_numbers) end
      local per, results = run(processes)
      print("end main")
      return per, results
    end)
  local _, per_thread, tresults = x:variant("threads",
    "10 threads, without sleep", { base = "none" }, function()
      local threads = {}
      for i = 1, 10 do threads[i] = loom.thread(square_numbers_nosleep) end
      local per, results = run(threads)
      print("end main")
      return per, results
    end)

  for key, results in pairs({ processes = presults, threads = tresults }) do
    local ok = #results > 0
    for _, r in ipairs(results) do ok = ok and r == expected end
    x:check(ok, "%s: every worker's last square is %d", x.byvar[key].label, expected)
  end
  local sleeps = ITERATIONS * DELAY
  x:check_time("processes", sleeps * 0.98, sleeps * 1.5 + 0.5,
    "the processes sleep side by side")

  -- The cost of a start on its own, one at a time: how long from start()
  -- to the worker's first line, the mean of a few.
  x:section("start-up, one at a time")
  local function entered() return loom.now() end
  local function startup(spawn, times)
    local total = 0
    for _ = 1, times do
      local asked = loom.now()
      total = total + (spawn(entered):start():result() - asked)
    end
    return total / times
  end
  local per_thread1 = startup(loom.thread, 20)
  x:record("thread_start", "start-up of one thread", per_thread1, { base = "none", group = "startup" })
  local per_process1
  if lib.has("process") then
    per_process1 = startup(loom.process, 20)
    x:record("process_start", "start-up of one process", per_process1, { base = "none", group = "startup" })
    x:note("from start() to its first line: a process %s, a thread %s", lib.fmt_time(per_process1),
      lib.fmt_time(per_thread1))
  end
  x:note("while %d processes and 10 threads start at once: %s per process, %s per thread", n,
    lib.fmt_time(per_process), lib.fmt_time(per_thread))
end

return lib.main(experiment, ...)
