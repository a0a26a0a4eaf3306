-- Stress: many short threads, nested threads, cancellation while running,
-- values crossing in both directions.
local H = require "helpers"
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 200
local sum = 0
for i = 1, N do
  local t = loom.thread(function(x, tbl) return x + #tbl, { x } end, i, { 1, 2, 3 }):start()
  local a, b = H.result(t, 10)
  assert(a == i + 3 and b[1] == i)
  sum = sum + a
end
assert(sum == N * (N + 1) // 2 + 3 * N)

local batch = {}
for i = 1, 16 do
  batch[i] = loom.thread(function(k)
    local loom = require "loom"
    local inner = loom.thread(function(y) return y * 2 end, k):start()
    return H.result(inner, 10)
  end, i):start()
end
for i = 1, 16 do assert(H.result(batch[i], 20) == i * 2) end

for _ = 1, 20 do
  local t = loom.thread(function() while true do end end):start()
  loom.sleep(0.001)
  t:cancel()
  assert(H.join(t, 10))
  local s = loom.thread(function() require("loom").sleep(10) end):start()
  s:cancel()
  assert(H.join(s, 10))
end

-- handles dropped while threads run, errors nobody collects
loom.excepthook(function() end)
for _ = 1, 20 do
  loom.thread(function() error("ignored") end):start()
end
collectgarbage()
print("threads stress ok")
