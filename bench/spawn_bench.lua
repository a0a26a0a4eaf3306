-- B1 of bench/results.md: start + join 2000 threads one after another, each runs
-- `function() return 1 end`; prints the median of 5 runs in µs per thread,
-- and Python's threading.Thread doing the same in this run, for reference.
-- Usage: lua5.4 bench/spawn_bench.lua [threads] [runs]
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 2000
local RUNS = tonumber(arg and arg[2]) or 5

local function median(xs)
  table.sort(xs)
  return xs[(#xs + 1) // 2]
end

local function body() return 1 end

local loom_runs = {}
for r = 1, RUNS do
  local t0 = loom.now()
  for _ = 1, N do
    loom.thread(body):start():join()
  end
  loom_runs[r] = (loom.now() - t0) / N * 1e6
end

local py = string.format([[
import threading, time, statistics
def body(): return 1
runs = []
for _ in range(%d):
    t0 = time.perf_counter()
    for _ in range(%d):
        t = threading.Thread(target=body); t.start(); t.join()
    runs.append((time.perf_counter() - t0) / %d * 1e6)
print(statistics.median(runs))
]], RUNS, N, N)
local p = io.popen("python3 -c '" .. py .. "' 2>/dev/null")
local py_us = p and tonumber(p:read("a"))
if p then p:close() end

local lm = median(loom_runs)
local runs = {}
for i, v in ipairs(loom_runs) do runs[i] = string.format("%.1f", v) end
print(string.format("B1 spawn: %d x start+join, median of %d", N, RUNS))
print(string.format("  loom    %8.1f µs/thread   (runs: %s)", lm, table.concat(runs, " ")))
if py_us then
  print(string.format("  python  %8.1f µs/thread   ratio loom/python %.2f", py_us, lm / py_us))
end
