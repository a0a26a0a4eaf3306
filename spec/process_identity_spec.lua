-- Process identity: loom.current_process(), loom.parent_process(),
-- loom.active_children() and Process.sentinel.
local loom = require "loom"
local H = require "helpers"

local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  return pid
end

local has_luv, uv = pcall(require, "luv")

-- Whether fd becomes readable within s seconds (scaled), by luv's poll.
local function readable(fd, s)
  local poll = uv.new_poll(fd)
  local timer = uv.new_timer()
  local ready = false
  poll:start("r", function() ready = true; poll:stop(); timer:stop() end)
  timer:start(math.floor(s * 1000), 0, function() poll:stop() end)
  uv.run()
  poll:close(); timer:close()
  uv.run()
  return ready
end

describe("loom.current_process()", function()
  it("is the main process where loom forked nothing", function()
    local me = loom.current_process()
    assert.are.equal("MainProcess", me.name)
    assert.are.equal(mypid(), me.pid)
    assert.are.equal(mypid(), me.ident)
    assert.is_true(me:is_alive())
    assert.is_false(me.daemon)
    assert.is_nil(me.exitcode)
    assert.is_nil(me.sentinel)
    assert.are.equal(me, loom.current_process())
    assert.matches("^loom.Process %(MainProcess, started, pid %d+%)$", tostring(me))
  end)

  it("refuses to join, start or signal itself", function()
    local me = loom.current_process()
    assert.error_matches(function() me:join(0) end, "can only join a child process")
    assert.error_matches(function() me:start() end, "cannot start a process twice")
    assert.error_matches(function() me:kill() end, "can only signal a child process")
    assert.error_matches(function() me:terminate() end, "can only signal a child process")
  end)

  it("is the same from a thread of the process", function()
    local t = loom.thread(function()
      local l = require "loom"
      local c = l.current_process()
      return c.name, c.pid
    end):start()
    local name, pid = H.result(t, 10)
    assert.are.equal("MainProcess", name)
    assert.are.equal(mypid(), pid)
  end)

  it("is, in a child, the handle its parent holds", function()
    local p = loom.process{name = "kid", target = function()
      local c = loom.current_process()
      return c.name, c.pid, c:is_alive(), c.sentinel
    end}:start()
    local name, pid, alive, sentinel = H.result(p, 10)
    assert.are.equal("kid", name)
    assert.are.equal(p.pid, pid)
    assert.is_true(alive)
    assert.is_nil(sentinel)
  end)

  it("is named after its worker in a process pool", function()
    local pool <close> = loom.pool{workers = 1, kind = "process"}
    local name, ppid, pname = H.result(pool:submit(function()
      local l = require "loom"
      return l.current_process().name, l.parent_process().pid, l.parent_process().name
    end), 10)
    assert.matches("^Pool%-%d+%-worker%-1$", name)
    assert.are.equal(mypid(), ppid)
    assert.are.equal("MainProcess", pname)
  end)
end)

describe("loom.parent_process()", function()
  it("is nil where loom forked nothing", function()
    assert.is_nil(loom.parent_process())
  end)

  it("is, in a child, its parent: name, pid, alive", function()
    local p = loom.process(function()
      local par = loom.parent_process()
      return par.name, par.pid, par:is_alive(), par.sentinel ~= nil
    end):start()
    local name, pid, alive, has_sentinel = H.result(p, 10)
    assert.are.equal("MainProcess", name)
    assert.are.equal(mypid(), pid)
    assert.is_true(alive)
    assert.is_true(has_sentinel)
  end)

  it("is a child's own name in a grandchild", function()
    local p = loom.process{name = "middle", target = function()
      local g = loom.process(function()
        return loom.parent_process().name, loom.parent_process().pid
      end):start()
      return loom.current_process().pid, g:result()
    end}:start()
    local mid, name, pid = H.result(p, 10)
    assert.are.equal("middle", name)
    assert.are.equal(mid, pid)
  end)

  it("tells a child when its parent has died", function()
    local flag = os.tmpname()
    os.remove(flag)
    finally(function() os.remove(flag) end)
    H.run(string.format([[
local loom = require "loom"
loom.process(function()
  local par = loom.parent_process()
  while par:is_alive() do loom.sleep(0.01) end
  local f = io.open(%q, "w"); f:write("orphan"); f:close()
end):start()
os.execute("kill -9 $PPID")   -- the parent dies, not waiting for its child
]], flag))
    local t0 = loom.now()
    local f = io.open(flag)
    while not f and loom.now() - t0 < H.t(10) do
      loom.sleep(0.02)
      f = io.open(flag)
    end
    assert(f, "the child never saw its parent die")
    f:close()
  end)
end)

describe("loom.active_children()", function()
  it("lists the children still running, and reaps the rest", function()
    local out, ok = H.run([[
local loom = require "loom"
assert(#loom.active_children() == 0)
local e = loom.event()
local a = loom.process(function() e:wait() end):start()
local b = loom.process(function() return 1 end):start()
assert(H.join(b, 10))
local kids = loom.active_children()
assert(#kids == 1 and kids[1] == a and kids[1].pid == a.pid, #kids)
e:set()
H.join(a, 10)
assert(#loom.active_children() == 0)
print("done")
]])
    assert(ok, out)
    assert.matches("done", out)
  end)
end)

describe("Process.sentinel", function()
  it("is nil before start", function()
    assert.is_nil(loom.process(print).sentinel)
  end)

  it("is a descriptor that becomes readable when the child ends", function()
    if not has_luv then pending("luv is not installed") return end
    local e = loom.event()
    local p = loom.process(function() e:wait() end):start()
    finally(function() e:set(); H.join(p, 10) end)
    local fd = p.sentinel
    assert.are.equal("integer", math.type(fd))
    assert.are.equal(fd, p.sentinel)      -- the same one, kept
    assert.is_false(readable(fd, 0.1))
    e:set()
    assert.is_true(readable(fd, H.t(10)), "not readable after the child ended")
    assert(H.join(p, 10))
    assert.are.equal(fd, p.sentinel)      -- and after it is reaped
    assert.is_true(readable(fd, H.t(1)))
  end)

  it("is readable at once for a child reaped before it was asked for", function()
    if not has_luv then pending("luv is not installed") return end
    local p = loom.process(function() end):start()
    assert(H.join(p, 10))
    assert.is_true(readable(p.sentinel, H.t(1)))
  end)

  it("of the parent becomes readable when the parent ends", function()
    if not has_luv then pending("luv is not installed") return end
    local flag = os.tmpname()
    os.remove(flag)
    finally(function() os.remove(flag) end)
    H.run(string.format([[
local loom = require "loom"
local uv = require "luv"
loom.process(function()
  local poll = uv.new_poll(assert(loom.parent_process().sentinel))
  poll:start("r", function()
    poll:stop()
    local f = io.open(%q, "w"); f:write("ended"); f:close()
  end)
  uv.run()
end):start()
os.execute("kill -9 $PPID")
]], flag))
    local t0 = loom.now()
    local f = io.open(flag)
    while not f and loom.now() - t0 < H.t(10) do
      loom.sleep(0.02)
      f = io.open(flag)
    end
    assert(f, "the parent's sentinel never became readable")
    f:close()
  end)
end)
