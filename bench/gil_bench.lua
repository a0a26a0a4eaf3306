-- bench/gil_bench.lua: what shared-interpreter threads cost and show.
--   lua5.4 bench/gil_bench.lua [rounds]
-- 1. the notebook's CPU task (n = 5e6 and 4e6): one after the other, one
--    after the other inside a shared thread (the switching hook on), and on
--    two shared threads: the GIL lesson is threads ~1.0x sequential;
-- 2. three shared threads sleeping 0.5 s;
-- The loop-* modes are the tight loops whose instructions the B4 rows of
-- `make bench` count under callgrind (bench/loom_rows.lua, B4hook): no
-- shared thread ever, while a shared thread exists, after it ended.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local mode = arg[1]
if mode == "loop-base" or mode == "loop-during" or mode == "loop-after" then
  local n = tonumber(arg[2])
  local loom = require "loom"
  if mode == "loop-during" then
    loom.thread{ target = loom.sleep, args = { 3600 }, shared = true, daemon = true }:start()
  elseif mode == "loop-after" then
    loom.thread{ target = function() end, shared = true }:start():join()
  end
  local s = 0
  for i = 1, n do s = s + i end
  io.write(s, "\n")
  io.stdout:flush()
  os.exit(0)
end

local loom = require "loom"
local rounds = tonumber(arg[1]) or 3

local function cpu_task(n)
  local r = 0
  for i = 0, n - 1 do
    r = r + ((i * i) + 2.0) * 1.45
  end
  return r
end

local function best(fn)
  local t = math.huge
  for _ = 1, rounds do
    local t0 = loom.now()
    fn()
    t = math.min(t, loom.now() - t0)
  end
  return t
end

local N1, N2 = 5000000, 4000000
local seq = best(function() cpu_task(N1); cpu_task(N2) end)
local seq_hooked = best(function()
  -- the same work, one after the other, in a shared thread: the hook is on
  loom.shared_thread(function() cpu_task(N1); cpu_task(N2) end):start():result()
end)
local two = best(function()
  local a = loom.shared_thread(cpu_task, N1):start()
  local b = loom.shared_thread(cpu_task, N2):start()
  a:result(); b:result()
end)
local iso = best(function()
  local a = loom.thread(cpu_task, N1):start()
  local b = loom.thread(cpu_task, N2):start()
  a:result(); b:result()
end)
local sleeps = best(function()
  local s = {}
  for i = 1, 3 do s[i] = loom.shared_thread(loom.sleep, 0.5):start() end
  for i = 1, 3 do s[i]:join() end
end)

print(("cpu_task(5e6) + cpu_task(4e6), best of %d (s):"):format(rounds))
print(("  sequential                    %7.3f"):format(seq))
print(("  sequential in a shared thread %7.3f  (%.2fx: the switching hook)"):format(
  seq_hooked, seq_hooked / seq))
print(("  two shared threads            %7.3f  (%.2fx sequential, %.2fx sequential with the hook)"):format(
  two, two / seq, two / seq_hooked))
print(("  two isolated threads          %7.3f  (%.2fx)"):format(iso, iso / seq))
print(("three shared threads sleeping 0.5 s: %.3f s"):format(sleeps))
