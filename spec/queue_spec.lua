-- loom.Queue
local H = require "helpers"
local loom = require "loom"
-- thread functions see these as upvalues: a spec file's environment is
-- busted's, not a table a thread could rebuild
local pcall, string_rep, tostring = pcall, string.rep, tostring

local function join_all(ts)
  for _, t in pairs(ts) do H.join(t, 30) end
end

-- Producers put ids p*1e6 + i; consumers get until the queue is closed and
-- drained, then return what they saw.
local function many_to_many(nprod, ncons, per, maxsize)
  local q = loom.queue(maxsize)
  local ts = {}
  finally(function() q:close(); join_all(ts) end)
  for c = 1, ncons do
    ts["c" .. c] = loom.thread(function(queue)
      local got, n = {}, 0
      while true do
        local item, err = H.get(queue, 60)
        if item == nil then return got, n, err end
        n = n + 1
        got[n] = item
      end
    end, q):start()
  end
  for p = 1, nprod do
    ts["p" .. p] = loom.thread(function(queue, base, count)
      for i = 1, count do queue:put(base + i, H.t(60)) end
      return true
    end, q, p * 1000000, per):start()
  end
  for p = 1, nprod do assert.is_true(H.result(ts["p" .. p], 120)) end
  q:close()
  local seen, total = {}, 0
  for c = 1, ncons do
    local got, n, err = H.result(ts["c" .. c], 120)
    assert.equal("closed", err)
    total = total + n
    local last = {}
    -- plain checks: a luassert call per item makes this loop take minutes
    -- on a loaded machine
    for i = 1, n do
      local id = got[i]
      if seen[id] then error("item " .. id .. " delivered twice", 0) end
      seen[id] = true
      -- one producer's items reach one consumer in order
      local p = id // 1000000
      if (last[p] or 0) >= id then
        error(string.format("item %d after %d of the same producer", id, last[p]), 0)
      end
      last[p] = id
    end
  end
  assert.equal(nprod * per, total)
  for p = 1, nprod do
    for i = 1, per do
      if not seen[p * 1000000 + i] then error("item " .. p * 1000000 + i .. " lost", 0) end
    end
  end
end

describe("loom.Queue", function()
  describe("loom.queue()", function()
    it("is unbounded by default", function()
      local q = loom.queue()
      assert.equal(0, q.maxsize)
      for i = 1, 1000 do assert.is_true(q:put(i)) end
      assert.equal(1000, #q)
      assert.is_false(q:full())
      assert.matches("^loom%.Queue %(0x%x+%)$", tostring(q))
    end)

    it("checks maxsize", function()
      assert.equal(3, loom.queue(3).maxsize)
      assert.equal(0, loom.queue(0).maxsize)
      assert.has_error(function() loom.queue(-1) end,
        "bad argument #1 to 'queue' (maxsize must be non-negative)")
      assert.has_error(function() loom.queue("x") end,
        "bad argument #1 to 'queue' (number expected, got string)")
    end)
  end)

  describe(":put() and :get()", function()
    it("are first in, first out", function()
      local q = loom.queue()
      for i = 1, 100 do q:put(i) end
      for i = 1, 100 do assert.equal(i, q:get()) end
      assert.is_true(q:empty())
    end)

    it("carry any transferable value, false included", function()
      local q = loom.queue()
      local v = loom.value("int32", 7)
      local items = {
        false, true, 0, -1.5, 0 / 0, "", "text\0bin", { 1, 2, { x = "y" } },
        function(a) return a + 1 end, v, string_rep("z", 100),
      }
      for _, item in ipairs(items) do q:put(item) end
      assert.is_false(q:get())
      assert.is_true(q:get())
      assert.equal(0, q:get())
      assert.equal(-1.5, q:get())
      local nan = q:get()
      assert.is_true(nan ~= nan)
      assert.equal("", q:get())
      assert.equal("text\0bin", q:get())
      assert.same({ 1, 2, { x = "y" } }, q:get())
      assert.equal(3, q:get()(2))
      assert.equal(v, q:get())
      assert.equal(string_rep("z", 100), q:get())
    end)

    it("refuses nil and untransferable values", function()
      local q = loom.queue()
      assert.has_error(function() q:put(nil) end,
        "bad argument #1 to 'put' (nil cannot be put in a queue)")
      assert.has_error(function() q:put() end,
        "bad argument #1 to 'put' (nil cannot be put in a queue)")
      assert.has_error(function() q:put({ f = io.stdout }) end,
        "cannot transfer item.f: userdata (FILE*)")
      assert.has_error(function() q:put(coroutine.create(print)) end,
        "cannot transfer item: coroutine")
      assert.equal(0, #q)
    end)

    it("get returns nil, 'timeout' when nothing comes", function()
      local q = loom.queue()
      assert.same({ nil, "timeout" }, { q:get(0) })
      assert.same({ nil, "timeout" }, { q:get(0.05) })
    end)

    it("put returns nil, 'timeout' while the queue stays full", function()
      local q = loom.queue(2)
      assert.is_true(q:put(1))
      assert.is_true(q:put(2))
      assert.is_true(q:full())
      assert.same({ nil, "timeout" }, { q:put(3, 0) })
      assert.same({ nil, "timeout" }, { q:put(3, 0.05) })
      assert.equal(2, q:size())
      assert.equal(1, q:get())
      assert.is_true(q:put(3, 0))
      assert.equal(2, q:get())
      assert.equal(3, q:get())
    end)

    it("check the timeout", function()
      local q = loom.queue()
      assert.has_error(function() q:get(-1) end,
        "bad argument #1 to 'get' (timeout must be non-negative)")
      assert.has_error(function() q:put(1, -1) end,
        "bad argument #2 to 'put' (timeout must be non-negative)")
      assert.has_error(function() q:get("soon") end,
        "bad argument #1 to 'get' (number expected, got string)")
    end)

    it("block until another thread puts or gets", function()
      local q, back = loom.queue(1), loom.queue()
      local t = loom.thread(function(qq, bb)
        for i = 1, 3 do qq:put(i, H.t(10)) end     -- blocks while qq is full
        return H.get(bb, 10)                     -- blocks until main puts
      end, q, back):start()
      finally(function() t:join(H.t(10)) end)
      for i = 1, 3 do assert.equal(i, H.get(q, 10)) end
      back:put("done")
      assert.equal("done", H.result(t, 10))
    end)

    it("carry items of several megabytes", function()
      local q = loom.queue()
      local big = string_rep("0123456789abcdef", 4 * 65536)   -- 4 MiB
      local t = loom.thread(function(qq)
        local s = H.get(qq, 30)
        qq:put({ len = #s, head = s:sub(1, 16), copy = s }, H.t(30))
        return true
      end, q):start()
      finally(function() t:join(H.t(10)) end)
      q:put(big)
      assert.is_true(H.result(t, 30))
      local r = H.get(q, 30)
      assert.equal(#big, r.len)
      assert.equal("0123456789abcdef", r.head)
      assert.equal(big, r.copy)
    end)
  end)

  describe(":try_put() and :try_get()", function()
    it("never wait", function()
      local q = loom.queue(1)
      assert.is_nil(q:try_get())
      assert.is_true(q:try_put("a"))
      assert.is_false(q:try_put("b"))
      assert.equal("a", q:try_get())
      assert.is_nil(q:try_get())
      q:close()
      assert.same({ nil, "closed" }, { q:try_get() })
      assert.has_error(function() q:try_put(1) end, "put to a closed queue")
    end)
  end)

  describe(":close()", function()
    it("lets gets drain what is left, then report closed", function()
      local q = loom.queue()
      q:put(1)
      q:put(2)
      assert.is_false(q:closed())
      q:close()
      q:close()
      assert.is_true(q:closed())
      assert.equal(1, q:get())
      assert.equal(2, q:get(0))
      assert.same({ nil, "closed" }, { q:get() })
      assert.same({ nil, "closed" }, { q:get(0) })
    end)

    it("makes put raise", function()
      local q = loom.queue()
      q:close()
      assert.has_error(function() q:put(1) end, "put to a closed queue")
    end)

    it("wakes getters blocked in another thread", function()
      local q = loom.queue()
      local ts = {}
      finally(function() join_all(ts) end)
      for i = 1, 3 do
        ts[i] = loom.thread(function(qq) return H.get(qq, 30) end, q):start()
      end
      loom.sleep(0.1)
      q:close()
      for i = 1, 3 do assert.same({ nil, "closed" }, { H.result(ts[i], 10) }) end
    end)

    it("wakes putters blocked on a full queue, which then raise", function()
      local q = loom.queue(1)
      q:put(0)
      local t = loom.thread(function(qq)
        local ok, err = pcall(qq.put, qq, 1, H.t(30))
        return ok, err
      end, q):start()
      finally(function() t:join(H.t(10)) end)
      loom.sleep(0.1)
      q:close()
      local ok, err = H.result(t, 10)
      assert.is_false(ok)
      assert.matches("put to a closed queue$", err)
      assert.equal(0, q:get())
    end)
  end)

  describe("size, #q, empty, full, maxsize", function()
    it("report the queue's state", function()
      local q = loom.queue(2)
      assert.equal(0, q:size())
      assert.equal(0, #q)
      assert.is_true(q:empty())
      assert.is_false(q:full())
      q:put("x")
      assert.equal(1, #q)
      assert.is_false(q:empty())
      q:put("y")
      assert.is_true(q:full())
      assert.equal(2, q.maxsize)
      assert.is_nil(q.other)
    end)
  end)

  describe("between threads", function()
    it("is shared by reference and keeps loom objects in items", function()
      local q = loom.queue()
      local v = loom.value("int64")
      local t = loom.thread(function(qq)
        local item = H.get(qq, 10)
        item.counter:add(item.by)
        qq:put(item.counter, H.t(10))
        return qq
      end, q):start()
      q:put({ counter = v, by = 5 })
      assert.equal(q, H.result(t, 10))
      assert.equal(v, H.get(q, 10))
      assert.equal(5, v.value)
    end)

    it("made in a thread, outlives it", function()
      local t = loom.thread(function()
        local q = require("loom").queue()
        q:put({ "from", "thread" })
        return q
      end):start()
      local q = H.result(t, 10)
      H.join(t, 10)
      collectgarbage()
      assert.same({ "from", "thread" }, q:get(0))
    end)

    it("delivers every item exactly once with 4 producers and 4 consumers", function()
      many_to_many(4, 4, 500, 8)
    end)

    it("delivers every item exactly once through an unbounded queue", function()
      many_to_many(2, 3, 1000, 0)
    end)

    it("#stress delivers every item exactly once under heavy load", function()
      many_to_many(4, 4, 50000, 16)
      many_to_many(8, 2, 20000, 0)
    end)

    it("#stress moves a million small items between two threads", function()
      local q = loom.queue(1024)
      local n = 1000000
      local t = loom.thread(function(qq, count)
        local sum = 0
        for _ = 1, count do sum = sum + H.get(qq, 60) end
        return sum
      end, q, n):start()
      finally(function() q:close(); t:join(H.t(60)) end)
      for i = 1, n do
        -- a consumer that stopped would leave this put waiting for ever:
        -- say why instead
        if not q:put(i, H.t(60)) then
          error(string.format("put %d timed out; the consumer: %s", i, tostring(t:error() or t)))
        end
      end
      assert.equal(n * (n + 1) // 2, H.result(t, 120))
    end)
  end)

  -- loom.process forks; the queue lives in the shared heap, so children and
  -- parent share it whoever made it
  local describe_processes = loom.process and describe or pending
  describe_processes("between processes", function()
    it("carries items from forked producers, large ones included", function()
      local q = loom.queue(4)
      local ps = {}
      finally(function() q:close(); for _, p in ipairs(ps) do p:join(H.t(10)) end end)
      for k = 1, 3 do
        ps[k] = loom.process(function(id)
          for j = 1, 200 do q:put(id * 10000 + j) end
          q:put({ done = id, big = string_rep("x", 3000000) })
          return "ok"
        end, k):start()
      end
      local seen, finished = {}, 0
      while finished < 3 do
        local item = H.get(q, 30)
        assert.is_not_nil(item)
        if type(item) == "table" then
          assert.equal(3000000, #item.big)
          finished = finished + 1
        else
          assert.is_nil(seen[item])
          seen[item] = true
        end
      end
      for k = 1, 3 do
        assert.equal("ok", H.result(ps[k], 10))
        for j = 1, 200 do assert.is_true(seen[k * 10000 + j]) end
      end
    end)

    it("carries large items both ways intact while their blocks are reused", function()
      local down, up = loom.queue(1), loom.queue(1)
      local p = loom.process(function()
        for _ = 1, 40 do
          local t = H.get(down, 30)
          for i = 1, #t do t[i] = -t[i] end
          up:put(t)
        end
        return "ok"
      end):start()
      finally(function() down:close(); p:join(H.t(10)) end)
      for r = 1, 40 do
        local n = (r % 3 == 0) and 70000 or 30000 + r   -- two block sizes
        local t = {}
        for i = 1, n do t[i] = r + i / 8 end
        down:put(t)
        local back = H.get(up, 30)
        assert.equal(n, #back)
        for i = 1, n do
          if back[i] ~= -(r + i / 8) then assert.equal(-(r + i / 8), back[i]) end
        end
      end
      assert.equal("ok", H.result(p, 10))
    end)

    it("wakes a getter in a child when closed, and takes a child's queue", function()
      local q, back = loom.queue(), loom.queue()
      local p = loom.process(function()
        local mine = require("loom").queue()
        mine:put("from the child")
        back:put(mine)
        return H.get(q, 30)
      end):start()
      finally(function() p:join(H.t(10)) end)
      assert.equal("from the child", H.get(H.get(back, 10), 10))
      q:close()
      assert.same({ nil, "closed" }, { H.result(p, 10) })
    end)
  end)

  describe("cancellation", function()
    it("wakes a thread blocked in get", function()
      local q = loom.queue()
      local t = loom.thread(function(qq) return qq:get() end, q):start()
      finally(function() t:join(H.t(10)) end)
      loom.sleep(0.1)
      assert.is_true(t:cancel())
      assert.same({ nil, "cancelled" }, { H.result(t, 10) })
      q:put(1)                      -- the queue still works
      assert.equal(1, q:get(0))
    end)

    it("wakes a thread blocked in put", function()
      local q = loom.queue(1)
      q:put("full")
      local t = loom.thread(function(qq) return qq:put("more") end, q):start()
      finally(function() t:join(H.t(10)) end)
      loom.sleep(0.1)
      assert.is_true(t:cancel())
      assert.same({ nil, "cancelled" }, { H.result(t, 10) })
      assert.equal(1, #q)
      assert.equal("full", q:get(0))
    end)
  end)

  describe("lifetime", function()
    it("frees the items of a queue dropped while holding them", function()
      collectgarbage()
      collectgarbage()
      local before = loom.heap_used()
      do
        local q = loom.queue()
        local v = loom.value("int32")
        q:put(string_rep("x", 1 << 20))
        q:put({ v, v, "small" })
        for i = 1, 100 do q:put(i) end
      end
      collectgarbage()
      collectgarbage()
      assert.equal(before, loom.heap_used())
    end)

    it("frees each item's block once it is taken", function()
      local q = loom.queue()
      q:put(0)
      q:get()
      collectgarbage()
      local before = loom.heap_used()
      q:put(string_rep("y", 200000))
      assert.is_true(loom.heap_used() > before + 200000)
      assert.equal(200000, #q:get())
      assert.equal(before, loom.heap_used())
    end)

    it("reports an exhausted heap and keeps working", function()
      local out, ok = H.run [[
        local loom = require "loom"
        loom.configure{ heap_size = 1 << 20 }
        local q, n = loom.queue(), 0
        print(pcall(function()
          while true do q:put(string.rep("x", 1000)); n = n + 1 end
        end))
        print(pcall(function()
          while true do q:put(n); n = n + 1 end
        end))
        for _ = 1, 10 do q:get() end
        print(q:put("again"))
      ]]
      assert.is_true(ok, out)
      assert.matches("^false\t[^\n]*cannot transfer item: shared heap exhausted %(%d+ bytes needed%)\n" ..
        "false\t[^\n]*cannot put: shared heap exhausted\ntrue\n$", out)
    end)

    it("raises when used after <close>", function()
      local w
      do
        local q <close> = loom.queue()
        w = q
      end
      assert.has_error(function() w:put(1) end, "attempt to use a closed loom.Queue")
      assert.equal("loom.Queue (closed)", tostring(w))
    end)
  end)
end)
