-- loom._VERSION and loom.version agree with each other, the C header and
-- the rockspec.
local loom = require "loom"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

describe("loom._VERSION", function()
  it("is 'loom major.minor.patch', as loom.version gives the numbers", function()
    local v = loom.version
    assert.is_table(v)
    for _, k in ipairs { "major", "minor", "patch" } do
      assert.equal("integer", math.type(v[k]), k)
      assert.is_true(v[k] >= 0)
    end
    assert.equal(string.format("loom %d.%d.%d", v.major, v.minor, v.patch), loom._VERSION)
  end)

  it("is loom.core's too", function()
    local core = require "loom.core"
    assert.equal(loom._VERSION, core._VERSION)
  end)

  it("matches csrc/loom.h", function()
    local h = read("csrc/loom.h")
    local v = loom.version
    assert.equal(v.major, tonumber(h:match("#define LOOM_VERSION_MAJOR (%d+)")))
    assert.equal(v.minor, tonumber(h:match("#define LOOM_VERSION_MINOR (%d+)")))
    assert.equal(v.patch, tonumber(h:match("#define LOOM_VERSION_PATCH (%d+)")))
    assert.equal(loom._VERSION, "loom " .. h:match('#define LOOM_VERSION%s+"([^"]+)"'))
  end)

  it("matches every rockspec: scm (the development tree) or this version", function()
    local p = assert(io.popen("ls rockspec/*.rockspec"))
    local n = 0
    for path in p:lines() do
      n = n + 1
      local text = read(path)
      local version = text:match('\nversion%s*=%s*"([^"]+)"')
      local package = text:match('\npackage%s*=%s*"([^"]+)"')
      local rel = version:match("^(.-)%-%d+$")
      assert(rel == "scm" or "loom " .. rel == loom._VERSION,
             path .. " says " .. version .. ", loom says " .. loom._VERSION)
      assert.truthy(path:find("/" .. package .. "-" .. version .. ".rockspec", 1, true))
    end
    p:close()
    assert.is_true(n > 0)
  end)
end)
