-- Stress: pools made and dropped, several submitters at once, cancellation
-- racing the workers, waiters racing completions, futures crossing threads.
local H = require "helpers"
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 2000

-- pools created and dropped, closed and not
for i = 1, 30 do
  local pool = loom.pool(1 + i % 3)
  local f = pool:submit(function(x) return x * 2 end, i)
  assert(H.result(f, 10) == i * 2)
  if i % 2 == 0 then pool:shutdown(i % 4 == 0, true) end
end
collectgarbage()

-- several threads submitting to one pool
do
  local pool <close> = loom.pool(3)
  local ts = {}
  for k = 1, 4 do
    ts[k] = loom.thread(function(p, base, n)
      local fs, sum = {}, 0
      for i = 1, n do fs[i] = p:submit(function(x) return x + 1 end, base + i) end
      for i = 1, n do sum = sum + H.result(fs[i], 30) end
      return sum
    end, pool, k * N, N):start()
  end
  for k = 1, 4 do
    local expect = 0
    for i = 1, N do expect = expect + k * N + i + 1 end
    assert(H.result(ts[k], 60) == expect)
  end
end

-- cancel racing the workers: every future ends either done or cancelled
do
  local pool <close> = loom.pool(2)
  local fs = {}
  for i = 1, N do fs[i] = pool:submit(function(x) return x end, i) end
  local cancelled = 0
  for i = N, 1, -1 do
    if fs[i]:cancel() then cancelled = cancelled + 1 end
  end
  local done, not_done = loom.wait(fs, H.t(30))
  assert(#done == N and #not_done == 0)
  local c2 = 0
  for i = 1, N do
    if fs[i]:cancelled() then c2 = c2 + 1 else assert(fs[i]:result(0) == i) end
  end
  assert(c2 == cancelled)
end

-- as_completed and wait racing completions, from another thread too
do
  local pool <close> = loom.pool(2)
  for _ = 1, 20 do
    local fs = {}
    for i = 1, 200 do fs[i] = pool:submit(function(x) return x end, i) end
    local t = loom.thread(function(list)
      local l = require "loom"
      local seen = 0
      for _ in l.as_completed(list, H.t(30)) do seen = seen + 1 end
      return seen
    end, fs):start()
    local n = 0
    for _ in loom.as_completed(fs, H.t(30)) do n = n + 1 end
    assert(n == 200)
    assert(H.result(t, 30) == 200)
    local done = loom.wait(fs, H.t(30), "any")
    assert(#done == 200)
  end
end

-- errors never kill workers
do
  local pool <close> = loom.pool(2)
  local fs = {}
  for i = 1, N do
    fs[i] = pool:submit(function(x) if x % 3 == 0 then error("e" .. x, 0) end return x end, i)
  end
  for i = 1, N do
    local ok, v = pcall(fs[i].result, fs[i], H.t(30))
    if i % 3 == 0 then assert(not ok and v:match("^e" .. i)) else assert(ok and v == i) end
  end
end

-- a cancelled waiter thread leaves the futures intact
do
  local pool <close> = loom.pool(1)
  local slow = pool:submit(function() require("loom").sleep(0.2) return "slow" end)
  local t = loom.thread(function(f)
    local l = require "loom"
    l.wait({ f })
  end, slow):start()
  loom.sleep(0.02)
  t:cancel()
  assert(H.join(t, 10))
  assert(H.result(slow, 10) == "slow")
end

print("pool stress: ok")
