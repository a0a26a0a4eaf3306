-- loom.preload: a module of the host's own state, found by `require` in
-- every thread and worker.
local loom = require "loom"
local H = require "helpers"

local function in_thread(fn, ...)
  return H.result(loom.thread(fn, ...):start(), 10)
end

describe("loom.preload", function()
  after_each(function()
    for _, name in ipairs { "spec_hostmod", "spec_lazy", "spec_late", "spec_bad" } do
      loom.preload(name, false)
    end
    package.loaded.spec_hostmod = nil
  end)

  it("offers a module loaded here, C functions included, to threads", function()
    package.loaded.spec_hostmod = { upper = string.upper, add = function(a, b) return a + b end }
    loom.preload("spec_hostmod")
    assert.same({ "ABC", 5 }, { in_thread(function()
      local m = require "spec_hostmod"
      return m.upper("abc"), m.add(2, 3)
    end) })
  end)

  it("calls a loader function as package.preload's are called", function()
    loom.preload("spec_lazy", function(name, extra) return { name = name, extra = extra } end)
    assert.same({ "spec_lazy", ":preload:" }, { in_thread(function()
      local m = require "spec_lazy"
      return m.name, m.extra
    end) })
  end)

  it("reaches an interpreter kept from an earlier thread, and pool workers", function()
    in_thread(function() return pcall(require, "spec_late") end)
    loom.preload("spec_late", { v = 7 })
    assert.equal(7, in_thread(function() return require("spec_late").v end))
    local pool <close> = loom.pool(1)
    assert.equal(7, H.result(pool:submit(function() return require("spec_late").v end), 10))
    local ppool <close> = loom.pool { kind = "process", workers = 1 }
    assert.equal(7, H.result(ppool:submit(function() return require("spec_late").v end), 10))
  end)

  it("is gone for later requires once removed with false", function()
    loom.preload("spec_late", { v = 1 })
    loom.preload("spec_late", false)
    local ok, err = in_thread(function() return pcall(require, "spec_late") end)
    assert.is_false(ok)
    assert.truthy(err:find("no loom.preload entry 'spec_late'", 1, true), err)
  end)

  it("keeps the latest value given for a name", function()
    loom.preload("spec_late", { v = 1 })
    loom.preload("spec_late", { v = 2 })
    assert.equal(2, in_thread(function() return require("spec_late").v end))
  end)

  it("is the child's own after a fork: a child's change stays in the child", function()
    loom.preload("spec_late", { v = 1 })
    local p = loom.process(function()
      local l = require "loom"
      l.preload("spec_late", { v = 99 })
      l.preload("spec_hostmod", { v = 98 })
    end):start()
    H.join(p, 10)
    assert.equal(0, p.exitcode)
    assert.equal(1, in_thread(function() return require("spec_late").v end))
    local ok = in_thread(function() return pcall(require, "spec_hostmod") end)
    assert.is_false(ok)
  end)

  it("reports a loader's error in the thread that requires it", function()
    loom.preload("spec_bad", function() error("no such host", 0) end)
    local ok, err = in_thread(function() return pcall(require, "spec_bad") end)
    assert.is_false(ok)
    assert.equal("no such host", err)
  end)

  it("rejects bad arguments, naming them", function()
    assert.has_error(function() loom.preload() end, "bad argument #1 to 'preload' (string expected, got no value)")
    assert.has_error(function() loom.preload("") end, "bad argument #1 to 'preload' (module name must not be empty)")
    assert.has_error(function() loom.preload("spec_none_loaded") end,
      "bad argument #2 to 'preload' (no value given, and module 'spec_none_loaded' is not loaded here)")
    assert.has_error(function() loom.preload("spec_bad", { lock = loom.lock() }) end,
      "bad argument #2 to 'preload' (a module cannot hold loom objects: give them to threads as arguments)")
    assert.has_error(function() loom.preload("spec_bad", { co = coroutine.create(print) }) end,
      "cannot transfer module.co: coroutine")
    local ok = in_thread(function() return pcall(require, "spec_bad") end)
    assert.is_false(ok)
  end)

  it("keeps a module of any size", function()
    local big = {}
    for i = 1, 50000 do big[i] = i end
    loom.preload("spec_late", big)
    assert.equal(50000 * 50001 // 2, in_thread(function()
      local s = 0
      for _, v in ipairs(require "spec_late") do s = s + v end
      return s
    end))
  end)

  it("has a C route too: a host finds loom_set_state_hook in the loaded core.so with dlsym", function()
    if not H.sh("command -v cc") then
      pending("needs cc")
      return
    end
    local exe, script = os.tmpname(), os.tmpname()
    finally(function() os.remove(exe); os.remove(script) end)
    local ok, out = H.sh(string.format(
      "cc -std=c11 -I/usr/include/lua5.4 -o %s spec/hosts/dlsym_hook.c -llua5.4 -ldl", exe))
    assert(ok, out)
    local f = assert(io.open(script, "w"))
    f:write(string.format([[
      local loom = require "loom"
      print(host_twice(2), loom.thread(function() return host_twice(21) end):start():result(%.17g))
    ]], H.t(10)))
    f:close()
    local ok2, out2 = H.sh(string.format("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' %s %s",
      exe, script))
    assert(ok2, out2)
    assert.equal("4\t42\n", out2)
  end)
end)
