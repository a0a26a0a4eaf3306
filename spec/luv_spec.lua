-- loom.luv: awaiting loom inside a luv (libuv) loop, against Debian's
-- lua-luv.  The loop must keep running while loom works: a repeating timer
-- counts its ticks and the longest gap between two.
local H = require "helpers"
local loom = require "loom"

local has_uv, uv = pcall(require, "luv")

-- Runs chunk in a fresh interpreter killed after H.t(limit) s.
local function guarded(chunk, limit)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(H.prelude, "\n", chunk)
  f:close()
  local p = assert(io.popen(string.format(
    "LOOM_SPEC_MACHINE=%.17g timeout -k 2 %.1f %s %s 2>&1",
    H.machine or 1, H.t(limit), H.lua, path)))
  local out = p:read("a")
  local ok, _, code = p:close()
  os.remove(path)
  return out, ok, code
end

-- A 10 ms ticker: returns its state table and a stop function.
local function ticker()
  local s = { ticks = 0, gap = 0, start = uv.hrtime() }
  local last = s.start
  local timer = uv.new_timer()
  timer:start(10, 10, function()
    local now = uv.hrtime()
    s.gap = math.max(s.gap, (now - last) / 1e9)
    last = now
    s.ticks = s.ticks + 1
  end)
  return s, function()
    s.elapsed = (uv.hrtime() - s.start) / 1e9
    timer:stop()
    timer:close()
  end
end

-- Runs the loop until done() or a scaled bound; fails with a message.
local function run_until(done, s)
  local guard = uv.new_timer()
  local expired = false
  guard:start(math.floor(H.t(s) * 1000), 0, function() expired = true; uv.stop() end)
  local check = uv.new_check()
  check:start(function() if done() then uv.stop() end end)
  while not done() and not expired do uv.run("once") end
  check:stop(); check:close()
  guard:stop(); guard:close()
  uv.run("nowait")
  if expired and not done() then
    error(string.format("loop did not finish within %.3g s", H.t(s)), 2)
  end
end

if not has_uv then
  describe("loom.luv", function()
    it("needs lua-luv", function()
      pending("lua-luv is not installed (apt-get install lua-luv, or make deps)")
    end)
  end)
  return
end

local lluv = require "loom.luv"

describe("loom.luv", function()
  describe(".await()", function()
    -- In a fresh interpreter: busted's own process, grown by every spec
    -- before, makes each fork and each exit of its children slow enough to
    -- starve the loop for longer than the whole work takes.
    it("keeps the loop ticking while 100 pool tasks and 10 processes complete #latency", function()
      local out, ok, code = guarded([=[
        local uv = require "luv"
        local loom = require "loom"
        local lluv = require "loom.luv"
        local pool <close> = loom.pool(4)
        local ppool <close> = loom.pool { workers = 2, kind = "process" }
        -- everything starts before the ticker: forking is the loop
        -- thread's own work, not a wait
        local ps = {}
        for i = 1, 10 do
          ps[i] = loom.process(function(c) loom.sleep(0.3); os.exit(c) end, i):start()
        end
        local fs, gs = {}, {}
        for i = 1, 100 do
          fs[i] = pool:submit(function(x) loom.sleep(0.004 * (x % 5)); return x * 2 end, i)
        end
        for i = 1, 10 do
          gs[i] = ppool:submit(function(x) loom.sleep(0.01); return x * x end, i)
        end
        local ticks, gap, start = 0, 0, uv.hrtime()
        local last = start
        local timer = uv.new_timer()
        timer:start(10, 10, function()
          local now = uv.hrtime()
          gap = math.max(gap, (now - last) / 1e9)
          last = now
          ticks = ticks + 1
        end)
        local sum, squares, exits, left = 0, 0, 0, 3
        local function one() left = left - 1; if left == 0 then timer:stop() end end
        coroutine.wrap(function()
          for i = 1, 100 do sum = sum + lluv.await(fs[i]) end
          one()
        end)()
        coroutine.wrap(function()
          for i = 1, 10 do
            local v = lluv.await(gs[i])
            squares = squares + v
          end
          one()
        end)()
        coroutine.wrap(function()
          for i = 1, 10 do
            assert(lluv.await(ps[i]) == true)
            if ps[i].exitcode == i then exits = exits + 1 end
          end
          one()
        end)()
        uv.run()
        print(string.format("sum=%d squares=%d exits=%d pending=%d ticks=%d elapsed=%.6f gap=%.6f",
          sum, squares, exits, lluv.pending(), ticks, (uv.hrtime() - start) / 1e9, gap))
      ]=], 60)
      assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s", tostring(code), out))
      if os.getenv("LOOM_SPEC_DEBUG") then io.stderr:write("\n", out) end
      assert.matches("sum=10100 squares=385 exits=10 pending=0 ", out)
      local ticks = tonumber(out:match("ticks=(%d+)"))
      local elapsed = tonumber(out:match("elapsed=([%d.]+)"))
      local gap = tonumber(out:match("gap=([%d.]+)"))
      -- at least a fifth of the ticks the elapsed time holds, on a machine
      -- this one's speed; and never a silence as long as a blocking wait's
      assert.is_true(elapsed > 0.05, "the work took " .. elapsed .. " s")
      local want = math.floor(elapsed / 0.01 / (5 * H.slowdown))
      assert.is_true(ticks >= want,
        string.format("%d ticks in %.3f s, want %d or more", ticks, elapsed, want))
      H.below(gap, 0.3, "the longest gap between ticks")
    end)

    it("the ticker has teeth: a blocking result() in the loop silences it #latency", function()
      local pool <close> = loom.pool(1)
      local s, stop = ticker()
      local done = false
      local t = uv.new_timer()
      t:start(20, 0, function()
        pool:submit(function() loom.sleep(0.3) end):result()
        done = true
      end)
      run_until(function() return done and s.ticks > 2 end, 10)
      stop()
      t:close()
      assert.is_true(s.gap >= 0.25, "longest gap " .. s.gap)
    end)

    it("raises the task's error in the awaiting coroutine", function()
      local pool <close> = loom.pool(1)
      local err
      coroutine.wrap(function()
        local ok, e = pcall(lluv.await, pool:submit(function() error("boom", 0) end))
        assert(not ok)
        err = e
      end)()
      run_until(function() return err ~= nil end, 10)
      assert.matches("^boom", err)
    end)

    it("returns at once for a future already done, without yielding", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function() return 1, 2 end)
      H.result(f, 5)
      local co = coroutine.create(function() return lluv.await(f) end)
      assert.same({ true, 1, 2 }, { coroutine.resume(co) })
      assert.equal("dead", coroutine.status(co))
    end)

    it("awaits an event and takes queue items", function()
      local e, q = loom.event(), loom.queue()
      local got = {}
      coroutine.wrap(function()
        assert.is_true(lluv.await(e))
        while true do
          local v, err = lluv.get(q)
          if v == nil then got.err = err break end
          got[#got + 1] = v
        end
      end)()
      local t = loom.thread(function(ev, qq)
        loom.sleep(0.02)
        ev:set()
        for i = 1, 5 do loom.sleep(0.005); qq:put(i) end
        qq:close()
      end, e, q):start()
      run_until(function() return got.err ~= nil end, 10)
      H.join(t, 5)
      assert.same({ 1, 2, 3, 4, 5, err = "closed" }, got)
      assert.equal(0, lluv.pending())
    end)

    it("a coroutine closed while it awaits gives its watch back", function()
      local pool <close> = loom.pool(1)
      local go = loom.event()
      local f = pool:submit(function(ev) ev:wait(); return 1 end, go)
      local co = coroutine.create(function() return lluv.await(f) end)
      assert.is_true(coroutine.resume(co))
      assert.equal(1, lluv.pending())
      assert.is_true(coroutine.close(co))
      assert.equal(0, lluv.pending())
      go:set()
      assert.equal(1, H.result(f, 5))
    end)

    it("refuses outside a coroutine, and names a bad argument", function()
      local e = loom.event()
      assert.has_error(function() lluv.await(e) end,
        "bad call to 'await' (must run inside a coroutine)")
      assert.has_error(function() lluv.await(42) end,
        "bad argument #1 to 'await' (loom.Future, loom.Event or loom.Process expected, got number)")
      assert.has_error(function() lluv.get(e) end,
        "bad argument #1 to 'get' (loom.Queue expected, got loom.Event)")
    end)
  end)

  describe(".run_in_pool()", function()
    it("calls back on the loop thread with the outcome", function()
      local pool <close> = loom.pool(2)
      local seen = {}
      lluv.run_in_pool(pool, function(a, b) return a + b, "x" end, 2, 3, function(...)
        local _, main = coroutine.running()
        seen.ok = table.pack(...)
        seen.main = main
      end)
      lluv.run_in_pool(pool, function() error("bad", 0) end, function(ok, err)
        seen.bad = { ok, err }
      end)
      local f = lluv.run_in_pool(pool, function(x) return x end, nil, function(ok, ...)
        seen.none = table.pack(ok, ...)
      end)
      run_until(function() return seen.ok and seen.bad and seen.none end, 10)
      assert.same({ true, 5, "x", n = 3 }, seen.ok)
      assert.is_true(seen.main)
      assert.is_false(seen.bad[1])
      assert.matches("^bad", seen.bad[2])
      assert.same({ true, nil, n = 2 }, seen.none)
      assert.equal("loom.Future", getmetatable(f).__name)
    end)

    it("reports a cancelled task as false, 'cancelled'", function()
      local pool <close> = loom.pool(1)
      local go = loom.event()
      pool:submit(function(ev) ev:wait() end, go)
      local got
      local f = lluv.run_in_pool(pool, function() end, function(...) got = { ... } end)
      assert.is_true(f:cancel())
      go:set()
      run_until(function() return got ~= nil end, 10)
      assert.same({ false, "cancelled" }, got)
    end)

    it("needs a callback last", function()
      local pool <close> = loom.pool(1)
      assert.has_error(function() lluv.run_in_pool(pool, function() end, 1) end,
        "bad argument #3 to 'run_in_pool' (callback function expected, got number)")
      assert.has_error(function() lluv.run_in_pool(pool, function() end) end,
        "bad argument #2 to 'run_in_pool' (callback function expected, got nil)")
    end)
  end)

  it("examples/luv_app.lua runs to the end with correct results", function()
    local out, ok, code = guarded("dofile('examples/luv_app.lua')", 60)
    assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s", tostring(code), out))
    assert.matches("sum=10100 callbacks=100 squares=385 exits=10 ", out)
  end)
end)
