-- Semantics: results that must never be silently wrong, and promises the
-- docs/api.md makes about cancellation, barriers, queues and thread handles.
local loom = require "loom"
local H = require "helpers"


describe("pool:map", function()
  -- A future that times out in result() and is done by the time map looks
  -- at done(): the race the timeout path used to lose, made deterministic.
  local function late_future(outcome)
    local calls = 0
    return {
      result = function(_, t)
        calls = calls + 1
        if calls == 1 then
          assert(t ~= nil)
          return nil, "timeout"
        end
        assert(t == 0, "a done future is read without waiting")
        if outcome.error then error(outcome.error, 0) end
        return outcome.value
      end,
      done = function() return calls >= 1 end,
      cancelled = function() return false end,
      cancel = function() return false end,
    }
  end

  it("reads a future's real outcome when it finishes just after the wait timed out", function()
    local map = require("loom.pool").map
    local fake = { submit = function(_, _, x) return late_future{ value = x * 2 } end }
    local r = map(fake, function() end, { 1, 2, 3 }, { timeout = 10 })
    assert.same({ 2, 4, 6, n = 3 }, r)
  end)

  it("raises the error of a task that failed just after the wait timed out", function()
    local map = require("loom.pool").map
    local fake = { submit = function() return late_future{ error = "late boom" } end }
    assert.has_error(function()
      map(fake, function() end, { 1 }, { timeout = 10 })
    end, "late boom")
  end)

  it("keeps a nil result that a task really returned", function()
    local pool <close> = loom.pool{ workers = 2 }
    local r = pool:map(function(x) if x % 2 == 0 then return x end end,
                       { 1, 2, 3, 4 }, { timeout = H.t(30) })
    assert.same({ nil, 2, nil, 4, n = 4 }, r)
  end)

  it("never returns nil for a task that succeeded, however close to the deadline", function()
    local pool <close> = loom.pool{ workers = 2 }
    for _ = 1, 300 do
      local r, err = pool:map(function(x) return x end, { 1, 2, 3, 4 }, { timeout = 0.0005 })
      if r then
        for i = 1, 4 do assert.equal(i, r[i]) end
      else
        assert.equal("timeout", err)
      end
    end
  end)
end)

describe("cancel()", function()
  local function joined(t)
    assert(t:join(H.t(10)), "the cancelled thread did not end")
  end

  it("runs a pending <close> of a sleeping thread", function()
    local ran = loom.value("bool", false, false)
    local t = loom.thread(function()
      local g <close> = setmetatable({}, { __close = function() ran.value = true end })
      loom.sleep(100)
    end):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    assert.is_true(ran.value)
    assert.same({ nil, "cancelled" }, { t:result() })
  end)

  it("runs a pending <close> of a thread blocked on a lock", function()
    local ran = loom.value("bool", false, false)
    local lock = loom.lock()
    lock:acquire()
    local t = loom.thread(function(l, flag)
      local g <close> = setmetatable({}, { __close = function() flag.value = true end })
      l:acquire()
    end, lock, ran):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    lock:release()
    assert.is_true(ran.value)
  end)

  it("runs every pending <close> of a spinning thread, in order, each to its end", function()
    local log = loom.array("int32", 3)
    local n = loom.value("int32", 0)
    local t = loom.thread(function(a, c)
      local function mk(i)
        return setmetatable({}, { __close = function()
          local x = 0
          for k = 1, 200000 do x = x + k end   -- long enough for many hooks
          c.value = c.value + 1
          a[c.value] = i
        end })
      end
      local _1 <close> = mk(1)
      local _2 <close> = mk(2)
      local _3 <close> = mk(3)
      while true do end
    end, log, n):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    assert.equal(3, n.value)
    assert.same({ 3, 2, 1 }, { log[1], log[2], log[3] })
  end)

  it("lets a <close> handler of the unwinding block and take locks", function()
    local lock = loom.lock()
    local ok = loom.value("bool", false, false)
    local t = loom.thread(function(l, flag)
      local g <close> = setmetatable({}, { __close = function()
        loom.sleep(0.01)
        l:acquire()
        l:release()
        flag.value = true
      end })
      while true do end
    end, lock, ok):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    assert.is_true(ok.value)
    assert.equal("cancelled", t:error())
  end)

  it("still stops a thread that catches the cancellation with pcall", function()
    local t = loom.thread(function()
      while true do pcall(function() while true do end end) end
    end):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    assert.equal("cancelled", t:error())
  end)

  it("reaches a loop inside coroutine.wrap, and runs the coroutine's <close>", function()
    local inner, outer = loom.value("bool", false, false), loom.value("bool", false, false)
    local t = loom.thread(function(i, o)
      local g <close> = setmetatable({}, { __close = function() o.value = true end })
      coroutine.wrap(function()
        local g2 <close> = setmetatable({}, { __close = function() i.value = true end })
        while true do end
      end)()
    end, inner, outer):start()
    loom.sleep(0.05)
    assert.is_true(t:cancel())
    joined(t)
    assert.is_true(inner.value)
    assert.is_true(outer.value)
  end)

  it("reaches a loop inside coroutine.resume, nested, and keeps the thread from going on", function()
    local after = loom.value("bool", false, false)
    local t = loom.thread(function(a)
      local co = coroutine.create(function()
        coroutine.resume(coroutine.create(function() while true do end end))
        while true do end
      end)
      coroutine.resume(co)
      a.value = true
    end, after):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    assert.is_false(after.value)
    assert.equal("cancelled", t:error())
  end)

  it("reaches a coroutine made before cancel() and resumed after", function()
    local t = loom.thread(function()
      local co = coroutine.wrap(function() while true do coroutine.yield() end end)
      co()
      while true do co() end
    end):start()
    loom.sleep(0.05)
    t:cancel()
    joined(t)
    assert.equal("cancelled", t:error())
  end)

  it("leaves coroutines in a loom thread working as the standard ones do", function()
    local function body()
      local gen = coroutine.wrap(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
      local r = { gen(1), gen(5) }
      local ok, err = pcall(gen)
      r[#r + 1] = ok
      r[#r + 1] = err
      local co = coroutine.create(function() error({ code = 7 }) end)
      local ok2, e2 = coroutine.resume(co)
      r[#r + 1] = ok2
      r[#r + 1] = e2.code
      r[#r + 1] = select(2, coroutine.resume(co))
      r[#r + 1] = select(2, coroutine.resume(coroutine.running()))
      local ok3, e3 = pcall(coroutine.wrap(function() error("inner") end))
      r[#r + 1] = ok3
      r[#r + 1] = e3
      local ok4, e4 = pcall(coroutine.resume, 42)
      r[#r + 1] = ok4
      r[#r + 1] = e4
      local closed = {}
      pcall(coroutine.wrap(function()
        local g <close> = setmetatable({}, { __close = function(_, e) closed[1] = e end })
        error("x", 0)
      end))
      r[#r + 1] = closed[1]
      return r
    end
    local t = loom.thread(body):start()
    local r = t:result(H.t(10))
    -- the same as the standard library gives, but for the error of a
    -- resume of no coroutine, which loom.gil's resume (installed here once
    -- a shared thread was made) raises from its own position
    local ref = body()
    assert.matches("bad argument #1 to '[%w.]*resume' %(thread expected, got number%)$", r[12])
    r[12], ref[12] = nil, nil
    assert.same(ref, r)
    assert.same({ 2, 10, false, "cannot resume dead coroutine", false, 7,
                  "cannot resume dead coroutine", "cannot resume non-suspended coroutine",
                  false }, { table.unpack(r, 1, 9) })
    assert.equal("x", r[13])
    assert.matches(": inner$", r[10])
  end)

  describe("on a shared thread", function()
    it("runs every pending <close> to its end, spinning or sleeping", function()
      for _, body in ipairs{ function() while true do end end, function() loom.sleep(100) end } do
        local n = 0
        local t = loom.thread{ shared = true, target = function()
          local function mk(i)
            return setmetatable({}, { __close = function()
              for _ = 1, 100000 do end
              n = n + i
            end })
          end
          local _1 <close> = mk(1)
          local _2 <close> = mk(2)
          body()
        end }:start()
        loom.sleep(0.05)
        t:cancel()
        joined(t)
        assert.equal(3, n)
      end
    end)
  end)
end)

describe("thread handles", function()
  it("have ident and native_id as soon as start() returns", function()
    for _ = 1, 200 do
      local t = loom.thread(function() end)
      t:start()
      assert.is_number(t.ident)
      assert.is_number(t.native_id)
      assert(t:join(H.t(10)), "thread did not end")
    end
  end)

  it("report both errors when the excepthook itself fails, then fall back to the default", function()
    local out = H.run([[
      local loom = require "loom"
      loom.excepthook(function(info) error("the hook broke") end)
      local t = loom.thread(function() error("the thread broke") end):start()
      t:join()
      t = nil
      collectgarbage(); collectgarbage()
      io.stderr:write("end\n")
    ]])
    assert.matches("loom: exception in loom.excepthook:\n[^\n]*: the hook broke\nstack traceback:", out)
    assert.matches("loom: exception in thread Thread%-%d+:\n[^\n]*: the thread broke\nstack traceback:", out)
    assert.matches("end\n$", out)
    assert.is_true(out:find("the hook broke", 1, true) < out:find("the thread broke", 1, true))
  end)
end)

describe("loom.current().name", function()
  it("names a thread pool's worker as its tracebacks do", function()
    local pool <close> = loom.pool(1)
    local name = pool:submit(function() return require("loom").current().name end):result(H.t(10))
    assert.matches("^Pool%-%d+%-worker%-1$", name)
    local ok, err = pcall(function()
      pool:submit(function() error("x") end):result(H.t(10))
    end)
    assert.is_false(ok)
    assert.matches("%[thread " .. name:gsub("%-", "%%-") .. "%]", err)
  end)

  it("names a process pool's worker as its tracebacks do", function()
    local pool <close> = loom.pool{ kind = "process", workers = 1 }
    local name = pool:submit(function() return require("loom").current().name end):result(H.t(10))
    assert.matches("^Pool%-%d+%-worker%-1$", name)
    local ok, err = pcall(function()
      pool:submit(function() error("x") end):result(H.t(10))
    end)
    assert.is_false(ok)
    assert.matches("%[process " .. name:gsub("%-", "%%-") .. "%]", err)
  end)

  it("keeps the forking thread's name in a forked child", function()
    local t = loom.thread{ name = "forker", target = function()
      local l = require "loom"
      return H.result(l.process(function() return l.current().name end):start(), 30)
    end }:start()
    assert.equal("forker", t:result(H.t(30)))
    assert.equal("MainThread",
      loom.process(function() return loom.current().name end):start():result(H.t(30)))
  end)
end)

describe("loom.Barrier", function()
  -- n - 1 threads wait; the last party trips the barrier and comes straight
  -- back (late) while they are still leaving.  Returns how many of the
  -- parties that passed saw the barrier broken anyway.
  local function trip_and_return(late)
    local N, broke = 6, 0
    for _ = 1, 60 do
      local b = loom.barrier(N)
      local ts = {}
      for k = 1, N - 1 do
        ts[k] = loom.thread(function(bb) return pcall(bb.wait, bb) end, b):start()
      end
      local deadline = loom.now() + H.t(10)
      while b.n_waiting < N - 1 do
        assert(loom.now() < deadline, "the parties did not arrive")
        loom.sleep(0.0005)
      end
      late(b)
      for k = 1, N - 1 do
        local ok = ts[k]:result(H.t(10))
        if not ok then broke = broke + 1 end
      end
    end
    return broke
  end

  it("never breaks a generation that tripped for a late caller's timeout", function()
    assert.equal(0, trip_and_return(function(b)
      b:wait()
      assert.is_false(pcall(b.wait, b, 0))   -- times out in the next generation
    end))
  end)

  it("lets a cancelled late caller fail alone", function()
    assert.equal(0, trip_and_return(function(b)
      local c = loom.thread(function(bb)
        bb:wait()
        require("loom").current():cancel()
        bb:wait()
      end, b):start()
      assert(c:join(H.t(10)), "the cancelled caller did not end")
      assert.equal("cancelled", c:error())
    end))
  end)
end)

describe("loom.Queue:get()", function()
  it("says an item it cannot decode was removed, and frees it", function()
    local q = loom.queue()
    package.preload["semantics_only_here"] = function() return { x = 1 } end
    local m = require "semantics_only_here"
    finally(function()
      package.loaded["semantics_only_here"] = nil
      package.preload["semantics_only_here"] = nil
    end)
    for _ = 1, 50 do q:put({ m, ("x"):rep(1000) }) end
    q:put("next")
    local t = loom.thread(function(qq)
      local l = require "loom"
      local before = l.heap_used()
      local results = {}
      for i = 1, 50 do
        local ok, err = pcall(qq.get, qq, 30)
        results[i] = ok and "ok" or err
      end
      return results, before - l.heap_used(), qq:get(30), #qq
    end, q):start()
    local results, freed, nxt, left = t:result(H.t(30))
    for i = 1, 50 do
      assert.matches("^queue item removed: it cannot be decoded here %(module 'semantics_only_here' not found", results[i])
    end
    assert.equal("next", nxt)
    assert.equal(0, left)
    -- fifty items of 1 KB each: their messages are freed as they fail
    assert.is_true(freed >= 50 * 1000, ("only %d bytes freed"):format(freed))
  end)
end)

describe("finished threads", function()
  it("leave no results in the shared heap once their handles are gone", function()
    local out, ok = H.run([[
      local loom = require "loom"
      assert(loom.configure{ heap_size = 128 * 2^20 })
      -- handles dropped after join, and handles never kept at all
      for _ = 1, 10 do
        local t = loom.thread(function() return ("x"):rep(30 * 2^20) end)
        assert(t:start())
        H.join(t, 60)
        t = nil
        collectgarbage(); collectgarbage()
      end
      local seen = loom.value("int32", 0)
      for i = 1, 10 do
        assert(loom.thread(function(s)
          local r = ("y"):rep(30 * 2^20)
          s:add(1)
          return r
        end, seen):start())
        collectgarbage(); collectgarbage()   -- the handle is gone while it runs
        local deadline = loom.now() + H.t(60)
        while seen.value < i and loom.now() < deadline do loom.sleep(0.01) end
      end
      local deadline = loom.now() + H.t(60)
      while loom.heap_used() > 2^20 and loom.now() < deadline do loom.sleep(0.01) end
      print("used", loom.heap_used() < 2^20, seen.value)
    ]])
    assert(ok, out)
    assert.equal("used\ttrue\t10\n", out)
  end)
end)

describe("children under an inherited SIGCHLD = SIG_IGN", function()
  it("are refused at start with the reason, rather than report a wrong status", function()
    local path = os.tmpname()
    finally(function() os.remove(path) end)
    local f = assert(io.open(path, "w"))
    f:write(H.prelude, [[
      local loom = require "loom"
      print(loom.process(function() os.exit(7) end):start())
      print(loom.pool{ kind = "process", workers = 1 })
      local p = loom.pool(1)
      print(p:submit(function() return 5 end):result(30))
    ]])
    f:close()
    -- bash: dash's trap '' CHLD does not ignore the signal for what it execs
    local pipe = assert(io.popen("bash -c \"trap '' CHLD; exec " .. H.lua .. " " .. path .. "\" 2>&1"))
    local out = pipe:read("a")
    pipe:close()
    local msg = "cannot start process: SIGCHLD is ignored (SIG_IGN), so the child's exit " ..
                "status would be lost; restore its default action (SIG_DFL) first"
    assert.equal("nil\t" .. msg .. "\t10\nnil\t" .. msg .. "\t10\n5\n", out)
  end)
end)
