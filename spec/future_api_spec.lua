-- loom.future() (a Future settled by Lua code), Future:error([timeout])
-- and Future:add_done_callback(fn).
local H = require "helpers"
local loom = require "loom"

local function sleeper(s, v)
  require("loom").sleep(s)
  return v
end

describe("loom.future()", function()
  it("is pending until set_result, then returns every value", function()
    local f = loom.future()
    assert.matches("^loom%.Future %(0x%x+, pending%)$", tostring(f))
    assert.is_false(f:done())
    assert.is_false(f:running())
    local v, err = f:result(0)
    assert.is_nil(v)
    assert.equal("timeout", err)
    f:set_result(1, nil, "x")
    assert.is_true(f:done())
    local a, b, c = H.result(f, 1)
    assert.equal(1, a)
    assert.is_nil(b)
    assert.equal("x", c)
    assert.matches("finished%)$", tostring(f))
  end)

  it("set_result() with no values finishes with none", function()
    local f = loom.future()
    f:set_result()
    assert.equal(0, select("#", f:result(0)))
  end)

  it("set_error raises its value as it is from result() and returns it from error()", function()
    local f = loom.future()
    local e = { code = 7 }
    f:set_error(e)
    local ok, got = pcall(f.result, f, 0)
    assert.is_false(ok)
    assert.same({ code = 7 }, got)
    assert.same({ code = 7 }, (f:error(0)))
    local g = loom.future()
    g:set_error("plain")
    ok, got = pcall(g.result, g, 0)
    assert.is_false(ok)
    assert.equal("plain", got)
    assert.matches("failed%)$", tostring(g))
  end)

  it("raises on a second settling, like InvalidStateError, and keeps the first", function()
    local f = loom.future()
    f:set_result(1)
    assert.has_error(function() f:set_result(2) end, "future already finished")
    assert.has_error(function() f:set_error("x") end, "future already finished")
    assert.equal(1, f:result(0))
    local g = loom.future()
    g:set_error("e")
    assert.has_error(function() g:set_result(1) end, "future already failed")
    local c = loom.future()
    assert.is_true(c:cancel())
    assert.has_error(function() c:set_result(1) end, "future already cancelled")
    assert.has_error(function() c:set_error("x") end, "future already cancelled")
  end)

  it("lets exactly one of many racing threads settle it", function()
    local f = loom.future()
    local wins = loom.value("int64", 0)
    local ts = {}
    for i = 1, 4 do
      ts[i] = loom.thread(function(fut, w, n)
        if pcall(fut.set_result, fut, n) then
          local g <close> = w:get_lock():hold()
          w.value = w.value + 1
        end
      end, f, wins, i):start()
    end
    for i = 1, 4 do H.join(ts[i], 5) end
    assert.equal(1, wins.value)
    assert.is_number(f:result(0))
  end)

  it("set_running_or_notify_cancel: true once, false when cancelled, raises otherwise", function()
    local f = loom.future()
    assert.is_true(f:set_running_or_notify_cancel())
    assert.is_true(f:running())
    assert.is_false(f:cancel())          -- a running future is never cancelled
    assert.has_error(function() f:set_running_or_notify_cancel() end,
      "future already running")
    f:set_result("ok")
    assert.has_error(function() f:set_running_or_notify_cancel() end,
      "future already finished")
    local c = loom.future()
    c:cancel()
    assert.is_false(c:set_running_or_notify_cancel())
    local v, err = c:result(0)
    assert.is_nil(v)
    assert.equal("cancelled", err)
  end)

  it("checks its arguments", function()
    local f = loom.future()
    assert.has_error(function() f:set_error() end,
      "bad argument #1 to 'set_error' (error value must not be nil)")
    assert.has_error(function() f:set_result(io.stdout) end,
      "cannot transfer results: userdata (FILE*)")
    assert.is_false(f:done())            -- a refused value settles nothing
    assert.has_error(function() f.set_result(loom.lock(), 1) end)
    assert.has_error(function() f:add_done_callback(1) end,
      "bad argument #1 to 'add_done_callback' (function expected, got number)")
    assert.has_error(function() f:error(-1) end,
      "bad argument #1 to 'error' (timeout must be non-negative)")
    f:set_result(1)
  end)

  it("sends an error value that cannot travel as text", function()
    local f = loom.future()
    f:set_error(coroutine.create(print))
    assert.matches("^%(error object is a thread value that cannot be sent: ", (f:error(0)))
  end)

  it("refuses to settle a pool task's future", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(sleeper, 0, 5)
    assert.has_error(function() f:set_result(1) end,
      "cannot settle the future of a pool task")
    assert.has_error(function() f:set_error("x") end,
      "cannot settle the future of a pool task")
    assert.has_error(function() f:set_running_or_notify_cancel() end,
      "cannot settle the future of a pool task")
    assert.equal(5, H.result(f, 5))
  end)

  it("is settled from another thread while result() waits", function()
    local f = loom.future()
    local t = loom.thread(function(fut)
      require("loom").sleep(0.05)
      fut:set_result("from a thread")
    end, f):start()
    assert.equal("from a thread", H.result(f, 5))
    H.join(t, 5)
  end)

  it("is settled from a forked process #fork", function()
    local f = loom.future()
    local p = loom.process(function(fut) fut:set_result("from a child", 42) end, f):start()
    local a, b = H.result(f, 10)
    assert.equal("from a child", a)
    assert.equal(42, b)
    H.join(p, 10)
    local g = loom.future()
    local p2 = loom.process(function(fut) fut:set_error("child failed") end, g):start()
    H.join(p2, 10)
    assert.equal("child failed", (g:error(0)))
  end)

  it("works with loom.wait and loom.as_completed", function()
    local a, b = loom.future(), loom.future()
    local done, not_done = loom.wait({ a, b }, 0, "any")
    assert.equal(0, #done)
    assert.equal(2, #not_done)
    local t = loom.thread(function(x) require("loom").sleep(0.05); x:set_result(1) end, b):start()
    done = loom.wait({ a, b }, H.t(5), "any")
    assert.equal(1, #done)
    assert.equal(b, done[1])
    a:set_error("e")
    done = loom.wait({ a, b }, H.t(5), "first_error")
    assert.equal(2, #done)
    local seen = 0
    for _ in loom.as_completed({ a, b }, H.t(5)) do seen = seen + 1 end
    assert.equal(2, seen)
    H.join(t, 5)
  end)

  it("outlives a closed handle while a thread holds another", function()
    local f = loom.future()
    local t = loom.thread(function(fut)
      require("loom").sleep(0.05)
      fut:set_result("kept")
    end, f):start()
    local g = loom.future()
    g:set_result(f)              -- a second handle, inside another future
    do local g2 <close> = f end
    assert.has_error(function() f:done() end, "attempt to use a closed loom.Future")
    collectgarbage()
    H.join(t, 5)
    assert.equal("kept", H.result((g:result(0)), 5))
  end)
end)

describe("loom.Future:error([timeout])", function()
  it("waits for the outcome, like Python's exception()", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(function() require("loom").sleep(0.05); error("late", 0) end)
    local err, tb = f:error(H.t(5))
    assert.equal("late", err)
    assert.matches("^stack traceback:", tb)
  end)

  it("waits without a timeout", function()
    local f = loom.future()
    local t = loom.thread(function(x) require("loom").sleep(0.05); x:set_error("e") end, f):start()
    assert.equal("e", (f:error()))
    H.join(t, 5)
  end)

  it("returns fail, 'timeout' when the future is still pending", function()
    local f = loom.future()
    local v, err = f:error(0.01)
    assert.is_nil(v)
    assert.equal("timeout", err)
  end)

  it("is nil after a success and 'cancelled' after a cancel", function()
    local f = loom.future()
    f:set_result(1)
    local v, e = f:error(0)
    assert.is_nil(v)
    assert.is_nil(e)
    local c = loom.future()
    c:cancel()
    assert.equal("cancelled", c:error())
  end)
end)

describe("loom.Future:add_done_callback(fn)", function()
  it("runs at once, with the same handle, when the future is done", function()
    local f = loom.future()
    f:set_result(1)
    local got
    f:add_done_callback(function(x) got = x end)
    assert.equal(f, got)
  end)

  it("runs each callback once, in the order added, when its own set_result finishes it", function()
    local f = loom.future()
    local order = {}
    f:add_done_callback(function() order[#order + 1] = "a" end)
    f:add_done_callback(function() order[#order + 1] = "b" end)
    assert.same({}, order)
    f:set_result(1)
    assert.same({ "a", "b" }, order)
    f:result(0)
    f:done()
    assert.same({ "a", "b" }, order)
  end)

  it("runs in the owner's interpreter when it next waits on a future a worker finished", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(sleeper, 0.05, 9)
    local got
    f:add_done_callback(function(x) got = x:result(0) end)
    assert.is_nil(got)
    loom.wait({ f }, H.t(5))
    assert.equal(9, got)
  end)

  it("runs when the owner polls any future, or steps as_completed", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(sleeper, 0, 1)
    local other = loom.future()
    local ran = false
    f:add_done_callback(function() ran = true end)
    local deadline = loom.now() + H.t(5)
    while not ran and loom.now() < deadline do
      other:done()               -- a poll of an unrelated future
      loom.sleep(0.001)
    end
    assert.is_true(ran)
    local g = pool:submit(sleeper, 0.02, 2)
    local ran2 = false
    g:add_done_callback(function() ran2 = true end)
    for _ in loom.as_completed({ g }, H.t(5)) do assert.is_true(ran2) end
  end)

  it("runs each of many callbacks exactly once, for tasks of a process pool #fork", function()
    local pool <close> = loom.pool{ workers = 2, kind = "process" }
    local fs, count = {}, {}
    for i = 1, 40 do
      fs[i] = pool:submit(function(x) return x * 2 end, i)
      fs[i]:add_done_callback(function(f) count[i] = (count[i] or 0) + (f:result(0) == 2 * i and 1 or 100) end)
    end
    local done = loom.wait(fs, H.t(20))
    assert.equal(40, #done)
    for i = 1, 40 do
      fs[i]:done()
      assert.equal(1, count[i], "callback " .. i)
    end
  end)

  it("survives a callback that closes the handle being waited on", function()
    local f = loom.future()
    local t = loom.thread(function(x) require("loom").sleep(0.02); x:set_result(1) end, f):start()
    f:add_done_callback(function(x) getmetatable(x).__close(x) end)
    assert.has_error(function() f:result(H.t(5)) end, "attempt to use a closed loom.Future")
    H.join(t, 5)
    local g = loom.future()
    g:add_done_callback(function(x) getmetatable(x).__close(x) end)
    g:set_result(2)
    collectgarbage()
    local list = { loom.future() }
    list[1]:add_done_callback(function(x) getmetatable(x).__close(x) end)
    list[1]:cancel()
    local other = loom.future()
    other:set_result(0)
    local done = loom.wait({ other }, 0)
    assert.equal(1, #done)
  end)

  it("runs for a cancelled future", function()
    local f = loom.future()
    local got
    f:add_done_callback(function(x) got = x:cancelled() end)
    f:cancel()
    assert.is_true(got)
  end)

  it("reports a failing callback on stderr with a traceback, and runs the others", function()
    local out = H.run([[
      local loom = require "loom"
      local f = loom.future()
      local ran = false
      f:add_done_callback(function() error("callback broke") end)
      f:add_done_callback(function() ran = true end)
      f:set_result(1)
      print("ran", ran, f:result(0))
    ]])
    assert.matches("loom: exception in a future's done callback: [^\n]*callback broke\nstack traceback:", out)
    assert.matches("ran\ttrue\t1", out)
  end)

  it("still runs, with a handle of its own, when the caller closed theirs", function()
    local f = loom.future()
    local other = loom.future()
    local got
    local t = loom.thread(function(x)
      require("loom").sleep(0.05)
      x:set_result("later")
    end, f):start()
    do
      local h <close> = f
      h:add_done_callback(function(x) got = x:result(0) end)
    end
    collectgarbage()
    H.join(t, 5)
    other:done()                 -- any future call runs the ready callbacks
    assert.equal("later", got)
  end)

  it("runs in the forked child's interpreter only for the child's own callbacks #fork", function()
    local out = H.run([[
      local loom = require "loom"
      local f = loom.future()
      f:add_done_callback(function() print("parent callback in " .. (loom.current().name)) end)
      local p = loom.process(function(fut)
        fut:set_result(1)     -- the child does not run the parent's callback
        local g = loom.future()
        g:add_done_callback(function() print("child callback") end)
        g:set_result(2)
      end, f):start()
      p:join(10)
      f:result(10)
    ]])
    local _, parents = out:gsub("parent callback", "")
    assert.equal(1, parents, out)
    assert.matches("child callback", out)
  end)

  it("runs in the shared interpreter for a shared thread's wait", function()
    local f = loom.future()
    local got = {}
    f:add_done_callback(function() got[#got + 1] = loom.current().name end)
    local t = loom.shared_thread{ name = "waiter", target = function()
      return f:result(H.t(5))
    end }:start()
    loom.sleep(0.02)
    local setter = loom.thread(function(x) x:set_result(3) end, f):start()
    assert.equal(3, H.result(t, 5))
    H.join(setter, 5)
    f:done()
    assert.equal(1, #got)
  end)
end)
