-- Loading loom where it cannot work says why, and what to do.
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
