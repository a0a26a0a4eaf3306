-- Ctrl-C during a wait on the main thread: lua5.4's SIGINT handler only
-- sets a hook, so every loom wait must notice it and return to Lua, where
-- the hook raises "interrupted!", within 0.1 s, leaving the object it
-- waited on consistent and usable.  Each case runs in its own lua5.4 (whose
-- handler is the one under test) under timeout(1): a wait that never
-- notices the signal fails the spec instead of hanging it.
local H = require "helpers"

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

-- In the chunk: interrupted(fn) runs fn, has a loom thread (which blocks
-- SIGINT, so the signal lands on the main thread) send SIGINT to this
-- process after 0.2 s, and asserts that fn raised "interrupted!" within
-- H.t(0.1) s of the signal being sent.
local PRELUDE = [[
local loom = require "loom"
local H = require "helpers"
local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  return pid
end
local sent = loom.value("double", 0)
local function interrupted(what, fn)
  local t = loom.thread(function(pid, v)
    loom.sleep(0.2)
    v.value = loom.now()
    os.execute("kill -INT " .. pid)
  end, mypid(), sent):start()
  local ok, err = pcall(fn)
  local at = loom.now()
  H.join(t, 10)
  assert(not ok, what .. ": returned instead of raising")
  assert(tostring(err):match("interrupted!"), what .. ": " .. tostring(err))
  -- the shell that sends the signal starts after `sent`: its time counts
  H.below(at - sent.value, 0.1 + 0.1, what .. ": interruption")
end
]]

local function expect(body, limit)
  local out, ok, code = guarded(PRELUDE .. body .. '\nprint("done")\n', limit or 30)
  assert(ok, string.format("exit %s (124: hung, killed by timeout):\n%s",
    tostring(code), out))
  assert.matches("done", out)
end

describe("Ctrl-C on the main thread", function()
  it("interrupts event:wait() with and without a timeout", function()
    expect([[
local e = loom.event()
interrupted("wait()", function() e:wait() end)
interrupted("wait(30)", function() e:wait(30) end)
e:set()
assert(e:wait(0) == true)
]])
  end)

  it("interrupts loom.sleep()", function()
    expect([[
interrupted("sleep", function() loom.sleep(30) end)
]])
  end)

  it("interrupts lock:acquire(); the lock stays held by its holder", function()
    expect([[
local l = loom.lock()
l:acquire()
interrupted("acquire()", function() l:acquire() end)
interrupted("acquire(true, 30)", function() l:acquire(true, 30) end)
assert(l:locked())
l:release()
assert(l:acquire(false))
l:release()
]])
  end)

  it("interrupts semaphore:acquire() without taking a count", function()
    expect([[
local s = loom.semaphore(0)
interrupted("acquire()", function() s:acquire() end)
interrupted("acquire(true, 30)", function() s:acquire(true, 30) end)
assert(s:get_value() == 0)
s:release()
assert(s:acquire(false))
]])
  end)

  it("interrupts queue:get() and a full queue's put()", function()
    expect([[
local q = loom.queue(1)
interrupted("get()", function() q:get() end)
interrupted("get(30)", function() q:get(30) end)
q:put(1)
interrupted("put()", function() q:put(2) end)
interrupted("put(v, 30)", function() q:put(2, 30) end)
assert(q:size() == 1 and q:get(0) == 1)
q:put(3)
assert(q:get(0) == 3)
]])
  end)

  it("interrupts condition:wait(); the lock is held again after", function()
    expect([[
local c = loom.condition()
c:acquire()
interrupted("wait()", function() c:wait() end)
interrupted("wait(30)", function() c:wait(30) end)
c:release()
assert(c:acquire(false))
c:release()
]])
  end)

  it("interrupts barrier:wait(), which breaks the barrier", function()
    expect([[
local b = loom.barrier(2)
interrupted("wait()", function() b:wait() end)
assert(b.broken)
b:reset()
assert(not b.broken)
]])
  end)

  it("interrupts a thread's join() and result(); the thread goes on", function()
    expect([[
local e = loom.event()
local t = loom.thread(function(ev) ev:wait(); return 42 end, e):start()
interrupted("join()", function() t:join() end)
interrupted("result(30)", function() t:result(30) end)
e:set()
assert(H.result(t, 10) == 42)
]])
  end)

  it("interrupts a future's result(), loom.wait and a pool's shutdown", function()
    expect([[
local e = loom.event()
local pool = loom.pool(1)
local f = pool:submit(function(ev) ev:wait(); return 7 end, e)
interrupted("result()", function() f:result() end)
interrupted("loom.wait", function() loom.wait({f}) end)
interrupted("shutdown", function() pool:shutdown(true) end)
e:set()
assert(H.result(f, 10) == 7)
assert(pool:shutdown(true, false, H.t(10)))
]])
  end)

  it("interrupts a process's join() and result()", function()
    expect([[
local e = loom.event()
local p = loom.process(function(ev) ev:wait(); return 5 end, e):start()
interrupted("join()", function() p:join() end)
interrupted("result(30)", function() p:result(30) end)
e:set()
assert(H.result(p, 10) == 5)
]])
  end)
end)
