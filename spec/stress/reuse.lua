-- Stress: interpreters handed from thread to thread.  Threads that dirty
-- their state, threads that check theirs is clean, cancellations, other
-- package paths and nested threads, mixed, many times.
local H = require "helpers"
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 300

local function dirty(i)
  leaked = i
  string.leak = i
  math.pi = i
  package.loaded.leak = { i }
  setmetatable(_G, { __index = function() return i end })
  getmetatable("").__index = { len = function() return -i end }
  print = nil
  local loom = require "loom"
  loom.excepthook(function() end)
  if i % 7 == 0 then
    local inner = loom.thread(function() require("loom").sleep(0.001) end):start()
    assert(inner)
  end
  return i
end

local function clean()
  assert(leaked == nil and string.leak == nil and math.pi > 3.14 and math.pi < 3.15)
  assert(package.loaded.leak == nil and getmetatable(_G) == nil and undefined == nil)
  assert(("abc"):len() == 3 and type(print) == "function")
  local loom = require "loom"
  assert(loom.excepthook(nil) == nil)
  local x = 0
  for k = 1, 1000 do x = x + k end
  return x
end

local saved = package.path
for i = 1, N do
  local batch = {}
  for j = 1, 4 do
    local k = (i + j) % 5
    if k == 0 then
      batch[j] = { loom.thread(dirty, i):start(), i }
    elseif k == 1 then
      local t = loom.thread(function() while true do end end):start()
      t:cancel()
      batch[j] = { t, "cancelled" }
    elseif k == 2 then
      package.path = saved .. ";/stress/" .. (i % 3) .. "/?.lua"
      batch[j] = { loom.thread(function() return package.path end):start(), package.path }
      package.path = saved
    else
      batch[j] = { loom.thread(clean):start(), 500500 }
    end
  end
  for _, b in ipairs(batch) do
    local t, want = b[1], b[2]
    if want == "cancelled" then
      assert(H.join(t, 10))
      local r, err = t:result()
      assert(r == nil and err == "cancelled", tostring(err))
    else
      local got = H.result(t, 10)
      assert(got == want, tostring(got) .. " ~= " .. tostring(want))
    end
  end
end
print("reuse stress ok")
