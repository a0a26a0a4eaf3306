-- loom.pipe: multiprocessing.Pipe over two shared-heap queues.
-- A Connection is a plain table whose metatable holds its methods, so it
-- travels through the codec like any table (its queues and its closed
-- flag by reference): the same end may be used from several threads and
-- processes, and closing it closes it for all of them.
local core = require "loom.core"

local error, type, select, pcall, getmetatable, setmetatable, tostring =
  error, type, select, pcall, getmetatable, setmetatable, tostring
local table_pack, table_unpack, string_find = table.pack, table.unpack, string.find

local M = {}

local NAME = "loom.Connection"
local Conn = { __name = NAME }
Conn.__index = Conn

-- The metatable is a copy in a state the connection travelled to, so the
-- class is recognised by its name.
local function check(self, fname)
  local mt = type(self) == "table" and getmetatable(self)
  if type(mt) ~= "table" or mt.__name ~= NAME then
    local got = type(self) == "table" and getmetatable(self) and
                getmetatable(self).__name or type(self)
    error("bad argument #1 to '" .. fname .. "' (" .. NAME .. " expected, got " ..
          tostring(got) .. ")", 3)
  end
  if self._closed.value then
    error("attempt to use a closed " .. NAME, 3)
  end
  return self
end

local function check_timeout(fname, timeout)
  -- timeout ~= timeout: NaN, which no comparison refuses
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
    error("bad argument #1 to '" .. fname .. "' (" .. (type(timeout) == "number"
          and "timeout must be non-negative" or "number expected, got " .. type(timeout)) .. ")", 3)
  end
end

--- send(v, ...): the values, copied through the codec, for the other end's
-- recv.  Raises when either end is closed.
function Conn.send(self, ...)
  check(self, "send")
  local tx = self._tx
  if tx == nil then
    error("connection is read-only", 2)
  end
  if (...) == nil then
    error("bad argument #1 to 'send' (nil cannot be sent)", 2)
  end
  local ok, err = pcall(tx.put, tx, table_pack(...))
  if not ok then
    if type(err) == "string" and string_find(err, "put to a closed queue", 1, true) then
      error("send on a closed pipe", 2)
    end
    error(err, 0)
  end
end

--- recv([timeout]) -> v, ... | nil, "timeout" | nil, "closed" (the other end
-- closed and everything it sent received).
function Conn.recv(self, timeout)
  check(self, "recv")
  check_timeout("recv", timeout)
  local rx = self._rx
  if rx == nil then
    error("connection is write-only", 2)
  end
  local t, err = rx:get(timeout)
  if t == nil then
    return nil, err
  end
  return table_unpack(t, 1, t.n)
end

--- poll([timeout]) -> true when recv would not wait (a message, or the other
-- end closed), false when timeout seconds pass first (nil: wait for one).
-- It takes nothing: the message stays for whichever copy of this end
-- calls recv.
function Conn.poll(self, timeout)
  check(self, "poll")
  check_timeout("poll", timeout)
  local rx = self._rx
  if rx == nil then
    error("connection is write-only", 2)
  end
  return rx:poll(timeout)
end

--- close(): this end, in every thread and process that has it; the other
-- end's recv then drains what was sent and fails "closed", its send raises.
-- Idempotent.
function Conn.close(self)
  local mt = type(self) == "table" and getmetatable(self)
  if type(mt) ~= "table" or mt.__name ~= NAME then
    check(self, "close")
  end
  self._closed.value = true
  if self._rx ~= nil then
    self._rx:shutdown(true)   -- unread messages are dropped and freed
  end
  if self._tx ~= nil then
    self._tx:close()
  end
end

--- closed() -> true once either copy of this end was closed.
function Conn.closed(self)
  local mt = type(self) == "table" and getmetatable(self)
  if type(mt) ~= "table" or mt.__name ~= NAME then
    check(self, "closed")
  end
  return self._closed.value
end

Conn.__close = Conn.close

function Conn.__tostring(self)
  return NAME .. " (" .. (self.readable and "r" or "") .. (self.writable and "w" or "") ..
         (self._closed.value and ", closed" or "") .. ")"
end

local function new(rx, tx)
  return setmetatable({
    _rx = rx, _tx = tx, _closed = core.value("bool", false),
    readable = rx ~= nil, writable = tx ~= nil,
  }, Conn)
end

--- loom.pipe([duplex]) -> c1, c2: duplex (default) gives two ends that both
-- send and receive; duplex = false gives (r, w), r only receiving what w
-- sends.
function M.pipe(duplex, ...)
  if select("#", ...) > 0 then
    error("bad argument #2 to 'pipe' (no value expected)", 2)
  end
  if duplex ~= nil and type(duplex) ~= "boolean" then
    error("bad argument #1 to 'pipe' (boolean expected, got " .. type(duplex) .. ")", 2)
  end
  if duplex == false then
    local q = core.queue()
    return new(q, nil), new(nil, q)
  end
  local a, b = core.queue(), core.queue()
  return new(a, b), new(b, a)
end

return M
