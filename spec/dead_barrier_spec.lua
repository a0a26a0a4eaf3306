-- A party whose process dies inside an untimed barrier wait breaks the
-- barrier for the others, as a timed wait's timeout would: nobody waits
-- for a party that can never leave.  Each case runs in its own interpreter
-- under timeout(1) (spec/dead_spec.lua's style), so a hang fails the spec.
local H = require "helpers"

local function expect(chunk, limit)
  local out, ok, code = H.run(chunk, limit)
  assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s",
    tostring(code), out))
  assert.matches("done", out)
end

describe("a barrier party killed in an untimed wait", function()
  it("breaks the barrier for a thread waiting without a timeout", function()
    expect([[
local loom = require "loom"
local b = loom.barrier(3)
local p = loom.process(function() b:wait() end):start()
local t = loom.thread(function()
  local ok, err = pcall(b.wait, b)
  return ok, err
end):start()
while b.n_waiting < 2 do loom.sleep(0.01) end
p:kill(); p:join()
local ok, err = t:result()
assert(ok == false and err == "broken barrier", tostring(ok) .. " " .. tostring(err))
assert(b.broken)
-- the dead party no longer counts: after reset, three live parties pass
b:reset()
local ps = {}
for i = 1, 2 do ps[i] = loom.process(function() return b:wait() end):start() end
local mine = b:wait()
local seen = { [mine] = true }
for i = 1, 2 do
  local idx = ps[i]:result()
  assert(not seen[idx]); seen[idx] = true
end
assert(seen[0] and seen[1] and seen[2])
print("done")
]], 20)
  end)

  it("breaks it for the main thread while the dead child is a zombie", function()
    -- the parent waits at the barrier and cannot reap the child another
    -- process killed: a zombie counts as dead
    expect([[
local loom = require "loom"
local b = loom.barrier(3)
local p = loom.process(function() b:wait() end):start()
local victim = p.pid
local killer = loom.process(function()
  loom.sleep(0.3)
  os.execute("kill -9 " .. victim)
end):start()
local t0 = loom.now()
local ok, err = pcall(b.wait, b)
assert(ok == false and err == "broken barrier", tostring(ok) .. " " .. tostring(err))
assert(loom.now() - t0 < 5, "took " .. (loom.now() - t0))
killer:join(); p:join()
print("done")
]], 20)
  end)

  it("breaks it, not trips it, when the last party comes after the death", function()
    -- the dead party had arrived, but the generation cannot be made up
    -- with it; afterwards the barrier serves live parties again
    expect([[
local loom = require "loom"
local b = loom.barrier(2)
local p = loom.process(function()
  b:wait()
  b:wait()   -- second generation: killed while waiting here
end):start()
b:wait()
while b.n_waiting < 1 do loom.sleep(0.01) end
p:kill(); p:join()
local ok, err = pcall(b.wait, b)
assert(ok == false and err == "broken barrier", tostring(ok) .. " " .. tostring(err))
b:reset()
local q = loom.process(function() return b:wait() end):start()
local mine = b:wait()
assert(mine + q:result() == 1)
print("done")
]], 20)
  end)
end)
