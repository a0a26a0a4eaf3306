-- loom.options: the two call forms shared by loom.thread, loom.shared_thread
-- and loom.process, fn(...) and {target=, args=, name=, ...}, checked once.
local error, type, select, getmetatable = error, type, select, getmetatable
local table_pack, table_unpack = table.pack, table.unpack
local math_tointeger, math_type, pcall = math.tointeger, math.type, pcall

local M = {}

-- The name of a thread or process: a string that fits its 63 bytes.
function M.check_name(fname, name)
  if name == nil then return end
  if type(name) ~= "string" then
    error("bad argument #1 to '" .. fname .. "' (name must be a string)", 4)
  end
  if name:find("\0", 1, true) then
    error("bad argument #1 to '" .. fname .. "' (name must not contain a NUL byte)", 4)
  end
  if #name > 63 then
    error("bad argument #1 to '" .. fname .. "' (name too long (at most 63 bytes))", 4)
  end
end

-- args{..., n=} as a packed list, with n checked, not left to unpack.
function M.pack_args(fname, args)
  local n = args.n
  if n == nil then
    n = #args
  elseif type(n) ~= "number" or math_tointeger(n) == nil or n < 0 then
    error("bad argument #1 to '" .. fname .. "' (args.n must be a non-negative integer)", 4)
  end
  n = math_tointeger(n)
  local ok, packed = pcall(function() return table_pack(table_unpack(args, 1, n)) end)
  if not ok then
    error("bad argument #1 to '" .. fname .. "' (too many args: " .. n .. ")", 4)
  end
  return packed
end

-- close_fds (a boolean) and pass_fds (a list of descriptors, which implies
-- close_fds unless it is false, an error then), checked; errors point
-- `level` frames up (4 when called from the function the user called).
function M.check_fds(fname, close_fds, pass_fds, level)
  level = level or 4
  if close_fds ~= nil and type(close_fds) ~= "boolean" then
    error("bad argument #1 to '" .. fname .. "' (close_fds must be a boolean)", level)
  end
  if pass_fds == nil then
    return close_fds, nil
  end
  if type(pass_fds) ~= "table" then
    error("bad argument #1 to '" .. fname .. "' (pass_fds must be a table of descriptors)", level)
  end
  if #pass_fds > 65536 then
    error("bad argument #1 to '" .. fname .. "' (pass_fds too long (at most 65536))", level)
  end
  for i = 1, #pass_fds do
    local fd = pass_fds[i]
    if math_type(fd) ~= "integer" or fd < 0 or fd > 0x7fffffff then
      error("bad argument #1 to '" .. fname .. "' (pass_fds[" .. i ..
            "] must be a descriptor (a non-negative integer))", level)
    end
  end
  if close_fds == false and #pass_fds > 0 then
    error("bad argument #1 to '" .. fname .. "' (pass_fds given with close_fds false)", level)
  end
  return true, pass_fds
end

local NO_OPTIONS = {}

-- fname(fn, ...) or fname{target=, args=, name=, ...}: the target, its
-- arguments packed, and the options table (empty for the first form).
-- Called by the function the user called, whose caller errors point to.
function M.call(fname, first, ...)
  if type(first) == "table" and getmetatable(first) == nil and select("#", ...) == 0 then
    local target = first.target
    if type(target) ~= "function" then
      error("bad argument #1 to '" .. fname .. "' (target must be a function)", 3)
    end
    local args = first.args or {}
    if type(args) ~= "table" then
      error("bad argument #1 to '" .. fname .. "' (args must be a table)", 3)
    end
    M.check_name(fname, first.name)
    return target, M.pack_args(fname, args), first
  end
  if type(first) ~= "function" then
    error("bad argument #1 to '" .. fname .. "' (function expected, got " .. type(first) .. ")", 3)
  end
  return first, table_pack(...), NO_OPTIONS
end

return M
