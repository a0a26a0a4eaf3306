-- Experiment 05's CPU-bound tasks on a loom.mpi pool of 2 ranks, run by
-- 05_concurrency_parallelism.lua as the script of
-- `mpiexec -n 3 lua5.4 -l loom.mpi.run experiments/05_mpi_pool.lua N`.
-- Prints the map's wall time (the pool already open, as the process
-- pool's workers are forked before its map) and the sums.
local loom = require "loom"
local mpi = require "loom.mpi"

local N = math.tointeger(tonumber(arg[1]))

local function cpu_task(_)
  local Res = 0
  for i = 0, N - 1 do
    Res = Res + ((i * i) + 2.0) * 1.45
  end
  return Res
end

local pool <close> = assert(mpi.pool(2))
assert(pool:submit(function() return 1 end):result() == 1)
local start = loom.now()
local sums = pool:map(cpu_task, { 0, 1, 2 })
print(string.format("seconds %.17g", loom.now() - start))
print(string.format("sums %.17g %.17g %.17g", sums[1], sums[2], sums[3]))
