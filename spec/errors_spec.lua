-- Errors that name the argument and the real problem, for hostile input.
local loom = require "loom"
local H = require "helpers"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

-- Runs chunk in a fresh interpreter (H.lua: the sanitizer's host takes a
-- script, not -e) after the shell prefix env; its output and status.
local function fresh(env, chunk)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(H.prelude, "\n", chunk)
  f:close()
  local out, ok = sh(env .. " " .. H.lua .. " " .. path)
  os.remove(path)
  return out, ok
end

-- Raises "bad argument #1 to '<name>' (<msg>)"; the function's name as
-- Lua finds it (loom.core.x, or x) may differ, the message may not.
local function argerr(fn, name, msg)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  local want = "bad argument #1 to '[%w.]*" .. name .. "' %(" ..
    msg:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "%)$"
  assert.matches(want, err)
end

describe("errors", function()
  it("loom.barrier: too many parties is not 'must be positive'", function()
    argerr(function() loom.barrier(2^31 | 0) end, "barrier", "too many parties (at most 2^30)")
    argerr(function() loom.barrier(0) end, "barrier", "parties must be positive")
  end)

  it("loom.pool: a bad initargs.n is named as such", function()
    argerr(function() loom.pool{ init = print, initargs = { n = -1 } } end, "pool", "initargs.n must be a non-negative integer")
    argerr(function() loom.pool{ init = print, initargs = { n = 1.5 } } end, "pool", "initargs.n must be a non-negative integer")
    argerr(function() loom.pool{ init = print, initargs = { n = 1000 } } end, "pool", "too many initargs (at most 249)")
  end)

  it("loom.thread and loom.process: args.n is checked before anything unpacks it", function()
    for _, f in ipairs{ "thread", "process", "shared_thread" } do
      assert.has_error(function() loom[f]{ target = print, args = { n = 1e9 } } end,
        "bad argument #1 to '" .. f .. "' (too many args: 1000000000)")
      assert.has_error(function() loom[f]{ target = print, args = { n = -1 } } end,
        "bad argument #1 to '" .. f .. "' (args.n must be a non-negative integer)")
      assert.has_error(function() loom[f]{ target = print, args = { n = "3" } } end,
        "bad argument #1 to '" .. f .. "' (args.n must be a non-negative integer)")
    end
    local t = loom.thread{ target = function(...) return select("#", ...) end, args = { n = 3.0 } }
    assert.equal(3, t:start():result(H.t(10)))
  end)

  it("setting a field of a queue says 'cannot set field', as other objects do", function()
    local q = loom.queue(2)
    assert.has_error(function() q.kind = "lifo" end, "cannot set field 'kind' of a loom.Queue")
    assert.equal("fifo", q.kind)
  end)

  it("a key that is not a string is named by its value, not as a field named for its type", function()
    local a = loom.array("int32", 2)
    assert.has_error(function() a[true] = 1 end, "array index must be an integer, got boolean")
    assert.has_error(function() a.x = 1 end, "cannot set field 'x' of a loom.Array")
    local v = loom.value("int32", 0)
    assert.has_error(function() v[true] = 1 end, "cannot set key true (a boolean) of a loom.Value")
  end)

  it("tostring of a semaphore shows a count past 2^31 as it is", function()
    assert.matches(", value 2147483648%)$", tostring(loom.semaphore(2^31 | 0)))
  end)

  it("strings with a NUL byte are refused, not cut short", function()
    argerr(function() loom.value("int8\0") end, "value", "invalid element type (contains a NUL byte)")
    assert.has_error(function() loom.thread{ target = print, name = "a\0b" } end,
      "bad argument #1 to 'thread' (name must not contain a NUL byte)")
    assert.has_error(function() loom.process{ target = print, name = "a\0b" } end,
      "bad argument #1 to 'process' (name must not contain a NUL byte)")
    assert.has_error(function() loom.thread{ target = print, name = ("x"):rep(64) } end,
      "bad argument #1 to 'thread' (name too long (at most 63 bytes))")
    local ok, err = pcall(loom.pool, { kind = "process\0junk", workers = 1 })
    assert.is_false(ok)
    assert.matches("%(invalid kind 'process", err)
    local t = loom.thread(print)
    assert.has_error(function() t.name = "a\0b" end, "name must not contain a NUL byte")
    local p = loom.process(print)
    assert.has_error(function() p.name = ("y"):rep(100) end, "name too long (at most 63 bytes)")
  end)

  it("an error value that cannot cross says what it was and why", function()
    local t = loom.thread(function() error(coroutine.create(print)) end):start()
    assert(t:join(H.t(10)), "thread did not end")
    local err = t:error()
    assert.matches("^%(error object is a thread value that cannot be sent: .+%)$", err)
  end)

  it("LOOM_HEAP_SIZE: K, M and G suffixes, and a clear refusal of the rest", function()
    local function heap(v)
      return fresh(("LOOM_HEAP_SIZE='%s'"):format(v), "print(require('loom').heap_size())")
    end
    assert.equal("67108864\n", (heap("64M")))
    assert.equal("67108864\n", (heap("64MB")))
    assert.equal("67108864\n", (heap("64MiB")))
    assert.equal("2097152\n", (heap("2097152")))
    assert.equal("1073741824\n", (heap("1G")))
    for _, bad in ipairs{ "512K", "abc", "64X", "-5", "99999999999G" } do
      local out, ok = heap(bad)
      assert.is_falsy(ok)
      assert.matches("invalid LOOM_HEAP_SIZE '" .. bad:gsub("%W", "%%%0") ..
        "': bytes %(at least 1 MiB%), or a number with a K, M or G suffix", out)
    end
  end)

  it("a heap that cannot be mapped says to set LOOM_HEAP_SIZE", function()
    if H.checker > 1 then
      -- a sanitizer or valgrind reserves far more address space itself
      pending("not under a checker")
      return
    end
    local out, ok = fresh("ulimit -v 600000;", "require 'loom'")
    assert.is_falsy(ok)
    assert.matches("cannot map the shared heap of 1024 MiB: .*set LOOM_HEAP_SIZE to a smaller size", out)
  end)

  it("loom.configure takes an integral float heap size and refuses absurd ones", function()
    local out, ok = fresh("", [[
      local core = require "loom.core"
      print(core.configure{ heap_size = 64 * 2^20 }, core.heap_size())
      print(pcall(core.configure, { heap_size = 2^60 }))
      print(pcall(core.configure, { heap_size = 1.5 + 2^20 }))
    ]])
    assert(ok, out)
    -- Lua names the function by the first module table it finds holding
    -- it, in an order that varies from run to run: loom's or loom.core's
    out = out:gsub("'loom%.core%.configure'", "'loom.configure'")
    assert.equal("true\t67108864\n" ..
      "false\tbad argument #1 to 'loom.configure' (heap_size must be at most 64 TiB)\n" ..
      "false\tbad argument #1 to 'loom.configure' (heap_size must be an integer)\n", out)
  end)

  it("setswitchinterval refuses what it cannot keep rather than round it", function()
    argerr(function() loom.setswitchinterval(1e-300) end, "setswitchinterval", "switch interval too small (at least 1e-9 s)")
    argerr(function() loom.setswitchinterval(1e7) end, "setswitchinterval", "switch interval too large (under 1e6 s)")
    local old = loom.getswitchinterval()
    loom.setswitchinterval(1e-9)
    assert.equal(1e-9, loom.getswitchinterval())
    loom.setswitchinterval(old)
  end)

  describe("in an embedding host whose state hook refuses", function()
    local built, log
    setup(function() log, built = sh("make --no-print-directory host") end)

    it("threads and pools report the hook's own message", function()
      assert(built, log)
      local path = os.tmpname()
      finally(function() os.remove(path) end)
      local f = assert(io.open(path, "w"))
      f:write([[
        local loom = require "loom"
        local t = loom.thread(function() return 1 end):start()
        t:join(30)
        print(t:error())
        local p = loom.pool(1)
        local ok, err = pcall(function()
          for _ = 1, 1000 do p:submit(function() end):result(30); loom.sleep(0.01) end
        end)
        print(err)
      ]])
      f:close()
      local out = sh("LOOM_HOST_REFUSE='no room here' LUA_PATH='lua/?.lua;lua/?/init.lua;;' build/host " .. path)
      assert.matches("^state hook failed with code 3: no room here\t", out)
      assert.matches("\n[^\n]*no room here[^\n]*\n$", out)
      assert.not_matches("initializer failed", out)
    end)
  end)
end)
