-- Ctrl-C during a wait on the main thread: lua5.4's SIGINT handler only
-- sets a hook, so every loom wait must notice it and return to Lua, where
-- the hook raises "interrupted!", within 0.1 s, leaving the object it
-- waited on consistent and usable.  Each case runs in its own lua5.4 (whose
-- handler is the one under test) under timeout(1): a wait that never
-- notices the signal fails the spec instead of hanging it.
local H = require "helpers"

-- A fresh lua5.4 killed after H.t(limit) s: a hang fails, not hangs.
local guarded = H.run

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
    -- not os.execute: system() ignores SIGINT in the whole process while
    -- its child runs
    local sh = io.popen("kill -INT " .. pid)
    sh:close()
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

-- lua.c's handler puts SIGINT back to its default once it ran, so each
-- chunk is interrupted once: {name, setup, the interrupted call, checks}.
local cases = {
  {"event:wait()", "local e = loom.event()", "e:wait()",
   "e:set(); assert(e:wait(0) == true)"},
  {"event:wait(30)", "local e = loom.event()", "e:wait(30)",
   "e:set(); assert(e:wait(0) == true)"},
  {"loom.sleep(30)", "", "loom.sleep(30)", ""},
  {"lock:acquire()", "local l = loom.lock(); l:acquire()", "l:acquire()",
   "assert(l:locked()); l:release(); assert(l:acquire(false)); l:release()"},
  {"lock:acquire(true, 30)", "local l = loom.lock(); l:acquire()",
   "l:acquire(true, 30)",
   "assert(l:locked()); l:release(); assert(l:acquire(false)); l:release()"},
  {"rlock:acquire() held by a thread",
   [[local r, e, held = loom.rlock(), loom.event(), loom.event()
     local t = loom.thread(function(rl, ev, h) rl:acquire(); h:set(); ev:wait(); rl:release() end,
       r, e, held):start()
     H.wait(held, 10)]], "r:acquire()",
   "e:set(); H.join(t, 10); assert(r:acquire(false)); r:release()"},
  {"semaphore:acquire()", "local s = loom.semaphore(0)", "s:acquire()",
   "assert(s:get_value() == 0); s:release(); assert(s:acquire(false))"},
  {"semaphore:acquire(true, 30)", "local s = loom.semaphore(0)",
   "s:acquire(true, 30)",
   "assert(s:get_value() == 0); s:release(); assert(s:acquire(false))"},
  {"queue:get()", "local q = loom.queue()", "q:get()",
   "q:put(3); assert(q:get(0) == 3 and q:size() == 0)"},
  {"queue:get(30)", "local q = loom.queue()", "q:get(30)",
   "q:put(3); assert(q:get(0) == 3 and q:size() == 0)"},
  {"a full queue's put()", "local q = loom.queue(1); q:put(1)", "q:put(2)",
   "assert(q:size() == 1 and q:get(0) == 1); q:put(3); assert(q:get(0) == 3)"},
  {"a full queue's put(v, 30)", "local q = loom.queue(1); q:put(1)",
   "q:put(2, 30)",
   "assert(q:size() == 1 and q:get(0) == 1); q:put(3); assert(q:get(0) == 3)"},
  {"condition:wait()", "local c = loom.condition(); c:acquire()", "c:wait()",
   "c:release(); assert(c:acquire(false)); c:release()"},
  {"condition:wait(30)", "local c = loom.condition(); c:acquire()",
   "c:wait(30)", "c:release(); assert(c:acquire(false)); c:release()"},
  {"condition:wait_for()", "local c = loom.condition(); c:acquire()",
   "c:wait_for(function() return false end)",
   "c:release(); assert(c:acquire(false)); c:release()"},
  {"barrier:wait(), which breaks it", "local b = loom.barrier(2)", "b:wait()",
   "assert(b.broken)"},
  {"thread:join()",
   "local e = loom.event(); local t = loom.thread(function(ev) ev:wait(); return 42 end, e):start()",
   "t:join()", "e:set(); assert(H.result(t, 10) == 42)"},
  {"thread:result(30)",
   "local e = loom.event(); local t = loom.thread(function(ev) ev:wait(); return 42 end, e):start()",
   "t:result(30)", "e:set(); assert(H.result(t, 10) == 42)"},
  {"a shared thread's join()",
   "local e = loom.event(); local t = loom.thread{target = function(ev) ev:wait(); return 42 end, args = {e}, shared = true}:start()",
   "t:join()", "e:set(); assert(H.result(t, 10) == 42)"},
  {"future:result()",
   "local e, pool = loom.event(), loom.pool(1); local f = pool:submit(function(ev) ev:wait(); return 7 end, e)",
   "f:result()",
   "e:set(); assert(H.result(f, 10) == 7); assert(pool:shutdown(true, false, H.t(10)))"},
  {"loom.wait(futures)",
   "local e, pool = loom.event(), loom.pool(1); local f = pool:submit(function(ev) ev:wait(); return 7 end, e)",
   "loom.wait({f})",
   "e:set(); assert(H.result(f, 10) == 7); assert(pool:shutdown(true, false, H.t(10)))"},
  {"pool:shutdown(true)",
   "local e, pool = loom.event(), loom.pool(1); local f = pool:submit(function(ev) ev:wait(); return 7 end, e)",
   "pool:shutdown(true)",
   "e:set(); assert(H.result(f, 10) == 7); assert(pool:shutdown(true, false, H.t(10)))"},
  {"process:join()",
   "local e = loom.event(); local p = loom.process(function(ev) ev:wait(); return 5 end, e):start()",
   "p:join()", "e:set(); assert(H.result(p, 10) == 5)"},
  {"process:result(30)",
   "local e = loom.event(); local p = loom.process(function(ev) ev:wait(); return 5 end, e):start()",
   "p:result(30)", "e:set(); assert(H.result(p, 10) == 5)"},
}

describe("Ctrl-C on the main thread", function()
  for _, c in ipairs(cases) do
    it("interrupts " .. c[1] .. " and leaves it usable", function()
      expect(c[2] .. "\ninterrupted(" .. string.format("%q", c[1]) ..
        ", function() " .. c[3] .. " end)\n" .. c[4])
    end)
  end
end)

-- lua.c sets its hook on the main coroutine only: a wait inside another
-- coroutine must notice it too, and raise where it waits.
local in_coroutine = {
  {"event:wait()", "local e = loom.event()", "e:wait()",
   "e:set(); assert(e:wait(0) == true)"},
  {"queue:get(30)", "local q = loom.queue()", "q:get(30)",
   "q:put(3); assert(q:get(0) == 3 and q:size() == 0)"},
  {"lock:acquire()", "local l = loom.lock(); l:acquire()", "l:acquire()",
   "assert(l:locked()); l:release(); assert(l:acquire(false)); l:release()"},
  {"loom.sleep(30)", "", "loom.sleep(30)", ""},
  {"thread:join()",
   "local e = loom.event(); local t = loom.thread(function(ev) ev:wait(); return 42 end, e):start()",
   "t:join()", "e:set(); assert(H.result(t, 10) == 42)"},
  {"process:join()",
   "local e = loom.event(); local p = loom.process(function(ev) ev:wait(); return 5 end, e):start()",
   "p:join()", "e:set(); assert(H.result(p, 10) == 5)"},
}

describe("Ctrl-C on the main thread inside a coroutine", function()
  for _, c in ipairs(in_coroutine) do
    it("interrupts " .. c[1] .. " in coroutine.wrap", function()
      expect(c[2] .. "\ninterrupted(" .. string.format("%q", c[1]) ..
        ", coroutine.wrap(function() " .. c[3] .. " end))\n" .. c[4])
    end)
  end

  it("raises once, inside the coroutine, where a pcall catches it", function()
    expect([[
local e = loom.event()
local caught, after
interrupted("a nested coroutine", function()
  local co = coroutine.wrap(function()
    return coroutine.wrap(function()
      local ok, err = pcall(e.wait, e)
      caught = err
      return ok
    end)()
  end)
  co()
  after = true   -- the main coroutine is not interrupted a second time
  error(caught, 0)
end)
assert(after)
e:set(); assert(e:wait(0) == true)
]])
  end)

  it("interrupts a wait in a coroutine run by coroutine.resume", function()
    expect([[
local q = loom.queue()
interrupted("resume", function()
  local ok, err = coroutine.resume(coroutine.create(function() return q:get() end))
  assert(not ok)
  error(err, 0)
end)
q:put(1); assert(q:get(0) == 1)
]])
  end)
end)
