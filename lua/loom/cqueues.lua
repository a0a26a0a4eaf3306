-- loom.cqueues: loom inside a cqueues controller.
-- await(x) in a cqueues-managed coroutine yields until x is done, and the
-- controller runs its other coroutines meanwhile.  Built only on loom's
-- public surface: a notifier whose descriptor the awaiting coroutines poll
-- (an object with pollfd and events fields) next to a cqueues condition
-- that the notifier's dispatch signals, and the non-blocking forms (done(),
-- is_set(), try_get(), is_alive()).
local cqueues = require "cqueues"
local condition = require "cqueues.condition"
local loom = require "loom"

local assert, error, getmetatable, ipairs, setmetatable, traceback, type, xpcall =
  assert, error, getmetatable, ipairs, setmetatable, debug.traceback, type, xpcall

local M = {}

local notifier, pollable   -- made on first use

-- Runs the callbacks of whatever completed.  Every awaiting coroutine polls
-- the same descriptor: whichever wakes first drains it for all.
local function dispatch()
  local first
  for _, cb in ipairs(notifier:drain()) do
    local ok, err = xpcall(cb, traceback)
    if not ok and first == nil then first = err end
  end
  if first ~= nil then error(first, 0) end
end

local function typename(x)
  local mt = getmetatable(x)
  return type(mt) == "table" and mt.__name or type(x)
end

local function check_running(fname)
  local _, managed = cqueues.running()
  if not managed then
    error("bad call to '" .. fname .. "' (must run inside a cqueues controller)", 3)
  end
end

-- Yields until obj's watch fires (a future, event, queue or process).
local function wait_for(obj)
  if notifier == nil then
    notifier = assert(loom.notifier())
    pollable = { pollfd = notifier:fd(), events = "r" }
  end
  local cond, fired = condition.new(), false
  local id
  id = notifier:watch(obj, function()
    fired = true
    notifier:unwatch(id)   -- an event's or queue's watch stays otherwise
    cond:signal()
  end)
  -- a coroutine closed while it waits gives its watch back
  local _ <close> = setmetatable({}, { __close = function()
    if not fired then notifier:unwatch(id) end
  end })
  while not fired do
    cqueues.poll(cond, pollable)
    dispatch()
  end
end

--- await(x): inside a cqueues controller, yields until x is done, then
-- returns what its blocking call would: a Future's result() (raising its
-- error), true for an Event once set, true once a Process has ended.
function M.await(x)
  local tn = typename(x)
  if tn == "loom.Future" then
    check_running("await")
    if not x:done() then wait_for(x) end
    return x:result(0)
  elseif tn == "loom.Event" then
    check_running("await")
    if not x:is_set() then wait_for(x) end
    return true
  elseif tn == "loom.Process" then
    check_running("await")
    if x:is_alive() then wait_for(x) end
    return x:join(0)
  end
  error("bad argument #1 to 'await' (loom.Future, loom.Event or loom.Process expected, got " .. tn .. ")", 2)
end

--- get(queue): inside a cqueues controller, the next item of a loom
-- queue, yielding while it is empty; nil, "closed" once closed and drained.
function M.get(q)
  if typename(q) ~= "loom.Queue" then
    error("bad argument #1 to 'get' (loom.Queue expected, got " .. typename(q) .. ")", 2)
  end
  check_running("get")
  while true do
    local v, err = q:try_get()
    if v ~= nil or err == "closed" then return v, err end
    wait_for(q)
  end
end

return M
