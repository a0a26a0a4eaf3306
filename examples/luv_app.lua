-- A luv application that hands work to loom without ever blocking its loop.
-- A 10 ms timer ticks throughout while 100 thread-pool tasks, 10 process-
-- pool tasks and 10 processes run; one coroutine awaits futures, another
-- awaits processes, and run_in_pool calls back on the loop thread.
-- Run: lua5.4 examples/luv_app.lua   (prints a summary; exit 0 when right)
local uv = require "luv"
local loom = require "loom"
local lluv = require "loom.luv"

local pool = loom.pool(4)
local ppool = loom.pool { workers = 2, kind = "process" }

local ticks, gap, last = 0, 0, uv.hrtime()
local start = last
local timer = uv.new_timer()
timer:start(10, 10, function()
  local now = uv.hrtime()
  gap = math.max(gap, (now - last) / 1e9)
  last = now
  ticks = ticks + 1
end)

local sum, callbacks, squares, exits = 0, 0, 0, 0
local remaining = 3
local function finished()
  remaining = remaining - 1
  if remaining == 0 then timer:stop() end
end

-- 100 thread-pool tasks through run_in_pool: callbacks on the loop thread.
local todo = 100
for i = 1, 100 do
  lluv.run_in_pool(pool, function(x) loom.sleep(0.002 * (x % 7)); return x * 2 end, i,
    function(ok, v)
      assert(ok, v)
      sum = sum + v
      callbacks = callbacks + 1
      todo = todo - 1
      if todo == 0 then finished() end
    end)
end

-- A coroutine awaiting process-pool futures one by one.
coroutine.wrap(function()
  for i = 1, 10 do
    local f = ppool:submit(function(x) loom.sleep(0.02); return x * x end, i)
    squares = squares + lluv.await(f)
  end
  finished()
end)()

-- A coroutine starting 10 processes and awaiting each one's exit.
coroutine.wrap(function()
  local ps = {}
  for i = 1, 10 do
    ps[i] = loom.process(function(code) loom.sleep(0.05); os.exit(code) end, i % 3):start()
  end
  for i = 1, 10 do
    lluv.await(ps[i])
    if ps[i].exitcode == i % 3 then exits = exits + 1 end
  end
  finished()
end)()

uv.run()
local elapsed = (uv.hrtime() - start) / 1e9
pool:shutdown()
ppool:shutdown()
print(string.format("sum=%d callbacks=%d squares=%d exits=%d ticks=%d elapsed=%.3f maxgap=%.3f pending=%d",
  sum, callbacks, squares, exits, ticks, elapsed, gap, lluv.pending()))
assert(sum == 10100 and callbacks == 100 and squares == 385 and exits == 10)
