-- loom.Array slices: slice(i, j) and set_slice(i, t), counted as string.sub
-- counts, taken under the array's lock; get_obj.
local loom = require "loom"
local H = require "helpers"

local function join(t) return table.concat(t, ",") end

describe("loom.Array", function()
  describe(":slice()", function()
    it("counts as string.sub does, negative positions from the end", function()
      local a = loom.array("int32", { 1, 2, 3, 4, 5 })
      assert.equal("1,2,3,4,5", join(a:slice()))
      assert.equal("2,3,4,5", join(a:slice(2)))
      assert.equal("2,3,4", join(a:slice(2, -2)))
      assert.equal("4,5", join(a:slice(-2)))
      assert.equal("1", join(a:slice(-5, 1)))
      assert.same({}, a:slice(4, 3))
      assert.same({}, a:slice(6))          -- just past the end: empty
      assert.same({}, loom.array("double", 0):slice())
    end)

    it("returns a new table of the element type's values", function()
      local c = loom.array("char", "hello")
      assert.same({ "e", "l" }, c:slice(2, 3))
      local b = loom.array("bool", { true, false })
      assert.same({ true, false }, b:slice())
      local t = c:slice()
      t[1] = "x"
      assert.equal("h", c[1])
    end)

    it("raises naming the argument for positions outside the array", function()
      local a = loom.array("int8", 5)
      assert.has_error(function() a:slice(7) end,
                       "bad argument #1 to 'slice' (index out of range)")
      assert.has_error(function() a:slice(-6) end,
                       "bad argument #1 to 'slice' (index out of range)")
      assert.has_error(function() a:slice(1, 6) end,
                       "bad argument #2 to 'slice' (index out of range)")
      assert.has_error(function() a:slice(1, -7) end,
                       "bad argument #2 to 'slice' (index out of range)")
      assert.has_error(function() a:slice(math.mininteger) end,
                       "bad argument #1 to 'slice' (index out of range)")
      assert.has_error(function() a:slice(1, math.maxinteger) end,
                       "bad argument #2 to 'slice' (index out of range)")
      assert.has_error(function() a:slice(1.5) end,
                       "bad argument #1 to 'slice' (number has no integer representation)")
      assert.has_error(function() a.slice(loom.queue(), 1) end,
                       "bad argument #1 to 'slice' (loom.Array expected, got loom.Queue)")
    end)
  end)

  describe(":set_slice()", function()
    it("stores a table's elements from a position and returns the array", function()
      local a = loom.array("int64", 5)
      assert.equal(a, a:set_slice(2, { 7, 8 }))
      assert.equal("0,7,8,0,0", join(a:totable()))
      a:set_slice(-1, { 9 })
      assert.equal("0,7,8,0,9", join(a:totable()))
      a:set_slice(6, {})                    -- nothing, just past the end
      a:set_slice(1, { 1, 2, 3, 4, 5 })
      assert.equal("1,2,3,4,5", join(a:totable()))
    end)

    it("changes nothing when an element is bad or the table too long", function()
      local a = loom.array("uint8", { 1, 2, 3 })
      assert.has_error(function() a:set_slice(2, { 1, 2, 3 }) end,
                       "bad argument #2 to 'set_slice' (slice does not fit in the array)")
      assert.has_error(function() a:set_slice(1, { 5, 256 }) end)
      assert.has_error(function() a:set_slice(1, { 5, "x" }) end)
      assert.has_error(function() a:set_slice(5, {}) end,
                       "bad argument #1 to 'set_slice' (index out of range)")
      assert.has_error(function() a:set_slice() end,
                       "bad argument #1 to 'set_slice' (value expected)")
      assert.has_error(function() a:set_slice(1, "abc") end,
                       "bad argument #2 to 'set_slice' (table expected, got string)")
      assert.equal("1,2,3", join(a:totable()))
    end)

    it("takes the array's lock: a slice waits for a holder elsewhere", function()
      local a = loom.array("int32", 4)
      local lk = a:get_lock()
      local held, go = loom.event(), loom.event()
      local t = loom.thread(function()
        lk:acquire()
        held:set()
        go:wait()
        a:set_slice(1, { 1, 1, 1, 1 })      -- an RLock: the holder may slice
        lk:release()
      end):start()
      finally(function() go:set(); t:join(H.t(10)) end)
      H.wait(held, 10)
      local q = loom.queue()
      local r = loom.thread(function() q:put(a:slice()) end):start()
      finally(function() r:join(H.t(10)) end)
      assert.same({ nil, "timeout" }, { q:get(0.1) })
      go:set()
      assert.equal("1,1,1,1", join(H.get(q, 10)))
    end)

    it("works on an array without a lock", function()
      local a = loom.array("float", 3, false)
      a:set_slice(1, { 0.5, 1.5 })
      assert.same({ 0.5, 1.5, 0 }, a:slice())
    end)

    it("is seen whole by a reader that slices, across threads", function()
      local a = loom.array("int32", 64)
      local stop = loom.event()
      local w = loom.thread(function()
        local v = 0
        local t = {}
        while not stop:is_set() do
          v = v + 1
          for i = 1, 64 do t[i] = v end
          a:set_slice(1, t)
        end
      end):start()
      finally(function() stop:set(); w:join(H.t(10)) end)
      for _ = 1, 500 do
        local s = a:slice()
        for i = 2, 64 do assert(s[i] == s[1], "torn slice") end
      end
    end)
  end)

  it(":get_obj() is the array itself, and a Value's the value", function()
    local a = loom.array("int8", 2)
    assert.equal(a, a:get_obj())
    local v = loom.value("int32", 5)
    assert.equal(v, v:get_obj())
    assert.equal(5, v:get_obj().value)
    assert.has_error(function() a.get_obj(v) end,
                     "bad argument #1 to 'get_obj' (loom.Array expected, got loom.Value)")
  end)

  local describe_processes = loom.process and describe or pending
  describe_processes("between processes", function()
    it("a child's set_slice is what the parent slices", function()
      local a = loom.array("double", 6)
      local p = loom.process(function() a:set_slice(-3, { 1.5, 2.5, 3.5 }) end):start()
      H.join(p, 30)
      assert.same({ 0, 0, 0, 1.5, 2.5, 3.5 }, a:slice())
      assert.same({ 2.5 }, a:slice(-2, 5))
    end)
  end)
end)
