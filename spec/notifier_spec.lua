-- loom.Notifier: an eventfd that becomes readable when watched objects
-- complete, and drain() listing what did.
local H = require "helpers"
local loom = require "loom"

-- The eventfd's counter, read from /proc: readable exactly when nonzero.
local function count(n)
  local f = assert(io.open("/proc/self/fdinfo/" .. n:fd()))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("eventfd%-count:%s*(%x+)"), 16)
end

-- Waits (scaled) until n's descriptor is readable; fails with a message.
local function readable(n, s)
  local deadline = loom.now() + H.t(s)
  while count(n) == 0 do
    if loom.now() > deadline then
      error(string.format("notifier not readable after %.3g s", H.t(s)), 2)
    end
    loom.sleep(0.002)
  end
  return true
end

-- Drains until `want` tags came, or fails; returns them in order.
local function collect(n, want, s)
  local got = {}
  local deadline = loom.now() + H.t(s)
  while #got < want do
    readable(n, s)
    for _, t in ipairs(n:drain()) do got[#got + 1] = t end
    if #got < want and loom.now() > deadline then
      error(string.format("%d of %d completions after %.3g s", #got, want, H.t(s)), 2)
    end
  end
  return got
end

local function sorted(t)
  table.sort(t, function(a, b) return tostring(a) < tostring(b) end)
  return t
end

describe("loom.Notifier", function()
  it("has a non-blocking close-on-exec descriptor, not readable at first", function()
    local n <close> = loom.notifier()
    assert.is_true(math.type(n:fd()) == "integer" and n:fd() > 2)
    local f = assert(io.open("/proc/self/fdinfo/" .. n:fd()))
    local info = f:read("a")
    f:close()
    local flags = tonumber(info:match("flags:%s*(%d+)"), 8)
    assert.equal(0x800, flags & 0x800)        -- O_NONBLOCK
    assert.equal(0x80000, flags & 0x80000)    -- O_CLOEXEC
    assert.equal(0, count(n))
    assert.same({}, n:drain())
    assert.matches("^loom%.Notifier %(0x%x+, fd %d+%)$", tostring(n))
  end)

  describe(":watch() on futures", function()
    it("becomes readable after a thread-pool task and lists its tag", function()
      local p <close> = loom.pool(2)
      local n <close> = loom.notifier()
      local go = loom.event()
      local f = p:submit(function(e) e:wait(); return 7 end, go)
      n:watch(f, "seven")
      loom.sleep(0.01)
      assert.equal(0, count(n))
      go:set()
      readable(n, 5)
      assert.same({ "seven" }, n:drain())
      assert.equal(0, count(n))
      assert.equal(7, f:result(0))
      assert.same({}, n:drain())
    end)

    it("becomes readable after a process-pool task", function()
      local p <close> = loom.pool { workers = 2, kind = "process" }
      local n <close> = loom.notifier()
      local fs = {}
      for i = 1, 6 do
        fs[i] = p:submit(function(x) return x * x end, i)
        n:watch(fs[i], i)
      end
      local got = sorted(collect(n, 6, 10))
      assert.same({ 1, 2, 3, 4, 5, 6 }, got)
      for i = 1, 6 do assert.equal(i * i, fs[i]:result(0)) end
    end)

    it("tags default to the object, and may be callbacks", function()
      local p <close> = loom.pool(1)
      local n <close> = loom.notifier()
      local f = p:submit(function() return 1 end)
      local g = p:submit(function() return 2 end)
      local seen
      n:watch(f)
      n:watch(g, function() seen = g end)
      local got = collect(n, 2, 5)
      for _, t in ipairs(got) do
        if type(t) == "function" then t() else assert.equal(f, t) end
      end
      assert.equal(g, seen)
    end)

    it("lists a future already finished, failed or cancelled at the next drain", function()
      local p <close> = loom.pool(1)
      local n <close> = loom.notifier()
      local f = p:submit(function() return 1 end)
      H.result(f, 5)
      local bad = p:submit(function() error("no", 0) end)
      assert.has_error(function() H.result(bad, 5) end)
      local go = loom.event()
      p:submit(function(e) e:wait() end, go)
      local c = p:submit(function() end)
      assert.is_true(c:cancel())
      n:watch(f, "done")
      n:watch(bad, "failed")
      n:watch(c, "cancelled")
      assert.same({ "cancelled", "done", "failed" }, sorted(collect(n, 3, 5)))
      go:set()
    end)

    it("lists a process-pool future whose worker died in the middle of it", function()
      local p <close> = loom.pool { workers = 1, kind = "process" }
      local n <close> = loom.notifier()
      local f = p:submit(function() os.exit(7) end)
      n:watch(f, "died")
      assert.same({ "died" }, collect(n, 1, 10))
      assert.matches("exited with code 7", tostring(f:error()))
    end)

    it("lists futures settled by code, and more than one drain's batch", function()
      local n <close> = loom.notifier()
      local fs = {}
      for i = 1, 150 do
        fs[i] = loom.future()
        n:watch(fs[i], i)
      end
      for i = 1, 150 do
        if i % 2 == 0 then fs[i]:set_result(i) else fs[i]:set_error("e" .. i) end
      end
      local got = n:drain()
      table.sort(got)
      assert.equal(150, #got)
      for i = 1, 150 do assert.equal(i, got[i]) end
      assert.same({}, n:drain())
    end)

    it("ends a future's watch once it is listed", function()
      local p <close> = loom.pool(1)
      local n <close> = loom.notifier()
      local f = p:submit(function() return 1 end)
      n:watch(f, "f")
      assert.same({ "f" }, collect(n, 1, 5))
      assert.equal(0, n:unwatch(f))
    end)
  end)

  describe(":watch() on events and queues", function()
    it("lists an event each time it is set, until unwatched", function()
      local n <close> = loom.notifier()
      local e = loom.event()
      n:watch(e, "e")
      assert.same({}, n:drain())
      e:set()
      assert.same({ "e" }, collect(n, 1, 5))
      e:clear()
      loom.thread(function(ev) ev:set() end, e):start():join()
      assert.same({ "e" }, collect(n, 1, 5))
      assert.equal(1, n:unwatch(e))
      e:clear()
      e:set()
      assert.same({}, n:drain())
    end)

    it("ends one watch by the id watch() returned", function()
      local n <close> = loom.notifier()
      local e = loom.event()
      local a = n:watch(e, "a")
      local b = n:watch(e, "b")
      assert.is_true(math.type(a) == "integer" and b ~= a)
      assert.equal(1, n:unwatch(a))
      assert.equal(0, n:unwatch(a))
      e:set()
      assert.same({ "b" }, collect(n, 1, 5))
      assert.has_error(function() n:unwatch(-1) end, "bad argument #1 to 'unwatch' (no such watch)")
      assert.has_error(function() n:unwatch(2^40) end, "bad argument #1 to 'unwatch' (no such watch)")
      assert.has_error(function() n:unwatch(1.5) end)
    end)

    it("lists a queue once however many items came, and again after a drain", function()
      local n <close> = loom.notifier()
      local q = loom.queue()
      n:watch(q, "q")
      for i = 1, 10 do q:put(i) end
      assert.same({ "q" }, n:drain())
      assert.same({}, n:drain())
      q:put(11)
      assert.same({ "q" }, collect(n, 1, 5))
      q:close()
      assert.same({ "q" }, collect(n, 1, 5))
      assert.equal(1, n:unwatch(q))
    end)

    it("lists a queue that already holds an item, and items put by a process", function()
      local n <close> = loom.notifier()
      local q = loom.queue()
      q:put(0)
      n:watch(q, "q")
      assert.same({ "q" }, n:drain())
      local pr = loom.process(function(qq) qq:put(1) end, q):start()
      H.join(pr, 10)
      assert.same({ "q" }, collect(n, 1, 5))
    end)
  end)

  describe(":watch() on processes", function()
    it("lists a process once it has ended, however it ended", function()
      local n <close> = loom.notifier()
      local ok = loom.process(function() loom.sleep(0.05) end):start()
      local code = loom.process(function() loom.sleep(0.05); os.exit(3) end):start()
      local killed = loom.process(function() loom.sleep(60) end):start()
      n:watch(ok, "ok")
      n:watch(code, "code")
      n:watch(killed, "killed")
      assert.same({ "code", "ok" }, sorted(collect(n, 2, 10)))
      assert.equal(0, ok.exitcode)
      assert.equal(3, code.exitcode)
      killed:kill()
      assert.same({ "killed" }, collect(n, 1, 10))
      assert.equal(-9, killed.exitcode)
      assert.same({}, n:drain())
    end)

    it("lists a process that had ended already at the next drain", function()
      local n <close> = loom.notifier()
      local p = loom.process(function() end):start()
      H.join(p, 10)
      n:watch(p, "p")
      assert.same({ "p" }, n:drain())
    end)

    it("refuses a process not started", function()
      local n <close> = loom.notifier()
      assert.has_error(function() n:watch(loom.process(function() end)) end,
        "bad argument #1 to 'watch' (can only watch a started child process)")
    end)

    it("a process watch ended by unwatch or close leaves the process to join", function()
      local p = loom.process(function() loom.sleep(0.1); os.exit(4) end):start()
      do
        local n <close> = loom.notifier()
        local id = n:watch(p)
        assert.equal(1, n:unwatch(id))
        n:watch(p)
      end
      H.join(p, 10)
      assert.equal(4, p.exitcode)
    end)
  end)

  describe(":close()", function()
    it("is idempotent, and closes the descriptor", function()
      local n = loom.notifier()
      local fd = n:fd()
      assert.is_false(n:closed())
      n:close()
      n:close()
      assert.is_true(n:closed())
      assert.is_nil(io.open("/proc/self/fdinfo/" .. fd))
      assert.matches("^loom%.Notifier %(0x%x+, closed%)$", tostring(n))
      assert.has_error(function() n:drain() end, "attempt to use a closed loom.Notifier")
      assert.has_error(function() n:fd() end, "attempt to use a closed loom.Notifier")
    end)

    it("detaches what is still watched; the objects complete as usual", function()
      local p <close> = loom.pool(1)
      local go, e, q = loom.event(), loom.event(), loom.queue()
      local f = p:submit(function(ev) ev:wait(); return 3 end, go)
      do
        local n <close> = loom.notifier()
        n:watch(f)
        n:watch(e)
        n:watch(q)
      end
      go:set()
      e:set()
      q:put(1)
      assert.equal(3, H.result(f, 5))
      assert.equal(1, q:get(0))
    end)

    it("a collected notifier detaches its watches and gives its descriptor back", function()
      local p <close> = loom.pool(1)
      local go = loom.event()
      local f = p:submit(function(ev) ev:wait(); return 4 end, go)
      local q = loom.queue()
      local fd
      do
        local n = loom.notifier()
        fd = n:fd()
        n:watch(f, {})
        n:watch(q)
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(io.open("/proc/self/fdinfo/" .. fd))
      go:set()
      q:put(1)
      assert.equal(4, H.result(f, 5))
    end)

    it("many notifiers made and dropped leave no descriptor or thread behind", function()
      local function fds()
        local k = 0
        for _ in io.popen("ls /proc/self/fd"):lines() do k = k + 1 end
        return k
      end
      local function threads()
        local f = assert(io.open("/proc/self/status"))
        local n = tonumber(f:read("a"):match("Threads:%s*(%d+)"))
        f:close()
        return n
      end
      local e = loom.event()
      local before, tbefore = fds(), threads()
      for _ = 1, 50 do
        local n = loom.notifier()
        n:watch(e)
      end
      collectgarbage()
      collectgarbage()
      assert.equal(before, fds())
      assert.equal(tbefore, threads())
    end)
  end)

  describe("bad input", function()
    it("names the argument", function()
      local n <close> = loom.notifier()
      assert.has_error(function() n:watch(42) end,
        "bad argument #1 to 'watch' (loom.Future, loom.Event, loom.Queue or loom.Process expected, got number)")
      assert.has_error(function() n:watch(loom.lock()) end,
        "bad argument #1 to 'watch' (loom.Future, loom.Event, loom.Queue or loom.Process expected, got loom.Lock)")
      assert.has_error(function() n:unwatch() end,
        "bad argument #1 to 'unwatch' (loom.Future, loom.Event, loom.Queue or loom.Process expected, got no value)")
      local e = loom.event()
      getmetatable(e).__close(e)
      assert.has_error(function() n:watch(e) end,
        "bad argument #1 to 'watch' (closed object)")
      assert.has_error(function() n.drain({}) end,
        "bad argument #1 to 'drain' (loom.Notifier expected, got table)")
      assert.has_error(function() getmetatable(n).__index.fd(loom.event()) end,
        "bad argument #1 to 'fd' (loom.Notifier expected, got loom.Event)")
    end)

    it("cannot travel to another thread or process", function()
      local n <close> = loom.notifier()
      assert.has_error(function() loom.queue():put(n) end)
    end)

    it("refuses to work in a forked child, which may still close its copy", function()
      local n <close> = loom.notifier()
      local e = loom.event()
      local pr = loom.process(function(nn, ev)
        local ok, err = pcall(nn.watch, nn, ev)
        assert(not ok and err:match("loom.Notifier used in a process other than the one that made it"), err)
        assert(not pcall(nn.drain, nn))
        nn:close()
        assert(nn:closed())
      end, n, e):start()
      H.join(pr, 10)
      assert.equal(0, pr.exitcode)
      n:watch(e, "e")
      e:set()
      assert.same({ "e" }, collect(n, 1, 5))
    end)
  end)
end)
