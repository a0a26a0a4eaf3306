-- loom.gil: the Lua side of shared-interpreter threads.  Installed once,
-- when the first shared thread is made: coroutine.resume and
-- coroutine.wrap give a coroutine the switching hook before it runs (one
-- made before then has none), and debug.sethook / debug.gethook keep that
-- hook beside the user's own.
local core = require "loom.core"

local coroutine, debug, type, error = coroutine, debug, type, error
local table_pack, table_unpack = table.pack, table.unpack

local prepare = core.gil_prepare

local M = {}

local installed = false

local function wrap(f)
  if type(f) ~= "function" then
    error("bad argument #1 to 'wrap' (function expected)", 2)
  end
  local co = coroutine.create(f)
  local resume, close = M.resume, coroutine.close
  return function(...)
    local r = table_pack(resume(co, ...))
    if r[1] then
      return table_unpack(r, 2, r.n)
    end
    local err = r[2]
    if coroutine.status(co) == "dead" then
      close(co)
    end
    if type(err) == "string" then
      error(err, 2)
    end
    error(err, 0)
  end
end

function M.install()
  if installed then
    return
  end
  installed = true
  local resume = coroutine.resume
  M.resume = function(co, ...)
    prepare(co)
    return resume(co, ...)
  end
  coroutine.resume = M.resume
  coroutine.wrap = wrap
  if type(debug) == "table" and debug.sethook and debug.gethook then
    local sethook, gethook = debug.sethook, debug.gethook
    local csethook, cgethook = core.gil_sethook, core.gil_gethook
    debug.sethook = function(...)
      return csethook(sethook, ...)
    end
    debug.gethook = function(...)
      return cgethook(gethook, ...)
    end
  end
end

return M
