-- Shared helpers for the specs.
local M = {}

local root = os.getenv("PWD") or "."
M.lua = os.getenv("LUA") or "lua5.4"
-- How much slower than native the checker running the specs is (valgrind
-- runs one thread at a time): the factor for bounds on wake-up latency.
M.slowdown = tonumber(os.getenv("LOOM_SPEC_SLOWDOWN")) or 1
M.prelude = string.format("package.path=%q..package.path;package.cpath=%q..package.cpath;",
  root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;", root .. "/?.so;")

-- Runs a Lua chunk in a fresh interpreter; returns its stdout+stderr and
-- its exit status (true on success).
function M.run(chunk)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(M.prelude, "\n", chunk)
  f:close()
  local p = assert(io.popen(M.lua .. " " .. path .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  os.remove(path)
  return out, ok, code
end

return M
