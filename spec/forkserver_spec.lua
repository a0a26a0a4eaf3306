-- Process pools fork their workers from a fork server made with the pool:
-- descriptors the script opens later never reach a worker, and neither the
-- server nor a worker outlives the pool or the parent.  Each case runs in
-- its own interpreter under a scaled timeout, so a hang fails it.
local H = require "helpers"

local function write_script(chunk)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(H.prelude, "\n", chunk)
  f:close()
  return path
end

-- Runs chunk in a fresh lua5.4 killed after H.t(limit) s; its output, and
-- whether it exited 0 on its own.
local guarded = H.run

local function expect(chunk, limit)
  local out, ok, code = guarded(chunk, limit)
  assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s",
    tostring(code), out))
  assert.matches("done", out)
  return out
end

-- pids of the calling process and of its parent, from the kernel
local PIDS = [[
local function stat()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("a")
  f:close()
  local pid, ppid = s:match("^(%d+) %b() %a (%d+)")
  return tonumber(pid), tonumber(ppid)
end
local function mypid() return (stat()) end
local function myppid() return select(2, stat()) end
]]

-- A process that exists and is not a zombie.
local function running(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a") or ""
  f:close()
  local state = s:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z"
end

local function wait_gone(pids, limit)
  local deadline = os.time() + math.ceil(H.t(limit))
  repeat
    local left = {}
    for _, pid in ipairs(pids) do
      if running(pid) then left[#left + 1] = pid end
    end
    if #left == 0 then return true end
    os.execute("sleep 0.05")
  until os.time() > deadline
  return false
end

describe("a process pool's fork server", function()
  it("keeps a pipe opened after the pool out of its workers (20 pools)", function()
    expect([[
local loom = require "loom"
for _ = 1, 20 do
  local pool = loom.pool{workers = 4, kind = "process"}
  -- opened while the workers are being forked: before the fork server,
  -- a worker could inherit the pipe's write end, and this read would
  -- block until the pool shut down
  local p = assert(io.popen("echo hi"))
  local t0 = loom.now()
  assert(p:read("a") == "hi\n")
  p:close()
  H.below(loom.now() - t0, 5, "reading the pipe to its end")
  assert(H.result(pool:submit(function() return 1 end), 10) == 1)
  assert(pool:shutdown(true, false, H.t(10)))
end
print("done")
]], 120)
  end)

  it("forks a replacement worker without the descriptors opened since", function()
    expect(PIDS .. [[
local loom = require "loom"
local pool = loom.pool{workers = 1, kind = "process"}
local first = H.result(pool:submit(mypid), 10)
local out = os.tmpname()
-- the write end of cat's input: cat ends only when every copy is closed
local w = assert(io.popen("cat > " .. out, "w"))
os.execute("kill -9 " .. first)
local second = H.result(pool:submit(mypid), 10)   -- the replacement
assert(second ~= first)
w:write("x")
assert(w:close())   -- waits for cat: a worker holding the end would hang it
local f = assert(io.open(out)); assert(f:read("a") == "x"); f:close()
os.remove(out)
assert(pool:shutdown(true, false, H.t(10)))
print("done")
]], 40)
  end)

  it("is the workers' parent, and is reaped at shutdown", function()
    local out = expect(PIDS .. [[
local loom = require "loom"
local pool = loom.pool{workers = 2, kind = "process"}
local server = H.result(pool:submit(myppid), 10)
assert(server ~= mypid(), "a worker's parent is the fork server")
local f = assert(io.open("/proc/" .. server .. "/stat"))
local s = f:read("a"); f:close()
assert(s:match("^%d+ %((.-)%)") == "loom-forkserver", s)
assert(select(2, s:match("^(%d+) %b() %a (%d+)")) == tostring(mypid()))
assert(pool:shutdown(true, false, H.t(10)))
-- reaped by its parent: no process, not even a zombie, with its pid
local t0 = loom.now()
while io.open("/proc/" .. server .. "/stat") do
  assert(loom.now() - t0 < H.t(10), "the fork server was not reaped")
  loom.sleep(0.01)
end
print("done")
]], 40)
    assert.matches("done", out)
  end)

  it("leaves when a pool is dropped without shutdown", function()
    expect(PIDS .. [[
local loom = require "loom"
local pool = loom.pool{workers = 2, kind = "process"}
local server = H.result(pool:submit(myppid), 10)
local f = pool:submit(function() return 5 end)
pool = nil
collectgarbage(); collectgarbage()
assert(H.result(f, 10) == 5)
local t0 = loom.now()
while io.open("/proc/" .. server .. "/stat") do
  assert(loom.now() - t0 < H.t(10), "the fork server outlived its pool")
  loom.sleep(0.01)
end
print("done")
]], 40)
  end)

  it("and its workers die when the parent is killed -9, busy or idle", function()
    local path = write_script(PIDS .. [[
local loom = require "loom"
local pool = loom.pool{workers = 2, kind = "process"}
local e, q = loom.event(), loom.queue()
pool:submit(function(ev, qq, getpid) qq:put(getpid()); ev:wait() end, e, q, mypid)
local busy = H.get(q, 10)
local idle = H.result(pool:submit(mypid), 10)
local server = H.result(pool:submit(myppid), 10)
print(mypid(), server, busy, idle)
io.stdout:flush()
loom.sleep(H.t(60))
]])
    local outfile = os.tmpname()
    finally(function() os.remove(path); os.remove(outfile) end)
    local sh = assert(io.popen(string.format(
      "LOOM_SPEC_MACHINE=%.17g %s %s > %s 2>&1 & echo $!",
      H.machine or 1, H.lua, path, outfile)))
    local host = tonumber(sh:read("l"))
    sh:close()
    local line
    local deadline = os.time() + math.ceil(H.t(20))
    repeat
      local f = io.open(outfile)
      line = f and f:read("l")
      if f then f:close() end
      if not line then os.execute("sleep 0.05") end
    until line or os.time() > deadline
    if not line then
      os.execute("kill -9 " .. host)
      error("the host never printed its pids")
    end
    local pids = {}
    for pid in line:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
    assert.are.equal(4, #pids, line)
    assert.are.equal(host, pids[1])
    os.execute("kill -9 " .. host)
    assert(wait_gone(pids, 10), "left running after kill -9 of the parent: " .. line)
  end)

  it("breaks the pool when it is killed, failing the busy task", function()
    expect(PIDS .. [[
local loom = require "loom"
local pool = loom.pool{workers = 2, kind = "process"}
local e, q = loom.event(), loom.queue()
local busy = pool:submit(function(ev, qq, getpid) qq:put(getpid()); ev:wait() end,
                         e, q, mypid)
local worker = H.get(q, 10)
local server = H.result(pool:submit(myppid), 10)
os.execute("kill -9 " .. server)
local ok, err = pcall(H.result, busy, 10)
assert(not ok and err:match("pool worker process killed by signal 9"), err)
local ok2, err2 = pcall(pool.submit, pool, function() end)
assert(not ok2 and err2:match("the pool's fork server died"), err2)
assert(pool:shutdown(true, false, H.t(10)))
local function running(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a"); f:close()
  return s:match("^%d+ %b() (%a)") ~= "Z"
end
local t0 = loom.now()
while running(worker) do
  assert(loom.now() - t0 < H.t(10), "a worker outlived its fork server")
  loom.sleep(0.01)
end
print("done")
]], 40)
  end)
end)
