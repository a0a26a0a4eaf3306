-- 5. Concurrency vs parallelism: three 2 s tasks sequentially (notebook
-- 6.01 s), on threads (2.00 s), through a pool's map (2.01 s); then the
-- CPU-bound counterpart, sequentially and on a pool of processes.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print, repr = lib.pyprint, lib.repr

local experiment = {
  id = "05", name = "concurrency_parallelism", title = "Concurrency vs parallelism",
  python = "05_concurrency_parallelism.py", needs = { "thread" },
}

local DELAY, N = 2, 20000000
local names = { 0, 1, 2 }   -- range(3)

local function task(name)
  print(("Task %s started"):format(name))
  loom.sleep(DELAY)
  print(("Task %s finished"):format(name))
  return name
end

-- The end of each of the notebook's three cells.
local function all_done(start_time)
  print("All tasks done")
  print(("Time to finish the takss are: %s seconds"):format(repr(loom.now() - start_time)))
end

local function cpu_task(name)
  local Res = 0
  for i = 0, N - 1 do
    Res = Res + ((i * i) + 2.0) * 1.45
  end
  print(("cpu task %s: %s"):format(name, repr(Res)))   -- not in the notebook
  return Res
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  return out, p:close()
end

local function mpi_pool_map(x, n)
  local here = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or ""
  local root = here .. "../"
  if not sh("command -v mpiexec"):match("mpiexec") or io.open(root .. "loom/mpi/core.so") == nil then
    x:note("MPI pool of 2 ranks: skipped (needs mpiexec and loom.mpi: make mpi)")
    return nil
  end
  local out, ok = sh(string.format(
    "LUA_PATH='%slua/?.lua;%slua/?/init.lua;;' LUA_CPATH='%s?.so;;' timeout 300 " ..
    "mpiexec -n 3 --oversubscribe %s lua5.4 -l loom.mpi.run %s05_mpi_pool.lua %d",
    root, root, root, sh("id -u"):match("^0") and "--allow-run-as-root" or "", here, n))
  local secs = tonumber(out:match("seconds (%S+)"))
  if not ok or not secs then
    x:check(false, "the MPI pool ran without error (%s)", out:sub(1, 300))
    return nil
  end
  x:record("cpu_mpi_pool", "MPI pool of 2 ranks: map (mpiexec -n 3, pool already open)", secs,
    { base = "cpu_sequential" })
  local a, b, c = out:match("sums (%S+) (%S+) (%S+)")
  return { tonumber(a), tonumber(b), tonumber(c) }
end

function experiment.run(x)
  DELAY, N = x:pick(2, 0.4), x:pick(20000000, 2000000)
  local map_skip = lib.pool_offers("map")
  local process_pool_skip = lib.pool_offers("process")

  x:section("concurrency: waiting side by side")
  x:variant("sequential", "three tasks, in a row", { notebook = 6.01 }, function()
    local start_time = loom.now()
    for _, name in ipairs(names) do task(name) end
    all_done(start_time)
  end)
  x:variant("threads", "three threads", { notebook = 2.00 }, function()
    local start_time = loom.now()
    local ts = {}
    for i, name in ipairs(names) do ts[i] = loom.thread(task, name):start() end
    for _, t in ipairs(ts) do t:join() end
    all_done(start_time)
  end)
  local _, mapped = x:variant("pool_map", "pool:map(task, names)",
    { notebook = 2.01, skip = map_skip }, function()
      local start_time = loom.now()
      local mapped
      do
        local pool <close> = loom.pool(3)
        mapped = pool:map(task, names)
      end
      all_done(start_time)
      return mapped
    end)

  x:section("parallelism: computing side by side")
  local _, seq_sums = x:variant("cpu_sequential", "three CPU tasks, in a row",
    { base = "cpu_sequential" }, function()
      local out = {}
      for i, name in ipairs(names) do out[i] = cpu_task(name) end
      return out
    end)
  local _, pool_sums = x:variant("cpu_process_pool",
    ("process pool of %d: map"):format(loom.cpu_count()),
    { base = "cpu_sequential", skip = process_pool_skip or map_skip }, function()
      local pool <close> = loom.pool { workers = loom.cpu_count(), kind = "process" }
      return pool:map(cpu_task, names)
    end)

  -- the same tasks on 2 MPI ranks (loom.mpi), in an mpiexec world of its own:
  -- MPI in this process would make the later experiments' forks unsafe
  local mpi_sums = mpi_pool_map(x, N)

  local sum = 3 * DELAY
  x:check_time("sequential", sum * 0.98, sum * 1.5, "three sleeps in a row")
  x:check_time("threads", DELAY * 0.98, DELAY * 1.5 + 0.1, "one sleep: they overlap")
  x:check_time("pool_map", DELAY * 0.98, DELAY * 1.5 + 0.1, "one sleep: they overlap")
  if mapped then
    x:check(table.concat(mapped, "") == "012", "map returned the results in order: %s",
      table.concat(mapped, " "))
  end
  if seq_sums and pool_sums then
    x:check(seq_sums[1] == pool_sums[1] and pool_sums[1] == pool_sums[3],
      "the processes computed the same sums: %s", repr(pool_sums[1]))
  end
  if seq_sums and mpi_sums then
    x:check(seq_sums[1] == mpi_sums[1] and mpi_sums[1] == mpi_sums[3],
      "the MPI ranks computed the same sums: %s", repr(mpi_sums[1]))
  end
  if loom.cpu_count() >= 2 then
    x:check_faster("cpu_process_pool", "cpu_sequential", 0.85,
      "the processes compute on several cores at once", true)
    if mpi_sums then
      x:check_faster("cpu_mpi_pool", "cpu_sequential", 0.85,
        "the MPI ranks compute on several cores at once", true)
    end
  end
end

return lib.main(experiment, ...)
