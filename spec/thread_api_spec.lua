-- The threading module's odds and ends: status fields, enumerate,
-- active_count, main_thread, get_ident, get_native_id, stack_size,
-- TIMEOUT_MAX, loom.timer and loom.local.
local H = require "helpers"
local loom = require "loom"

describe("status", function()
  it("follows an isolated thread: pending, running, done", function()
    local ev = loom.event()
    local t = loom.thread(function(e) e:wait(5) end, ev)
    assert.equal("pending", t.status)
    t:start()
    assert.equal("running", t.status)
    ev:set()
    H.join(t, 5)
    assert.equal("done", t.status)
  end)

  it("is 'error' for a failed thread and 'cancelled' for a cancelled one", function()
    local t = loom.thread(function() error("no", 0) end):start()
    H.join(t, 5)
    assert.equal("error", t.status)
    t:error()
    local c = loom.thread(function() while true do end end):start()
    c:cancel()
    H.join(c, 5)
    assert.equal("cancelled", c.status)
  end)

  it("is 'running' for the main thread", function()
    assert.equal("running", loom.current().status)
    assert.equal("running", loom.main_thread().status)
  end)

  it("follows a shared thread", function()
    local ev = loom.event()
    local t = loom.shared_thread(function() ev:wait(5) end)
    assert.equal("pending", t.status)
    t:start()
    assert.equal("running", t.status)
    ev:set()
    H.join(t, 5)
    assert.equal("done", t.status)
    local f = loom.shared_thread(function() error("x", 0) end):start()
    H.join(f, 5)
    assert.equal("error", f.status)
    f:error()
    local c = loom.shared_thread(function() while true do end end):start()
    c:cancel()
    H.join(c, 5)
    assert.equal("cancelled", c.status)
  end)

  it("follows a process #fork", function()
    local ev = loom.event()
    local p = loom.process(function(e) e:wait(5) end, ev)
    assert.equal("pending", p.status)
    p:start()
    assert.equal("running", p.status)
    ev:set()
    H.join(p, 10)
    assert.equal("done", p.status)
    local bad = loom.process(function() error("child", 0) end):start()
    H.join(bad, 10)
    assert.equal("error", bad.status)
    bad:error()
    local code = loom.process(function() os.exit(3) end):start()
    H.join(code, 10)
    assert.equal("error", code.status)
    local killed = loom.process(function() require("loom").sleep(30) end):start()
    killed:kill()
    H.join(killed, 10)
    assert.equal("error", killed.status)
  end)

  it("is read through the shared heap by a forked child #fork", function()
    local ev = loom.event()
    local t = loom.thread(function(e) e:wait(5) end, ev):start()
    local p = loom.process(function(th, e)
      local before = th.status
      e:set()
      th:join(5)
      return before, th.status
    end, t, ev):start()
    local before, after = H.result(p, 10)
    assert.equal("running", before)
    assert.equal("done", after)
    assert.equal("done", t.status)
  end)

  it("is read-only", function()
    local t = loom.thread(print)
    assert.has_error(function() t.status = "done" end,
      "cannot set field 'status' of a loom.Thread")
  end)
end)

describe("enumerate, active_count, main_thread, get_ident, get_native_id", function()
  it("lists the main thread first, then the running threads, oldest first", function()
    local base = loom.active_count()
    assert.equal(base, #loom.enumerate())
    assert.equal("MainThread", loom.enumerate()[1].name)
    local ev = loom.event()
    local a = loom.thread{ name = "enum-a", target = function(e) e:wait(5) end, args = { ev } }:start()
    local b = loom.shared_thread{ name = "enum-b", target = function() ev:wait(5) end }:start()
    local list = loom.enumerate()
    assert.equal(base + 2, #list)
    assert.equal(base + 2, loom.active_count())
    assert.equal("enum-a", list[#list - 1].name)
    assert.equal("enum-b", list[#list].name)
    assert.equal(a.ident, list[#list - 1].ident)
    assert.equal(b.ident, list[#list].ident)
    ev:set()
    H.join(a, 5)
    H.join(b, 5)
    assert.equal(base, loom.active_count())
  end)

  it("counts a thread from start() on, and not a thread not started", function()
    local base = loom.active_count()
    local ev = loom.event()
    local t = loom.thread(function(e) e:wait(5) end, ev)
    assert.equal(base, loom.active_count())
    t:start()
    assert.equal(base + 1, loom.active_count())
    ev:set()
    H.join(t, 5)
    assert.equal(base, loom.active_count())
  end)

  it("is the same list seen from inside a thread", function()
    local t = loom.thread{ name = "inside", target = function()
      local l = require "loom"
      local names = {}
      for i, th in ipairs(l.enumerate()) do names[i] = th.name end
      return l.active_count(), table.concat(names, ","), l.main_thread().name,
        l.main_thread().is_alive(l.main_thread())
    end }:start()
    local n, names, main, alive = H.result(t, 5)
    assert.is_true(n >= 2)
    assert.matches("^MainThread,.*inside", names)
    assert.equal("MainThread", main)
    assert.is_true(alive)
  end)

  it("main_thread is current() on the main thread, and names the same thread elsewhere", function()
    assert.equal(loom.current(), loom.main_thread())
    local ident, native = loom.get_ident(), loom.get_native_id()
    assert.equal(loom.current().ident, ident)
    assert.equal(loom.current().native_id, native)
    local t = loom.thread(function()
      local l = require "loom"
      local m = l.main_thread()
      return m.ident, m.native_id, l.get_ident(), l.get_native_id(),
        l.current().ident, l.current().native_id
    end):start()
    local mi, mn, ti, tn, ci, cn = H.result(t, 5)
    assert.equal(ident, mi)
    assert.equal(native, mn)
    assert.not_equal(ident, ti)
    assert.not_equal(native, tn)
    assert.equal(ci, ti)
    assert.equal(cn, tn)
    assert.has_error(function() loom.main_thread():join() end, "cannot join the main thread")
  end)

  it("gives a shared thread its own ident and native id", function()
    local t = loom.shared_thread(function()
      return loom.get_ident(), loom.get_native_id(), loom.current().ident
    end):start()
    local i, n, c = H.result(t, 5)
    assert.not_equal(loom.get_ident(), i)
    assert.not_equal(loom.get_native_id(), n)
    assert.equal(c, i)
  end)

  it("starts empty in a forked child, whose main thread is the forking one #fork", function()
    local ev = loom.event()
    local t = loom.thread(function(e) e:wait(5) end, ev):start()
    local p = loom.process(function()
      local l = require "loom"
      return l.active_count(), l.main_thread().native_id == l.get_native_id(),
        l.get_native_id()
    end):start()
    local n, same, native = H.result(p, 10)
    assert.equal(1, n)
    assert.is_true(same)
    assert.equal(p.pid, native)
    ev:set()
    H.join(t, 5)
  end)
end)

describe("loom.stack_size([n])", function()
  after_each(function() loom.stack_size(0) end)

  it("returns the previous value, 0 for the default", function()
    assert.equal(0, loom.stack_size())
    assert.equal(0, loom.stack_size(4 * 2^20))
    assert.equal(4 * 2^20, loom.stack_size())
    assert.equal(4 * 2^20, loom.stack_size(0))
    assert.equal(0, loom.stack_size())
  end)

  it("checks its bounds", function()
    assert.has_error(function() loom.stack_size(-1) end,
      "bad argument #1 to 'stack_size' (size must be non-negative)")
    assert.has_error(function() loom.stack_size(4096) end,
      "bad argument #1 to 'stack_size' (size too small (at least 512 KiB))")
    assert.has_error(function() loom.stack_size(2^30 + 1) end,
      "bad argument #1 to 'stack_size' (size too large (at most 1 GiB))")
    assert.has_error(function() loom.stack_size(math.maxinteger) end,
      "bad argument #1 to 'stack_size' (size too large (at most 1 GiB))")
    assert.has_error(function() loom.stack_size(math.mininteger) end,
      "bad argument #1 to 'stack_size' (size must be non-negative)")
    assert.has_error(function() loom.stack_size(2^63) end,
      "bad argument #1 to 'stack_size' (number has no integer representation)")
    assert.has_error(function() loom.stack_size(1.5) end,
      "bad argument #1 to 'stack_size' (number has no integer representation)")
    assert.has_error(function() loom.stack_size("big") end)
    assert.equal(0, loom.stack_size())
  end)

  it("gives threads made afterwards a stack of that size", function()
    local size = 768 * 2^20
    loom.stack_size(size)
    local ev = loom.event()
    local t = loom.thread(function(e) e:wait(5) end, ev):start()
    local s = loom.shared_thread(function() ev:wait(5) end):start()
    local maps = assert(io.open("/proc/self/maps")):read("a")
    local found = 0
    for lo, hi in maps:gmatch("(%x+)%-(%x+)") do
      local len = tonumber(hi, 16) - tonumber(lo, 16)
      if len >= size and len <= size + 2^20 then found = found + 1 end
    end
    ev:set()
    H.join(t, 5)
    H.join(s, 5)
    assert.is_true(found >= 2, "found " .. found .. " stacks of 768 MiB")
  end)

  it("is enough at its smallest for a Lua thread's deepest C recursion", function()
    -- TSan's instrumented frames take about three times the stack: under
    -- it the smallest size is not enough, by design of the checker
    local tsan = os.getenv("LOOM_SPEC_SLOWDOWN") == "5"
    loom.stack_size(tsan and 2 * 2^20 or 512 * 1024)
    local function deep()
      local function f(n)
        if n == 0 then return 0 end
        local r
        string.gsub("a", "a", function() r = f(n - 1) end)
        return r
      end
      local mt = {}
      mt.__tostring = function(o)
        if o.n == 0 then return "0" end
        return string.format("%s|", setmetatable({ n = o.n - 1 }, mt))
      end
      return (pcall(f, 1000)), (pcall(tostring, setmetatable({ n = 1000 }, mt)))
    end
    assert.same({ false, false }, { H.result(loom.thread(deep):start(), 10) })
    assert.same({ false, false }, { H.result(loom.shared_thread(deep):start(), 10) })
    local pool <close> = loom.pool(1)
    assert.same({ false, false }, { H.result(pool:submit(deep), 10) })
  end)
end)

describe("loom.TIMEOUT_MAX", function()
  it("is a number; a longer timeout waits forever rather than overflowing", function()
    assert.equal(1000000000, loom.TIMEOUT_MAX)
    local ev = loom.event()
    local t = loom.thread(function(e, m)
      return e:wait(m * 1000), e:wait(math.huge)
    end, ev, loom.TIMEOUT_MAX):start()
    loom.sleep(0.05)
    assert.is_true(t:is_alive())   -- neither wait returned at once
    ev:set()
    local a, b = H.result(t, 5)
    assert.is_true(a)
    assert.is_true(b)
    assert.is_false(loom.event():wait(0))
  end)

  it("keeps a sleep past it cancellable", function()
    local t = loom.thread(function() require("loom").sleep(math.huge) end):start()
    loom.sleep(0.02)
    t:cancel()
    local v, err = H.result(t, 5)
    assert.is_nil(v)
    assert.equal("cancelled", err)
  end)
end)

describe("loom.timer(interval, fn, ...)", function()
  it("runs fn(...) in a new thread after the interval", function()
    local t0 = loom.now()
    local t = loom.timer(0.05, function(a, b) return a + b, require("loom").now() end, 1, 2)
    assert.equal("pending", t.status)
    assert.matches("^loom%.Timer %(Thread%-%d+, initial%)$", tostring(t))
    assert.equal(t, t:start())
    local sum, at = H.result(t, 5)
    assert.equal(3, sum)
    assert.is_true(at - t0 >= 0.05)
    assert.equal("done", t.status)
  end)

  it("cancel() before it fires means fn never runs", function()
    local ran = loom.value("int64", 0)
    local t = loom.timer(0.1, function(v) v.value = 1 end, ran):start()
    assert.is_true(t:cancel())
    assert.is_false(t:cancel())
    H.join(t, 5)
    assert.equal("cancelled", t.status)
    loom.sleep(0.15)
    assert.equal(0, ran.value)
  end)

  it("cancel() before start means it never runs", function()
    local ran = loom.value("int64", 0)
    local t = loom.timer(0, function(v) v.value = 1 end, ran)
    assert.is_true(t:cancel())
    t:start()
    H.join(t, 5)
    assert.equal(0, ran.value)
  end)

  it("cancel() once fn runs returns false and does not stop it", function()
    local started = loom.event()
    local t = loom.timer(0, function(e)
      e:set()
      require("loom").sleep(0.05)
      return "finished"
    end, started):start()
    H.wait(started, 5)
    assert.is_false(t:cancel())
    assert.equal("finished", H.result(t, 5))
  end)

  it("has the thread's fields and errors", function()
    local t = loom.timer(0, function() error("tick", 0) end)
    t.name = "ticker"
    assert.equal("ticker", t.name)
    t.daemon = true
    assert.is_true(t.daemon)
    assert.has_error(function() t.interval2 = 1 end, "cannot set field 'interval2' of a loom.Timer")
    t:start()
    local ok, err = pcall(t.result, t, H.t(5))
    assert.is_false(ok)
    assert.matches("^tick\n%[thread ticker%]", err)
    assert.is_false(t:is_alive())
    assert.equal("tick", (t:error()))
  end)

  it("works in a forked child, and can be cancelled from another process #fork", function()
    local p = loom.process(function()
      local l = require "loom"
      local t = l.timer(0.01, function() return "child timer" end):start()
      return t:result(5)
    end):start()
    assert.equal("child timer", H.result(p, 10))
    local ran = loom.value("int64", 0)
    local t = loom.timer(0.2, function(v) v.value = 1 end, ran):start()
    local q = loom.process(function(tm) return tm:cancel() end, t):start()
    assert.is_true(H.result(q, 10))
    H.join(t, 5)
    assert.equal(0, ran.value)
    assert.equal("cancelled", t.status)
  end)

  it("checks its arguments", function()
    assert.has_error(function() loom.timer(-1, print) end,
      "bad argument #1 to 'timer' (interval must be non-negative)")
    assert.has_error(function() loom.timer("1", print) end,
      "bad argument #1 to 'timer' (number expected, got string)")
    assert.has_error(function() loom.timer(0 / 0, print) end,
      "bad argument #1 to 'timer' (number expected, got number)")
    assert.has_error(function() loom.timer(1, 1) end,
      "bad argument #2 to 'timer' (function expected, got number)")
  end)
end)

describe("loom.local()", function()
  it("gives each shared thread its own fields", function()
    local data = loom["local"]()
    assert.equal(loom.thread_local, loom["local"])
    data.x = "main"
    local ts = {}
    for i = 1, 3 do
      ts[i] = loom.shared_thread(function()
        local before = data.x
        data.x = i
        loom.sleep(0.02)
        local inner = coroutine.wrap(function() return data.x end)()
        return before, data.x, inner
      end):start()
    end
    for i = 1, 3 do
      local before, x, inner = H.result(ts[i], 5)
      assert.is_nil(before)
      assert.equal(i, x)
      assert.equal(i, inner)
    end
    assert.equal("main", data.x)
  end)

  it("iterates this thread's fields with pairs", function()
    local data = loom.thread_local()
    data.a, data.b = 1, 2
    local seen = {}
    for k, v in pairs(data) do seen[k] = v end
    assert.same({ a = 1, b = 2 }, seen)
    local t = loom.shared_thread(function()
      local n = 0
      for _ in pairs(data) do n = n + 1 end
      return n
    end):start()
    assert.equal(0, H.result(t, 5))
  end)

  it("refuses a nil key, travelling, and a wrong self", function()
    local data = loom.thread_local()
    assert.has_error(function() data[nil] = 1 end)
    assert.has_error(function() loom.thread(function(d) return d end, data):start() end,
      "cannot transfer args[1]: userdata (loom.Local)")
    local mt = getmetatable(data)
    assert.has_error(function() mt.__index(io.stdout, "x") end)
    assert.has_error(function() mt.__index(loom.lock(), "x") end)
    assert.matches("^loom%.Local %(0x%x+%)$", tostring(data))
  end)
end)
