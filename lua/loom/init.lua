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
local lproc = require "loom.process"

local error, type, select, setmetatable = error, type, select, setmetatable
local table_pack = table.pack

local M = {}

for name, fn in pairs(core) do
  M[name] = fn
end
-- internals of loom.gil, not part of the public module; excepthook below
-- checks its argument before it reaches set_excepthook
M.gil_prepare, M.gil_sethook, M.gil_gethook = nil, nil, nil
M.set_excepthook = nil

local check_name, pack_args = lproc.check_name, lproc.pack_args

local function thread_options(fname, first, ...)
  if type(first) == "table" and getmetatable(first) == nil and select("#", ...) == 0 then
    local target = first.target
    if type(target) ~= "function" then
      error("bad argument #1 to '" .. fname .. "' (target must be a function)", 3)
    end
    local args = first.args or {}
    if type(args) ~= "table" then
      error("bad argument #1 to '" .. fname .. "' (args must be a table)", 3)
    end
    check_name(fname, first.name)
    return target, pack_args(fname, args), first.name, first.daemon, first.shared
  end
  if type(first) ~= "function" then
    error("bad argument #1 to '" .. fname .. "' (function expected, got " .. type(first) .. ")", 3)
  end
  return first, table_pack(...), nil, false
end

--- loom.thread(fn, ...) or loom.thread{target=, args=, name=, daemon=,
-- shared=}: a thread that runs fn(...) in its own interpreter once started,
-- or, with shared=true, in this one under the global interpreter lock.
function M.thread(...)
  local target, args, name, daemon, shared = thread_options("thread", ...)
  if shared then
    require("loom.gil").install()
    return core.shared_thread(target, args, name, daemon)
  end
  return core.thread(target, args, name, daemon)
end

--- loom.shared_thread(fn, ...) or loom.shared_thread{target=, args=, ...}:
-- the same as loom.thread with shared=true.
function M.shared_thread(...)
  local target, args, name, daemon = thread_options("shared_thread", ...)
  require("loom.gil").install()
  return core.shared_thread(target, args, name, daemon)
end

--- loom.excepthook(fn): fn(info) receives {name=, ident=, error=, traceback=}
-- for every thread error nobody collected; returns the previous reporter.
function M.excepthook(fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("bad argument #1 to 'excepthook' (function expected, got " .. type(fn) .. ")", 2)
  end
  return core.set_excepthook(fn)
end

M.process = lproc.process
require("loom.pool").install()

setmetatable(M, { __name = "loom" })
return M
