-- loom.encode / loom.decode: the portable string form of values.
local loom = require "loom"
local H = require "helpers"

local function rt(...)
  return loom.decode(loom.encode(...))
end

describe("loom.encode", function()
  it("round-trips nil, booleans, numbers with their subtypes and strings", function()
    local n, a, b, i, f, big, nan, s = rt(nil, true, false, 3, 3.0, math.mininteger, 0 / 0, "a\0b")
    assert.is_nil(n)
    assert.is_true(a)
    assert.is_false(b)
    assert.equal("integer", math.type(i))
    assert.equal("float", math.type(f))
    assert.equal(math.mininteger, big)
    assert.is_true(nan ~= nan)
    assert.equal("a\0b", s)
    assert.equal(0, select("#", rt()))
    assert.equal(3, select("#", rt(nil, nil, nil)))
  end)

  it("keeps cycles, shared tables, holes and metatables", function()
    local shared = { 1 }
    local mt = { __index = function(_, k) return "no " .. k end }
    local t = setmetatable({ 1, nil, 3, a = shared, b = shared, [2.5] = "f" }, mt)
    t.self = t
    local u = rt(t)
    assert.equal(u, u.self)
    assert.equal(u.a, u.b)
    assert.equal(3, u[3])
    assert.is_nil(rawget(u, 2))
    assert.equal("f", u[2.5])
    assert.equal("no x", u.x)
  end)

  it("carries Lua functions with their upvalues, shared between closures, and _ENV rebound", function()
    local count = 0
    local function inc(k) count = count + k; return count end
    local function get() return count end
    local i2, g2 = rt(inc, get)
    assert.equal(5, i2(5))
    assert.equal(5, g2())
    assert.equal(0, count)
    local sandbox = { tostring = function() return "sandboxed" end }
    local f = load("return tostring(1)", "=x", "t", sandbox)
    assert.equal("1", rt(f)())
  end)

  it("sends C functions and modules by their name in package.loaded", function()
    local fmt, pr, str, enc = rt(string.format, print, string, loom.encode)
    assert.equal(string.format, fmt)
    assert.equal(print, pr)
    assert.equal(string, str)
    assert.equal(loom.encode, enc)
  end)

  it("names the path of what cannot leave the machine", function()
    local cases = {
      { { x = { loom.lock() } }, "cannot encode values[1].x[1]: loom.Lock lives in this machine's shared heap" },
      { { q = loom.queue() }, "cannot encode values[1].q: loom.Queue lives in this machine's shared heap" },
      { { p = io.stdout }, "cannot encode values[1].p: userdata (FILE*)" },
      { { co = coroutine.create(print) }, "cannot encode values[1].co: coroutine" },
      { { w = ("x"):gmatch(".") }, "cannot encode values[1].w: C function not reachable from package.loaded" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(loom.encode, c[1])
      assert.is_false(ok)
      assert.equal(c[2], err)
    end
    local ok, err = pcall(loom.encode, 1, setmetatable({}, { __gc = io.stdout }))
    assert.is_false(ok)
    assert.equal("cannot encode values[2]<metatable>.__gc: userdata (FILE*)", err)
  end)

  it("refuses a light userdata", function()
    -- a C function of loom's that returns one is not public: use debug's
    local lud = debug.upvalueid(function() return H end, 1)
    local ok, err = pcall(loom.encode, { lud })
    assert.is_false(ok)
    assert.equal("cannot encode values[1][1]: light userdata is an address in this process", err)
  end)

  it("holds no address: a string decodes in another process", function()
    local s = loom.encode({ f = string.rep, g = function(x) return x * 2 end, t = { 1, 2 } })
    local out, ok = H.run(string.format([[
      local loom = require "loom"
      local t = loom.decode(%q)
      io.write(t.f("ab", 2), t.g(21), #t.t)
    ]], s))
    assert.is_true(ok, out)
    assert.equal("abab422", out)
  end)
end)

describe("loom.decode", function()
  it("checks its argument", function()
    assert.has_error(function() loom.decode(nil) end,
      "bad argument #1 to 'decode' (string expected, got nil)")
  end)

  it("says what is wrong with a string it cannot read", function()
    local s = loom.encode({ 1, 2, 3 })
    local function err(x)
      local ok, e = pcall(loom.decode, x)
      assert.is_false(ok)
      return e
    end
    assert.equal("cannot decode: not a string from loom.encode", err("hello"))
    assert.equal("cannot decode: format version 9 (this loom reads version 1)",
      err(s:sub(1, 4) .. "\9" .. s:sub(6)))
    assert.equal("cannot decode: encoded by Lua 5.3, this is Lua 5.4", err(s:sub(1, 5) .. "\x53" .. s:sub(7)))
    assert.matches("^cannot decode: encoded on another architecture %(little%-endian, 4%-byte integers",
      err(s:sub(1, 6) .. "\4" .. s:sub(8)))
    assert.matches("^cannot decode: encoded on another architecture %(big%-endian",
      err(s:sub(1, 9) .. "\0" .. s:sub(11)))
    assert.matches("^cannot decode: truncated", err(s:sub(1, -2)))
    assert.matches("^cannot decode: trailing bytes", err(s .. "\0"))
    assert.equal("cannot decode: checksum mismatch (the string was altered)",
      err(s:sub(1, -2) .. string.char((s:byte(-1) + 1) % 256)))
  end)

  it("never crashes on random, truncated or mutated strings", function()
    -- in a child, so that a crash fails this spec instead of the run
    local out, ok = H.run([[
      local loom = require "loom"
      math.randomseed(18)
      local function try(s)
        local ok, err = pcall(loom.decode, s)
        if not ok and type(err) ~= "string" then error("non-string error") end
      end
      local base = {
        loom.encode({ 1, "two", { 3.5 }, x = { y = true } }),
        loom.encode(function(a) return a end, string.format, math),
        loom.encode(setmetatable({}, { __index = { k = 1 } })),
      }
      local n = 0
      for _, s in ipairs(base) do
        for cut = 0, #s do try(s:sub(1, cut)); n = n + 1 end
        for _ = 1, 2000 do
          local b = { s:byte(1, -1) }
          for _ = 1, math.random(1, 4) do
            b[math.random(#b)] = math.random(0, 255)
          end
          try(string.char(table.unpack(b)))
          n = n + 1
        end
      end
      local head = base[1]:sub(1, 32)
      for _ = 1, 3000 do
        local r = {}
        for i = 1, math.random(0, 64) do r[i] = string.char(math.random(0, 255)) end
        try(table.concat(r))
        try(head .. table.concat(r))
        n = n + 2
      end
      io.write("survived ", n)
    ]])
    assert.is_true(ok, out)
    assert.matches("^survived %d+$", out)
  end)
end)
