-- The rockspec builds offline with the builtin type and lists every source.
local H = require "helpers"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

local sh = H.sh

describe("rockspec/loom-scm-1.rockspec", function()
  it("builds and installs through the Makefile, so a rock equals a make build", function()
    local spec = read("rockspec/loom-scm-1.rockspec")
    assert.truthy(spec:find('type = "make"', 1, true))
    assert.truthy(spec:find('install_target = "install"', 1, true))
    assert.truthy(spec:find('supported_platforms = { "linux" }', 1, true))
  end)

  it("installs into a tree with luarocks make and the module loads", function()
    local ok_lr = sh("command -v luarocks")
    if not ok_lr then
      pending("luarocks is not installed")
      return
    end
    local tmp = os.tmpname()
    os.remove(tmp)
    finally(function() sh("rm -rf " .. tmp) end)
    local ok, out = sh(string.format(
      "mkdir -p %s/src %s/tree && cp -r csrc lua rockspec Makefile %s/src/ && cd %s/src && " ..
      "luarocks --lua-version=5.4 --tree=%s/tree make rockspec/loom-scm-1.rockspec",
      tmp, tmp, tmp, tmp, tmp))
    assert(ok, out)
    -- make notices a loom/core.so it did not write, and puts its own back.
    local ok3, out3 = sh(string.format(
      "cd %s/src && printf x >> loom/core.so && make -s >/dev/null && cmp build/core.so loom/core.so", tmp))
    assert(ok3, out3)
    local script = string.format([[
      package.path = %q
      package.cpath = %q
      local loom = require "loom"
      assert(package.searchpath("loom.core", package.cpath):find(%q, 1, true))
      print(loom.thread(function(x) return x + 1 end, 41):start():result(%.17g))
    ]], tmp .. "/tree/share/lua/5.4/?.lua;" .. tmp .. "/tree/share/lua/5.4/?/init.lua",
        tmp .. "/tree/lib/lua/5.4/?.so", tmp .. "/tree", H.t(5))
    local ok2, out2 = sh(H.lua .. " -e " .. string.format("%q", script))
    assert(ok2, out2)
    assert.are.equal("42\n", out2)
  end)
end)
