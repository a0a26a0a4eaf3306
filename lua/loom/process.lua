-- loom.process: the two call forms of loom.process over loom.core.process.
local core = require "loom.core"

local error, type, select, getmetatable = error, type, select, getmetatable
local table_pack, table_unpack = table.pack, table.unpack

local M = {}

local function options(first, ...)
  if type(first) == "table" and getmetatable(first) == nil and select("#", ...) == 0 then
    local target = first.target
    if type(target) ~= "function" then
      error("bad argument #1 to 'process' (target must be a function)", 3)
    end
    local args = first.args or {}
    if type(args) ~= "table" then
      error("bad argument #1 to 'process' (args must be a table)", 3)
    end
    if first.name ~= nil and type(first.name) ~= "string" then
      error("bad argument #1 to 'process' (name must be a string)", 3)
    end
    return target, table_pack(table_unpack(args, 1, args.n or #args)), first.name, first.daemon
  end
  if type(first) ~= "function" then
    error("bad argument #1 to 'process' (function expected, got " .. type(first) .. ")", 3)
  end
  return first, table_pack(...), nil, false
end

--- loom.process(fn, ...) or loom.process{target=, args=, name=, daemon=}:
-- a process that, once started, runs fn(...) in a forked copy of this
-- interpreter.
function M.process(...)
  return core.process(options(...))
end

return M
