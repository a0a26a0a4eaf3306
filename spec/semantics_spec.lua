-- Semantics: results that must never be silently wrong, and promises the
-- README makes about cancellation, barriers, queues and thread handles.
local loom = require "loom"
local H = require "helpers"

local function scaled(s)
  return s * H.slowdown
end

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
                       { 1, 2, 3, 4 }, { timeout = scaled(30) })
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
