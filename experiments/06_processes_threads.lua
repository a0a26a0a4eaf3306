-- 6. Processes vs threads: cpu_count() processes each running
-- square_numbers (100 iterations of i*i with a 0.1 s sleep), and 10 threads
-- running it without the sleep; what starting each one costs.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print = lib.print

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
    ("%d processes, square_numbers with sleep"):format(n),
    { base = "none", needs = { "process" } }, function()
      local processes = {}
      for i = 1, n do processes[i] = loom.process(square_numbers) end
      return run(processes)
    end)
  local _, per_thread, tresults = x:variant("threads",
    "10 threads, square_numbers without sleep", { base = "none" }, function()
      local threads = {}
      for i = 1, 10 do threads[i] = loom.thread(square_numbers_nosleep) end
      return run(threads)
    end)

  for key, results in pairs({ processes = presults, threads = tresults }) do
    local ok = #results > 0
    for _, r in ipairs(results) do ok = ok and r == expected end
    x:check(ok, "%s: every worker's last square is %d", x.byvar[key].label, expected)
  end
  local sleeps = ITERATIONS * DELAY
  x:check_time("processes", sleeps * 0.98, sleeps * 1.5 + 0.5,
    "the processes sleep side by side")

  if per_process then x:record("process_start", "start-up of one process", per_process, { base = "none" }) end
  if per_thread then x:record("thread_start", "start-up of one thread", per_thread, { base = "none" }) end
  if per_process and per_thread then
    x:note("from start() to its first line: a process %s, a thread %s (%.1fx)", lib.fmt_time(per_process),
      lib.fmt_time(per_thread), per_process / per_thread)
  elseif per_thread then
    x:note("starting a thread (a fresh interpreter on an OS thread) takes %s",
      lib.fmt_time(per_thread))
  end
end

return lib.main(experiment, ...)
