-- Hosts other than lua5.4: loading loom where it cannot work says why and
-- what to do; a host's own OS threads are described truthfully.
local H = require "helpers"

local sh = H.sh

local paths = "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path; " ..
  "package.cpath = './?.so;' .. package.cpath; "

describe("require 'loom'", function()
  it("under another Lua names the version it needs", function()
    local tried = 0
    for _, lua in ipairs { "lua5.1", "lua5.3", "luajit" } do
      if sh("command -v " .. lua) then
        tried = tried + 1
        local ok, out = sh(lua .. " -e \"" .. paths .. "print(pcall(require, 'loom'))\"")
        assert(ok, out)
        assert.truthy(out:find("false\tloom needs Lua 5.4, and this is Lua 5.", 1, true), lua .. ": " .. out)
      end
    end
    if tried == 0 then pending("no lua5.1, lua5.3 or luajit here") end
  end)

  it("in a host that hides Lua's symbols says to export them", function()
    local lib = "/usr/lib/x86_64-linux-gnu/liblua5.4.a"
    if not io.open(lib) or not sh("command -v cc") then
      pending("needs cc and " .. lib)
      return
    end
    local exe = os.tmpname()
    local script = os.tmpname()
    finally(function() os.remove(exe); os.remove(script) end)
    local ok, out = sh(string.format("cc -std=c11 -I/usr/include/lua5.4 -o %s spec/hosts/hidden_lua.c %s -lm -ldl",
      exe, lib))
    assert(ok, out)
    local f = assert(io.open(script, "w"))
    f:write(paths, "require 'loom'")
    f:close()
    local ok2, out2 = sh(string.format("timeout %d %s %s", math.ceil(H.t(20)), exe, script))
    assert(not ok2, out2)
    assert.truthy(out2:find("undefined symbol: lua", 1, true), out2)
    assert.truthy(out2:find("-Wl,-E", 1, true), out2)
  end)
end)

-- Compiles spec/hosts/<name>.c against the system's liblua5.4.so; nil when
-- there is no compiler.
local function host(name)
  if not sh("command -v cc") then return nil end
  local exe = os.tmpname()
  local ok, out = sh(string.format(
    "cc -std=c11 -pthread -I/usr/include/lua5.4 -o %s spec/hosts/%s.c -llua5.4 -ldl", exe, name))
  assert(ok, out)
  return exe
end

describe("loom.current() on a host's own OS threads", function()
  it("gives each its own handle, with its own OS thread id, the main thread included", function()
    local exe = host("foreign_threads")
    if not exe then pending("needs cc") return end
    local script = os.tmpname()
    finally(function() os.remove(exe); os.remove(script) end)
    local f = assert(io.open(script, "w"))
    f:write([[
      local loom = require "loom"
      local seen = {}
      function visit(tid)
        local c = loom.current()
        assert(c.native_id == tid, string.format("native_id %d on OS thread %d", c.native_id, tid))
        assert(loom.get_native_id() == tid)
        seen[#seen + 1] = { c = c, name = c.name, ident = c.ident, tid = tid }
      end
      function report()
        local s = seen
        assert(s[1].c == s[4].c, "the main thread's handle changed")
        assert(s[1].c ~= s[2].c and s[2].c ~= s[3].c, "two OS threads share a handle")
        assert(s[1].name == "MainThread", s[1].name)
        assert(s[2].name == "Thread" and s[3].name == "Thread", s[2].name)
        assert(s[2].ident ~= s[1].ident)
        assert(loom.main_thread().native_id == s[1].tid)
        print("ok")
      end
    ]])
    f:close()
    local ok, out = sh(string.format("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' timeout %d %s %s",
      math.ceil(H.t(20)), exe, script))
    assert(ok, out)
    assert.equal("ok\n", out)
  end)
end)

describe("a host that closes and remakes its state", function()
  it("is left no OS thread by shared threads still running at each close, past 64 states", function()
    local exe = host("reload")
    if not exe then pending("needs cc") return end
    local script = os.tmpname()
    finally(function() os.remove(exe); os.remove(script) end)
    local f = assert(io.open(script, "w"))
    f:write(string.format([[
      local loom = require "loom"
      local e, ready = loom.event(), loom.semaphore(0)
      loom.shared_thread(function() ready:release(); while true do end end):start()
      loom.shared_thread{ target = function() ready:release(); e:wait() end, daemon = true }:start()
      loom.shared_thread(function() ready:release(); loom.sleep(3600) end):start()
      for _ = 1, 3 do assert(ready:acquire(true, %.17g)) end
    ]], H.t(10)))
    f:close()
    local ok, out = sh(string.format("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' timeout %d %s %s 70",
      math.ceil(H.t(120)), exe, script))
    assert(ok, out)
    local counts = {}
    for n in out:gmatch("%d+") do counts[#counts + 1] = tonumber(n) end
    assert.equal(70, #counts, out)
    -- three threads a state would make 211 by the end; those of one close
    -- may still be leaving when the count is taken after the next
    assert(math.max(table.unpack(counts)) <= 20, out)
  end)
end)

describe("a process that exits without closing its interpreter", function()
  it("waits for its non-daemon threads and cancels its daemon threads, as closing would", function()
    local out, ok = H.run(string.format([[
      local loom = require "loom"
      local started = loom.semaphore(0)
      loom.thread(function(s)
        s:release()
        require("loom").sleep(0.2)
        io.stdout:write("worker finished\n")
      end, started):start()
      loom.thread{ daemon = true, args = { started }, target = function(s)
        local g <close> = setmetatable({}, { __close = function() io.stdout:write("daemon unwound\n") end })
        s:release()
        require("loom").sleep(3600)
      end }:start()
      for _ = 1, 2 do assert(started:acquire(true, %.17g)) end
      os.exit(0)   -- exit() runs, lua_close does not: as neomutt and gnuplot end
    ]], H.t(10)))
    assert(ok, out)
    assert.truthy(out:find("worker finished", 1, true), out)
    assert.truthy(out:find("daemon unwound", 1, true), out)
  end)

  it("waits for its non-daemon children and terminates its daemon children", function()
    local out, ok = H.run([[
      local loom = require "loom"
      loom.process(function() require("loom").sleep(0.2); io.stdout:write("child finished\n") end):start()
      local d = loom.process{ daemon = true, target = function()
        io.stdout:close()   -- so that the reader sees the end whatever becomes of it
        require("loom").sleep(3600)
      end }:start()
      io.stdout:write("daemon ", d.pid, "\n")
      io.stdout:flush()
      os.exit(0)
    ]])
    assert(ok, out)
    assert.truthy(out:find("child finished", 1, true), out)
    local pid = assert(tonumber(out:match("daemon (%d+)")), out)
    -- reaped before the exit: no process of that pid is left (a reused pid
    -- within this instant is not a worry on a machine of 2^22 pids)
    assert.is_false(H.sh("kill -0 " .. pid), "the daemon child outlived its parent")
  end)
end)
