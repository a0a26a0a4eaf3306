-- loom.pool helpers: Pool:map and Pool:imap over Pool:submit.
-- The loom.Pool class (csrc/pool.c) loads this module and takes them as
-- methods in whichever interpreter first asks a pool for one.
local core = require "loom.core"

local error, type, setmetatable = error, type, setmetatable
local math_type = math.type
local now = core.now

local M = {}

-- Runs one chunk in a worker: the first result of fn for each element.
-- It has no upvalues, so a worker loads it once however often it is sent.
local function run_chunk(fn, chunk, n)
  local out = {}
  for i = 1, n do
    out[i] = (fn(chunk[i]))
  end
  return out
end

local function check_opts(name, opts, argn)
  if opts == nil then
    return 1, nil, nil
  end
  if type(opts) ~= "table" then
    error(("bad argument #%d to '%s' (table expected, got %s)"):format(
      argn, name, type(opts)), 3)
  end
  local chunksize = opts.chunksize
  if chunksize == nil then
    chunksize = 1
  elseif math_type(chunksize) ~= "integer" or chunksize < 1 then
    error(("bad argument #%d to '%s' (chunksize must be a positive integer)"):format(
      argn, name), 3)
  end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
    error(("bad argument #%d to '%s' (timeout must be a number)"):format(argn, name), 3)
  end
  if timeout ~= nil and timeout < 0 then
    error(("bad argument #%d to '%s' (timeout must be non-negative)"):format(argn, name), 3)
  end
  local window = opts.window
  if window ~= nil and (math_type(window) ~= "integer" or window < 1) then
    error(("bad argument #%d to '%s' (window must be a positive integer)"):format(
      argn, name), 3)
  end
  return chunksize, timeout, window
end

local function check_fn(name, fn)
  if type(fn) ~= "function" then
    error(("bad argument #1 to '%s' (function expected, got %s)"):format(
      name, type(fn)), 3)
  end
end

-- Cancels what is still pending when the gathering loop leaves early.
local Guard = {
  __close = function(g)
    if not g.finished then
      local fs = g.futures
      for i = g.from, g.to do
        local f = fs[i]
        if f then f:cancel() end
      end
    end
  end,
}

local function left(deadline)
  if deadline == nil then return nil end
  local t = deadline - now()
  return t > 0 and t or 0
end

-- Waits for one future; its first result, or raises its error; fail +
-- token.  A nil first result is ambiguous (a timed-out wait, a cancelled
-- task, or a task that returned nil), and the task may finish between the
-- wait giving up and the look at done(): a done future's outcome is then
-- read again, without waiting, rather than guessed.
local function collect(f, deadline)
  local v = f:result(left(deadline))
  if v ~= nil then
    return true, v
  end
  if not f:done() then
    return false, "timeout"
  end
  if f:cancelled() then
    return false, "cancelled"
  end
  return true, (f:result(0))
end

--- pool:map(fn, list [, {chunksize=, timeout=}]) -> results (with .n), or
-- fail, "timeout" / fail, "cancelled".  Raises the first failing task's
-- error in list order, after cancelling the tasks not yet started.
function M.map(pool, fn, list, opts)
  check_fn("map", fn)
  if type(list) ~= "table" then
    error(("bad argument #2 to 'map' (table expected, got %s)"):format(type(list)), 2)
  end
  local chunksize, timeout = check_opts("map", opts, 3)
  local n = list.n or #list
  local deadline = timeout and now() + timeout
  local submit = pool.submit
  local fs, nf = {}, 0
  if chunksize == 1 then
    for i = 1, n do
      fs[i] = submit(pool, fn, list[i])
    end
    nf = n
  else
    for first = 1, n, chunksize do
      local last = first + chunksize - 1
      if last > n then last = n end
      local chunk = {}
      for i = first, last do chunk[i - first + 1] = list[i] end
      nf = nf + 1
      fs[nf] = submit(pool, run_chunk, fn, chunk, last - first + 1)
    end
  end
  local guard <close> = setmetatable({ futures = fs, from = 1, to = nf }, Guard)
  local results = { n = n }
  local k = 0
  for i = 1, nf do
    guard.from = i
    local ok, v = collect(fs[i], deadline)
    if not ok then
      return nil, v
    end
    if chunksize == 1 then
      results[i] = v
    else
      local m = (i < nf) and chunksize or (n - k)
      for j = 1, m do results[k + j] = v[j] end
      k = k + m
    end
  end
  guard.finished = true
  return results
end

--- pool:imap(fn, list_or_iterator [, {chunksize=, timeout=, window=}]):
-- iterator of i, result in input order, keeping at most `window` tasks in
-- flight, so the input may be larger than memory.  Raises a task's error,
-- or "timeout" when the deadline passes.
function M.imap(pool, fn, input, opts)
  check_fn("imap", fn)
  local kind = type(input)
  if kind ~= "table" and kind ~= "function" then
    error(("bad argument #2 to 'imap' (table or function expected, got %s)"):format(kind), 2)
  end
  local chunksize, timeout, window = check_opts("imap", opts, 3)
  window = window or 2 * pool.workers
  local deadline = timeout and now() + timeout
  local submit = pool.submit
  local n = kind == "table" and (input.n or #input) or nil
  local pos, exhausted = 0, false
  local function next_input()
    if exhausted then return false end
    if n then
      if pos >= n then exhausted = true return false end
      pos = pos + 1
      return true, input[pos]
    end
    local v = input()
    if v == nil then exhausted = true return false end
    pos = pos + 1
    return true, v
  end
  local fs, sizes = {}, {}
  local head, tail = 1, 0            -- futures in flight: fs[head..tail]
  local function fill()
    while not exhausted and tail - head + 1 < window do
      if chunksize == 1 then
        local ok, v = next_input()
        if not ok then break end
        tail = tail + 1
        fs[tail] = submit(pool, fn, v)
        sizes[tail] = 1
      else
        local chunk, m = {}, 0
        while m < chunksize do
          local ok, v = next_input()
          if not ok then break end
          m = m + 1
          chunk[m] = v
        end
        if m == 0 then break end
        tail = tail + 1
        fs[tail] = submit(pool, run_chunk, fn, chunk, m)
        sizes[tail] = m
      end
    end
  end
  local guard = setmetatable({ futures = fs, from = 1, to = 0 }, Guard)
  local index, buffered, bcount, bpos = 0, nil, 0, 0
  local function iter()
    if bpos < bcount then
      bpos = bpos + 1
      index = index + 1
      return index, buffered[bpos]
    end
    fill()
    guard.from, guard.to = head, tail
    if head > tail then
      guard.finished = true
      return nil
    end
    local f = fs[head]
    local ok, v = collect(f, deadline)
    if not ok then
      error(v, 0)
    end
    fs[head] = nil
    local m = sizes[head]
    sizes[head] = nil
    head = head + 1
    guard.from = head
    index = index + 1
    if chunksize == 1 then
      return index, v
    end
    buffered, bcount, bpos = v, m, 1
    return index, v[1]
  end
  return iter, nil, nil, guard
end

return M
