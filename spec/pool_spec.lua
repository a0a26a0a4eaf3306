local H = require "helpers"
local loom = require "loom"

local function inc(x) return x + 1 end

describe("loom.Pool", function()
  describe("loom.pool()", function()
    it("starts n workers", function()
      local pool <close> = loom.pool(3)
      assert.equal(3, pool.workers)
      assert.equal("thread", pool.kind)
      assert.matches("^loom.Pool %(", tostring(pool))
    end)

    it("defaults to one worker per cpu", function()
      local pool <close> = loom.pool()
      assert.equal(loom.cpu_count(), pool.workers)
    end)

    it("takes a table of options", function()
      local pool <close> = loom.pool{ workers = 2 }
      assert.equal(2, pool.workers)
    end)

    it("rejects bad arguments with exact messages", function()
      assert.has_error(function() loom.pool(0) end,
        "bad argument #1 to 'pool' (workers must be a positive integer)")
      assert.has_error(function() loom.pool(1.5) end,
        "bad argument #1 to 'pool' (integer or table expected, got number)")
      assert.has_error(function() loom.pool("x") end,
        "bad argument #1 to 'pool' (integer or table expected, got string)")
      assert.has_error(function() loom.pool{ workers = -1 } end,
        "bad argument #1 to 'pool' (workers must be a positive integer)")
      assert.has_error(function() loom.pool{ workers = 2000 } end,
        "bad argument #1 to 'pool' (too many workers)")
      assert.has_error(function() loom.pool{ kind = "fiber" } end,
        "bad argument #1 to 'pool' (invalid kind 'fiber')")
      assert.has_error(function() loom.pool{ init = 3 } end,
        "bad argument #1 to 'pool' (init must be a function)")
      assert.has_error(function() loom.pool{ init = print, initargs = 3 } end,
        "bad argument #1 to 'pool' (initargs must be a table)")
      assert.has_error(function() loom.pool{ initargs = {} } end,
        "bad argument #1 to 'pool' (initargs given without init)")
    end)
  end)

  describe(":submit()", function()
    it("runs the function with its arguments in a worker", function()
      local pool <close> = loom.pool(2)
      local f = pool:submit(function(a, b) return a + b, a .. b end, 2, 3)
      local s, c = H.result(f, 5)
      assert.equal(5, s)
      assert.equal("23", c)
    end)

    it("runs 100000 tasks exactly once each", function()
      local pool <close> = loom.pool(2)
      local fs = {}
      for i = 1, 100000 do fs[i] = pool:submit(inc, i) end
      local sum = 0
      for i = 1, 100000 do sum = sum + H.result(fs[i], 30) end
      assert.equal(100000 * 100001 / 2 + 100000, sum)
    end)

    it("keeps a worker alive after its task fails", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function() error("boom") end)
      assert.has_error(function() H.result(f, 5) end)
      assert.equal(2, H.result(pool:submit(inc, 1), 5))
    end)

    it("keeps worker state between tasks", function()
      local pool <close> = loom.pool(1)
      H.result(pool:submit(function() counter = 41 end), 5)   -- luacheck: ignore
      assert.equal(42, H.result(pool:submit(function() return counter + 1 end), 5))   -- luacheck: ignore
    end)

    it("rejects a non-function", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function() pool:submit(42) end,
        "bad argument #1 to 'submit' (function expected, got number)")
    end)

    it("names an argument that cannot travel", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function() pool:submit(print, io.stdout) end,
        "cannot transfer args[1]: userdata (FILE*)")
    end)

    it("raises after shutdown", function()
      local pool = loom.pool(1)
      pool:shutdown()
      assert.has_error(function() pool:submit(inc, 1) end,
        "cannot submit to a pool after shutdown")
    end)

    it("can be called from a task of the same pool", function()
      local pool <close> = loom.pool(2)
      local f = pool:submit(function(p)
        return H.result(p:submit(function(x) return x * 3 end, 5), 5)
      end, pool)
      assert.equal(15, H.result(f, 5))
    end)
  end)

  describe("init", function()
    it("runs once per worker before any task", function()
      local pool <close> = loom.pool{ workers = 2,
        init = function(a, b) base = a + b end,   -- luacheck: ignore
        initargs = { 40, 2 } }
      local fs = {}
      for i = 1, 10 do fs[i] = pool:submit(function(x) return base + x end, i) end   -- luacheck: ignore
      for i = 1, 10 do assert.equal(42 + i, H.result(fs[i], 5)) end
    end)

    it("breaks the pool when it fails", function()
      local go = loom.event()   -- the task is queued before init fails
      local pool <close> = loom.pool{ workers = 1,
        init = function(ev) H.wait(ev, 5); error("no config", 0) end,
        initargs = { go } }
      local f = pool:submit(inc, 1)
      go:set()
      local ok, err = pcall(f.result, f, H.t(5))
      assert.is_false(ok)
      assert.matches("^pool initializer failed: no config", err)
      assert.is_true(loom.wait({ f }, H.t(5)) ~= nil)
      local deadline = loom.now() + H.t(5)
      while not tostring(pool):find("broken") and loom.now() < deadline do
        loom.sleep(0.01)
      end
      assert.has_error(function() pool:submit(inc, 1) end,
        "cannot submit to a broken pool (initializer failed)")
    end)
  end)

  describe(":shutdown()", function()
    it("waits for queued tasks by default", function()
      local pool = loom.pool(1)
      local fs = {}
      for i = 1, 5 do
        fs[i] = pool:submit(function(x) require("loom").sleep(0.01) return x end, i)
      end
      pool:shutdown()
      for i = 1, 5 do
        assert.is_true(fs[i]:done())
        assert.equal(i, fs[i]:result(0))
      end
    end)

    it("cancels pending tasks when asked", function()
      local pool = loom.pool(1)
      local ev = pool:submit(function() require("loom").sleep(0.5) return "first" end)
      local fs = {}
      for i = 1, 5 do fs[i] = pool:submit(inc, i) end
      local deadline = loom.now() + H.t(5)
      while not ev:running() and loom.now() < deadline do loom.sleep(0.001) end
      pool:shutdown(true, true)
      assert.equal("first", H.result(ev, 5))
      for i = 1, 5 do
        assert.is_true(fs[i]:cancelled())
        local v, err = fs[i]:result(0)
        assert.is_nil(v)
        assert.equal("cancelled", err)
      end
    end)

    it("returns at once with wait = false", function()
      local pool = loom.pool(1)
      local f = pool:submit(function() require("loom").sleep(0.1) return 1 end)
      pool:shutdown(false)
      assert.equal(1, H.result(f, 5))
    end)

    it("is called by <close>", function()
      local f
      do
        local pool <close> = loom.pool(1)
        f = pool:submit(function() require("loom").sleep(0.05) return "ok" end)
      end
      assert.is_true(f:done())
      assert.equal("ok", f:result(0))
    end)

    it("can be called twice", function()
      local pool = loom.pool(1)
      assert.is_true(pool:shutdown())
      assert.is_true(pool:shutdown())
    end)

    it("returns false when its timeout passes before the workers leave", function()
      local pool = loom.pool(1)
      local ev = loom.event()
      local f = pool:submit(function(e) H.wait(e, 30) return "late" end, ev)
      assert.is_false(pool:shutdown(true, false, 0.05))
      assert.is_false(f:done())
      assert.has_error(function() pool:submit(inc, 1) end,
        "cannot submit to a pool after shutdown")
      ev:set()
      assert.is_true(pool:shutdown(true, false, H.t(30)))
      assert.equal("late", f:result(0))
    end)

    it("rejects a negative timeout", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function() pool:shutdown(true, false, -1) end,
        "bad argument #3 to 'shutdown' (timeout must be non-negative)")
    end)

    it("refuses to wait from one of its own workers", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function(p) p:shutdown(true) end, pool)
      local ok, err = pcall(f.result, f, H.t(5))
      assert.is_false(ok)
      assert.matches("cannot wait for a pool from one of its own workers", err, 1, true)
    end)
  end)

  describe("dropped without shutdown", function()
    it("still finishes its queued work", function()
      local f
      do
        local pool = loom.pool(1)
        f = pool:submit(function() require("loom").sleep(0.05) return "done" end)
      end
      collectgarbage()
      collectgarbage()
      assert.equal("done", H.result(f, 5))
    end)
  end)

  describe(":map()", function()
    it("returns the results in order", function()
      local pool <close> = loom.pool(3)
      local list = {}
      for i = 1, 200 do list[i] = i end
      local r = pool:map(function(x)
        if x % 7 == 0 then require("loom").sleep(0.001) end
        return x * x
      end, list)
      assert.equal(200, r.n)
      for i = 1, 200 do assert.equal(i * i, r[i]) end
    end)

    it("sends chunks", function()
      local pool <close> = loom.pool(2)
      local list = {}
      for i = 1, 1001 do list[i] = i end
      local r = pool:map(inc, list, { chunksize = 100 })
      assert.equal(1001, r.n)
      for i = 1, 1001 do assert.equal(i + 1, r[i]) end
    end)

    it("keeps nil results in place", function()
      local pool <close> = loom.pool(2)
      local r = pool:map(function(x) if x % 2 == 0 then return x end end, { 1, 2, 3, 4 })
      assert.same({ n = 4, [2] = 2, [4] = 4 }, r)
    end)

    it("raises the first error in order", function()
      local pool <close> = loom.pool(2)
      local ok, err = pcall(pool.map, pool, function(x)
        if x >= 3 then error("bad " .. x, 0) end
        return x
      end, { 1, 2, 3, 4, 5 })
      assert.is_false(ok)
      assert.matches("^bad 3", err)
    end)

    it("returns fail, 'timeout'", function()
      local pool <close> = loom.pool(1)
      local r, err = pool:map(function(x) require("loom").sleep(0.2) return x end,
        { 1, 2, 3 }, { timeout = 0.05 })
      assert.is_nil(r)
      assert.equal("timeout", err)
    end)

    it("rejects bad arguments", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function() pool:map(1, {}) end,
        "bad argument #1 to 'map' (function expected, got number)")
      assert.has_error(function() pool:map(inc, 1) end,
        "bad argument #2 to 'map' (table expected, got number)")
      assert.has_error(function() pool:map(inc, {}, 1) end,
        "bad argument #3 to 'map' (table expected, got number)")
      assert.has_error(function() pool:map(inc, {}, { chunksize = 0 }) end,
        "bad argument #3 to 'map' (chunksize must be a positive integer)")
      assert.has_error(function() pool:map(inc, {}, { timeout = -1 }) end,
        "bad argument #3 to 'map' (timeout must be non-negative)")
    end)
  end)

  describe(":imap()", function()
    it("yields index and result in order from a list", function()
      local pool <close> = loom.pool(2)
      local got = {}
      for i, v in pool:imap(function(x) return x * 10 end, { 1, 2, 3, 4, 5 }, { chunksize = 2 }) do
        got[i] = v
      end
      assert.same({ 10, 20, 30, 40, 50 }, got)
    end)

    it("reads an iterator lazily", function()
      local pool <close> = loom.pool(2)
      local n = 0
      local function source()
        n = n + 1
        if n <= 1000 then return n end
      end
      local count, sum = 0, 0
      for i, v in pool:imap(inc, source, { window = 4 }) do
        count = i
        sum = sum + v
      end
      assert.equal(1000, count)
      assert.equal(1000 * 1001 / 2 + 1000, sum)
    end)

    it("raises a task's error", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function()
        for _ in pool:imap(function() error("nope", 0) end, { 1 }) do end
      end)
    end)

    it("rejects bad arguments", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function() pool:imap(inc, 3) end,
        "bad argument #2 to 'imap' (table or function expected, got number)")
      assert.has_error(function() pool:imap(inc, {}, { window = 0 }) end,
        "bad argument #3 to 'imap' (window must be a positive integer)")
    end)
  end)
end)

describe("loom.Pool lifetime", function()
  local function threads()
    local f = assert(io.open("/proc/self/status"))
    local s = f:read("a")
    f:close()
    return tonumber(s:match("Threads:%s*(%d+)"))
  end

  it("lets its workers go when dropped, even with its handle sent to a task", function()
    local before = threads()
    do
      local pool = loom.pool(2)
      H.result(pool:submit(function(p) return p.workers end, pool), 5)
    end
    collectgarbage()
    collectgarbage()
    local deadline = loom.now() + H.t(10)
    -- threads of earlier specs may still be leaving: never more than before
    while threads() > before and loom.now() < deadline do loom.sleep(0.01) end
    assert.is_true(threads() <= before)
  end)
end)
