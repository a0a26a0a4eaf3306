-- loom.Condition
local H = require "helpers"
local loom = require "loom"
-- thread functions see these as upvalues: a spec file's environment is
-- busted's, not a table a thread could rebuild
local pcall = pcall

-- Waits on c until notified (or 5 s) and returns wait's result.
local function waiter(c, ready)
  c:acquire()
  ready:release()
  local r = H.wait(c, 5)
  c:release()
  return r
end

describe("loom.Condition", function()
  it("uses a new RLock by default", function()
    local c = loom.condition()
    assert.matches("^loom%.RLock ", tostring(c:get_lock()))
    assert.matches("^loom%.Condition %(0x%x+%)$", tostring(c))
  end)

  it("uses the lock it is given", function()
    local l = loom.lock()
    local c = loom.condition(l)
    assert.equal(l, c:get_lock())
    c:acquire()
    assert.is_true(l:locked())
    c:release()
    assert.is_false(l:locked())
  end)

  it("raises on a lock of another kind", function()
    assert.has_error(function() loom.condition("x") end,
      "bad argument #1 to 'condition' (loom.Lock or loom.RLock expected, got string)")
    assert.has_error(function() loom.condition(loom.semaphore()) end,
      "bad argument #1 to 'condition' (loom.Lock or loom.RLock expected, got loom.Semaphore)")
  end)

  describe(":acquire() and :release()", function()
    it("act on the lock", function()
      local c = loom.condition()
      assert.is_true(c:acquire())
      assert.is_true(c:acquire(false))
      c:release()
      c:release()
      assert.has_error(function() c:release() end, "cannot release un-acquired lock")
      assert.has_error(function() c:acquire(false, 1) end,
        "bad argument #2 to 'acquire' (can't specify a timeout for a non-blocking call)")
    end)
  end)

  describe(":wait()", function()
    it("raises when the lock is not held", function()
      local c = loom.condition()
      assert.has_error(function() c:wait(0) end, "cannot wait on un-acquired lock")
      local c2 = loom.condition(loom.lock())
      assert.has_error(function() c2:wait(0) end, "cannot wait on un-acquired lock")
    end)

    it("returns false on timeout, holding the lock again", function()
      local c = loom.condition()
      c:acquire()
      c:acquire()
      assert.is_false(c:wait(0.02))
      c:release()
      assert.is_true(c:get_lock():locked())   -- recursion depth restored
      c:release()
      assert.is_false(c:get_lock():locked())
    end)

    it("raises on a negative timeout", function()
      local c = loom.condition()
      c:acquire()
      assert.has_error(function() c:wait(-1) end,
        "bad argument #1 to 'wait' (timeout must be non-negative)")
      c:release()
    end)

    it("returns true when notified by another thread", function()
      local c, ready = loom.condition(), loom.semaphore(0)
      local t = loom.thread(waiter, c, ready):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_true(H.acquire(ready, 5))
      c:acquire()
      c:notify()
      c:release()
      assert.is_true(H.result(t, 5))
    end)

    it("works over a plain Lock", function()
      local c, ready = loom.condition(loom.lock()), loom.semaphore(0)
      local t = loom.thread(waiter, c, ready):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_true(H.acquire(ready, 5))
      c:acquire()
      c:notify()
      c:release()
      assert.is_true(H.result(t, 5))
    end)

    it("is woken by cancel(), and takes the lock back first", function()
      local c, ready = loom.condition(), loom.semaphore(0)
      local t = loom.thread(function(cv, r)
        local g <close> = cv:hold()
        r:release()
        return cv:wait()
      end, c, ready):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_true(H.acquire(ready, 5))
      c:acquire()   -- the waiter released the lock while it waits
      c:release()
      t:cancel()
      local r, err = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", err)
      assert.is_true(H.acquire(c, 5))   -- released again by the guard
      c:release()
    end)
  end)

  describe(":notify()", function()
    it("raises when the lock is not held", function()
      local c = loom.condition()
      assert.has_error(function() c:notify() end, "cannot notify on un-acquired lock")
      assert.has_error(function() c:notify_all() end, "cannot notify on un-acquired lock")
      c:acquire()
      assert.has_error(function() c:notify(-1) end,
        "bad argument #1 to 'notify' (n must be non-negative)")
      c:release()
    end)

    it("does nothing without waiters", function()
      local c = loom.condition()
      c:acquire()
      c:notify()
      c:notify_all()
      c:release()
    end)

    it("wakes n waiters, and notify_all the rest", function()
      local c, ready = loom.condition(), loom.semaphore(0)
      local ts = {}
      finally(function() for _, t in ipairs(ts) do t:join(H.t(5)) end end)
      for i = 1, 4 do ts[i] = loom.thread(waiter, c, ready):start() end
      for _ = 1, 4 do assert.is_true(H.acquire(ready, 5)) end
      c:acquire()
      c:notify(2)
      c:release()
      local done = 0
      local deadline = loom.now() + H.t(5)
      while done < 2 and loom.now() < deadline do
        done = 0
        for i = 1, 4 do if not ts[i]:is_alive() then done = done + 1 end end
        loom.sleep(0.005)
      end
      loom.sleep(0.05)
      done = 0
      for i = 1, 4 do if not ts[i]:is_alive() then done = done + 1 end end
      assert.equal(2, done)
      c:acquire()
      c:notify_all()
      c:release()
      for i = 1, 4 do assert.is_true(H.result(ts[i], 5)) end
    end)
  end)

  describe(":wait_for()", function()
    it("returns the predicate's value at once when truthy", function()
      local c = loom.condition()
      c:acquire()
      assert.equal(42, c:wait_for(function() return 42 end))
      c:release()
    end)

    it("returns the predicate's last value on timeout", function()
      local c = loom.condition()
      c:acquire()
      local calls = 0
      local r = c:wait_for(function() calls = calls + 1; return false end, 0.02)
      assert.is_false(r)
      assert.is_true(calls >= 1)
      c:release()
    end)

    it("raises on a missing predicate and an un-acquired lock", function()
      local c = loom.condition()
      assert.has_error(function() c:wait_for() end,
        "bad argument #1 to 'wait_for' (function expected, got no value)")
      assert.has_error(function() c:wait_for(function() return false end, 0) end,
        "cannot wait on un-acquired lock")
    end)

    it("drives a producer and a consumer", function()
      -- the shared state: a count of items, kept in a semaphore's value
      local c, items = loom.condition(), loom.semaphore(0)
      local n = 200
      local consumer = loom.thread(function(cv, it, count)
        local got = 0
        for _ = 1, count do
          local g <close> = cv:hold()
          if not cv:wait_for(function() return it:get_value() > 0 end, H.t(5)) then
            return got
          end
          it:acquire(false)
          got = got + 1
        end
        return got
      end, c, items, n):start()
      finally(function() consumer:join(H.t(5)) end)
      for _ = 1, n do
        local g <close> = c:hold()
        items:release()
        c:notify()
      end
      assert.equal(n, H.result(consumer, 10))
      assert.equal(0, items:get_value())
    end)
  end)

  describe("between processes", function()
    it("notifies a waiting child", function()
      local c, ready = loom.condition(), loom.semaphore(0)
      local p = loom.process(waiter, c, ready):start()
      finally(function() p:join(H.t(5)) end)
      assert.is_true(H.acquire(ready, 5))
      c:acquire()
      c:notify()
      c:release()
      assert.is_true(H.result(p, 5))
    end)

    it("drives a producer child and a consumer parent", function()
      local c, items = loom.condition(loom.lock()), loom.value("int64", 0, false)
      local n = 100
      local p = loom.process(function()
        for _ = 1, n do
          local g <close> = c:hold()
          items.value = items.value + 1
          c:notify()
        end
      end):start()
      finally(function() p:join(H.t(5)) end)
      local got = 0
      while got < n do
        local g <close> = c:hold()
        assert.is_true(c:wait_for(function() return items.value > 0 end, H.t(5)))
        items.value = items.value - 1
        got = got + 1
      end
      H.result(p, 5)
      assert.equal(0, items.value)
    end)

    it("skips a waiter whose process died", function()
      local c, ready = loom.condition(), loom.semaphore(0)
      local dead = loom.process(function()
        c:acquire()
        ready:release()
        H.wait(c, 5)
      end)
      dead:start()
      finally(function() dead:join(H.t(5)) end)
      assert.is_true(H.acquire(ready, 5))
      c:acquire()   -- the child is inside wait() once it let go of the lock
      c:release()
      dead:kill()   -- killed while it waits: its entry stays listed
      H.join(dead, 5)
      local t = loom.thread(waiter, c, ready):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_true(H.acquire(ready, 5))
      c:acquire()
      c:notify()   -- one notification: must reach the live waiter
      c:release()
      assert.is_true(H.result(t, 5))
    end)
  end)

  it("passes through a thread that waits with pcall", function()
    local c = loom.condition()
    local t = loom.thread(function(cv) return pcall(cv.wait, cv, 0) end, c):start()
    local ok, err = H.result(t, 5)
    assert.is_false(ok)
    assert.equal("cannot wait on un-acquired lock", err)
  end)
end)
