-- Stress: contended locks, a semaphore's cap, condition handoffs, barrier
-- generations and cancellation of blocked waiters, between threads.
local H = require "helpers"
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 5000

local function spawn_all(n, fn, ...)
  local ts = {}
  for i = 1, n do ts[i] = loom.thread(fn, ...):start() end
  return ts
end

-- locks: a racy read-modify-write made exact
for _, make in ipairs { loom.lock, loom.rlock } do
  local lk, counter = make(), loom.value("int64", 0, false)
  local ts = spawn_all(4, function(l, c, n)
    for _ = 1, n do
      local g <close> = l:hold()
      c.value = c.value + 1
    end
  end, lk, counter, N)
  for _, t in ipairs(ts) do H.result(t, 60) end
  assert(counter.value == 4 * N, counter.value)
end

-- semaphore: never more than its count inside
local sem, inside, over = loom.semaphore(2), loom.value("int64", 0, false), loom.value("int64", 0, false)
local ts = spawn_all(4, function(s, ins, ov, n)
  for _ = 1, n do
    local g <close> = s:hold()
    if ins:add(1) > 2 then ov:add(1) end
    ins:add(-1)
  end
end, sem, inside, over, N)
for _, t in ipairs(ts) do H.result(t, 60) end
assert(over.value == 0 and sem:get_value() == 2)

-- condition: a ping-pong of N turns
local c, turn = loom.condition(), loom.value("int64", 0, false)
ts = {}
for side = 0, 1 do
  ts[#ts + 1] = loom.thread(function(cv, tv, me, n)
    for _ = 1, n do
      local g <close> = cv:hold()
      assert(cv:wait_for(function() return tv.value % 2 == me end, H.t(10)))
      tv.value = tv.value + 1
      cv:notify_all()
    end
  end, c, turn, side, N // 10):start()
end
for _, t in ipairs(ts) do H.result(t, 60) end
assert(turn.value == 2 * (N // 10))

-- barrier generations
local b = loom.barrier(3)
ts = spawn_all(3, function(bar, n) for _ = 1, n do H.wait(bar, 10) end end, b, N // 10)
for _, t in ipairs(ts) do H.result(t, 60) end
assert(not b.broken)

-- cancelling blocked waiters of every kind
for _ = 1, 20 do
  local l, e, s2, cv = loom.lock(), loom.event(), loom.semaphore(0), loom.condition()
  l:acquire()
  local ws = {
    loom.thread(function(x) x:acquire() end, l):start(),
    loom.thread(function(x) x:wait() end, e):start(),
    loom.thread(function(x) x:acquire() end, s2):start(),
    loom.thread(function(x) local g <close> = x:hold(); x:wait() end, cv):start(),
  }
  loom.sleep(0.002)
  for _, w in ipairs(ws) do w:cancel() end
  for _, w in ipairs(ws) do assert(H.join(w, 10)) end
  l:release()
  assert(cv:acquire(false))
  cv:release()
end
collectgarbage()
print("sync stress ok")
