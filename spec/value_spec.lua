-- loom.Value
local H = require "helpers"
local loom = require "loom"
-- thread functions see these as upvalues: a spec file's environment is
-- busted's, not a table a thread could rebuild
local math_type = math.type

local function join_all(ts)
  for _, t in ipairs(ts) do H.join(t, 30) end
end

-- n threads each doing `iters` increments of v through step(v)
local function hammer(v, nthreads, iters, step)
  local ts = {}
  finally(function() join_all(ts) end)
  for i = 1, nthreads do
    ts[i] = loom.thread(function(val, k, f)
      for _ = 1, k do f(val) end
      return true
    end, v, iters, step):start()
  end
  for i = 1, nthreads do assert.is_true(H.result(ts[i], 60)) end
end

describe("loom.Value", function()
  describe("loom.value()", function()
    it("defaults to zero, false or a NUL char", function()
      assert.equal(0, loom.value("int32").value)
      assert.equal(0.0, loom.value("double").value)
      assert.is_false(loom.value("bool").value)
      assert.equal("\0", loom.value("char").value)
    end)

    it("accepts every type name and Python typecode", function()
      local names = {
        int8 = "int8", uint8 = "uint8", int16 = "int16", uint16 = "uint16",
        int32 = "int32", uint32 = "uint32", int64 = "int64", uint64 = "uint64",
        float = "float", double = "double", bool = "bool", char = "char",
        b = "int8", B = "uint8", h = "int16", H = "uint16", i = "int32",
        I = "uint32", l = "int64", L = "uint64", q = "int64", Q = "uint64",
        f = "float", d = "double", c = "char", ["?"] = "bool",
        float32 = "float", float64 = "double", boolean = "bool",
      }
      for name, canonical in pairs(names) do
        assert.equal(canonical, loom.value(name).type)
      end
    end)

    it("raises on an unknown element type", function()
      assert.has_error(function() loom.value("int128", 0) end,
        "bad argument #1 to 'value' (invalid element type 'int128')")
      assert.has_error(function() loom.value(nil) end,
        "bad argument #1 to 'value' (string expected, got nil)")
    end)

    it("raises when the initial value does not fit", function()
      assert.has_error(function() loom.value("int8", 300) end,
        "bad argument #2 to 'value' (value out of range for int8)")
      assert.has_error(function() loom.value("int32", 1.5) end,
        "bad argument #2 to 'value' (number has no integer representation)")
      assert.has_error(function() loom.value("double", "1") end,
        "bad argument #2 to 'value' (number expected, got string)")
      assert.has_error(function() loom.value("bool", 1) end,
        "bad argument #2 to 'value' (boolean expected, got number)")
    end)

    it("checks the lock argument", function()
      assert.has_error(function() loom.value("int32", 0, 7) end,
        "bad argument #3 to 'value' (boolean or loom lock expected, got number)")
      assert.has_error(function() loom.value("int32", 0, loom.event()) end,
        "bad argument #3 to 'value' (boolean or loom lock expected, got loom.Event)")
    end)

    it("prints its type and value", function()
      assert.equal("loom.Value (int16 -5)", tostring(loom.value("h", -5)))
    end)
  end)

  describe(".value", function()
    it("reads and writes every integer type within its range", function()
      local ranges = {
        int8 = { -128, 127 }, uint8 = { 0, 255 },
        int16 = { -32768, 32767 }, uint16 = { 0, 65535 },
        int32 = { -2147483648, 2147483647 }, uint32 = { 0, 4294967295 },
        int64 = { math.mininteger, math.maxinteger }, uint64 = { 0, math.maxinteger },
      }
      for name, r in pairs(ranges) do
        local v = loom.value(name)
        for _, x in ipairs(r) do
          v.value = x
          assert.equal(x, v.value)
          assert.equal("integer", math_type(v.value))
        end
      end
    end)

    it("raises 'value out of range' past either end", function()
      local outside = {
        int8 = { -129, 128 }, uint8 = { -1, 256 }, int16 = { -32769, 32768 },
        uint16 = { -1, 65536 }, int32 = { -2147483649, 2147483648 },
        uint32 = { -1, 4294967296 }, uint64 = { -1, 2.0^64 },
        int64 = { -2.0^63 * 2, 2.0^63 },
      }
      for name, xs in pairs(outside) do
        local v = loom.value(name)
        for _, x in ipairs(xs) do
          assert.has_error(function() v.value = x end, "value out of range for " .. name)
        end
        assert.equal(0, v.value)
      end
    end)

    it("stores integral floats in integer types, and refuses the others", function()
      local v = loom.value("int32")
      v.value = 42.0
      assert.equal(42, v.value)
      assert.equal("integer", math_type(v.value))
      for _, x in ipairs({ 1.5, 0 / 0, math.huge }) do
        assert.has_error(function() v.value = x end, "number has no integer representation")
      end
      assert.has_error(function() v.value = "1" end, "number expected, got string")
    end)

    it("reads uint64 values above math.maxinteger as floats", function()
      local v = loom.value("uint64", 2^63)
      assert.equal("float", math_type(v.value))
      assert.equal(2^63, v.value)
    end)

    it("keeps doubles bit-exact and rounds floats to single precision", function()
      local d = loom.value("double")
      for _, x in ipairs({ 0.1, -0.0, math.huge, -math.huge, 1e308 }) do
        d.value = x
        assert.equal(x, d.value)
      end
      d.value = 3
      assert.equal("float", math_type(d.value))
      d.value = 0 / 0
      assert.is_true(d.value ~= d.value)
      local f = loom.value("float", 0.1)
      assert.is_not.equal(0.1, f.value)
      assert.is_true(math.abs(f.value - 0.1) < 1e-7)
      f.value = 1e300
      assert.equal(math.huge, f.value)
    end)

    it("stores booleans and one-byte chars", function()
      local b = loom.value("bool", true)
      assert.is_true(b.value)
      b.value = false
      assert.is_false(b.value)
      assert.has_error(function() b.value = nil end, "boolean expected, got nil")
      local c = loom.value("c", "x")
      assert.equal("x", c.value)
      c.value = 65
      assert.equal("A", c.value)
      assert.has_error(function() c.value = "xy" end, "string of length 1 expected")
      assert.has_error(function() c.value = 256 end, "value out of range for char")
    end)

    it("raises on other fields", function()
      local v = loom.value("int32")
      assert.has_error(function() v.other = 1 end, "cannot set field 'other' of a loom.Value")
      assert.is_nil(v.other)
    end)
  end)

  describe(":add() and :sub()", function()
    it("return the new value", function()
      local v = loom.value("int64", 10)
      assert.equal(15, v:add(5))
      assert.equal(12, v:sub(3))
      assert.equal(12, v.value)
      assert.equal(2, v:add(-10))
    end)

    it("raise without changing anything when the result does not fit", function()
      local v = loom.value("int8", 120)
      assert.has_error(function() v:add(8) end, "value out of range for int8")
      assert.equal(120, v.value)
      local u = loom.value("uint32")
      assert.has_error(function() u:sub(1) end, "value out of range for uint32")
      local w = loom.value("int64", math.maxinteger)
      assert.has_error(function() w:add(1) end, "value out of range for int64")
      assert.has_error(function() w:sub(math.mininteger) end, "value out of range for int64")
      assert.equal(math.maxinteger, w.value)
      local big = loom.value("uint64", math.maxinteger)
      assert.equal(2^63, big:add(1))
    end)

    it("check the operand", function()
      local v = loom.value("int32")
      assert.has_error(function() v:add(1.5) end,
        "bad argument #1 to 'add' (number has no integer representation)")
      assert.has_error(function() v:add() end,
        "bad argument #1 to 'add' (number expected, got no value)")
      assert.equal(2, v:add(2.0))
      assert.has_error(function() loom.value("bool"):add(1) end, "cannot add on a bool element")
      assert.has_error(function() loom.value("char"):sub(1) end, "cannot sub on a char element")
    end)

    it("add floating point numbers", function()
      local d = loom.value("double", 1.5)
      assert.equal(2.0, d:add(0.5))
      assert.equal(1.75, d:sub(0.25))
      local f = loom.value("float", 1)
      assert.equal(1.5, f:add(0.5))
    end)
  end)

  describe(":cas()", function()
    it("swaps only when the value is the expected one", function()
      local v = loom.value("int32", 5)
      assert.same({ true, 5 }, { v:cas(5, 7) })
      assert.equal(7, v.value)
      assert.same({ false, 7 }, { v:cas(5, 9) })
      assert.equal(7, v.value)
    end)

    it("compares floats after conversion to the element type", function()
      local f = loom.value("float", 0.1)
      assert.is_true((f:cas(0.1, 2)))
      assert.equal(2, f.value)
      local d = loom.value("double", 0.0)
      assert.is_false((d:cas(-0.0, 1)))
    end)

    it("checks both operands", function()
      local v = loom.value("int8")
      assert.has_error(function() v:cas(0, 300) end,
        "bad argument #2 to 'cas' (value out of range for int8)")
      assert.has_error(function() v:cas("a", 1) end,
        "bad argument #1 to 'cas' (number expected, got string)")
    end)
  end)

  describe(":exchange()", function()
    it("stores the new value and returns the old one", function()
      local v = loom.value("bool")
      assert.is_false(v:exchange(true))
      assert.is_true(v:exchange(false))
      local d = loom.value("d", 1.25)
      assert.equal(1.25, d:exchange(2))
      assert.equal(2, d.value)
    end)
  end)

  describe(":load() and :store()", function()
    it("read and write the value", function()
      local v = loom.value("uint16")
      assert.is_nil(v:store(65535))
      assert.equal(65535, v:load())
      assert.has_error(function() v:store(65536) end,
        "bad argument #1 to 'store' (value out of range for uint16)")
    end)
  end)

  describe(":get_lock()", function()
    it("returns the same RLock every time", function()
      local v = loom.value("int32")
      local l = v:get_lock()
      assert.matches("^loom%.RLock", tostring(l))
      assert.equal(l, v:get_lock())
      assert.is_true(l:acquire())
      assert.is_true(l:acquire())
      l:release()
      l:release()
    end)

    it("returns a lock given to value()", function()
      local l = loom.lock()
      local v = loom.value("int32", 0, l)
      assert.equal(l, v:get_lock())
      assert.is_not.equal(l, loom.value("int32", 0, true):get_lock())
    end)

    it("raises when made with lock = false", function()
      local v = loom.value("int32", 0, false)
      assert.has_error(function() v:get_lock() end, "loom.Value has no lock")
    end)
  end)

  describe("between threads", function()
    it("is passed by reference", function()
      local v = loom.value("int32", 1)
      local t = loom.thread(function(val) val.value = val.value + 41; return val end, v):start()
      local back = H.result(t, 10)
      assert.equal(42, v.value)
      assert.equal(v, back)
    end)

    it("travels as an upvalue, and comes back as a result", function()
      local v = loom.value("int32", 1)
      local t = loom.thread(function()
        v:add(1)
        local made = require("loom").value("double", 2.5)
        return made
      end):start()
      local made = H.result(t, 10)
      H.join(t, 10)
      collectgarbage()
      assert.equal(2, v.value)
      assert.equal(2.5, made.value)       -- outlives the thread's state
      assert.equal(3.5, made:add(1))
    end)

    it("loses no update made under get_lock", function()
      local v = loom.value("int64")
      hammer(v, 4, 2000, function(val)
        local l = val:get_lock()
        l:acquire()
        val.value = val.value + 1
        l:release()
      end)
      assert.equal(8000, v.value)
    end)

    it("loses no update made with add", function()
      local v = loom.value("int32")
      hammer(v, 4, 5000, function(val) val:add(1) end)
      assert.equal(20000, v.value)
    end)

    it("may lose plain read-modify-write updates, never gains any", function()
      local v = loom.value("int64")
      hammer(v, 4, 5000, function(val) val.value = val.value + 1 end)
      assert.is_true(v.value <= 20000)
      assert.is_true(v.value >= 5000)
    end)

    it("adds doubles exactly with add", function()
      local d = loom.value("double")
      hammer(d, 4, 2000, function(val) val:add(0.5) end)
      assert.equal(4000, d.value)
    end)

    it("#stress loses no update under heavy contention", function()
      local v, l = loom.value("int64"), loom.value("int64")
      hammer(v, 8, 200000, function(val) val:add(1) end)
      assert.equal(1600000, v.value)
      hammer(l, 8, 20000, function(val)
        local g <close> = val:get_lock():hold()
        val.value = val.value + 1
      end)
      assert.equal(160000, l.value)
    end)
  end)

  local describe_processes = loom.process and describe or pending
  describe_processes("between processes", function()
    it("is shared with forked children, lock and all", function()
      local v, plain = loom.value("int64"), loom.value("int64")
      local ps = {}
      finally(function() for _, p in ipairs(ps) do p:join(H.t(10)) end end)
      for k = 1, 2 do
        ps[k] = loom.process(function()
          for _ = 1, 1000 do
            v:add(1)
            local g <close> = plain:get_lock():hold()
            plain.value = plain.value + 1
          end
        end):start()
      end
      for _ = 1, 1000 do
        local g <close> = plain:get_lock():hold()
        plain.value = plain.value + 1
      end
      for k = 1, 2 do assert.is_true(H.join(ps[k], 30)) end
      assert.equal(2000, v.value)
      assert.equal(3000, plain.value)
    end)
  end)

  describe("lifetime", function()
    it("is freed, with its lock, when the last reference goes", function()
      collectgarbage()
      collectgarbage()
      local before = loom.heap_used()
      do
        local v = loom.value("int32")
        local l = v:get_lock()
        local w = loom.value("int32", 0, l)
        assert.equal(l, w:get_lock())
      end
      collectgarbage()
      collectgarbage()
      assert.equal(before, loom.heap_used())
    end)

    it("raises when used after <close>", function()
      local v <close> = loom.value("int32")
      local w = v
      getmetatable(v).__close(v)
      assert.has_error(function() return w.value end, "attempt to use a closed loom.Value")
      assert.equal("loom.Value (closed)", tostring(w))
    end)
  end)
end)
