-- loom.Queue's Python parity: lifo_queue, priority_queue, task_done/join,
-- shutdown([immediate]) and a settable maxsize.
local loom = require "loom"
local H = require "helpers"

local function drain(q)
  local t = {}
  while true do
    local v = q:try_get()
    if v == nil then return t end
    t[#t + 1] = v
  end
end

-- A fresh lua5.4 killed after H.t(limit) s: a hang fails, not hangs.
local guarded = H.run

describe("loom.lifo_queue", function()
  it("gives the newest item first", function()
    local q = loom.lifo_queue()
    assert.equal("lifo", q.kind)
    assert.equal("fifo", loom.queue().kind)
    for i = 1, 5 do q:put(i) end
    assert.same({ 5, 4, 3, 2, 1 }, drain(q))
    q:put("a"); q:put({ big = string.rep("x", 1000) }); q:put("c")
    assert.equal("c", q:get())
    assert.equal(1000, #q:get().big)
    q:put("d")
    assert.same({ "d", "a" }, drain(q))
  end)

  it("is bounded by maxsize and checks it like queue", function()
    local q = loom.lifo_queue(2)
    assert.is_true(q:try_put(1))
    assert.is_true(q:try_put(2))
    assert.is_false(q:try_put(3))
    assert.same({ nil, "timeout" }, { q:put(3, 0.01) })
    assert.has_error(function() loom.lifo_queue(-1) end,
                     "bad argument #1 to 'lifo_queue' (maxsize must be non-negative)")
  end)

  it("wakes a waiting getter and drains before 'closed'", function()
    local q = loom.lifo_queue()
    local t = loom.thread(function() return q:get(H.t(20)) end):start()
    finally(function() q:close(); t:join(H.t(10)) end)
    q:put("x")
    assert.equal("x", H.result(t, 20))
    q:put(1); q:put(2); q:close()
    assert.same({ 2, 1 }, drain(q))
    assert.same({ nil, "closed" }, { q:get(0) })
  end)
end)

describe("loom.priority_queue", function()
  it("gives the lowest priority first: numbers, or a table's first element", function()
    local q = loom.priority_queue()
    assert.equal("priority", q.kind)
    for _, v in ipairs { 5, 1, 4.5, -2, 3, math.huge, -math.huge, 0 } do q:put(v) end
    assert.same({ -math.huge, -2, 0, 1, 3, 4.5, 5, math.huge }, drain(q))
    q:put({ 2, "two" }); q:put({ 1, "one" }); q:put({ 3, "three" })
    assert.equal("one", q:get()[2])
    assert.equal("two", q:get()[2])
    assert.equal("three", q:get()[2])
  end)

  it("breaks ties in the order the items were put", function()
    local q = loom.priority_queue()
    for i = 1, 50 do q:put({ i % 3, i }) end
    local last = { -1, 0 }
    for _ = 1, 50 do
      local v = q:get()
      assert(v[1] > last[1] or (v[1] == last[1] and v[2] > last[2]),
             "out of order: " .. v[1] .. "," .. v[2])
      last = v
    end
  end)

  it("matches a sort over many items, large ones and loom objects among them", function()
    math.randomseed(16)
    local q = loom.priority_queue()
    local ref, lk = {}, loom.lock()
    for i = 1, 3000 do
      local k = math.random(1, 200)
      local item = { k, i }
      if i % 97 == 0 then item[3] = string.rep("y", 500) end
      if i % 101 == 0 then item[3] = lk end
      ref[#ref + 1] = item
      q:put(item)
      if i % 7 == 0 then   -- interleave gets with puts
        table.sort(ref, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
        local v = q:get()
        assert(v[1] == ref[1][1] and v[2] == ref[1][2])
        table.remove(ref, 1)
      end
    end
    table.sort(ref, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    for i = 1, #ref do
      local v = q:get()
      assert(v[1] == ref[i][1] and v[2] == ref[i][2], "item " .. i)
      if v[2] % 101 == 0 then assert.equal(lk, v[3]) end
    end
    assert.equal(0, #q)
  end)

  it("raises naming the argument for an item without a priority", function()
    local q = loom.priority_queue()
    local msg = "bad argument #1 to 'put' (priority must be a number, " ..
                "or a table whose first element is a number)"
    assert.has_error(function() q:put("5") end, msg)
    assert.has_error(function() q:put({}) end, msg)
    assert.has_error(function() q:put({ "a", 1 }) end, msg)
    assert.has_error(function() q:put(true) end, msg)
    assert.has_error(function() q:try_put({ x = 1 }) end,
                     (msg:gsub("'put'", "'try_put'")))
    assert.has_error(function() q:put(0 / 0) end, "bad argument #1 to 'put' (priority is NaN)")
    assert.has_error(function() q:put({ 0 / 0 }) end, "bad argument #1 to 'put' (priority is NaN)")
    -- a __index does not count: the first element is read raw
    local proxy = setmetatable({}, { __index = function() return 1 end })
    assert.has_error(function() q:put(proxy) end, msg)
    assert.equal(0, #q)
  end)

  it("orders the items of several processes", function()
    local q = loom.priority_queue()
    local ps = {}
    for k = 1, 3 do
      ps[k] = loom.process(function(id)
        for j = 1, 100 do q:put({ (j * 7 + id) % 50, id, j }) end
      end, k):start()
    end
    for _, p in ipairs(ps) do H.join(p, 30) end
    local last = -1
    for _ = 1, 300 do
      local v = q:get(0)
      assert(v[1] >= last)
      last = v[1]
    end
  end)
end)

describe("loom.Queue", function()
  it("its new methods refuse another object as self", function()
    local q0 = loom.queue()
    for _, m in ipairs { "task_done", "join", "shutdown", "poll" } do
      local ok, err = pcall(q0[m], loom.lock())
      assert.is_false(ok)
      assert.matches("bad argument #1 to '.-' %(loom.Queue expected, got loom.Lock%)", err)
    end
    local q = loom.queue()
    q.maxsize = math.maxinteger
    assert.is_true(q:put(1))
    assert.equal(math.maxinteger, q.maxsize)
  end)

  describe(":poll()", function()
    it("says whether get would wait, taking nothing", function()
      local q = loom.queue()
      assert.is_false(q:poll(0))
      assert.is_false(q:poll(0.01))
      q:put("x")
      assert.is_true(q:poll(0))
      assert.is_true(q:poll())
      assert.equal(1, #q)
      q:get()
      q:close()
      assert.is_true(q:poll())             -- closed: get would not wait
      assert.has_error(function() q:poll(-1) end,
                       "bad argument #1 to 'poll' (timeout must be non-negative)")
    end)

    it("wakes for a put in another thread", function()
      local q = loom.queue()
      local poller = loom.thread(function() return q:poll(H.t(20)) end):start()
      finally(function() q:close(); poller:join(H.t(10)) end)
      loom.sleep(0.05)
      q:put("item")
      assert.is_true(H.result(poller, 20))
      assert.equal(1, #q)
    end)

    it("a poller woken for an item passes the wake-up on to a waiting getter #latency", function()
      local q = loom.queue()
      local poller = loom.thread(function() return q:poll(0.5) end):start()
      local getter = loom.thread(function() return q:get(H.t(20)), loom.now() end):start()
      finally(function() q:close(); poller:join(H.t(10)); getter:join(H.t(10)) end)
      loom.sleep(0.05)
      local t0 = loom.now()
      q:put("item")
      local item, at = H.result(getter, 20)
      assert.equal("item", item)
      -- without the pass, a getter whose wake-up the poller took would
      -- sleep out its 0.2 s slice
      H.below(at - t0, 0.1, "the getter's wait after the put")
    end)
  end)

  describe(":task_done() and :join()", function()
    it("join waits until every item put is task_done", function()
      local q = loom.queue()
      assert.is_true(q:join(0))              -- nothing put: done at once
      for i = 1, 10 do q:put(i) end
      assert.same({ nil, "timeout" }, { q:join(0.01) })
      local t = loom.thread(function()
        for _ = 1, 10 do
          q:get(H.t(20))
          q:task_done()
        end
      end):start()
      finally(function() t:join(H.t(10)) end)
      assert.is_true(q:join(H.t(20)))
      H.join(t, 10)
      assert.has_error(function() q:task_done() end, "task_done() called too many times")
    end)

    it("counts items taken but not yet done", function()
      local q = loom.lifo_queue()
      q:put(1); q:put(2)
      q:get(); q:get()
      assert.same({ nil, "timeout" }, { q:join(0) })
      q:task_done()
      assert.same({ nil, "timeout" }, { q:join(0) })
      q:task_done()
      assert.is_true(q:join(0))
    end)

    it("works with consumers in other processes", function()
      local q = loom.priority_queue()
      for i = 1, 40 do q:put(i) end
      local ps = {}
      for k = 1, 2 do
        ps[k] = loom.process(function()
          while true do
            local v = q:get(0)
            if v == nil then return end
            q:task_done()
          end
        end):start()
      end
      finally(function() for _, p in ipairs(ps) do p:join(H.t(10)) end end)
      assert.is_true(q:join(H.t(30)))
    end)

    it("a join waiting in a thread wakes for the last task_done", function()
      local q = loom.queue()
      q:put("job")
      local t = loom.thread(function() return q:join(H.t(20)) end):start()
      finally(function() t:join(H.t(10)) end)
      assert.equal("job", q:get())
      q:task_done()
      assert.is_true(H.result(t, 20))
    end)

    it("checks its timeout", function()
      assert.has_error(function() loom.queue():join(-1) end,
                       "bad argument #1 to 'join' (timeout must be non-negative)")
    end)
  end)

  describe(":shutdown()", function()
    it("without immediate is close: puts raise, gets drain then fail 'closed'", function()
      local q = loom.priority_queue()
      q:put(2); q:put(1)
      q:shutdown()
      assert.is_true(q.is_shutdown)
      assert.is_true(q:closed())
      assert.has_error(function() q:put(3) end, "put to a closed queue")
      assert.equal(1, q:get(0))
      assert.equal(2, q:get(0))
      assert.same({ nil, "closed" }, { q:get(0) })
    end)

    it("takes a boolean", function()
      local q = loom.queue()
      assert.has_error(function() q:shutdown(1) end,
                       "bad argument #1 to 'shutdown' (boolean expected, got number)")
      assert.is_false(q.is_shutdown)
      q:shutdown(nil)
      assert.is_true(q.is_shutdown)
    end)

    it("immediate drops the items, counts them done and frees them", function()
      local q = loom.queue()
      q:put(1)
      local used = loom.heap_used()
      for _ = 1, 5 do q:put(string.rep("z", 100000)) end
      assert.is_true(loom.heap_used() > used + 400000)
      q:get(); q:task_done()                 -- one done, five left
      assert.is_false(q.is_shutdown)
      q:shutdown(true)
      assert.equal(0, #q)
      assert.same({ nil, "closed" }, { q:get(0) })
      assert.same({ nil, "closed" }, { q:try_get() })
      assert.is_true(q:join(0))
      assert.is_true(loom.heap_used() < used + 100000)
      assert.has_error(function() q:task_done() end, "task_done() called too many times")
    end)

    it("immediate wakes every waiting getter, putter and joiner", function()
      local empty, full = loom.lifo_queue(), loom.queue(1)
      full:put("x")
      local g = loom.thread(function() return empty:get(H.t(30)) end):start()
      local p = loom.thread(function() return pcall(full.put, full, "y", H.t(30)) end):start()
      local j = loom.thread(function() return full:join(H.t(30)) end):start()
      finally(function()
        empty:close(); full:close()
        for _, t in ipairs { g, p, j } do t:join(H.t(10)) end
      end)
      loom.sleep(0.05)
      empty:shutdown(true)
      full:shutdown(true)
      assert.same({ nil, "closed" }, { H.result(g, 20) })
      local ok, err = H.result(p, 20)
      assert.is_false(ok)
      assert.matches("put to a closed queue", err)
      assert.is_true(H.result(j, 20))
    end)

    it("a child's immediate shutdown is seen by the parent", function()
      local q = loom.queue()
      for i = 1, 10 do q:put(i) end
      H.join(loom.process(function() q:shutdown(true) end):start(), 30)
      assert.is_true(q.is_shutdown)
      assert.equal(0, #q)
      assert.is_true(q:join(0))
    end)
  end)

  describe(".maxsize", function()
    it("growing lets a waiting putter in", function()
      local q = loom.queue(1)
      q:put(1)
      local t = loom.thread(function() return q:put(2, H.t(20)) end):start()
      finally(function() q:close(); t:join(H.t(10)) end)
      assert.same({ nil, "timeout" }, { q:put(3, 0.05) })
      q.maxsize = 2
      assert.is_true(H.result(t, 20))
      assert.equal(2, q.maxsize)
      assert.is_true(q:full())
    end)

    it("shrinking keeps the items and stops puts until enough are taken", function()
      local q = loom.priority_queue(5)
      for i = 1, 5 do q:put(i) end
      q.maxsize = 2
      assert.equal(5, #q)
      assert.is_true(q:full())
      assert.is_false(q:try_put(6))
      q:get(); q:get(); q:get()
      assert.is_false(q:try_put(6))
      q:get()
      assert.is_true(q:try_put(6))
      q.maxsize = 0                          -- unbounded
      for i = 1, 100 do q:put(i) end
      assert.is_false(q:full())
    end)

    it("raises on a bad size, and other fields stay read-only", function()
      local q = loom.queue()
      assert.has_error(function() q.maxsize = -1 end, "maxsize must be non-negative")
      assert.has_error(function() q.maxsize = 1.5 end, "maxsize must be an integer, got a float")
      assert.has_error(function() q.maxsize = "3" end, "maxsize must be an integer, got string")
      assert.has_error(function() q.maxsize = nil end, "maxsize must be an integer, got nil")
      assert.has_error(function() q.kind = "lifo" end, "cannot set field 'kind' of a loom.Queue")
      assert.equal(0, q.maxsize)
    end)

    it("a child's change is the parent's", function()
      local q = loom.queue(1)
      H.join(loom.process(function() q.maxsize = 7 end):start(), 30)
      assert.equal(7, q.maxsize)
    end)
  end)

  it("a priority queue stays whole and ordered when its users are killed", function()
    local out, ok, code = guarded([[
local loom = require "loom"
local H = require "helpers"
math.randomseed(11)
local q = loom.priority_queue()
local got = loom.array("int64", 12000)
local function producer(base)
  for i = 0, 599 do q:put({ (i * 7919) % 1000, base + i }) end
end
local function consumer()
  while true do
    local v = q:get(0.5)
    if v == nil then return end
    got[v[2] + 1] = got[v[2] + 1] + 1
  end
end
for round = 0, 9 do
  local ps = {
    loom.process(producer, round * 1200):start(),
    loom.process(consumer):start(),
    loom.process(producer, round * 1200 + 600):start(),
  }
  loom.sleep(math.random() * 0.03)
  local victim = ps[math.random(#ps)]
  victim:kill()
  victim:join()
  for _, p in ipairs(ps) do if p ~= victim then p:kill(); p:join() end end
end
local last = -1
while true do
  local v = q:try_get()
  if v == nil then break end
  assert(v[1] >= last, "out of order after kills")
  last = v[1]
  assert(got[v[2] + 1] == 0, "delivered twice: " .. v[2])
end
for i = 1, 200 do q:put(200 - i) end
for i = 0, 199 do assert(q:get(0) == i) end
print("done")
]], 120)
    assert(ok, string.format("exit %s (124: hung):\n%s", tostring(code), out))
    assert.matches("done", out)
  end)
end)
