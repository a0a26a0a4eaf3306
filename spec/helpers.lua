-- Shared helpers for the specs.
--
-- Wall-clock numbers.  No spec holds a bare number of seconds: a spec
-- that waits for something to complete, or bounds how long something
-- took, goes through these, so that the same spec passes on a machine
-- three times slower, on a loaded one, and under a checker.
--
--   H.slowdown     the factor every bound is multiplied by: the checker's
--                  (LOOM_SPEC_SLOWDOWN, set by spec/sanitize.sh: valgrind
--                  runs one thread at a time) times H.machine.
--   H.machine      this machine's factor, measured once when helpers is
--                  first loaded: a fixed Lua loop timed against the figure
--                  of an idle machine of the project's kind, clamped to
--                  [1, MAX_MACHINE].  LOOM_SPEC_MACHINE overrides it;
--                  H.run and spec/sanitize.sh pass it on that way, so a
--                  subprocess (or a run under a checker, which would time
--                  the checker too) does not measure again.
--   H.t(s)         s scaled: for a timeout or a bound on elapsed time.
--
-- A wait that should complete fails with a message, never returns a nil
-- that a spec would compare or index later:
--
--   H.result(x, s)   x:result(H.t(s)): all of x's results, or raises
--                    "result(loom.Thread (...)) timed out after N s
--                    (slowdown S)".  nil, "cancelled" is passed through.
--   H.join(x, s)     x:join(H.t(s)), true or raises.
--   H.get(q, s)      q:get(H.t(s)), the item (or nil, "closed") or raises.
--   H.wait(x, s)     x:wait(H.t(s)) for an event, condition or barrier;
--                    its result or raises on false.
--   H.acquire(l, s)  l:acquire(true, H.t(s)) for a lock or semaphore.
--   H.below(x, s, what)  asserts a measured duration x < H.t(s).
--
-- A wait that should time out keeps its short bare timeout (the spec
-- asserts the timeout); only an upper bound on how long it took is scaled.
-- Latency and fairness assertions carry the busted tag #latency: valgrind
-- serialises threads, so it measures its own scheduler, and sanitize.sh
-- leaves them out there.
local M = {}

local root = os.getenv("PWD") or "."
M.lua = os.getenv("LUA") or "lua5.4"

-- The loop below takes about 1.15 ms on an idle machine of the project's
-- kind; REFERENCE is a little above so that an idle one reads 1.
local REFERENCE = 1.3e-3
local MAX_MACHINE = 8

local function measure()
  local ok, loom = pcall(require, "loom")
  -- wall time, so that a loaded machine counts as a slow one; CPU time
  -- when loom cannot load (a sanitizer target that did not build it)
  local now = ok and loom.now or os.clock
  local times = {}
  -- the first run warms the CPU up and is dropped
  for r = 0, 5 do
    local t0, x = now(), 0
    for i = 1, 200000 do x = x + i % 7 end
    times[r] = now() - t0
  end
  times[0] = nil
  table.sort(times)
  return times[3] / REFERENCE
end

local function clamp(x)
  return math.min(MAX_MACHINE, math.max(1, x))
end

M.machine = clamp(tonumber(os.getenv("LOOM_SPEC_MACHINE")) or measure())
M.checker = math.max(1, tonumber(os.getenv("LOOM_SPEC_SLOWDOWN")) or 1)
M.slowdown = M.checker * M.machine

function M.t(s)
  return s * M.slowdown
end

local function timed_out(what, x, s)
  error(string.format("%s(%s) timed out after %.3g s (slowdown %.3g)",
    what, tostring(x), M.t(s), M.slowdown), 3)
end

function M.result(x, s)
  local r = table.pack(x:result(M.t(s)))
  if r.n == 2 and r[1] == nil and r[2] == "timeout" then timed_out("result", x, s) end
  return table.unpack(r, 1, r.n)
end

function M.join(x, s)
  if not x:join(M.t(s)) then timed_out("join", x, s) end
  return true
end

function M.get(q, s)
  local v, err = q:get(M.t(s))
  if v == nil and err == "timeout" then timed_out("get", q, s) end
  return v, err
end

function M.wait(x, s)
  local r = x:wait(M.t(s))
  if r == false or r == nil then timed_out("wait", x, s) end
  return r
end

function M.acquire(l, s)
  local ok, how = l:acquire(true, M.t(s))
  if not ok then timed_out("acquire", l, s) end
  return ok, how
end

function M.below(x, s, what)
  if not (x < M.t(s)) then  -- luacheck: ignore 581 (a NaN duration fails too)
    error(string.format("%s took %.3g s, bound %.3g s (slowdown %.3g)",
      what or "it", x, M.t(s), M.slowdown), 2)
  end
  return x
end

-- Runs a shell command; returns whether it succeeded and its stdout+stderr.
function M.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  return p:close() == true, out
end

-- The first line of a chunk run by H.run: the paths, and H itself.
M.prelude = string.format("package.path=%q..package.path;package.cpath=%q..package.cpath;local H=require'helpers';",
  root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/spec/?.lua;", root .. "/?.so;")

-- Runs a Lua chunk in a fresh interpreter, where H is this module with
-- this process's machine factor; returns its stdout+stderr, its exit
-- status (true on success) and code.  With `limit`, the interpreter is
-- killed after H.t(limit) seconds (timeout(1)), so that a hang fails the
-- spec instead of hanging the suite.
function M.run(chunk, limit)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(M.prelude, "\n", chunk)
  f:close()
  local guard = limit and string.format("timeout -k 2 %.1f ", M.t(limit)) or ""
  local p = assert(io.popen(string.format("LOOM_SPEC_MACHINE=%.17g %s%s %s 2>&1",
    M.machine, guard, M.lua, path)))
  local out = p:read("a")
  local ok, _, code = p:close()
  os.remove(path)
  return out, ok, code
end

return M
