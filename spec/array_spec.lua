-- loom.Array
local H = require "helpers"
local loom = require "loom"

local function join_all(ts)
  for _, t in ipairs(ts) do H.join(t, 30) end
end

describe("loom.Array", function()
  describe("loom.array()", function()
    it("makes n zeroed elements", function()
      local a = loom.array("double", 4)
      assert.equal(4, #a)
      assert.equal("double", a.type)
      assert.same({ 0.0, 0.0, 0.0, 0.0 }, a:totable())
      assert.equal("loom.Array (double[4])", tostring(a))
    end)

    it("copies a table's sequence", function()
      local a = loom.array("int32", { 1, 2, 3 })
      assert.equal(3, #a)
      assert.same({ 1, 2, 3 }, a:totable())
      assert.equal(0, #loom.array("i", {}))
    end)

    it("takes a string for a char array", function()
      local a = loom.array("c", "hello")
      assert.equal(5, #a)
      assert.equal("h", a[1])
      assert.equal("hello", table.concat(a:totable()))
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() loom.array("int128", 1) end,
        "bad argument #1 to 'array' (invalid element type 'int128')")
      assert.has_error(function() loom.array("int32", -1) end,
        "bad argument #2 to 'array' (size out of range)")
      assert.has_error(function() loom.array("int32", 2.5) end,
        "bad argument #2 to 'array' (number has no integer representation)")
      assert.has_error(function() loom.array("int32", "abc") end,
        "bad argument #2 to 'array' (number or table expected, got string)")
      assert.has_error(function() loom.array("char") end,
        "bad argument #2 to 'array' (number, table or string expected, got no value)")
      assert.has_error(function() loom.array("int8", { 1, 300 }) end,
        "bad argument #2 to 'array' (value out of range for int8)")
      assert.has_error(function() loom.array("int8", 1, "x") end,
        "bad argument #3 to 'array' (boolean or loom lock expected, got string)")
    end)

    it("reports an exhausted heap", function()
      assert.has_error(function() loom.array("int64", loom.heap_size() // 8) end,
        "cannot create array: shared heap exhausted")
    end)
  end)

  describe("a[i]", function()
    it("reads and writes 1-based elements", function()
      local a = loom.array("int16", 3)
      a[1], a[3] = -7, 300
      assert.equal(-7, a[1])
      assert.equal(0, a[2])
      assert.equal(300, a[3])
      a[2.0] = 5
      assert.equal(5, a[2])
    end)

    it("raises 'index out of range' outside 1..#a", function()
      local a = loom.array("int32", 3)
      for _, i in ipairs({ 0, -1, 4, 100, math.mininteger }) do
        assert.has_error(function() a[i] = 1 end, "index out of range")
      end
      for _, i in ipairs({ 0, -1, 5, math.maxinteger }) do
        assert.has_error(function() return a[i] end, "index out of range")
      end
      assert.has_error(function() return a[1.5] end, "array index must be an integer")
      assert.has_error(function() a[1.5] = 1 end, "array index must be an integer")
    end)

    it("reads nil just past the end, so ipairs works", function()
      local a = loom.array("int32", { 10, 20, 30 })
      assert.is_nil(a[4])
      local seen = {}
      for i, x in ipairs(a) do seen[i] = x end
      assert.same({ 10, 20, 30 }, seen)
    end)

    it("checks stored values", function()
      local a = loom.array("uint8", 2)
      assert.has_error(function() a[1] = 256 end, "value out of range for uint8")
      assert.has_error(function() a[1] = 0.5 end, "number has no integer representation")
      assert.has_error(function() a[1] = {} end, "number expected, got table")
      assert.equal(0, a[1])
    end)

    it("raises on other fields", function()
      local a = loom.array("int32", 1)
      assert.has_error(function() a.x = 1 end, "cannot set field 'x' of a loom.Array")
      assert.is_nil(a.x)
    end)
  end)

  describe(":totable()", function()
    it("copies a range", function()
      local a = loom.array("int32", { 1, 2, 3, 4, 5 })
      assert.same({ 2, 3, 4 }, a:totable(2, 4))
      assert.same({ 4, 5 }, a:totable(4))
      assert.same({}, a:totable(3, 2))
      assert.has_error(function() a:totable(0, 2) end,
        "bad argument #1 to 'totable' (index out of range)")
      assert.has_error(function() a:totable(1, 6) end,
        "bad argument #2 to 'totable' (index out of range)")
    end)
  end)

  describe(":fill()", function()
    it("sets every element and returns the array", function()
      local a = loom.array("float", 3)
      assert.equal(a, a:fill(1.5))
      assert.same({ 1.5, 1.5, 1.5 }, a:totable())
      assert.has_error(function() a:fill("x") end,
        "bad argument #1 to 'fill' (number expected, got string)")
    end)
  end)

  describe("atomic element methods", function()
    it("add and sub return the new element", function()
      local a = loom.array("int32", 2)
      assert.equal(5, a:add(2, 5))
      assert.equal(3, a:sub(2, 2))
      assert.same({ 0, 3 }, a:totable())
    end)

    it("cas and exchange", function()
      local a = loom.array("int64", { 1, 2 })
      assert.same({ true, 1 }, { a:cas(1, 1, 10) })
      assert.same({ false, 10 }, { a:cas(1, 1, 20) })
      assert.equal(2, a:exchange(2, 7))
      assert.same({ 10, 7 }, a:totable())
    end)

    it("check the index and the range", function()
      local a = loom.array("int8", { 127 })
      assert.has_error(function() a:add(2, 1) end,
        "bad argument #1 to 'add' (index out of range)")
      assert.has_error(function() a:cas(0, 1, 1) end,
        "bad argument #1 to 'cas' (index out of range)")
      assert.has_error(function() a:exchange("x", 1) end,
        "bad argument #1 to 'exchange' (number expected, got string)")
      assert.has_error(function() a:add(1, 1) end, "value out of range for int8")
    end)
  end)

  describe(":get_lock()", function()
    it("returns the array's RLock, or a given lock", function()
      local a = loom.array("int32", 1)
      assert.matches("^loom%.RLock", tostring(a:get_lock()))
      assert.equal(a:get_lock(), a:get_lock())
      local l = loom.lock()
      assert.equal(l, loom.array("int32", 1, l):get_lock())
      assert.has_error(function() loom.array("int32", 1, false):get_lock() end,
        "loom.Array has no lock")
    end)
  end)

  describe("between threads", function()
    it("is shared by reference", function()
      local a = loom.array("int32", 8)
      local ts = {}
      finally(function() join_all(ts) end)
      for k = 1, 4 do
        ts[k] = loom.thread(function(arr, j)
          arr[j], arr[j + 4] = j, j * 10
          return #arr
        end, a, k):start()
      end
      for k = 1, 4 do assert.equal(8, H.result(ts[k], 10)) end
      assert.same({ 1, 2, 3, 4, 10, 20, 30, 40 }, a:totable())
    end)

    it("loses no update made with add or under get_lock", function()
      local a = loom.array("int64", 2)
      local ts = {}
      finally(function() join_all(ts) end)
      for k = 1, 4 do
        ts[k] = loom.thread(function(arr, n)
          local l = arr:get_lock()
          for _ = 1, n do
            arr:add(1, 1)
            l:acquire()
            arr[2] = arr[2] + 1
            l:release()
          end
          return true
        end, a, 2000):start()
      end
      for k = 1, 4 do assert.is_true(H.result(ts[k], 60)) end
      assert.same({ 8000, 8000 }, a:totable())
    end)
  end)

  local describe_processes = loom.process and describe or pending
  describe_processes("between processes", function()
    it("is shared with forked children", function()
      local a = loom.array("double", 3)
      local ps = {}
      finally(function() for _, p in ipairs(ps) do p:join(H.t(10)) end end)
      for k = 1, 3 do
        ps[k] = loom.process(function(i) a[i] = i + 0.5 end, k):start()
      end
      for k = 1, 3 do assert.is_true(H.join(ps[k], 30)) end
      assert.same({ 1.5, 2.5, 3.5 }, a:totable())
    end)
  end)

  describe("lifetime", function()
    it("returns its memory to the heap", function()
      collectgarbage()
      collectgarbage()
      local before = loom.heap_used()
      do
        local a = loom.array("double", 100000)
        a:fill(1)
        assert.is_true(loom.heap_used() >= before + 800000)
      end
      collectgarbage()
      collectgarbage()
      assert.equal(before, loom.heap_used())
    end)
  end)
end)
