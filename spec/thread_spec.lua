local loom = require "loom"
local H = require "helpers"

describe("loom.Thread", function()
  describe("loom.thread()", function()
    it("builds an unstarted thread from a function and arguments", function()
      local t = loom.thread(function(a, b) return a + b end, 2, 3)
      assert.is_false(t:is_alive())
      assert.is_nil(t.ident)
      assert.are.equal(t, t:start())
      assert.are.equal(5, H.result(t, 5))
    end)

    it("accepts the table form with target, args, name and daemon", function()
      local t = loom.thread{ target = function(a) return a * 2 end, args = { 21 }, name = "worker", daemon = true }
      assert.are.equal("worker", t.name)
      assert.is_true(t.daemon)
      assert.are.equal(42, H.result(t:start(), 5))
    end)

    it("names threads Thread-N by default", function()
      assert.matches("^Thread%-%d+$", loom.thread(print).name)
    end)

    it("rejects a target that is not a function", function()
      assert.has_error(function() loom.thread(42) end,
        "bad argument #1 to 'thread' (function expected, got number)")
      assert.has_error(function() loom.thread{ target = 1 } end,
        "bad argument #1 to 'thread' (target must be a function)")
      assert.has_error(function() loom.thread{ target = print, args = 1 } end,
        "bad argument #1 to 'thread' (args must be a table)")
      assert.has_error(function() loom.thread{ target = print, name = 1 } end,
        "bad argument #1 to 'thread' (name must be a string)")
    end)
  end)

  describe(":start()", function()
    it("raises when started twice", function()
      local t = loom.thread(function() end):start()
      finally(function() t:join(H.t(5)) end)
      assert.has_error(function() t:start() end, "threads can only be started once")
    end)
  end)

  describe(":join()", function()
    it("returns false while the thread still runs after the timeout", function()
      local t = loom.thread(function() require("loom").sleep(0.3) end):start()
      assert.is_false(t:join(0.01))
      assert.is_true(t:is_alive())
      assert.is_true(H.join(t, 5))
      assert.is_false(t:is_alive())
    end)

    it("raises before start and on a negative timeout", function()
      local t = loom.thread(print)
      assert.has_error(function() t:join() end, "cannot join thread before it is started")
      t:start()
      assert.has_error(function() t:join(-1) end, "bad argument #1 to 'join' (timeout must be non-negative)")
      assert.has_error(function() t:join("x") end, "bad argument #1 to 'join' (number expected, got string)")
      H.join(t, 5)
    end)

    it("refuses to join the current thread", function()
      local ok, err = H.result(loom.thread(function()
        local loom = require "loom"
        return pcall(loom.current().join, loom.current())
      end):start(), 5)
      assert.is_false(ok)
      assert.matches("cannot join current thread", err)
    end)
  end)

  describe(":result()", function()
    it("returns every result", function()
      local a, b, c = H.result(loom.thread(function() return 1, nil, "x" end):start(), 5)
      assert.are.equal(1, a)
      assert.is_nil(b)
      assert.are.equal("x", c)
    end)

    it("returns nil, 'timeout' when the thread is still running", function()
      local t = loom.thread(function() require("loom").sleep(0.3) end):start()
      local r, err = t:result(0.01)
      assert.is_nil(r)
      assert.are.equal("timeout", err)
      H.join(t, 5)
    end)

    it("re-raises the thread's error with its traceback", function()
      local t = loom.thread{ target = function() error("boom") end, name = "failing" }:start()
      local ok, err = pcall(t.result, t, H.t(5))
      assert.is_false(ok)
      assert.matches("boom\n%[thread failing%] stack traceback:", err)
    end)

    it("re-raises a table error with its fields", function()
      local t = loom.thread(function() error({ code = 42 }) end):start()
      local ok, err = pcall(t.result, t, H.t(5))
      assert.is_false(ok)
      assert.are.equal(42, err.code)
    end)
  end)

  describe(":error()", function()
    it("returns nil for a thread that did not fail", function()
      local t = loom.thread(function() return 1 end):start()
      H.join(t, 5)
      assert.is_nil(t:error())
    end)

    it("returns the error and the traceback without raising", function()
      local t = loom.thread(function() error("oops", 0) end):start()
      H.join(t, 5)
      local err, tb = t:error()
      assert.are.equal("oops", err)
      assert.matches("^stack traceback:", tb)
    end)
  end)

  describe(":cancel()", function()
    it("stops a pure-Lua loop", function()
      local t = loom.thread(function() while true do end end):start()
      loom.sleep(0.02)
      assert.is_true(t:cancel())
      assert.is_true(H.join(t, 5))
      local r, err = t:result()
      assert.is_nil(r)
      assert.are.equal("cancelled", err)
      assert.is_true(t:cancelled())
    end)

    it("wakes a thread from loom.sleep", function()
      local t = loom.thread(function() require("loom").sleep(60) end):start()
      loom.sleep(0.02)
      t:cancel()
      assert.is_true(H.join(t, 5))
      assert.are.equal("cancelled", select(2, t:result()))
    end)

    it("wakes a thread joining another", function()
      local t = loom.thread(function()
        local loom = require "loom"
        local inner = loom.thread{ target = function() require("loom").sleep(60) end, daemon = true }:start()
        inner:join()
      end):start()
      loom.sleep(0.05)
      t:cancel()
      assert.is_true(H.join(t, 5))
    end)

    it("keeps cancelling a loop that catches the error", function()
      local t = loom.thread(function()
        while true do pcall(function() while true do end end) end
      end):start()
      loom.sleep(0.02)
      t:cancel()
      assert.is_true(H.join(t, 5))
    end)

    it("returns false for a finished thread", function()
      local t = loom.thread(function() end):start()
      H.join(t, 5)
      assert.is_false(t:cancel())
    end)
  end)

  describe("fields", function()
    it("exposes ident once started and lets name change", function()
      local t = loom.thread(function() require("loom").sleep(0.05) end)
      t.name = "renamed"
      assert.are.equal("renamed", t.name)
      t:start()
      assert.are.equal("number", math.type(t.ident) and "number")
      H.join(t, 5)
      assert.has_error(function() t.daemon = true end, "cannot set daemon status of active thread")
      assert.has_error(function() t.foo = 1 end, "cannot set field 'foo' of a loom.Thread")
    end)

    it("prints its name and state", function()
      local t = loom.thread{ target = print, name = "shown" }
      assert.are.equal("loom.Thread (shown, initial)", tostring(t))
    end)
  end)

  describe("nesting", function()
    it("lets a thread start threads", function()
      local r = H.result(loom.thread(function()
        local loom = require "loom"
        return H.result(loom.thread(function(x) return x * 2 end, 21):start(), 5)
      end):start(), 10)
      assert.are.equal(42, r)
    end)

    it("passes thread handles between threads", function()
      local t = loom.thread(function() return "inner" end):start()
      local r = H.result(loom.thread(function(h) return H.result(h, 5) end, t):start(), 10)
      assert.are.equal("inner", r)
    end)
  end)

  describe("loom.current()", function()
    it("names the main thread and the running thread", function()
      assert.are.equal("MainThread", loom.current().name)
      local name = H.result(loom.thread{ target = function() return require("loom").current().name end, name = "me" }
        :start(), 5)
      assert.are.equal("me", name)
    end)
  end)

  describe("loom.sleep()", function()
    it("sleeps at least the time asked", function()
      local t0 = loom.now()
      loom.sleep(0.05)
      assert.is_true(loom.now() - t0 >= 0.049)
    end)

    it("rejects bad durations", function()
      assert.has_error(function() loom.sleep(-1) end, "bad argument #1 to 'sleep' (seconds must be non-negative)")
      assert.has_error(function() loom.sleep() end, "bad argument #1 to 'sleep' (number expected, got no value)")
    end)
  end)

  describe("utilities", function()
    it("counts processors and reads a monotonic clock", function()
      assert.is_true(loom.cpu_count() >= 1)
      local a = loom.now()
      assert.is_true(loom.now() >= a)
    end)
  end)

  describe("lifecycle", function()
    it("waits for non-daemon threads when the script ends", function()
      local out = H.run [[
        local loom = require "loom"
        loom.thread(function() require("loom").sleep(0.2); print("worker done") end):start()
        print("main done")
      ]]
      assert.matches("main done\n.*worker done", out)
    end)

    it("cancels daemon threads when the script ends", function()
      local out, ok = H.run [[
        local loom = require "loom"
        loom.thread{ target = function() require("loom").sleep(60); print("late") end, daemon = true }:start()
        loom.thread{ target = function() while true do end end, daemon = true }:start()
        print("main done")
      ]]
      assert.is_true(ok)
      assert.are.equal("main done\n", out)
    end)

    it("reports an uncollected error when its handle dies", function()
      local out = H.run [[
        local loom = require "loom"
        local t = loom.thread{ target = function() error("lost", 0) end, name = "T" }:start()
        H.join(t, 5)
        t = nil
        collectgarbage()
        print("after")
      ]]
      assert.matches("exception in thread T:\nlost\n", out)
    end)

    it("routes reports through a replaceable reporter", function()
      local out = H.run [[
        local loom = require "loom"
        loom.excepthook(function(info) print("hook", info.name, info.error) end)
        local t = loom.thread{ target = function() error("seen", 0) end, name = "H" }:start()
        H.join(t, 5)
        t = nil
        collectgarbage()
      ]]
      assert.are.equal("hook\tH\tseen\n", out)
    end)

    it("does not report an error that was collected", function()
      local out = H.run [[
        local loom = require "loom"
        local t = loom.thread(function() error("mine", 0) end):start()
        assert(not pcall(t.result, t, H.t(5)))
        t = nil
        collectgarbage()
      ]]
      assert.are.equal("", out)
    end)

    it("rejects a reporter that is not a function", function()
      assert.has_error(function() loom.excepthook(1) end,
        "bad argument #1 to 'excepthook' (function expected, got number)")
    end)
  end)

  describe("reuse", function()
    -- Runs fn in threads one after another; the pause lets each worker
    -- park, so the next thread is handed the same interpreter.
    local function one_by_one(...)
      local out, ids = {}, {}
      for i, fn in ipairs({ ... }) do
        local t = loom.thread(fn):start()
        out[i] = table.pack(H.result(t, 10))
        ids[t.native_id] = (ids[t.native_id] or 0) + 1
        loom.sleep(0.02)
      end
      local reused = false
      for _, n in pairs(ids) do reused = reused or n > 1 end
      return out, reused
    end

    it("hands a finished thread's interpreter to the next one", function()
      local id = function() return tostring(_G), require("loom").current().native_id end
      local out, reused = one_by_one(id, id, id)
      assert.is_true(reused)
      local same = out[1][1] == out[2][1] or out[2][1] == out[3][1]
      assert.is_true(same)
    end)

    it("does not leak globals set or removed", function()
      local out = one_by_one(
        function() leaked = 1; print = nil; _G.tostring = nil end,
        function() return leaked, type(print), type(tostring) end,
        function() return leaked, type(print), type(tostring) end)
      for i = 2, 3 do
        assert.are.same({ n = 3, nil, "function", "function" }, out[i])
      end
    end)

    it("gives clean interpreters after a burst of more threads than stay idle", function()
      local dirty = function(i)
        leaked = i
        string.foo = i
        require("loom").sleep(0.05)
        return i
      end
      local burst = {}
      for i = 1, 4 * loom.cpu_count() + 8 do
        burst[i] = loom.thread(dirty, i)
      end
      for _, t in ipairs(burst) do t:start() end
      for i, t in ipairs(burst) do assert.equal(i, H.result(t, 20)) end
      loom.sleep(0.05)
      for _ = 1, 3 do
        local t = loom.thread(function()
          return leaked, string.foo, type(require("loom").sleep)
        end):start()
        assert.are.same({ n = 3, nil, nil, "function" }, table.pack(H.result(t, 10)))
      end
    end)

    it("opens loom in a burst thread's interpreter when a loom object arrives", function()
      local v = loom.value("int64", 0)
      local burst = {}
      for i = 1, 4 * loom.cpu_count() + 8 do
        burst[i] = loom.thread(function(counter)
          counter:add(1)
          return getmetatable(counter).__name
        end, v)
      end
      for _, t in ipairs(burst) do t:start() end
      for _, t in ipairs(burst) do assert.equal("loom.Value", H.result(t, 20)) end
      assert.equal(#burst, v.value)
    end)

    it("does not leak changes to the standard libraries", function()
      local change = function()
        string.foo = 1
        math.pi = 3
        table.insert = nil
        getmetatable("").__add = function() return 0 end
        getmetatable("").__call = function() return 0 end
        getmetatable("").__index = {}
        setmetatable(_G, { __index = function() return 42 end })
        setmetatable(math, { __index = function() return 7 end })
        debug.setmetatable(0, { __index = math })
        io.output(io.stderr)
        collectgarbage("generational")
      end
      local check = function()
        return string.foo, math.pi, type(table.insert), ("x"):upper(),
          getmetatable("").__call, "1" + 1, undefined_name, math.nothing,
          getmetatable(0), io.output() == io.stdout, collectgarbage("incremental")
      end
      local out = one_by_one(change, check, check)
      for i = 2, 3 do
        assert.are.same({ n = 11, nil, math.pi, "function", "X", nil, 2, nil, nil, nil, true, "incremental" }, out[i])
      end
    end)

    it("does not leak modules loaded by require", function()
      local out = one_by_one(
        function()
          package.preload.made_here = function() return { v = 1 } end
          require("made_here").v = 2
          require("helpers").marker = true
        end,
        function()
          return package.loaded.made_here, package.preload.made_here,
            package.loaded.helpers, require("helpers").marker
        end)
      assert.are.same({ n = 4 }, out[2])
    end)

    it("does not leak an excepthook set in a thread", function()
      local set = function() require("loom").excepthook(function() end) end
      local get = function() return type(require("loom").excepthook(nil)) end
      local out = one_by_one(set, get, get)
      assert.are.equal("nil", out[2][1])
      assert.are.equal("nil", out[3][1])
    end)

    it("does not carry a cancel into the next thread", function()
      for _ = 1, 3 do
        local t = loom.thread(function() while true do pcall(function() while true do end end) end end):start()
        loom.sleep(0.01)
        t:cancel()
        assert.is_true(H.join(t, 5))
        local u = loom.thread(function()
          local loom = require "loom"
          local x = 0
          for i = 1, 1e5 do x = x + i end
          loom.sleep(0.01)
          return x
        end):start()
        assert.are.equal(5000050000, H.result(u, 10))
        assert.is_false(u:cancelled())
        loom.sleep(0.01)
      end
    end)

    it("gives a thread started with other package paths its own state", function()
      local saved = package.path
      finally(function() package.path = saved end)
      local get = function() return package.path end
      assert.are.equal(saved, H.result(loom.thread(get):start(), 5))
      loom.sleep(0.02)
      package.path = "./?.lua;" .. saved .. ";/other/?.lua"
      assert.are.equal(package.path, H.result(loom.thread(get):start(), 5))
      loom.sleep(0.02)
      package.path = saved
      assert.are.equal(saved, H.result(loom.thread(get):start(), 5))
    end)

    it("waits for the threads a thread started before it is done", function()
      local child = H.result(loom.thread(function()
        local loom = require "loom"
        return loom.thread(function() require("loom").sleep(0.2) end):start()
      end):start(), 10)
      assert.is_false(child:is_alive())
    end)

    it("sets ident and native_id for the thread on its worker", function()
      for _ = 1, 3 do
        local t = loom.thread(function()
          local me = require("loom").current()
          return me.ident, me.native_id
        end):start()
        local ident, native = H.result(t, 5)
        assert.are.equal(t.ident, ident)
        assert.are.equal(t.native_id, native)
        loom.sleep(0.01)
      end
    end)

    it("lets a process exit without waiting for idle workers", function()
      local t0 = loom.now()
      local out, ok = H.run [[
        local loom = require "loom"
        for _ = 1, 8 do loom.thread(function() return 1 end):start():join() end
        print("done")
      ]]
      assert.is_true(ok)
      assert.are.equal("done\n", out)
      -- idle workers wait 5 s for work: an exit that waited for them would
      -- take that long (a bound that checkers' slowdown blunts)
      H.below(loom.now() - t0, 4, "the exit with idle workers")
    end)
  end)

  it("runs two CPU-bound threads at the same time", function()
    -- not a timing test: both threads must be inside their loops together
    local t = {}
    for i = 1, 2 do
      t[i] = loom.thread(function()
        local x = 0
        for k = 1, 2e6 do x = x + k end
        return x
      end):start()
    end
    for i = 1, 2 do assert.are.equal(2000001000000, H.result(t[i], 30)) end
  end)
end)
