-- loom.Lock and loom.RLock
local H = require "helpers"
local loom = require "loom"
-- thread functions see these as upvalues: a spec file's environment is
-- busted's, not a table a thread could rebuild
local pcall, rawequal, error = pcall, rawequal, error

-- Each worker increments a shared counter the racy way (a read, then a
-- write) under the lock, and checks mutual exclusion with a probe: a
-- bounded semaphore of one that only a holder of the lock tries to take.
local function exclusive_worker(lk, counter, probe, n)
  local overlaps = 0
  for _ = 1, n do
    lk:acquire()
    if probe:acquire(false) then probe:release() else overlaps = overlaps + 1 end
    counter.value = counter.value + 1
    lk:release()
  end
  return overlaps
end

-- spawn is loom.thread or loom.process: both take (fn, ...) and :start().
local function run_exclusive(spawn, make, nworkers, n)
  local lk, probe = make(), loom.bounded_semaphore(1)
  local counter = loom.value("int64", 0, false)
  local ws = {}
  finally(function() for _, w in ipairs(ws) do w:join(H.t(10)) end end)
  for i = 1, nworkers do ws[i] = spawn(exclusive_worker, lk, counter, probe, n):start() end
  local overlaps = 0
  for i = 1, nworkers do overlaps = overlaps + H.result(ws[i], 60) end
  assert.equal(0, overlaps)
  assert.equal(nworkers * n, counter.value)
  assert.is_false(lk:locked())
end

describe("loom.Lock", function()
  it("is created unlocked", function()
    local l = loom.lock()
    assert.is_false(l:locked())
    assert.matches("^loom%.Lock %(0x%x+, unlocked%)$", tostring(l))
    l:acquire()
    assert.matches("^loom%.Lock %(0x%x+, locked%)$", tostring(l))
    l:release()
  end)

  describe(":acquire()", function()
    it("returns true on a free lock and holds it", function()
      local l = loom.lock()
      assert.is_true(l:acquire())
      assert.is_true(l:locked())
      l:release()
    end)

    it("is not reentrant: a non-blocking second acquire returns false", function()
      local l = loom.lock()
      l:acquire()
      assert.is_false(l:acquire(false))
      l:release()
    end)

    it("returns false when a timed acquire expires", function()
      local l = loom.lock()
      l:acquire()
      assert.is_false(l:acquire(true, 0.05))
      assert.is_false(l:acquire(true, 0))
      l:release()
      assert.is_true(l:acquire(true, 0))
      l:release()
    end)

    it("blocks until another thread releases", function()
      local l = loom.lock()
      l:acquire()
      local t = loom.thread(function(lk) return H.acquire(lk, 5), lk:locked() end, l):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      l:release()
      local ok, locked = H.result(t, 5)
      assert.is_true(ok)
      assert.is_true(locked)
      l:release()   -- any thread may release a Lock, as in Python
    end)

    it("raises on a timeout with a non-blocking call", function()
      local l = loom.lock()
      assert.has_error(function() l:acquire(false, 1) end,
        "bad argument #2 to 'acquire' (can't specify a timeout for a non-blocking call)")
    end)

    it("raises on a negative timeout", function()
      local l = loom.lock()
      assert.has_error(function() l:acquire(true, -1) end,
        "bad argument #2 to 'acquire' (timeout must be non-negative)")
    end)

    it("raises when blocking is not a boolean", function()
      local l = loom.lock()
      assert.has_error(function() l:acquire(5) end,
        "bad argument #1 to 'acquire' (boolean expected, got number)")
    end)

    it("raises on something that is not a lock", function()
      local l = loom.lock()
      assert.has_error(function() l.acquire({}) end,
        "bad argument #1 to 'acquire' (loom.Lock expected, got table)")
      assert.has_error(function() l.acquire(loom.rlock()) end,
        "bad argument #1 to 'acquire' (loom.Lock expected, got loom.RLock)")
    end)

    it("is woken by cancel() of the blocked thread", function()
      local l = loom.lock()
      l:acquire()
      local t = loom.thread(function(lk) return lk:acquire() end, l):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      t:cancel()
      local r, err = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", err)
      l:release()
    end)
  end)

  describe(":release()", function()
    it("raises on an unlocked lock", function()
      local l = loom.lock()
      assert.has_error(function() l:release() end, "release unlocked lock")
      l:acquire()
      l:release()
      assert.has_error(function() l:release() end, "release unlocked lock")
    end)

    it("may be called by a thread that did not acquire", function()
      local l = loom.lock()
      l:acquire()
      local t = loom.thread(function(lk) lk:release(); return lk:locked() end, l):start()
      assert.is_false(H.result(t, 5))
      assert.is_false(l:locked())
    end)
  end)

  describe(":hold()", function()
    it("holds the lock until the guard is closed", function()
      local l = loom.lock()
      do
        local g <close> = l:hold()
        assert.is_true(l:locked())
        assert.equal("loom.Guard (held)", tostring(g))
      end
      assert.is_false(l:locked())
    end)

    it("releases when the block raises", function()
      local l = loom.lock()
      local ok, err = pcall(function()
        local g <close> = l:hold()
        error("boom", 0)
      end)
      assert.is_false(ok)
      assert.equal("boom", err)
      assert.is_false(l:locked())
    end)

    it("returns fail, 'timeout' when a timed hold expires", function()
      local l = loom.lock()
      l:acquire()
      local g, err = l:hold(0.02)
      assert.is_nil(g)
      assert.equal("timeout", err)
      l:release()
      do
        local g2 <close> = l:hold(H.t(1))
        assert.is_true(l:locked())
      end
      assert.is_false(l:locked())
    end)

    it("releases in a thread cancelled while it holds the guard", function()
      local l, e = loom.lock(), loom.event()
      local t = loom.thread(function(lk, ev)
        local g <close> = lk:hold()
        ev:wait()
      end, l, e):start()
      finally(function() t:join(H.t(5)) end)
      local deadline = loom.now() + H.t(5)
      while not l:locked() and loom.now() < deadline do loom.sleep(0.005) end
      assert.is_true(l:locked())
      t:cancel()
      local r, err = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", err)
      assert.is_false(l:locked())
    end)

    it("raises on a negative timeout", function()
      local l = loom.lock()
      assert.has_error(function() l:hold(-1) end,
        "bad argument #1 to 'hold' (timeout must be non-negative)")
    end)
  end)

  describe("as a proxy", function()
    it("passes to a thread as an argument and as an upvalue", function()
      local l = loom.lock()
      local function f(arg)
        local a = arg:acquire(false)
        arg:release()
        return a, H.acquire(l, 5), rawequal(arg, l), arg == l
      end
      local t = loom.thread(f, l):start()
      local a, b, same, eq = H.result(t, 5)
      assert.is_true(a)
      assert.is_true(b)
      assert.is_false(same)   -- two proxies in the thread ...
      assert.is_true(eq)      -- ... of the same lock
      assert.is_true(l:locked())
      l:release()
    end)

    it("is unusable once closed", function()
      local l = loom.lock()
      do local g <close> = l end
      assert.has_error(function() l:acquire() end, "attempt to use a closed loom.Lock")
      assert.equal("loom.Lock (closed)", tostring(l))
    end)

    it("is freed with its last reference", function()
      collectgarbage()
      collectgarbage()
      local before = loom.heap_used()
      for i = 1, 20000 do
        local l = loom.lock()
        l:acquire()
        l:release()
        if i % 1000 == 0 then collectgarbage() end
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(loom.heap_used() - before < 64 * 1024)
    end)
  end)

  describe("between threads", function()
    it("gives mutual exclusion to 4 threads (light)", function()
      run_exclusive(loom.thread, loom.lock, 4, 2000)
    end)

    it("gives mutual exclusion to 4 threads x 20000 #stress", function()
      run_exclusive(loom.thread, loom.lock, 4, 20000)
    end)
  end)

  describe("between processes", function()
    it("gives mutual exclusion to 2 processes", function()
      run_exclusive(loom.process, loom.lock, 2, 1000)
    end)

    it("gives mutual exclusion to 4 processes x 20000 #stress", function()
      run_exclusive(loom.process, loom.lock, 4, 20000)
    end)

    it("blocks a child until the parent releases", function()
      local l, tried = loom.lock(), loom.event()
      l:acquire()
      local p = loom.process(function()
        local early = l:acquire(false)
        tried:set()
        if early then return early end   -- a second acquire would wait on itself
        return early, H.acquire(l, 5)
      end):start()
      finally(function() p:join(H.t(5)) end)
      -- released only once the child has found it held, however slowly the
      -- child started
      H.wait(tried, 5)
      loom.sleep(0.05)
      l:release()
      local early, later = H.result(p, 5)
      assert.is_false(early)
      assert.is_true(later)
      assert.is_true(l:locked())   -- the child left holding it
    end)

    it("is taken over with 'owner died' when the holder's process exits", function()
      local l = loom.lock()
      local p = loom.process(function() return l:acquire() end):start()
      finally(function() p:join(H.t(5)) end)
      assert.is_true(H.result(p, 5))
      assert.is_true(l:locked())
      local ok, why = H.acquire(l, 5)
      assert.is_true(ok)
      assert.equal("owner died", why)
      l:release()
      assert.is_false(l:locked())
    end)

    it("is taken over while the dead holder is not yet joined", function()
      local l, e = loom.lock(), loom.event()
      local p = loom.process(function() l:acquire(); e:set() end):start()
      finally(function() p:join(H.t(5)) end)
      assert.is_true(H.wait(e, 5))
      local ok, why = H.acquire(l, 5)   -- the child is a zombie meanwhile
      assert.is_true(ok)
      assert.equal("owner died", why)
      l:release()
    end)

    it("is taken over by a non-blocking acquire too", function()
      local l = loom.lock()
      local p = loom.process(function() l:acquire() end):start()
      H.join(p, 5)
      local ok, why = l:acquire(false)
      assert.is_true(ok)
      assert.equal("owner died", why)
      l:release()
    end)
  end)
end)

describe("loom.RLock", function()
  it("is created unlocked", function()
    local r = loom.rlock()
    assert.is_false(r:locked())
    assert.matches("^loom%.RLock %(0x%x+, unlocked%)$", tostring(r))
  end)

  describe(":acquire()", function()
    it("is reentrant for its owner", function()
      local r = loom.rlock()
      assert.is_true(r:acquire())
      assert.is_true(r:acquire(false))
      assert.is_true(r:acquire(true, 0))
      assert.matches("^loom%.RLock %(0x%x+, locked by %d+:%d+, count 3%)$", tostring(r))
      r:release()
      r:release()
      assert.is_true(r:locked())
      r:release()
      assert.is_false(r:locked())
    end)

    it("excludes other threads until fully released", function()
      local r = loom.rlock()
      r:acquire()
      r:acquire()
      local tried = loom.event()
      local t = loom.thread(function(lk, ev, long)
        local first = lk:acquire(false)
        ev:set()
        local second = lk:acquire(true, long)
        if second then lk:release() end
        return first, second
      end, r, tried, H.t(5)):start()
      finally(function() t:join(H.t(5)) end)
      H.wait(tried, 5)   -- the thread found it held, however late it started
      r:release()
      assert.is_false(t:join(0.05))
      r:release()
      local first, second = H.result(t, 5)
      assert.is_false(first)
      assert.is_true(second)
    end)

    it("raises on a timeout with a non-blocking call", function()
      local r = loom.rlock()
      assert.has_error(function() r:acquire(false, 0) end,
        "bad argument #2 to 'acquire' (can't specify a timeout for a non-blocking call)")
    end)

    it("is woken by cancel() of the blocked thread", function()
      local r = loom.rlock()
      r:acquire()
      local t = loom.thread(function(lk) return lk:acquire() end, r):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      t:cancel()
      local res, err = H.result(t, 5)
      assert.is_nil(res)
      assert.equal("cancelled", err)
      r:release()
    end)
  end)

  describe(":release()", function()
    it("raises when not held", function()
      local r = loom.rlock()
      assert.has_error(function() r:release() end, "cannot release un-acquired lock")
    end)

    it("raises in a thread that does not own it", function()
      local r = loom.rlock()
      r:acquire()
      local t = loom.thread(function(lk) return pcall(lk.release, lk) end, r):start()
      local ok, err = H.result(t, 5)
      assert.is_false(ok)
      assert.equal("cannot release un-acquired lock", err)
      assert.is_true(r:locked())
      r:release()
    end)
  end)

  describe(":hold()", function()
    it("nests", function()
      local r = loom.rlock()
      do
        local g1 <close> = r:hold()
        do
          local g2 <close> = r:hold()
        end
        assert.is_true(r:locked())
      end
      assert.is_false(r:locked())
    end)
  end)

  describe("between threads", function()
    it("gives mutual exclusion to 4 threads (light)", function()
      run_exclusive(loom.thread, loom.rlock, 4, 2000)
    end)

    it("gives mutual exclusion to 4 threads x 20000 #stress", function()
      run_exclusive(loom.thread, loom.rlock, 4, 20000)
    end)
  end)

  describe("between processes", function()
    it("gives mutual exclusion to 2 processes", function()
      run_exclusive(loom.process, loom.rlock, 2, 1000)
    end)

    it("has an owner per process: a child neither holds nor releases the parent's", function()
      local r = loom.rlock()
      r:acquire()
      local p = loom.process(function()
        return r:acquire(false), pcall(r.release, r)
      end):start()
      finally(function() p:join(H.t(5)) end)
      local got, ok, err = H.result(p, 5)
      assert.is_false(got)
      assert.is_false(ok)
      assert.equal("cannot release un-acquired lock", err)
      r:release()
      assert.is_false(r:locked())
    end)

    it("is taken over with 'owner died', at a count of one", function()
      local r = loom.rlock()
      local p = loom.process(function() r:acquire(); r:acquire() end):start()
      H.join(p, 5)
      local ok, why = H.acquire(r, 5)
      assert.is_true(ok)
      assert.equal("owner died", why)
      r:release()
      assert.is_false(r:locked())
    end)
  end)
end)
