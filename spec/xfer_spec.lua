-- The transfer codec, seen through thread arguments and results.
local H = require "helpers"
local loom = require "loom"

local function echo(...) return ... end
local function roundtrip(...)
  return H.result(loom.thread(echo, ...):start(), 10)
end

describe("transfer codec", function()
  describe("scalars", function()
    it("keeps nil, booleans and the number subtypes", function()
      local a, b, c, d, e = roundtrip(nil, true, false, 3, 3.0)
      assert.is_nil(a)
      assert.is_true(b)
      assert.is_false(c)
      assert.are.equal("integer", math.type(d))
      assert.are.equal("float", math.type(e))
    end)

    it("keeps floats bit-exact: nan, inf, -0.0", function()
      local nan, inf, ninf, nz, tiny = roundtrip(0/0, math.huge, -math.huge, -0.0, 5e-324)
      assert.is_true(nan ~= nan)
      assert.are.equal(math.huge, inf)
      assert.are.equal(-math.huge, ninf)
      assert.are.equal(-math.huge, 1 / nz)
      assert.are.equal(5e-324, tiny)
      assert.are.equal(string.pack("d", 0.1), string.pack("d", (roundtrip(0.1))))
    end)

    it("keeps the integer extremes", function()
      local lo, hi = roundtrip(math.mininteger, math.maxinteger)
      assert.are.equal(math.mininteger, lo)
      assert.are.equal(math.maxinteger, hi)
    end)

    it("keeps binary strings", function()
      local s = "\0\1\2\255 and more\0"
      assert.are.equal(s, (roundtrip(s)))
      local big = string.rep("x", 1 << 20)
      assert.are.equal(big, (roundtrip(big)))
    end)

    it("keeps the number of values, trailing nils included", function()
      assert.are.equal(3, select("#", roundtrip(1, nil, nil)))
    end)

    it("carries thousands of values", function()
      local t = {}
      for i = 1, 5000 do t[i] = i % 3 == 0 and i * 0.5 or i end
      local r = table.pack(roundtrip(table.unpack(t)))
      assert.are.equal(5000, r.n)
      for i = 1, 5000 do assert.are.equal(t[i], r[i]) end
    end)
  end)

  describe("tables", function()
    it("copies nested tables", function()
      local r = roundtrip({ 1, 2, { x = "y", [10] = { true } }, key = 1.5 })
      assert.are.same({ 1, 2, { x = "y", [10] = { true } }, key = 1.5 }, r)
    end)

    it("preserves cycles", function()
      local t = {}
      t.self = t
      t[1] = t
      local r = roundtrip(t)
      assert.are.equal(r, r.self)
      assert.are.equal(r, r[1])
    end)

    it("preserves shared references across arguments", function()
      local shared = {}
      local a, b = roundtrip(shared, { shared })
      assert.are.equal(a, b[1])
    end)

    it("keeps tables as keys", function()
      local k = { "key" }
      local r = roundtrip({ [k] = k })
      local rk, rv = next(r)
      assert.are.equal(rk, rv)
      assert.are.equal("key", rk[1])
    end)

    it("copies metatables", function()
      local mt = { __index = function(_, k) return k .. "!" end }
      local r = roundtrip(setmetatable({}, mt))
      assert.are.equal("hi!", r.hi)
    end)

    it("copies holes in sequences", function()
      local r = roundtrip({ 1, nil, 3 })
      assert.are.equal(1, r[1])
      assert.is_nil(r[2])
      assert.are.equal(3, r[3])
    end)

    it("keeps the length and every value of a sequence with holes", function()
      local t = {}
      for i = 1, 1000 do t[i] = i end
      t[500] = nil
      local r = roundtrip(t)
      assert.are.equal(#t, #r)
      for i = 1, 1000 do assert.are.equal(t[i], r[i]) end
    end)

    it("copies a sequence followed by hash keys", function()
      local t = { 10, 20, 30, x = "x", [0] = "zero", [-1] = "neg", [5] = "five",
                  [1.5] = "half", ["1"] = "string one" }
      local r = roundtrip(t)
      assert.are.same(t, r)
      assert.are.equal(3, #r)
      assert.are.equal("string one", r["1"])
    end)

    it("copies a sequence whose tail lives in the hash part", function()
      -- t[5] goes to a free hash slot, the array part stays 4 long; the
      -- traversal meets it before, between or after the string keys
      for nkeys = 1, 7 do
        local t = { 1, 2, 3, 4 }
        for i = 1, nkeys do t["k" .. i] = i end
        t[5] = 5
        local r = roundtrip(t)
        assert.are.same(t, r)
        assert.are.equal(#t, #r)
      end
      local t = { 1, 2, 3, 4, a = 1, b = 2, c = 3 }
      t[6] = 6
      t[5] = 5
      t[6] = nil
      assert.are.same(t, (roundtrip(t)))
    end)

    it("keeps the subtype of each number in a sequence", function()
      local t = { 1, 2.0, 3, 4.5, math.mininteger, math.maxinteger, -0.0, 0 / 0,
                  math.huge, -math.huge, 5e-324, 0 }
      local r = roundtrip(t)
      assert.are.equal(#t, #r)
      for i = 1, #t do
        assert.are.equal(math.type(t[i]), math.type(r[i]))
        assert.are.equal(string.pack("n", t[i]), string.pack("n", r[i]))
      end
    end)

    it("copies a sequence of mixed values", function()
      local inner = { "inner" }
      local t = { true, false, "s", inner, 1, inner, 2.5 }
      t[8] = t
      local r = roundtrip(t)
      assert.are.equal(8, #r)
      assert.is_true(r[1])
      assert.is_false(r[2])
      assert.are.equal("s", r[3])
      assert.are.equal("inner", r[4][1])
      assert.are.equal(r[4], r[6])
      assert.are.equal(r, r[8])
      assert.are.equal(2.5, r[7])
    end)

    it("keeps a table referenced from the sequence and the hash part", function()
      local shared = { 1 }
      local r = roundtrip({ shared, shared, k = shared, [shared] = shared })
      assert.are.equal(r[1], r[2])
      assert.are.equal(r[1], r.k)
      assert.are.equal(r[1], r[r[1]])
    end)

    it("copies very large sequences exactly", function()
      local t = {}
      for i = 1, 300000 do t[i] = (i - 1) * 0.5 end
      t[300001] = 7
      local r = roundtrip(t)
      assert.are.equal(300001, #r)
      for i = 1, 300000 do
        if r[i] ~= t[i] then assert.are.equal(t[i], r[i]) end
      end
      assert.are.equal("integer", math.type(r[300001]))
    end)

    it("reads tables raw: no metamethod runs on either side", function()
      local mt = {}
      local function boom() error("metamethod called") end
      mt.__index, mt.__newindex, mt.__len, mt.__pairs = boom, boom, boom, boom
      local t = setmetatable({ 1, 2, 3, x = 4 }, mt)
      local r = roundtrip(t)
      assert.are.equal(3, rawlen(r))
      assert.are.equal(4, rawget(r, "x"))
      assert.are.equal(2, rawget(r, 2))
      local ok, err = pcall(function() return r.missing end)
      assert.is_false(ok)
      assert.matches("metamethod called", err)
    end)

    it("sends module tables by name", function()
      local r = roundtrip(string)
      assert.are.equal(string.rep, r.rep)
    end)
  end)

  describe("functions", function()
    it("copies a function with its upvalues", function()
      local n = 41
      local f = function() n = n + 1; return n end
      assert.are.equal(42, H.result(loom.thread(function(g) return g() end, f):start(), 5))
      assert.are.equal(41, n)
    end)

    it("binds _ENV to the receiving state's globals", function()
      local t = loom.thread(function() x_global_in_thread = 1; return type(print) end)
      assert.are.equal("function", H.result(t:start(), 5))
      assert.is_nil(rawget(_G, "x_global_in_thread"))
    end)

    it("keeps a recursive local function", function()
      local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
      assert.are.equal(3628800, H.result(loom.thread(fact, 10):start(), 5))
    end)

    it("keeps upvalues shared between closures", function()
      local function counter()
        local n = 0
        return function() n = n + 1 end, function() return n end
      end
      local inc, get = counter()
      local r = H.result(loom.thread(function(a, b) a(); a(); return b() end, inc, get):start(), 5)
      assert.are.equal(2, r)
    end)

    it("transfers C functions as themselves, with their upvalues", function()
      local r = H.result(loom.thread(function(f) return f("%d", 7) end, string.format):start(), 5)
      assert.are.equal("7", r)
    end)

    it("runs a C function as a thread target", function()
      local r = H.result(loom.thread(select, "#", 1, 2, 3):start(), 5)
      assert.are.equal(3, r)
    end)
  end)

  describe("errors", function()
    it("names the path and type of an untransferable value", function()
      local ok, err = pcall(roundtrip, 1, { conn = io.stdout })
      assert.is_false(ok)
      assert.matches("cannot transfer args%[2%]%.conn: userdata %(FILE%*%)$", err)
    end)

    it("names upvalues in the path", function()
      local f = io.stdout
      local ok, err = pcall(roundtrip, function() return f end)
      assert.is_false(ok)
      assert.matches("cannot transfer args%[1%]<upvalue f>: userdata %(FILE%*%)$", err)
    end)

    it("names the target", function()
      local co = coroutine.create(print)
      local ok, err = pcall(function() loom.thread(echo, co):start() end)
      assert.is_false(ok)
      assert.matches("cannot transfer args%[1%]: coroutine$", err)
    end)

    it("bounds nesting with a clear error", function()
      local deep = {}
      local cur = deep
      for _ = 1, 500 do cur.next = {}; cur = cur.next end
      local ok, err = pcall(roundtrip, deep)
      assert.is_false(ok)
      assert.matches("nesting deeper than 200 levels$", err)
    end)

    it("reports an untransferable result as the thread's error", function()
      local t = loom.thread(function() return io.stdout end):start()
      local ok, err = pcall(t.result, t, H.t(5))
      assert.is_false(ok)
      assert.matches("cannot transfer results%[1%]: userdata %(FILE%*%)", err)
    end)
  end)

  it("loads one function many times from its cache", function()
    local t = loom.thread(function()
      local loom = require "loom"
      local inner = function(x) return x + 1 end
      local sum = 0
      for i = 1, 200 do
        sum = sum + H.result(loom.thread(inner, i):start(), 5)
      end
      return sum
    end):start()
    assert.are.equal(20300, H.result(t, 60))
  end)
end)
