-- A process killed while it waits leaves its mark in the condvar it waited
-- on; freeing the object afterwards must not wait for that waiter.
local H = require "helpers"

-- A fresh interpreter that gives up after a scaled timeout: a free that
-- blocked shows as a failure, not as a hung suite.
local function run_bounded(chunk)
  return H.run(chunk, 30)
end

describe("an object whose waiter was killed #fork", function()
  it("is freed: a condition", function()
    local out, ok = run_bounded [[
      local loom = require "loom"
      local c, waiting = loom.condition(), loom.event()
      local p = loom.process(function()
        c:acquire()
        waiting:set()
        c:wait()
      end):start()
      H.wait(waiting, 10)
      H.acquire(c, 10)        -- the child released it: it is in its wait
      c:release()
      p:kill()
      H.join(p, 10)
      c = nil
      collectgarbage()
      collectgarbage()
      print("freed")
    ]]
    assert.equal("freed\n", out)
    assert.is_true(ok, out)
  end)

  it("is freed: an event and a queue", function()
    local out, ok = run_bounded [[
      local loom = require "loom"
      local e, q, waiting = loom.event(), loom.queue(), loom.semaphore(0)
      local p = loom.process(function() waiting:release(); e:wait() end):start()
      local r = loom.process(function() waiting:release(); q:get() end):start()
      H.acquire(waiting, 10)
      H.acquire(waiting, 10)
      loom.sleep(0.2)         -- both children reach their waits
      p:kill()
      r:kill()
      H.join(p, 10)
      H.join(r, 10)
      e, q = nil, nil
      collectgarbage()
      collectgarbage()
      print("freed")
    ]]
    assert.equal("freed\n", out)
    assert.is_true(ok, out)
  end)
end)
