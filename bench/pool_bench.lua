-- Pool benchmarks.
-- B2: round trip: submit x -> x + 1 and wait for its result, 20000 times,
--     pool of 2: microseconds per round trip.
-- B3: throughput: submit 100000 tasks, then gather them, pool of 2:
--     tasks per second.
-- Run from the top directory: lua5.4 bench/pool_bench.lua [rounds]; it
-- prints one line per figure, each the best of `rounds` runs (default 5).
-- Loaded with dofile/require it returns M: M.run([rounds]) -> {B2 = us,
-- B3 = tasks/s}.  python3 bench/pool_bench.py measures ThreadPoolExecutor.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local loom = require "loom"

local now = loom.now
local rounds = tonumber(arg and arg[1]) or 5

local function inc(x) return x + 1 end

local M = {}

function M.b2(pool, n)
  n = n or 20000
  local t = now()
  for i = 1, n do
    local r = pool:submit(inc, i):result()
    if r ~= i + 1 then error("wrong result") end
  end
  return (now() - t) / n * 1e6
end

function M.b3(pool, n)
  n = n or 100000
  local fs = {}
  local t = now()
  for i = 1, n do fs[i] = pool:submit(inc, i) end
  for i = 1, n do
    if fs[i]:result() ~= i + 1 then error("wrong result") end
  end
  return n / (now() - t)
end

function M.run(r)
  r = r or rounds
  local pool <close> = loom.pool(2)
  local best2, best3 = math.huge, 0
  M.b3(pool, 20000)          -- warm up: worker states, heap pages
  for _ = 1, r do
    local b2 = M.b2(pool)
    if b2 < best2 then best2 = b2 end
    collectgarbage()
    local b3 = M.b3(pool)
    if b3 > best3 then best3 = b3 end
    collectgarbage()
  end
  return { B2 = best2, B3 = best3 }
end

if arg and arg[0] and arg[0]:match("pool_bench%.lua$") then
  local res = M.run()
  print(string.format("B2 pool round trip      %8.2f us", res.B2))
  print(string.format("B3 pool throughput      %8.0f tasks/s", res.B3))
end

return M
