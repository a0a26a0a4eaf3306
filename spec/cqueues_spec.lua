-- loom.cqueues: awaiting loom inside a cqueues controller, against
-- Debian's lua-cqueues.  The controller must keep running its other
-- coroutines while loom works: a ticker coroutine counts its wake-ups and
-- the longest gap between two.
local H = require "helpers"
local loom = require "loom"

local has_cq, cqueues = pcall(require, "cqueues")

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

if not has_cq then
  describe("loom.cqueues", function()
    it("needs lua-cqueues", function()
      pending("lua-cqueues is not installed (apt-get install lua-cqueues, or make deps)")
    end)
  end)
  return
end

local lcq = require "loom.cqueues"

-- Adds a 10 ms ticker to cq that runs until s.stop; returns its state.
local function ticker(cq)
  local s = { ticks = 0, gap = 0, start = cqueues.monotime() }
  cq:wrap(function()
    local last = s.start
    while not s.stop do
      cqueues.sleep(0.01)
      local now = cqueues.monotime()
      s.gap = math.max(s.gap, now - last)
      last = now
      s.ticks = s.ticks + 1
    end
    s.elapsed = cqueues.monotime() - s.start
  end)
  return s
end

-- Steps cq until it is empty or a scaled bound; fails with a message.
local function loop(cq, s)
  local deadline = cqueues.monotime() + H.t(s)
  while not cq:empty() do
    local ok, err = cq:step(0.05)
    if not ok then error(err, 2) end
    if cqueues.monotime() > deadline then
      error(string.format("controller did not finish within %.3g s", H.t(s)), 2)
    end
  end
end

describe("loom.cqueues", function()
  describe(".await()", function()
    -- In a fresh interpreter: busted's own process, grown by every spec
    -- before, makes each fork and each exit of its children slow enough to
    -- starve the controller for longer than the whole work takes.
    it("keeps the controller ticking while 100 pool tasks and 10 processes complete #latency", function()
      local out, ok, code = guarded([=[
        local cqueues = require "cqueues"
        local loom = require "loom"
        local lcq = require "loom.cqueues"
        local pool <close> = loom.pool(4)
        local ppool <close> = loom.pool { workers = 2, kind = "process" }
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
        local cq = cqueues.new()
        local ticks, gap, stop, start = 0, 0, false, cqueues.monotime()
        cq:wrap(function()
          local last = start
          while not stop do
            cqueues.sleep(0.01)
            local now = cqueues.monotime()
            gap = math.max(gap, now - last)
            last = now
            ticks = ticks + 1
          end
        end)
        local sum, squares, exits, left = 0, 0, 0, 120
        local function one() left = left - 1; if left == 0 then stop = true end end
        for i = 1, 100 do
          cq:wrap(function()
            local v = lcq.await(fs[i])
            sum = sum + v
            one()
          end)
        end
        for i = 1, 10 do
          cq:wrap(function()
            local v = lcq.await(gs[i])
            squares = squares + v
            one()
          end)
          cq:wrap(function()
            assert(lcq.await(ps[i]) == true)
            if ps[i].exitcode == i then exits = exits + 1 end
            one()
          end)
        end
        assert(cq:loop())
        print(string.format("sum=%d squares=%d exits=%d ticks=%d elapsed=%.6f gap=%.6f",
          sum, squares, exits, ticks, cqueues.monotime() - start, gap))
      ]=], 60)
      assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s", tostring(code), out))
      if os.getenv("LOOM_SPEC_DEBUG") then io.stderr:write("\n", out) end
      assert.matches("sum=10100 squares=385 exits=10 ", out)
      local ticks = tonumber(out:match("ticks=(%d+)"))
      local elapsed = tonumber(out:match("elapsed=([%d.]+)"))
      local gap = tonumber(out:match("gap=([%d.]+)"))
      assert.is_true(elapsed > 0.05, "the work took " .. elapsed .. " s")
      local want = math.floor(elapsed / 0.01 / (5 * H.slowdown))
      assert.is_true(ticks >= want,
        string.format("%d ticks in %.3f s, want %d or more", ticks, elapsed, want))
      H.below(gap, 0.3, "the longest gap between ticks")
    end)

    it("the ticker has teeth: a blocking result() in a coroutine silences it #latency", function()
      local pool <close> = loom.pool(1)
      local cq = cqueues.new()
      local s = ticker(cq)
      cq:wrap(function()
        cqueues.sleep(0.02)
        pool:submit(function() loom.sleep(0.3) end):result()
        cqueues.sleep(0.03)
        s.stop = true
      end)
      loop(cq, 10)
      assert.is_true(s.gap >= 0.25, "longest gap " .. s.gap)
    end)

    it("raises the task's error in the awaiting coroutine", function()
      local pool <close> = loom.pool(1)
      local cq = cqueues.new()
      local err
      cq:wrap(function()
        local ok, e = pcall(lcq.await, pool:submit(function() error("boom", 0) end))
        assert(not ok)
        err = e
      end)
      loop(cq, 10)
      assert.matches("^boom", err)
    end)

    it("awaits an event and takes queue items, many coroutines at once", function()
      local e, q = loom.event(), loom.queue()
      local cq = cqueues.new()
      local set, got = 0, {}
      for _ = 1, 5 do
        cq:wrap(function() if lcq.await(e) then set = set + 1 end end)
      end
      for c = 1, 3 do
        cq:wrap(function()
          while true do
            local v = lcq.get(q)
            if v == nil then break end
            got[#got + 1] = v
          end
          got["closed" .. c] = true
        end)
      end
      local t = loom.thread(function(ev, qq)
        loom.sleep(0.02)
        ev:set()
        for i = 1, 30 do loom.sleep(0.002); qq:put(i) end
        qq:close()
      end, e, q):start()
      loop(cq, 10)
      H.join(t, 5)
      assert.equal(5, set)
      table.sort(got)
      for i = 1, 30 do assert.equal(i, got[i]) end
      assert.is_true(got.closed1 and got.closed2 and got.closed3)
    end)

    it("refuses outside a controller, and names a bad argument", function()
      local e = loom.event()
      assert.has_error(function() lcq.await(e) end,
        "bad call to 'await' (must run inside a cqueues controller)")
      assert.has_error(function() lcq.await({}) end,
        "bad argument #1 to 'await' (loom.Future, loom.Event or loom.Process expected, got table)")
      assert.has_error(function() lcq.get(nil) end,
        "bad argument #1 to 'get' (loom.Queue expected, got nil)")
    end)
  end)

  it("examples/cqueues_app.lua runs to the end with correct results", function()
    local out, ok, code = guarded("dofile('examples/cqueues_app.lua')", 60)
    assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s", tostring(code), out))
    assert.matches("sum=10100 squares=385 exits=10 items=210 ", out)
  end)
end)
