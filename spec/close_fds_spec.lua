-- close_fds and pass_fds: what a forked child keeps of its parent's
-- descriptors.  loom.process keeps them all by default (the child runs a
-- Lua function that may use the parent's files); process pools keep only
-- 0, 1, 2 by default (their workers only run tasks).
local loom = require "loom"
local H = require "helpers"

local PIDS = [[
local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  return pid
end
-- fd number -> what it points at, for process pid
local function fds(pid)
  local p = assert(io.popen("ls -l /proc/" .. pid .. "/fd/"))
  local t = {}
  for line in p:lines() do
    local fd, target = line:match("(%d+) %-> (.*)$")
    if fd then t[tonumber(fd)] = target end
  end
  p:close()
  return t
end
local function fd_of(pid, path)
  for fd, target in pairs(fds(pid)) do
    if target == path then return fd end
  end
end
]]

local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  return pid
end
local fds, fd_of = load(PIDS .. "return fds, fd_of")()

describe("loom.process close_fds", function()
  local path, file
  before_each(function()
    path = os.tmpname()
    file = assert(io.open(path, "w"))
  end)
  after_each(function()
    file:close()
    os.remove(path)
  end)

  local function child_fds(opts)
    opts.target = function(getfds, getpid)
      return getfds(getpid())
    end
    opts.args = {fds, mypid}
    local p = loom.process(opts):start()
    return H.result(p, 10)
  end

  it("keeps the parent's descriptors by default", function()
    local fd = fd_of(mypid(), path)
    assert.is_not_nil(fd)
    assert.are.equal(path, child_fds{}[fd])
    assert.are.equal(path, child_fds{close_fds = false}[fd])
  end)

  it("with close_fds, keeps 0, 1, 2 and points the rest at /dev/null", function()
    local fd = fd_of(mypid(), path)
    local t = child_fds{close_fds = true}
    assert.are.equal("/dev/null", t[fd])
    for n, target in pairs(t) do
      assert(target ~= path, "fd " .. n .. " still open on the file")
    end
    for n = 0, 2 do
      assert.are.equal(fds(mypid())[n], t[n])
    end
  end)

  it("with pass_fds, keeps those (and implies close_fds)", function()
    local fd = fd_of(mypid(), path)
    local other = os.tmpname()
    local g = assert(io.open(other, "w"))
    finally(function() g:close(); os.remove(other) end)
    local ofd = fd_of(mypid(), other)
    local t = child_fds{pass_fds = {fd}}
    assert.are.equal(path, t[fd])
    assert.are.equal("/dev/null", t[ofd])
  end)

  it("leaves the parent's files in the child harmless to use and to close", function()
    local other = os.tmpname()
    finally(function() os.remove(other) end)
    file:write("parent"); file:flush()
    local p = loom.process{close_fds = true, target = function(f, name)
      f:write("child"); f:flush()          -- goes to /dev/null
      local g = assert(io.open(name, "w"))  -- may take a number f's stream had
      f:close()                             -- must not close g's descriptor
      assert(g:write("ok"))
      assert(g:close())
    end, args = {file, other}}:start()
    H.result(p, 10)
    local r = assert(io.open(path)); assert.are.equal("parent", r:read("a")); r:close()
    r = assert(io.open(other)); assert.are.equal("ok", r:read("a")); r:close()
  end)

  it("lets a pipe's reader see its end while the child runs", function()
    local out = os.tmpname()
    finally(function() os.remove(out) end)
    local w = assert(io.popen("cat > " .. out, "w"))
    local e = loom.event()
    local p = loom.process{close_fds = true, target = function(ev) ev:wait() end,
                           args = {e}}:start()
    finally(function() e:set(); H.join(p, 10) end)
    w:write("x")
    assert(w:close())   -- cat ends: the child holds no copy of its input
    assert(p:is_alive())
  end)

  it("checks its options", function()
    local function err(opts)
      opts.target = print
      local ok, e = pcall(loom.process, opts)
      assert(not ok)
      return e
    end
    assert.matches("bad argument #1 to 'process' %(close_fds must be a boolean%)",
                   err{close_fds = 1})
    assert.matches("bad argument #1 to 'process' %(pass_fds must be a table of descriptors%)",
                   err{pass_fds = 3})
    assert.matches("pass_fds%[2%] must be a descriptor %(a non%-negative integer%)",
                   err{pass_fds = {3, -1}})
    assert.matches("pass_fds%[1%] must be a descriptor", err{pass_fds = {1.5}})
    assert.matches("pass_fds%[1%] must be a descriptor", err{pass_fds = {2^31}})
    assert.matches("pass_fds%[1%] must be a descriptor", err{pass_fds = {"3"}})
    assert.matches("pass_fds given with close_fds false",
                   err{close_fds = false, pass_fds = {3}})
  end)
end)

describe("process pool close_fds", function()
  local path, file
  before_each(function()
    path = os.tmpname()
    file = assert(io.open(path, "w"))
  end)
  after_each(function()
    file:close()
    os.remove(path)
  end)

  local function worker_fds(opts)
    opts.workers, opts.kind = 1, "process"
    local pool <close> = assert(loom.pool(opts))
    local f = pool:submit(function(src, getpid)
      local get = load(src .. "return fds")()
      return get(getpid())
    end, PIDS, mypid)
    return H.result(f, 10)
  end

  it("keeps only 0, 1, 2 by default", function()
    local fd = fd_of(mypid(), path)
    assert.is_not_nil(fd)
    local t = worker_fds{}
    for n, target in pairs(t) do
      assert(target ~= path, "fd " .. n .. " open on the file")
    end
  end)

  it("keeps every descriptor with close_fds = false", function()
    local fd = fd_of(mypid(), path)
    assert.are.equal(path, worker_fds{close_fds = false}[fd])
  end)

  it("keeps pass_fds", function()
    local fd = fd_of(mypid(), path)
    assert.are.equal(path, worker_fds{pass_fds = {fd}}[fd])
  end)

  it("checks its options", function()
    local function err(opts)
      opts.kind = "process"
      local ok, e = pcall(loom.pool, opts)
      assert(not ok)
      return e
    end
    assert.matches("bad argument #1 to '[%w.]*pool' %(close_fds must be a boolean%)",
                   err{close_fds = "no"})
    assert.matches("bad argument #1 to '[%w.]*pool' %(pass_fds must be a table of descriptors%)",
                   err{pass_fds = true})
    assert.matches("bad argument #1 to '[%w.]*pool' %(pass_fds%[1%] must be a descriptor %(a non%-negative integer%)%)",
                   err{pass_fds = {-3}})
    assert.matches("pass_fds%[1%] must be a descriptor", err{pass_fds = {2^40}})
    assert.matches("pass_fds given with close_fds false",
                   err{close_fds = false, pass_fds = {3}})
  end)
end)

-- A host that holds a listening socket (lighttpd's, say) starts a child and
-- a process pool, and is killed: a restarted host must be able to bind the
-- same port while the child still runs.
describe("a host's listening socket", function()
  local WRAP = [[
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen()
os.set_inheritable(s.fileno(), True)
print(s.getsockname()[1], flush=True)
os.execvp(sys.argv[1], sys.argv[1:])
]]
  local BIND = [[
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
]]

  local function running(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local s = f:read("a"); f:close()
    return s:match("^%d+ %b() (%a)") ~= "Z"
  end

  -- Starts the host, kills it once its child runs; whether the port can
  -- be bound again while that child still runs.
  local function restart(close_fds)
    local wrap, script, out = os.tmpname(), os.tmpname(), os.tmpname()
    local f = assert(io.open(wrap, "w")); f:write(WRAP); f:close()
    f = assert(io.open(script, "w"))
    f:write(H.prelude, "\n", PIDS, [[
local loom = require "loom"
local child = loom.process{close_fds = ]] .. tostring(close_fds) .. [[,
  target = function() loom.sleep(H.t(60)) end}:start()
local pool = loom.pool{workers = 1, kind = "process"}
H.result(pool:submit(function() return 1 end), 10)
print(child.pid)
io.stdout:flush()
loom.sleep(H.t(60))
]])
    f:close()
    local child
    finally(function()
      if child then os.execute("kill -9 " .. child .. " 2>/dev/null") end
      os.remove(wrap); os.remove(script); os.remove(out)
    end)
    local sh = assert(io.popen(string.format(
      "LOOM_SPEC_MACHINE=%.17g python3 %s %s %s > %s 2>&1 & echo $!",
      H.machine or 1, wrap, H.lua, script, out)))
    local host = tonumber(sh:read("l"))
    sh:close()
    local port
    local deadline = os.time() + math.ceil(H.t(20))
    repeat
      local r = io.open(out)
      local text = r and r:read("a") or ""
      if r then r:close() end
      port, child = text:match("^(%d+)\n(%d+)\n")
      if not child then os.execute("sleep 0.05") end
    until child or os.time() > deadline
    if not child then
      os.execute("kill -9 " .. host)
      error("the host never started its child")
    end
    os.execute("kill -9 " .. host)
    assert(running(child), "the child should outlive the host")
    -- the host's own end of the socket goes when the kernel cleans it up
    local bound
    deadline = os.time() + math.ceil(H.t(5))
    repeat
      bound = os.execute(string.format("python3 -c '%s' %s 2>/dev/null", BIND, port))
      if not bound then os.execute("sleep 0.05") end
    until bound or os.time() > deadline
    assert(running(child), "the child should still run")
    return bound
  end

  it("is free for a restarted host when the child has close_fds", function()
    assert(restart(true), "the port is still held after the host was killed")
  end)

  it("stays held by a child without close_fds (what close_fds is for)", function()
    assert(not restart(false), "the child should hold the port")
  end)
end)
