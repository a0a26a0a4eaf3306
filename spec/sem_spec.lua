-- loom.Semaphore and loom.BoundedSemaphore
local H = require "helpers"
local loom = require "loom"

-- Each worker holds a unit for a moment and records, through a second
-- counting semaphore, how many holders there are at once.
local function holder(sem, inside, cap, n)
  local over = 0
  for _ = 1, n do
    if not H.acquire(sem, 10) then return -1 end
    inside:release()
    if inside:get_value() > cap then over = over + 1 end
    if not H.acquire(inside, 10) then return -1 end
    sem:release()
  end
  return over
end

local function run_cap(cap, nthreads, n)
  local sem, inside = loom.semaphore(cap), loom.semaphore(0)
  local ts = {}
  finally(function() for _, t in ipairs(ts) do t:join(H.t(10)) end end)
  for i = 1, nthreads do ts[i] = loom.thread(holder, sem, inside, cap, n):start() end
  for i = 1, nthreads do assert.equal(0, H.result(ts[i], 60)) end
  assert.equal(cap, sem:get_value())
end

describe("loom.Semaphore", function()
  it("defaults to a count of one", function()
    local s = loom.semaphore()
    assert.equal(1, s:get_value())
    assert.matches("^loom%.Semaphore %(0x%x+, value 1%)$", tostring(s))
  end)

  it("raises on a negative count", function()
    assert.has_error(function() loom.semaphore(-1) end,
      "bad argument #1 to 'semaphore' (value must be non-negative)")
    assert.has_error(function() loom.semaphore("x") end,
      "bad argument #1 to 'semaphore' (number expected, got string)")
  end)

  describe(":acquire()", function()
    it("takes units until none are left", function()
      local s = loom.semaphore(2)
      assert.is_true(s:acquire())
      assert.is_true(s:acquire(false))
      assert.is_false(s:acquire(false))
      assert.is_false(s:acquire(true, 0.02))
      assert.equal(0, s:get_value())
    end)

    it("raises on a timeout with a non-blocking call", function()
      local s = loom.semaphore()
      assert.has_error(function() s:acquire(false, 1) end,
        "bad argument #2 to 'acquire' (can't specify a timeout for a non-blocking call)")
      assert.has_error(function() s:acquire(true, -0.5) end,
        "bad argument #2 to 'acquire' (timeout must be non-negative)")
      assert.has_error(function() s:acquire("yes") end,
        "bad argument #1 to 'acquire' (boolean expected, got string)")
    end)

    it("blocks until another thread releases", function()
      local s = loom.semaphore(0)
      local t = loom.thread(function(sem) return H.acquire(sem, 5) end, s):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      s:release()
      assert.is_true(H.result(t, 5))
      assert.equal(0, s:get_value())
    end)

    it("is woken by cancel() of the blocked thread", function()
      local s = loom.semaphore(0)
      local t = loom.thread(function(sem) return sem:acquire() end, s):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      t:cancel()
      local r, err = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", err)
      s:release()
      assert.equal(1, s:get_value())
    end)
  end)

  describe(":release()", function()
    it("adds n units and wakes as many waiters", function()
      local s = loom.semaphore(0)
      local ts = {}
      finally(function() for _, t in ipairs(ts) do t:join(H.t(5)) end end)
      for i = 1, 3 do ts[i] = loom.thread(function(sem) return H.acquire(sem, 5) end, s):start() end
      s:release(3)
      for i = 1, 3 do assert.is_true(H.result(ts[i], 5)) end
      assert.equal(0, s:get_value())
      s:release(5)
      assert.equal(5, s:get_value())
    end)

    it("raises when n is less than one", function()
      local s = loom.semaphore()
      assert.has_error(function() s:release(0) end,
        "bad argument #1 to 'release' (n must be one or more)")
    end)
  end)

  describe(":hold()", function()
    it("holds one unit until the guard is closed", function()
      local s = loom.semaphore(2)
      do
        local g <close> = s:hold()
        assert.equal(1, s:get_value())
      end
      assert.equal(2, s:get_value())
      s:acquire(); s:acquire()
      local g, err = s:hold(0.01)
      assert.is_nil(g)
      assert.equal("timeout", err)
    end)
  end)

  describe("between threads", function()
    it("never lets more than its count in (light)", function()
      run_cap(2, 4, 300)
    end)

    it("never lets more than its count in #stress", function()
      run_cap(3, 6, 5000)
    end)
  end)

  describe("between processes", function()
    it("never lets more than its count in", function()
      local sem, inside = loom.semaphore(2), loom.semaphore(0)
      local ps = {}
      finally(function() for _, p in ipairs(ps) do p:join(H.t(10)) end end)
      for i = 1, 3 do ps[i] = loom.process(holder, sem, inside, 2, 200):start() end
      for i = 1, 3 do assert.equal(0, H.result(ps[i], 30)) end
      assert.equal(2, sem:get_value())
    end)

    it("wakes a child blocked in acquire", function()
      local s = loom.semaphore(0)
      local p = loom.process(function() return H.acquire(s, 5) end):start()
      finally(function() p:join(H.t(5)) end)
      loom.sleep(0.05)
      s:release()
      assert.is_true(H.result(p, 5))
    end)
  end)
end)

describe("loom.BoundedSemaphore", function()
  it("is created with its bound", function()
    local s = loom.bounded_semaphore(3)
    assert.equal(3, s:get_value())
    assert.matches("^loom%.BoundedSemaphore %(0x%x+, value 3%)$", tostring(s))
    assert.has_error(function() loom.bounded_semaphore(-2) end,
      "bad argument #1 to 'bounded_semaphore' (value must be non-negative)")
  end)

  describe(":release()", function()
    it("raises when released above its initial value", function()
      local s = loom.bounded_semaphore(2)
      assert.has_error(function() s:release() end, "semaphore released too many times")
      s:acquire()
      assert.has_error(function() s:release(2) end, "semaphore released too many times")
      assert.equal(1, s:get_value())
      s:release()
      assert.equal(2, s:get_value())
    end)
  end)

  describe(":acquire()", function()
    it("works like a semaphore", function()
      local s = loom.bounded_semaphore()
      assert.is_true(s:acquire(false))
      assert.is_false(s:acquire(false))
      s:release()
      assert.is_true(s:acquire(true, 0))
      s:release()
    end)
  end)
end)
