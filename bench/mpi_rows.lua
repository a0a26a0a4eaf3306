-- B12, loom's side: run by bench/loom_rows.lua as the script of
-- `mpiexec -n 3 lua5.4 -l loom.mpi.run bench/mpi_rows.lua KIND [--quick]`:
-- a loom.mpi pool of the 2 other ranks.  Prints `key value` lines.
local loom = require "loom"
local mpi = require "loom.mpi"

local kind, quick = arg[1], arg[2] == "--quick"
local pool <close> = assert(mpi.pool(2))
local function inc(x) return x + 1 end
assert(pool:submit(inc, 0):result() == 1)   -- both sides warm
local now = loom.now
if kind == "roundtrip" then
  local n = quick and 300 or 3000
  local t0 = now()
  for i = 1, n do
    assert(pool:submit(inc, i):result() == i + 1)
  end
  print(string.format("us_per_task %.6g", (now() - t0) / n * 1e6))
else
  local n = quick and 3000 or 30000
  local fs = {}
  local t0 = now()
  for i = 1, n do fs[i] = pool:submit(inc, i) end
  for i = 1, n do assert(fs[i]:result() == i + 1) end
  print(string.format("tasks_per_s %.6g", n / (now() - t0)))
end
