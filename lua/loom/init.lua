-- loom: real concurrency and parallelism for Lua 5.4.
-- The public module: thin conveniences over loom.core.

-- loom.core is built against Lua 5.4's API: under another Lua its loading
-- fails with a linker message that names a missing symbol, not the cause.
if _VERSION ~= "Lua 5.4" then
  error(string.format("loom needs Lua 5.4, and this is %s%s", tostring(_VERSION),
    type(rawget(_G, "jit")) == "table" and " (LuaJIT)" or ""), 2)
end

local core
do
  local ok, err = pcall(require, "loom.core")
  if not ok then
    -- a host that links Lua statically but does not export its symbols
    if type(err) == "string" and err:find("undefined symbol: lua", 1, true) then
      error(err .. "\nloom.core calls the Lua API of the program that loads it: " ..
        "a host that links Lua statically must export those symbols " ..
        "(link it with -Wl,-E), or link liblua5.4.so", 2)
    end
    error(err, 2)
  end
  core = err
end
local options = require "loom.options"

local error, type, setmetatable = error, type, setmetatable
local table_pack = table.pack

local M = {}

for name, fn in pairs(core) do
  M[name] = fn
end
-- internals of loom.gil, not part of the public module; excepthook below
-- checks its argument before it reaches set_excepthook
M.gil_prepare, M.gil_sethook, M.gil_gethook = nil, nil, nil
M.set_excepthook = nil

local call_options, check_fds = options.call, options.check_fds

--- loom.thread(fn, ...) or loom.thread{target=, args=, name=, daemon=,
-- shared=}: a thread that runs fn(...) in its own interpreter once started,
-- or, with shared=true, in this one under the global interpreter lock.
function M.thread(...)
  local target, args, o = call_options("thread", ...)
  if o.shared then
    require("loom.gil").install()
    return core.shared_thread(target, args, o.name, o.daemon)
  end
  return core.thread(target, args, o.name, o.daemon)
end

--- loom.shared_thread(fn, ...) or loom.shared_thread{target=, args=, ...}:
-- the same as loom.thread with shared=true.
function M.shared_thread(...)
  local target, args, o = call_options("shared_thread", ...)
  require("loom.gil").install()
  return core.shared_thread(target, args, o.name, o.daemon)
end

--- loom.excepthook(fn): fn(info) receives {name=, ident=, error=, traceback=}
-- for every thread error nobody collected; returns the previous reporter.
function M.excepthook(fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("bad argument #1 to 'excepthook' (function expected, got " .. type(fn) .. ")", 2)
  end
  return core.set_excepthook(fn)
end

-- `local` is a reserved word: loom["local"]() or loom.thread_local().
M.thread_local = core["local"]

-- The body of a timer's thread: waits out the interval unless cancelled,
-- then runs fn if it wins the gate cancel() also tries.  No upvalues: it
-- is copied into the thread with the arguments.
local function timer_body(finished, gate, interval, fn, ...)
  if finished:wait(interval) then
    return
  end
  if not gate:acquire(false) then
    return
  end
  finished:set()
  return fn(...)
end

local Timer = { __name = "loom.Timer" }
local timer_methods = {}
local timer_fields = { name = true, ident = true, native_id = true, daemon = true }

Timer.__index = function(t, k)
  local m = timer_methods[k]
  if m then return m end
  if k == "status" then
    if t.stopped.value then return "cancelled" end
    return t.thread.status
  end
  if timer_fields[k] then return t.thread[k] end
  return nil
end

Timer.__newindex = function(t, k, v)
  if k == "name" or k == "daemon" then
    t.thread[k] = v
    return
  end
  error("cannot set field '" .. tostring(k) .. "' of a loom.Timer", 2)
end

Timer.__tostring = function(t)
  return (tostring(t.thread):gsub("^loom%.Thread", "loom.Timer"))
end

--- timer:start() -> timer, or fail, message, errno as Thread:start().
function timer_methods.start(t)
  local ok, err, code = t.thread:start()
  if not ok then return ok, err, code end
  return t
end

--- timer:cancel() -> true when this call stopped fn from running, false
-- when it had started already (or was cancelled before).  Never waits.
function timer_methods.cancel(t)
  t.finished:set()
  local stopped = t.gate:acquire(false)
  if stopped then t.stopped.value = true end
  return stopped
end

function timer_methods.join(t, timeout) return t.thread:join(timeout) end
function timer_methods.result(t, timeout) return t.thread:result(timeout) end
function timer_methods.error(t) return t.thread:error() end
function timer_methods.is_alive(t) return t.thread:is_alive() end

--- loom.timer(interval, fn, ...): a thread (not yet started) that runs
-- fn(...) after interval seconds unless cancelled first; threading.Timer.
function M.timer(interval, fn, ...)
  if type(interval) ~= "number" or interval ~= interval then
    error("bad argument #1 to 'timer' (number expected, got " .. type(interval) .. ")", 2)
  end
  if interval < 0 then
    error("bad argument #1 to 'timer' (interval must be non-negative)", 2)
  end
  if type(fn) ~= "function" then
    error("bad argument #2 to 'timer' (function expected, got " .. type(fn) .. ")", 2)
  end
  -- shared, so that a copy of the timer in another thread or process
  -- cancels this one and sees the same status
  local finished, gate = core.event(), core.semaphore(1)
  local stopped = core.value("bool", false, false)
  local thread = core.thread(timer_body,
    table_pack(finished, gate, interval, fn, ...), nil, false)
  return setmetatable({ thread = thread, finished = finished, gate = gate,
                        stopped = stopped, interval = interval }, Timer)
end

--- loom.process(fn, ...) or loom.process{target=, args=, name=, daemon=,
-- close_fds=, pass_fds=}: a process that, once started, runs fn(...) in a
-- forked copy of this interpreter.
function M.process(...)
  local target, args, o = call_options("process", ...)
  local close_fds, pass_fds = check_fds("process", o.close_fds, o.pass_fds, 3)
  return core.process(target, args, o.name, o.daemon, close_fds, pass_fds)
end
M.pipe = require("loom.pipe").pipe

setmetatable(M, { __name = "loom" })
return M
