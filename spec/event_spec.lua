-- loom.Event
local loom = require "loom"

describe("loom.Event", function()
  it("starts unset", function()
    local e = loom.event()
    assert.is_false(e:is_set())
    assert.matches("^loom%.Event %(0x%x+, unset%)$", tostring(e))
  end)

  describe(":set() and :clear()", function()
    it("set and clear the flag", function()
      local e = loom.event()
      e:set()
      assert.is_true(e:is_set())
      assert.matches("^loom%.Event %(0x%x+, set%)$", tostring(e))
      e:set()
      assert.is_true(e:is_set())
      e:clear()
      assert.is_false(e:is_set())
    end)
  end)

  describe(":wait()", function()
    it("returns true at once when set", function()
      local e = loom.event()
      e:set()
      assert.is_true(e:wait())
      assert.is_true(e:wait(0))
    end)

    it("returns false when the timeout expires", function()
      local e = loom.event()
      assert.is_false(e:wait(0.02))
      assert.is_false(e:wait(0))
    end)

    it("raises on a negative timeout", function()
      local e = loom.event()
      assert.has_error(function() e:wait(-1) end,
        "bad argument #1 to 'wait' (timeout must be non-negative)")
    end)

    it("wakes every waiting thread on set()", function()
      local e = loom.event()
      local ts = {}
      finally(function() for _, t in ipairs(ts) do t:join(5) end end)
      for i = 1, 3 do ts[i] = loom.thread(function(ev) return ev:wait(5) end, e):start() end
      loom.sleep(0.02)
      e:set()
      for i = 1, 3 do assert.is_true(ts[i]:result(5)) end
    end)

    it("is set by another thread", function()
      local e = loom.event()
      local t = loom.thread(function(ev) ev:set() end, e):start()
      assert.is_true(e:wait(5))
      t:join(5)
    end)

    it("is woken by cancel() of the waiting thread", function()
      local e = loom.event()
      local t = loom.thread(function(ev) return ev:wait() end, e):start()
      finally(function() t:join(5) end)
      assert.is_false(t:join(0.05))
      t:cancel()
      local r, err = t:result(5)
      assert.is_nil(r)
      assert.equal("cancelled", err)
    end)
  end)

  it("raises when closed", function()
    local e = loom.event()
    do local c <close> = e end
    assert.has_error(function() e:set() end, "attempt to use a closed loom.Event")
  end)
end)
