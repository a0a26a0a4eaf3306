-- loom.luv: loom inside a luv (libuv) event loop.
-- await(x) in a coroutine resumed from luv callbacks yields until x is
-- done, and the loop keeps running meanwhile; run_in_pool(pool, fn, ...,
-- callback) calls callback on the loop thread.  Built only on loom's
-- public surface: a notifier whose descriptor a uv poll handle watches,
-- and the non-blocking forms (done(), is_set(), try_get(), is_alive()).
local uv = require "luv"
local loom = require "loom"

local assert, coroutine, error, ipairs, pcall, select, type, xpcall =
  assert, coroutine, error, ipairs, pcall, select, type, xpcall
local getmetatable, setmetatable, tostring, traceback =
  getmetatable, setmetatable, tostring, debug.traceback
local table_pack, table_unpack = table.pack, table.unpack

local M = {}

local notifier, poll   -- made on first use
local pending = 0      -- callbacks still to come from the notifier

local function dispatch()
  local first
  for _, cb in ipairs(notifier:drain()) do
    pending = pending - 1
    -- one callback's error must not lose the others' completions
    local ok, err = xpcall(cb, traceback)
    if not ok and first == nil then first = err end
  end
  if pending == 0 then poll:stop() end
  if first ~= nil then error(first, 0) end
end

-- Calls cb on the loop thread once obj completes; returns the watch id.
local function watch(obj, cb)
  if notifier == nil then
    notifier = assert(loom.notifier())
    poll = uv.new_poll(notifier:fd())
  end
  local id = notifier:watch(obj, cb)
  pending = pending + 1
  if pending == 1 then poll:start("r", dispatch) end
  return id
end

local function unwatch(id)
  local k = notifier:unwatch(id)
  pending = pending - k
  if pending == 0 then poll:stop() end
end

local function typename(x)
  local mt = getmetatable(x)
  return type(mt) == "table" and mt.__name or type(x)
end

local function current(fname)
  local co, main = coroutine.running()
  if main or not coroutine.isyieldable() then
    error("bad call to '" .. fname .. "' (must run inside a coroutine)", 3)
  end
  return co
end

-- Resumes co from a loop callback; its error surfaces there, with co's
-- traceback.
local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then error(traceback(co, tostring(err)), 0) end
end

-- Yields co until obj's watch fires (a future, event, queue or process).
local function wait_for(co, obj)
  local fired = false
  local id
  id = watch(obj, function()
    fired = true
    notifier:unwatch(id)   -- an event's or queue's watch stays otherwise
    if coroutine.status(co) == "suspended" then resume(co) end
  end)
  -- a coroutine closed while it waits gives its watch back
  local _ <close> = setmetatable({}, { __close = function()
    if not fired then unwatch(id) end
  end })
  repeat coroutine.yield() until fired
end

--- await(x): inside a coroutine, yields until x is done, then returns what
-- its blocking call would: a Future's result() (raising its error), true for
-- an Event once set, true once a Process has ended (then read p.exitcode).
function M.await(x)
  local tn = typename(x)
  if tn == "loom.Future" then
    if not x:done() then wait_for(current("await"), x) end
    return x:result(0)
  elseif tn == "loom.Event" then
    if not x:is_set() then wait_for(current("await"), x) end
    return true
  elseif tn == "loom.Process" then
    if x:is_alive() then wait_for(current("await"), x) end
    return x:join(0)
  end
  error("bad argument #1 to 'await' (loom.Future, loom.Event or loom.Process expected, got " .. tn .. ")", 2)
end

--- get(queue): inside a coroutine, the next item of a loom queue, yielding
-- while it is empty; nil, "closed" once it is closed and drained.
function M.get(q)
  if typename(q) ~= "loom.Queue" then
    error("bad argument #1 to 'get' (loom.Queue expected, got " .. typename(q) .. ")", 2)
  end
  local co
  while true do
    local v, err = q:try_get()
    if v ~= nil or err == "closed" then return v, err end
    co = co or current("get")
    wait_for(co, q)
  end
end

-- A finished future's outcome as (true, results...) or (false, error).
local function outcome(f)
  if f:cancelled() then return false, "cancelled" end
  return pcall(f.result, f, 0)
end

--- run_in_pool(pool, fn, ..., callback): submits fn(...) to the pool and
-- returns its future; once it finishes, callback(true, results...) or
-- callback(false, error) runs on the loop thread.
function M.run_in_pool(pool, fn, ...)
  local n = select("#", ...)
  local cb = n > 0 and select(n, ...) or nil
  if type(cb) ~= "function" then
    error("bad argument #" .. (n + 2) .. " to 'run_in_pool' (callback function expected, got " .. type(cb) .. ")", 2)
  end
  local args = table_pack(...)
  local f = pool:submit(fn, table_unpack(args, 1, n - 1))
  watch(f, function() cb(outcome(f)) end)
  return f
end

--- pending(): how many awaits and callbacks are still to come.
function M.pending()
  return pending
end

return M
