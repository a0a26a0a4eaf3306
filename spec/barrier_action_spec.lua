-- loom.Barrier's action: run once per trip by the party that trips it,
-- before the others are released, in whatever thread or process that is.
local loom = require "loom"
local H = require "helpers"

-- A fresh lua5.4 killed after H.t(limit) s: a hang fails, not hangs.
local guarded = H.run

local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  return pid
end

describe("loom.Barrier action", function()
  describe("constructor", function()
    it("takes an options table or a third argument", function()
      local b = loom.barrier(1, { action = function() end, timeout = 5 })
      assert.equal(0, b:wait())
      b = loom.barrier(1, nil, function() end)
      assert.equal(0, b:wait())
      b = loom.barrier(1, {})
      assert.equal(0, b:wait())
    end)

    it("raises naming the argument for a bad action or option", function()
      assert.has_error(function() loom.barrier(2, nil, 42) end,
                       "bad argument #3 to 'barrier' (function expected, got number)")
      assert.has_error(function() loom.barrier(2, { action = 42 }) end,
                       "bad argument #2 to 'barrier' (action must be a function)")
      assert.has_error(function() loom.barrier(2, { timeout = "x" }) end,
                       "bad argument #2 to 'barrier' (timeout must be a number)")
      assert.has_error(function() loom.barrier(2, { timeout = -1 }) end,
                       "bad argument #2 to 'barrier' (timeout must be non-negative)")
      assert.has_error(function() loom.barrier(2, {}, print) end,
                       "bad argument #3 to 'barrier' (no argument expected after options)")
      local f = io.tmpfile()
      finally(function() f:close() end)
      assert.has_error(function() loom.barrier(2, { action = function() return f end }) end,
                       "cannot transfer action<upvalue f>: userdata (FILE*)")
    end)
  end)

  it("runs once per generation, before any party is released", function()
    local runs = loom.value("int64", 0)
    local seen = loom.queue()
    local b = loom.barrier(3, { action = function() runs:add(1) end })
    local ts = {}
    for k = 1, 3 do
      ts[k] = loom.thread(function()
        for _ = 1, 20 do
          b:wait(H.t(20))
          seen:put(runs.value)       -- every party sees this trip's run
          b:wait(H.t(20))
        end
        return true
      end):start()
    end
    finally(function() b:abort(); for _, t in ipairs(ts) do t:join(H.t(10)) end end)
    for _, t in ipairs(ts) do assert(H.result(t, 60)) end
    assert.equal(40, runs.value)
    local counts = {}
    for _ = 1, 60 do
      local v = seen:try_get()
      counts[v] = (counts[v] or 0) + 1
    end
    for g = 1, 20 do assert.equal(3, counts[2 * g - 1], "generation " .. g) end
  end)

  it("runs in the party that trips the barrier, which gets index n-1", function()
    local who = loom.queue()
    local b = loom.barrier(2, { action = function() who:put(loom.current().name) end })
    local t = loom.thread { target = function() return b:wait(H.t(20)) end, name = "first" }:start()
    finally(function() b:abort(); t:join(H.t(10)) end)
    while b.n_waiting < 1 do loom.sleep(0.001) end
    assert.equal(1, b:wait(H.t(20)))
    assert.equal(0, H.result(t, 20))
    assert.equal(loom.current().name, who:try_get())
  end)

  it("an error breaks the barrier: the runner raises it, the others 'broken barrier'", function()
    local b = loom.barrier(2, { action = function() error("action failed", 0) end })
    local t = loom.thread(function()
      local ok, err = pcall(b.wait, b, H.t(20))
      return ok, err
    end):start()
    finally(function() b:abort(); t:join(H.t(10)) end)
    while b.n_waiting < 1 do loom.sleep(0.001) end
    assert.has_error(function() b:wait(H.t(20)) end, "action failed")
    assert.same({ false, "broken barrier" }, { H.result(t, 20) })
    assert.is_true(b.broken)
    b:reset()
    assert.is_false(b.broken)
  end)

  it("keeps the others waiting past their timeout while it runs", function()
    local b = loom.barrier(2, { action = function() loom.sleep(0.3) end })
    local t = loom.thread(function() return b:wait(0.05) end):start()
    finally(function() b:abort(); t:join(H.t(10)) end)
    while b.n_waiting < 1 do loom.sleep(0.001) end
    loom.sleep(0.02)
    assert.equal(1, b:wait())
    assert.equal(0, H.result(t, 20))
    assert.is_false(b.broken)
  end)

  it("an abort while it runs breaks the generation for every party", function()
    local started = loom.event()
    local b = loom.barrier(1, { action = function() started:set(); loom.sleep(0.2) end })
    local t = loom.thread(function() started:wait(); b:abort() end):start()
    finally(function() started:set(); t:join(H.t(10)) end)
    assert.has_error(function() b:wait() end, "broken barrier")
    H.join(t, 10)
    assert.is_true(b.broken)
  end)

  it("a shared thread may trip it", function()
    local n = 0
    local b = loom.barrier(2, { action = function() n = n + 1 end })
    local t = loom.shared_thread(function() return b:wait(H.t(20)) end):start()
    finally(function() b:abort(); t:join(H.t(10)) end)
    b:wait(H.t(20))
    H.result(t, 20)
    assert.equal(0, n)                 -- the action is a copy, as a thread's target
  end)

  local describe_processes = loom.process and describe or pending
  describe_processes("between processes", function()
    it("a child that trips it runs the action in the child", function()
      local pids = loom.queue()
      local b = loom.barrier(2, { action = function() pids:put(mypid()) end })
      local p = loom.process(function() return b:wait(60) end)
      -- the parent arrives first, so the child trips it
      local t = loom.thread(function() return b:wait(60) end):start()
      finally(function() b:abort(); t:join(H.t(10)); p:join(H.t(10)) end)
      while b.n_waiting < 1 do loom.sleep(0.001) end
      p:start()
      assert.equal(1, H.result(p, 30))
      assert.equal(0, H.result(t, 30))
      local pid = pids:try_get()
      assert.is_number(pid)
      assert.not_equal(mypid(), pid)
    end)

    it("a runner killed in the action breaks it instead of holding the others", function()
      local out, ok, code = guarded([[
local loom = require "loom"
local started = loom.event()
local b = loom.barrier(2, { action = function() started:set(); loom.sleep(60) end })
local t = loom.thread(function() return pcall(b.wait, b) end):start()
while b.n_waiting < 1 do loom.sleep(0.001) end
local p = loom.process(function() b:wait() end):start()
assert(started:wait(30), "the child never ran the action")
p:kill(); p:join()
print(t:result())
local again = loom.thread(function() return pcall(b.wait, b, 0.1) end):start()
print(again:result())
b:reset()
print(b.broken, b.n_waiting)
]], 60)
      assert(ok, string.format("exit %s (124: hung):\n%s", tostring(code), out))
      assert.equal("false\tbroken barrier\nfalse\tbroken barrier\nfalse\t0\n", out)
    end)
  end)
end)
