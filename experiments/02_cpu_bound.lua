-- 2. CPU-bound: cpu_task("T1", 50,000,000) and cpu_task("T2", 40,000,000)
-- one after the other, on two threads, on two processes, on two
-- shared-interpreter threads.  Under Python's GIL the threads gain nothing
-- (notebook: 12.0 s vs 11.9 s), nor do loom's shared threads; loom's
-- ordinary threads each run their own interpreter, so they run in parallel.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print, repr, datetime = lib.pyprint, lib.repr, lib.datetime

local experiment = {
  id = "02", name = "cpu_bound", title = "CPU-bound: the GIL experiment",
  python = "02_cpu_bound.py", needs = { "thread" },
}

local function cpu_task(name, n)
  local Res = 0
  for i = 0, n - 1 do
    Res = Res + ((i * i) + 2.0) * 1.45
  end
  -- print("Task "+name+" Executed. Result : ", str(Res)): two spaces
  print("Task " .. name .. " Executed. Result : ", repr(Res))
  return Res
end

-- The sums the notebook printed, and Python's for the --quick sizes:
-- the same float operations in the same order give the same bits.
local EXPECTED = {
  [50000000] = 6.0416664854174735e+22, [40000000] = 3.0933332173336498e+22,
  [5000000] = 6.041664854169139e+19, [4000000] = 3.0933321733343285e+19,
}

-- Runs cpu_task for T1 and T2 on two workers made by spawn; returns both sums.
local function two(spawn)
  return function(N1, N2)
    local w1 = spawn(cpu_task, "T1", N1)
    local w2 = spawn(cpu_task, "T2", N2)
    w1:start()
    w2:start()
    return w1:result(), w2:result()
  end
end

-- Shared-interpreter threads (one interpreter, one global lock, like
-- CPython) reproduce the notebook's own result; skipped in a build
-- without them.
local SHARED_THREAD = "shared_thread"

function experiment.run(x)
  local N1, N2 = x:pick(50000000, 5000000), x:pick(40000000, 4000000)
  local sums = {}
  local function record(key)
    return function(t1, t2) sums[key] = { t1, t2 } end
  end

  -- each cell ends with print(Before, After)
  local function variant(key, label, opts, fn)
    local function timed(...)
      local Before = datetime()
      local r1, r2 = fn(...)
      print(Before, datetime())
      return r1, r2
    end
    local elapsed, r1, r2 = x:variant(key, label, opts, timed, N1, N2)
    if elapsed then record(key)(r1, r2) end
  end

  variant("sequential", "sequential", { notebook = 12.0 }, function(n1, n2)
    return cpu_task("T1", n1), cpu_task("T2", n2)
  end)
  variant("threads", "two threads", { notebook = 11.9 }, two(loom.thread))
  variant("processes", "two processes", { needs = { "process" } },
    function(...) return two(loom.process)(...) end)
  -- While a shared thread exists, Lua 5.4's VM traps every instruction for
  -- the switching hook, so the shared threads' own baseline is the same two
  -- calls in a row inside one shared thread.
  variant("shared_sequential", "in a row, in one shared thread",
    { needs = { SHARED_THREAD } }, function(n1, n2)
      return loom[SHARED_THREAD](function()
        return cpu_task("T1", n1), cpu_task("T2", n2)
      end):start():result()
    end)
  variant("shared_threads", "two shared-interpreter threads",
    { needs = { SHARED_THREAD }, notebook = 11.9, base = "shared_sequential" },
    function(...) return two(loom[SHARED_THREAD])(...) end)

  for _, key in ipairs({ "sequential", "threads", "processes", "shared_sequential",
                         "shared_threads" }) do
    local s = sums[key]
    if s then
      x:check(s[1] == EXPECTED[N1] and s[2] == EXPECTED[N2],
        "%s: T1 = %s, T2 = %s (expected %s, %s)", x.byvar[key].label,
        repr(s[1]), repr(s[2]), repr(EXPECTED[N1]), repr(EXPECTED[N2]))
    end
  end
  if loom.cpu_count() >= 2 then
    x:check_faster("threads", "sequential", 0.85,
      "isolated interpreters hold no global lock, so the threads run in parallel", true)
    x:check_faster("processes", "sequential", 0.85, "two processes run in parallel", true)
  else
    x:note("one core: no parallel speedup to check")
  end
  -- Under one interpreter lock the two sums take turns, as under the GIL:
  -- no faster than one after the other.
  x:check_faster("shared_sequential", "shared_threads", 1.25,
    "shared-interpreter threads take turns under one lock, like Python's", "quiet")
  local hooked, plain = x:time("shared_sequential"), x:time("sequential")
  if hooked and plain then
    x:note("the switching hook makes this loop %.2fx slower while shared threads exist",
      hooked / plain)
  end
  if loom.cpu_count() >= 2 then
    x:check_faster("threads", "shared_threads", 0.85,
      "isolated threads run side by side where shared ones take turns", true)
  end
end

return lib.main(experiment, ...)
