local loom = require "loom"
local H = require "helpers"

local function shared(fn, ...)
  return loom.thread{ target = fn, args = table.pack(...), shared = true }
end

-- Busy work that allocates tables and strings all the time.
local function build(seed, n)
  local out = {}
  for i = 1, n do
    local t = { seed, i, tostring(seed * i) }
    t[#t + 1] = string.rep(string.char(97 + (seed + i) % 26), i % 17 + 1)
    out[#out + 1] = table.concat(t, ":")
  end
  return table.concat(out, ",")
end

local function spin(seconds)
  local stop, x = loom.now() + seconds, 0
  while loom.now() < stop do
    x = x + 1
  end
  return x
end

describe("loom.thread{shared=true}", function()
  describe(":start()", function()
    it("runs in the caller's interpreter: tables and globals are shared", function()
      local box = { n = 0 }
      _G.gil_spec_global = 1
      local t = shared(function(b)
        b.n = b.n + 41
        _G.gil_spec_global = _G.gil_spec_global + 1
        return b
      end, box):start()
      finally(function() t:join(H.t(5)) end)
      local r = H.result(t, 5)
      assert.equal(box, r)
      assert.equal(41, box.n)
      assert.equal(2, _G.gil_spec_global)
      _G.gil_spec_global = nil
    end)

    it("sees upvalue changes made after start", function()
      local ev = loom.event()
      local value = "before"
      local t = shared(function()
        assert(H.wait(ev, 5))
        return value
      end):start()
      finally(function() t:join(H.t(5)) end)
      value = "after"
      ev:set()
      assert.equal("after", H.result(t, 5))
    end)

    it("passes every value as it is, coroutines and userdata included", function()
      local co = coroutine.create(function() end)
      local t = shared(function(a, b, c) return a, b, c, select("#", a, b, c) end,
        co, io.stdout, nil):start()
      finally(function() t:join(H.t(5)) end)
      local a, b, c, n = H.result(t, 5)
      assert.equal(co, a)
      assert.equal(io.stdout, b)
      assert.is_nil(c)
      assert.equal(3, n)
    end)

    it("raises when started twice", function()
      local t = shared(function() end):start()
      finally(function() t:join(H.t(5)) end)
      assert.has_error(function() t:start() end, "threads can only be started once")
    end)

    it("is also spelled loom.shared_thread(fn, ...)", function()
      local t = loom.shared_thread(function(a, b) return a + b end, 2, 3):start()
      finally(function() t:join(H.t(5)) end)
      assert.equal(5, H.result(t, 5))
      assert.is_true(t.shared)
    end)
  end)

  describe("fields", function()
    it("has a name, an ident once started, and a daemon flag", function()
      local t = loom.thread{ target = function() return loom.current().name end,
                             name = "worker", daemon = true, shared = true }
      assert.equal("worker", t.name)
      assert.is_nil(t.ident)
      assert.is_true(t.daemon)
      t:start()
      finally(function() t:join(H.t(5)) end)
      assert.equal("worker", H.result(t, 5))
      assert.is_number(t.ident)
      assert.has_error(function() t.daemon = false end,
        "cannot set daemon status of active thread")
      assert.matches("^loom.Thread %(worker, stopped, shared, daemon%)$", tostring(t))
    end)
  end)

  describe(":join()", function()
    it("returns false on timeout and true once done", function()
      local ev = loom.event()
      local t = shared(function() H.wait(ev, 5) end):start()
      finally(function() ev:set(); t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      assert.is_true(t:is_alive())
      ev:set()
      assert.is_true(H.join(t, 5))
      assert.is_false(t:is_alive())
    end)

    it("raises before start and from the thread itself", function()
      local t = shared(function() end)
      assert.has_error(function() H.join(t, 1) end, "cannot join thread before it is started")
      local me
      me = shared(function()
        local ok, err = pcall(function() return H.join(me, 1) end)
        return ok, err
      end)
      me:start()
      finally(function() me:join(H.t(5)) end)
      local ok, err = H.result(me, 5)
      assert.is_false(ok)
      assert.matches("cannot join current thread", err)
    end)
  end)

  describe(":result()", function()
    it("re-raises the thread's error with its traceback", function()
      local t = shared(function() error("boom") end):start()
      finally(function() t:join(H.t(5)) end)
      local ok, err = pcall(t.result, t, H.t(5))
      assert.is_false(ok)
      assert.matches("boom\n%[thread SharedThread%-%d+%] stack traceback:", err)
      local e, tb = t:error()
      assert.matches("boom$", e)
      assert.matches("^stack traceback:", tb)
    end)

    it("keeps a non-string error value as it is", function()
      local obj = { code = 7 }
      local t = shared(function() error(obj) end):start()
      finally(function() t:join(H.t(5)) end)
      local ok, err = pcall(t.result, t, H.t(5))
      assert.is_false(ok)
      assert.equal(obj, err)
    end)

    it("returns fail, 'timeout' while the thread runs", function()
      local ev = loom.event()
      local t = shared(function() H.wait(ev, 5) end):start()
      finally(function() ev:set(); t:join(H.t(5)) end)
      local r, why = t:result(0.05)
      assert.is_nil(r)
      assert.equal("timeout", why)
    end)

    it("runs the thread's <close> handlers when it fails", function()
      local log = {}
      local t = shared(function()
        local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = "closed" end })
        error("late")
      end):start()
      finally(function() t:join(H.t(5)) end)
      assert.has_error(function() H.result(t, 5) end)
      assert.same({ "closed" }, log)
    end)
  end)

  describe(":cancel()", function()
    it("stops a pure-Lua loop", function()
      local t = shared(function() while true do end end):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_true(t:cancel())
      local r, why = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", why)
      assert.is_true(t:cancelled())
    end)

    it("wakes a thread blocked in a loom wait", function()
      local t = shared(function() loom.sleep(30) end):start()
      finally(function() t:join(H.t(5)) end)
      loom.sleep(0.05)
      local t0 = loom.now()
      t:cancel()
      local r, why = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", why)
      H.below(loom.now() - t0, 5, "waking the cancelled thread")
    end)
  end)
end)

describe("the GIL", function()
  it("keeps heavy allocation correct while the collector runs constantly", function()
    local expected = {}
    for i = 1, 4 do expected[i] = build(i, 800) end
    collectgarbage("incremental", 10, 400)
    finally(function() collectgarbage("incremental", 200, 100) end)
    local ts = {}
    for i = 1, 4 do ts[i] = shared(build, i, 800):start() end
    finally(function() for _, t in ipairs(ts) do t:join(H.t(10)) end end)
    for i = 1, 4 do
      local got = H.result(ts[i], 60)
      assert.is_true(got == expected[i], "thread " .. i .. " built a different string")
    end
  end)

  it("loses updates to a shared global without a lock", function()
    _G.gil_counter = 0
    local all = loom.barrier(4)    -- every thread is running before any counts
    local function racy(n)
      H.wait(all, 10)
      for _ = 1, n do
        local v = _G.gil_counter
        loom.sleep(0.001)          -- the GIL goes between read and write
        _G.gil_counter = v + 1
      end
    end
    local ts = {}
    for i = 1, 4 do ts[i] = shared(racy, 50):start() end
    finally(function() for _, t in ipairs(ts) do t:join(H.t(10)) end end)
    for i = 1, 4 do assert.is_true(H.join(ts[i], 30)) end
    assert.is_true(_G.gil_counter < 200)
    _G.gil_counter = nil
  end)

  it("counts exactly with a lock", function()
    _G.gil_counter = 0
    local lock = loom.lock()
    local function safe(n)
      for _ = 1, n do
        local _ <close> = lock:hold()
        local v = _G.gil_counter
        loom.sleep(0.001)
        _G.gil_counter = v + 1
      end
    end
    local ts = {}
    for i = 1, 4 do ts[i] = shared(safe, 50):start() end
    finally(function() for _, t in ipairs(ts) do t:join(H.t(10)) end end)
    for i = 1, 4 do assert.is_true(H.join(ts[i], 30)) end
    assert.equal(200, _G.gil_counter)
    _G.gil_counter = nil
  end)

  it("lets sleeps overlap #latency", function()
    local t0 = loom.now()
    local ts = {}
    for i = 1, 3 do ts[i] = shared(loom.sleep, 0.5):start() end
    finally(function() for _, t in ipairs(ts) do t:join(H.t(5)) end end)
    for i = 1, 3 do H.result(ts[i], 5) end
    H.below(loom.now() - t0, 1.2, "three overlapping 0.5 s sleeps")
  end)

  it("wakes a sleeper within a few switch intervals while another computes #latency", function()
    local stop = false
    local busy = shared(function()
      local x = 0
      while not stop do x = x + 1 end
      return x
    end):start()
    local late = shared(function()
      local worst = 0
      for _ = 1, 5 do
        local t0 = loom.now()
        loom.sleep(0.02)
        worst = math.max(worst, loom.now() - t0 - 0.02)
      end
      return worst
    end):start()
    finally(function() stop = true; busy:join(H.t(5)); late:join(H.t(5)) end)
    local worst = H.result(late, 10)
    stop = true
    assert.is_true(H.result(busy, 5) > 0)
    H.below(worst, 0.5, "the sleeper's worst wake-up delay")
  end)

  it("shares the time between two computing threads #latency", function()
    local counts = {}
    local function work(i)
      local stop = loom.now() + 0.3
      local n = 0
      while loom.now() < stop do n = n + 1 end
      counts[i] = n
    end
    local a, b = shared(work, 1):start(), shared(work, 2):start()
    finally(function() a:join(H.t(5)); b:join(H.t(5)) end)
    H.result(a, 5); H.result(b, 5)
    assert.is_true(counts[1] > 0 and counts[2] > 0)
  end)

  it("switches coroutines made before the first shared thread #latency", function()
    local co = coroutine.create(function()
      spin(0.3)
      return "done"
    end)
    local woke
    local t = shared(function()
      local t0 = loom.now()
      loom.sleep(0.01)
      woke = loom.now() - t0
    end):start()
    finally(function() t:join(H.t(5)) end)
    assert.same({ true, "done" }, { coroutine.resume(co) })
    H.result(t, 5)
    H.below(woke, 0.25, "a 0.01 s sleep")
  end)

  describe("loom.setswitchinterval()", function()
    it("sets and reads the interval", function()
      local old = loom.getswitchinterval()
      assert.equal(0.005, old)
      finally(function() loom.setswitchinterval(old) end)
      loom.setswitchinterval(0.001)
      assert.near(0.001, loom.getswitchinterval(), 1e-12)
    end)

    it("raises on a bad interval", function()
      assert.has_error(function() loom.setswitchinterval(0) end,
        "bad argument #1 to 'setswitchinterval' (switch interval must be positive)")
      assert.has_error(function() loom.setswitchinterval("x") end,
        "bad argument #1 to 'setswitchinterval' (number expected, got string)")
    end)
  end)

  describe("debug.sethook", function()
    it("forwards the user's events and keeps the switching hook #latency", function()
      local ev = loom.event()
      local t = shared(function() H.wait(ev, 5) end):start()
      finally(function() debug.sethook(); ev:set(); t:join(H.t(5)) end)
      local counted = 0
      local function hook(what) if what == "count" then counted = counted + 1 end end
      debug.sethook(hook, "", 100)
      local f, mask, count = debug.gethook()
      assert.equal(hook, f)
      assert.equal("", mask)
      assert.equal(100, count)
      local sleeper = shared(function()
        local t0 = loom.now()
        loom.sleep(0.01)
        return loom.now() - t0
      end):start()
      spin(0.3)
      assert.is_true(counted > 0)
      H.below(H.result(sleeper, 5), 0.25, "a 0.01 s sleep under the user's hook")
      debug.sethook()
      assert.is_nil(debug.gethook())
    end)

    it("gives a shared thread its own line hook", function()
      local t = shared(function()
        local lines = 0
        debug.sethook(function() lines = lines + 1 end, "l")
        local x = 0
        for i = 1, 10 do x = x + i end
        debug.sethook()
        return lines, x
      end):start()
      finally(function() t:join(H.t(5)) end)
      local lines, x = H.result(t, 5)
      assert.equal(55, x)
      assert.is_true(lines >= 10)
    end)
  end)

  it("lets a shared thread wait for a process and a pool #fork #fork_while_threads", function()
    local pool = loom.pool(1)
    finally(function() pool:shutdown() end)
    local t = shared(function()
      local p = loom.process(function() return "child" end):start()
      return H.result(p, 10), H.result(pool:submit(function(a) return a * 2 end, 21), 10)
    end):start()
    finally(function() t:join(H.t(10)) end)
    local child, n = H.result(t, 20)
    assert.equal("child", child)
    assert.equal(42, n)
  end)

  describe("finalizers", function()
    it("run in a shared thread, and a loom wait there keeps the GIL", function()
      local t = shared(function()
        local ran = 0
        for _ = 1, 50 do
          setmetatable({}, { __gc = function() loom.sleep(0); ran = ran + 1 end })
        end
        collectgarbage()
        collectgarbage()
        return ran
      end):start()
      finally(function() t:join(H.t(5)) end)
      assert.equal(50, H.result(t, 10))
    end)
  end)
end)

describe("shutdown with shared threads", function()
  local function run(body)
    local out, ok, code = H.run("local loom = require 'loom'\n" .. body)
    return out, ok, code
  end

  it("ends while shared threads compute", function()
    local out, ok = run([[
      for i = 1, 2 do
        loom.thread{target = function() local x = 0 while true do x = x + 1 end end,
                    shared = true}:start()
      end
      loom.sleep(0.05)
      print("end")
    ]])
    assert.equal("end\n", out)
    assert.is_true(ok)
  end)

  it("ends while shared threads sleep", function()
    local out, ok = run([[
      for i = 1, 3 do
        loom.thread{target = loom.sleep, args = {0.3}, shared = true}:start()
      end
      print("end")
    ]])
    assert.equal("end\n", out)
    assert.is_true(ok)
  end)

  it("ends while shared threads wait on a lock", function()
    local out, ok = run([[
      local lock = loom.lock()
      lock:acquire()
      for i = 1, 3 do
        loom.thread{target = function() lock:acquire() end, shared = true}:start()
      end
      loom.sleep(0.05)
      lock = nil
      collectgarbage()
      print("end")
    ]])
    assert.equal("end\n", out)
    assert.is_true(ok)
  end)

  it("exits from a shared thread with os.exit", function()
    local out, ok, code = run([[
      loom.thread{target = function() local x = 0 while true do x = x + 1 end end,
                  shared = true}:start()
      local t = loom.thread{target = function() print("bye") os.exit(3) end,
                            shared = true}:start()
      H.join(t, 5)
      print("not reached")
    ]])
    assert.equal("bye\n", out)
    assert.is_falsy(ok)
    assert.equal(3, code)
  end)

  it("closes the interpreter from a shared thread with os.exit(code, true)", function()
    local out, ok, code = run([[
      local lock = loom.lock()
      lock:acquire()
      setmetatable({}, {__gc = function() print("closed") end})
      loom.thread{target = function() lock:acquire() end, shared = true}:start()
      loom.thread{target = function() os.exit(0, true) end, shared = true}:start()
      H.acquire(lock, 5)
      print("not reached")
    ]])
    assert.equal("closed\n", out)
    assert.is_true(ok, code)
  end)

  it("reports an error nobody collects", function()
    local out, ok = run([[
      loom.thread{target = function() error("lost") end, shared = true, name = "L"}:start()
      loom.sleep(0.1)
      collectgarbage()
      print("end")
    ]])
    assert.matches("loom: exception in thread L:\n[^\n]*lost\nstack traceback:", out)
    assert.matches("end\n$", out)
    assert.is_true(ok)
  end)
end)
