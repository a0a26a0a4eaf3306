-- Stress: queues, values and arrays under contention: producers and
-- consumers racing on a small queue, timeouts and cancellations of blocked
-- getters and putters, close() racing with waiters, atomic counters.
local H = require "helpers"
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 2000   -- a multiple of 4

-- 3 producers, 3 consumers, a queue of 4: every item exactly once
local q, count = loom.queue(4), loom.value("int64")
local ts = {}
for c = 1, 3 do
  ts[#ts + 1] = loom.thread(function(qq, cnt)
    local seen = {}
    while true do
      local item = H.get(qq, 30)
      if item == nil then return seen end
      assert(seen[item] == nil)
      seen[item] = true
      cnt:add(1)
    end
  end, q, count):start()
end
local producers = {}
for p = 1, 3 do
  producers[p] = loom.thread(function(qq, base, n)
    for i = 1, n do
      if i % 7 == 0 then
        while not qq:try_put(base + i) do loom.sleep(0.0002) end
      else
        assert(qq:put(base + i, H.t(30)))
      end
    end
  end, q, p * 1000000, N):start()
end
for p = 1, 3 do assert(H.join(producers[p], 600), "producer stuck") end
q:close()
local all = {}
for _, t in ipairs(ts) do
  for item in pairs(H.result(t, 60)) do
    assert(all[item] == nil)
    all[item] = true
  end
end
assert(count.value == 3 * N)

-- waiters that time out, get cancelled or see close, all at once
for round = 1, 20 do
  local qq = loom.queue(1)
  qq:put("full")
  local empty = loom.queue()
  local waiters = {}
  for k = 1, 4 do
    waiters[k] = loom.thread(function(full, e, kind)
      if kind == 1 then return e:get(0.001) end
      if kind == 2 then return e:get() end
      if kind == 3 then return pcall(full.put, full, "x") end
      return pcall(full.put, full, "y", 0.001)
    end, qq, empty, k):start()
  end
  loom.sleep(0.002)
  waiters[2]:cancel()
  if round % 2 == 0 then waiters[3]:cancel() end
  empty:close()
  qq:close()
  for k = 1, 4 do H.join(waiters[k], 30) end
  assert(#qq <= 1)
end

-- big items through a small queue
local big = string.rep("abcdefgh", 1 << 17)   -- 1 MiB
local bq = loom.queue(2)
local reader = loom.thread(function(qq, n)
  local total = 0
  for _ = 1, n do total = total + #H.get(qq, 30) end
  return total
end, bq, 20):start()
for _ = 1, 20 do bq:put(big, H.t(30)) end
assert(H.result(reader, 60) == 20 * #big)

-- atomics on array elements against plain, locked updates
local arr = loom.array("int32", 4)
local adders = {}
for k = 1, 4 do
  adders[k] = loom.thread(function(a, n)
    local l = a:get_lock()
    for i = 1, n do
      a:add(i % 4 + 1, 1)
      a:cas(1, a[1], a[1])
      l:acquire()
      a:exchange(2, a[2])
      l:release()
    end
  end, arr, N):start()
end
for k = 1, 4 do H.result(adders[k], 60) end
local sum = 0
for _, x in ipairs(arr) do sum = sum + x end
assert(sum <= 4 * N)
assert(arr[3] == N and arr[4] == N)   -- only ever touched atomically

print("data stress ok")
