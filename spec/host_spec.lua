-- The embedding host in examples/host.c: Lua and loom linked statically.
local H = require "helpers"
local sh = H.sh

local function script(body)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(body)
  f:close()
  return path
end

describe("examples/host.c", function()
  local built, build_log
  setup(function()
    built, build_log = sh("make --no-print-directory host")
  end)

  it("builds", function()
    assert(built, build_log)
  end)

  it("lets worker threads call the host's C function through the state hook", function()
    local path = script(string.format([[
      local loom = require "loom"
      local t = loom.thread(function(a) return host_add(a, 2) end, 40):start()
      print(host_add(1, 2), t:result(%.17g))
    ]], H.t(5)))
    finally(function() os.remove(path) end)
    local ok, out = sh("LUA_PATH='lua/?.lua;lua/?/init.lua;;' build/host " .. path)
    assert(ok, out)
    assert.are.equal("3\t42\n", out)
  end)

  it("survives closing its state while threads, tasks and processes run, cycle after cycle", function()
    local ok, out = sh("LUA_PATH='lua/?.lua;lua/?/init.lua;;' build/host --cycles 50 spec/stress/host_cycles.lua")
    assert(ok, out)
    assert.are.equal("", out)
  end)

  it("reports a script error with its traceback and a failing status", function()
    local path = script "error('host script failed')"
    finally(function() os.remove(path) end)
    local ok, out = sh("build/host " .. path)
    assert.is_falsy(ok)
    assert.matches("host script failed", out)
  end)
end)
