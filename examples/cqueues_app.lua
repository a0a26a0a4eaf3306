-- A cqueues application that hands work to loom without ever blocking its
-- controller.  A 10 ms ticker runs throughout while 100 thread-pool tasks,
-- 10 process-pool tasks and 10 processes complete, each awaited by its own
-- cqueues coroutine, and a producer thread feeds a loom queue that a
-- coroutine consumes.
-- Run: lua5.4 examples/cqueues_app.lua   (prints a summary; exit 0 when right)
local cqueues = require "cqueues"
local loom = require "loom"
local lcq = require "loom.cqueues"

local pool = loom.pool(4)
local ppool = loom.pool { workers = 2, kind = "process" }
local cq = cqueues.new()

local ticks, gap, running = 0, 0, true
local start = cqueues.monotime()
cq:wrap(function()
  local last = cqueues.monotime()
  while running do
    cqueues.sleep(0.01)
    local now = cqueues.monotime()
    if now - last > gap then gap = now - last end
    last = now
    ticks = ticks + 1
  end
end)

local sum, squares, exits, items = 0, 0, 0, 0
local remaining = 100 + 10 + 10 + 1
local function finished()
  remaining = remaining - 1
  if remaining == 0 then running = false end
end

for i = 1, 100 do
  cq:wrap(function()
    local f = pool:submit(function(x) loom.sleep(0.002 * (x % 7)); return x * 2 end, i)
    local v = lcq.await(f)   -- not sum + await(f): sum would be read before the wait
    sum = sum + v
    finished()
  end)
end

for i = 1, 10 do
  cq:wrap(function()
    local v = lcq.await(ppool:submit(function(x) loom.sleep(0.02); return x * x end, i))
    squares = squares + v
    finished()
  end)
end

for i = 1, 10 do
  cq:wrap(function()
    local p = loom.process(function(code) loom.sleep(0.05); os.exit(code) end, i % 3):start()
    lcq.await(p)
    if p.exitcode == i % 3 then exits = exits + 1 end
    finished()
  end)
end

local q = loom.queue()
local producer = loom.thread(function(qq)
  for i = 1, 20 do loom.sleep(0.005); qq:put(i) end
  qq:close()
end, q):start()
cq:wrap(function()
  while true do
    local v = lcq.get(q)
    if v == nil then break end
    items = items + v
  end
  finished()
end)

assert(cq:loop())
local elapsed = cqueues.monotime() - start
producer:join()
pool:shutdown()
ppool:shutdown()
print(string.format("sum=%d squares=%d exits=%d items=%d ticks=%d elapsed=%.3f maxgap=%.3f",
  sum, squares, exits, items, ticks, elapsed, gap))
assert(sum == 10100 and squares == 385 and exits == 10 and items == 210)
