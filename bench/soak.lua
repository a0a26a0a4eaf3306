-- make soak: long runs that must keep resident memory flat and never hang.
-- Prints one line per phase with its figures; exits non-zero on a failure.
-- `lua5.4 bench/soak.lua --quick` runs a tenth of each.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local loom = require "loom"

local quick = false
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local function n(full) return quick and full // 10 or full end

local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

local failures = 0
-- fn(count, warm) may call warm() once its working set is built (pools
-- started, allocator arenas grown): resident memory is compared from there.
local function phase(name, count, fn)
  collectgarbage()
  local before = rss_kb()
  local function warm() collectgarbage(); before = rss_kb() end
  local t0 = loom.now()
  local ok, err = pcall(fn, count, warm)
  local dt = loom.now() - t0
  collectgarbage()
  local after = rss_kb()
  -- "flat": growth stays under a small fixed allowance, not per operation
  local flat = after - before < 32 * 1024
  if not ok or not flat then failures = failures + 1 end
  print(string.format("%-28s %10d  %8.2f s  rss %7d -> %7d KiB  %s%s", name, count, dt, before, after,
    ok and (flat and "ok" or "GREW") or "FAILED", ok and "" or (": " .. tostring(err))))
  io.stdout:flush()
end

local function skip(name, why)
  print(string.format("%-28s %s", name, "skipped: " .. why))
end

phase("sequential spawn/join", n(10000), function(count)
  for i = 1, count do
    assert(loom.thread(function(x) return x end, i):start():result(30) == i)
  end
end)

phase("concurrent threads", n(1000), function(count)
  local ts = {}
  for i = 1, count do
    ts[i] = assert(loom.thread(function(x) require("loom").sleep(0.05); return x end, i):start())
  end
  for i = 1, count do assert(ts[i]:result(60) == i) end
end)

if loom.pool then
  phase("pool tasks", n(1000000), function(count, warm)
    local pool <close> = loom.pool(2)
    local chunk, done = 10000, 0
    while done < count do
      local fs = {}
      for i = 1, chunk do fs[i] = pool:submit(function(x) return x + 1 end, i) end
      for i = 1, chunk do assert(fs[i]:result(60) == i + 1) end
      done = done + chunk
      if done == count // 10 then fs = nil; warm() end  -- luacheck: ignore 311
    end
  end)
else
  skip("pool tasks", "loom.pool is not available")
end

if loom.process then
  phase("forks", n(1000), function(count)
    for i = 1, count do
      local p = loom.process(function(x) return { x } end, i):start()
      assert(p:result(30)[1] == i)
    end
  end)
else
  skip("forks", "loom.process is not available")
end

if loom.queue then
  phase("queue messages", n(10000000), function(count)
    local q = loom.queue(1024)
    local consumer = loom.thread(function(queue, total)
      local sum = 0
      for _ = 1, total do sum = sum + queue:get(60) end
      return sum
    end, q, count):start()
    for i = 1, count do q:put(i, 60) end
    assert(consumer:result(600) == count * (count + 1) // 2)
  end)
else
  skip("queue messages", "loom.queue is not available")
end

print(failures == 0 and "soak: ok" or ("soak: " .. failures .. " phase(s) failed"))
os.exit(failures == 0 and 0 or 1)
