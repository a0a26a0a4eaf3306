-- Lifecycle stress for `host --cycles N`: every cycle leaves threads, pool
-- tasks and processes running and lets the host close its state.  Each
-- cycle first checks that the previous one left no child process behind,
-- running or zombie.
local loom = require "loom"

local function children()
  local stat = assert(io.open("/proc/self/stat")):read("l")
  local pid = stat:match("^(%d+)")
  local f = io.open("/proc/" .. pid .. "/task/" .. pid .. "/children")
  if f == nil then return "" end   -- kernel without the children list
  local list = f:read("a")
  f:close()
  return list
end
local left = children()
assert(left == "", "processes left by the previous cycle: " .. left)

loom.thread(function() require("loom").sleep(0.01) end):start()
loom.thread{ target = function() while true do end end, daemon = true }:start()
loom.thread{ target = function() require("loom").sleep(30) end, daemon = true }:start()

-- a pool dropped with tasks queued and running
local pool = loom.pool(2)
for i = 1, 8 do
  pool:submit(function(x) require("loom").sleep(0.002) return x end, i)
end

-- a non-daemon child is waited for, a daemon child is terminated
loom.process(function() require("loom").sleep(0.01) end):start()
loom.process{ target = function() require("loom").sleep(30) end, daemon = true }:start()
