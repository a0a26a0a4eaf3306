-- Ownership: which process and which thread a reference, a pool, a lock
-- or an interpreter belongs to, and what the others may do with it.
local loom = require "loom"
local H = require "helpers"

local function survives(chunk, want)
  local out, ok, code = H.run(chunk)
  assert(ok, ("the script died (%s):\n%s"):format(tostring(code), out))
  local last = out:match("([^\n]*)\n?$")
  assert.equal(want or "survived", last, out)
  return out
end

describe("ownership", function()

  describe("references inherited by a forked child", function()
    it("are never released by the child (as_completed dropped there)", function()
      survives([[
        local loom = require "loom"
        local H = require "helpers"
        local pool = loom.pool(2)
        local ev = loom.event()
        local fs = {}
        for i = 1, 4 do
          fs[i] = pool:submit(function(e, x) H.wait(e, 60) return x end, ev, i)
        end
        local iter, st, _, closing = loom.as_completed(fs, H.t(60))
        local p = loom.process(function()
          iter, st, closing = nil, nil, nil
          for _ = 1, 4 do collectgarbage() end
          return "dropped"
        end):start()
        assert(H.result(p, 60) == "dropped")
        ev:set()
        local seen = 0
        for f in iter, st, nil, closing do
          seen = seen + 1
          assert(type(f:result()) == "number")
        end
        assert(seen == 4, seen)
        iter, st, closing = nil, nil, nil
        fs = nil
        for _ = 1, 4 do collectgarbage() end
        -- the heap is still sound: new objects, waits and a clean shutdown
        local e2 = loom.event()
        local f = pool:submit(function(e) e:set() return "ok" end, e2)
        assert(H.wait(e2, 30))
        assert(f:result(H.t(30)) == "ok")
        pool:shutdown()
        print("survived")
      ]])
    end)

    it("refuse an inherited as_completed loop in the child", function()
      survives([[
        local loom = require "loom"
        local H = require "helpers"
        local pool = loom.pool(1)
        local f = pool:submit(function() return 1 end)
        local iter, st, _, closing = loom.as_completed({f}, H.t(60))
        local p = loom.process(function()
          local ok, err = pcall(iter, st)
          return ok, err
        end):start()
        local ok, err = H.result(p, 60)
        assert(ok == false and err:find("as_completed loop used in another process", 1, true), err)
        for g in iter, st, nil, closing do assert(g:result() == 1) end
        pool:shutdown()
        print("survived")
      ]])
    end)
  end)

  describe("a child forked by another library", function()
    local so = os.tmpname() .. ".so"
    setup(function()
      assert(os.execute("cc -std=c11 -shared -fPIC -I/usr/include/lua5.4 -o " .. so ..
                        " spec/safety/rawfork.c"))
    end)
    teardown(function() os.remove(so) end)

    it("never releases the threads its parent started", function()
      survives(([[
        local rawfork = assert(package.loadlib(%q, "luaopen_rawfork"))()
        local loom = require "loom"
        local H = require "helpers"
        local t = loom.thread{target = function() return 1 end, name = "mine"}:start()
        H.join(t, 30)
        local pid = rawfork.fork()
        if pid == 0 then
          -- more starts than the list holds: it is pruned, and the parent's
          -- finished thread must not be released from here
          for _ = 1, 20 do
            local u = loom.thread(function() end):start()
            H.join(u, 30)
          end
          rawfork.exit(0)
        end
        local _, code = rawfork.wait(pid)
        assert(code == 0, code)
        for _ = 1, 20 do H.join(loom.thread(function() end):start(), 30) end
        collectgarbage()
        local others = {}
        for i = 1, 8 do others[i] = loom.thread{target = print, name = "intruder"} end
        assert(t.name == "mine", t.name)
        assert(H.result(t, 30) == 1)
        print("survived")
      ]]):format(so))
    end)
  end)

  describe("a pool in a forked child", function()
    it("refuses every method: its workers are the parent's", function()
      local pool <close> = loom.pool(1)
      local parent = H.result(pool:submit(function()
        return require("loom.core").process and tonumber(io.open("/proc/self/stat"):read("a"):match("^%d+"))
      end), 30)
      local p = loom.process(function()
        local out = {}
        for _, m in ipairs{"submit", "shutdown", "map"} do
          local ok, err = pcall(pool[m], pool, function() end, {1})
          out[#out + 1] = not ok and err or "accepted"
        end
        -- imap submits as it is iterated
        local ok, err = pcall(function()
          for _ in pool:imap(function() end, {1}) do end
        end)
        out[#out + 1] = not ok and err or "accepted"
        return table.unpack(out)
      end):start()
      local errs = {H.result(p, 60)}
      assert.equal(4, #errs)
      for _, err in ipairs(errs) do
        assert.matches("loom.Pool used in a process other than the one that made it", err, 1, true)
      end
      -- the parent's pool is untouched
      assert.equal(parent, H.result(pool:submit(function()
        return tonumber(io.open("/proc/self/stat"):read("a"):match("^%d+"))
      end), 30))
      assert.equal(2, H.result(pool:submit(function() return 2 end), 30))
    end)

    it("still answers its fields and tostring there", function()
      local pool <close> = loom.pool(1)
      local p = loom.process(function()
        return pool.workers, pool.kind, tostring(pool)
      end):start()
      local n, kind, s = H.result(p, 60)
      assert.equal(1, n)
      assert.equal("thread", kind)
      assert.matches("^loom.Pool", s)
    end)
  end)

  describe("a shared thread in a forked child", function()
    it("is another interpreter's: its methods refuse there", function()
      local ev = loom.event()
      local t = loom.thread{target = function(e) e:wait(60) return "parent" end,
                            args = {ev}, shared = true}:start()
      local p = loom.process(function()
        local ok, err = pcall(function() return t:join(0.1) end)
        local ok2, err2 = pcall(function() return t:result(0.1) end)
        return ok, err, ok2, err2
      end):start()
      local ok, err, ok2, err2 = H.result(p, 60)
      ev:set()
      assert.is_false(ok)
      assert.matches("shared thread used from another interpreter", err, 1, true)
      assert.is_false(ok2)
      assert.matches("shared thread used from another interpreter", err2, 1, true)
      assert.equal("parent", H.result(t, 60))
    end)
  end)

  describe("a process forked from a pool task", function()
    it("starts with the process's signal mask: terminate() ends it", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function(t)
        local l = require "loom"
        local p = l.process(function() l.sleep(60) end):start()
        l.sleep(0.2)
        local sent = p:terminate()
        return sent, p:join(t), p.exitcode
      end, H.t(10))
      local sent, joined, code = H.result(f, 60)
      assert.is_true(sent)
      assert.is_true(joined)
      assert.equal(-15, code)
    end)

    it("starts with it from a loom thread too", function()
      local t = loom.thread(function(tmo)
        local l = require "loom"
        local p = l.process(function() l.sleep(60) end):start()
        l.sleep(0.2)
        p:terminate()
        return p:join(tmo), p.exitcode
      end, H.t(10)):start()
      local joined, code = H.result(t, 60)
      assert.is_true(joined)
      assert.equal(-15, code)
    end)
  end)

  describe("an RLock", function()
    it("left held by a finished thread is not the next thread's", function()
      local r = loom.rlock()
      assert.is_true(H.result(loom.thread(function(l) return l:acquire() end, r):start(), 30))
      for _ = 1, 3 do
        -- the next threads reuse the same worker, and so the same OS thread
        local ok, err = H.result(loom.thread(function(l)
          return pcall(l.release, l)
        end, r):start(), 30)
        assert.is_false(ok)
        assert.matches("cannot release un%-acquired lock", err)
        assert.is_false(H.result(loom.thread(function(l)
          return l:acquire(false)
        end, r):start(), 30))
      end
      assert.is_true(r:locked())
    end)
  end)

  describe("a reused interpreter", function()
    it("does not see changes made to loom's classes by the thread before", function()
      local function probe()
        local c = require "loom.core"
        local seen = {}
        local intact = tostring(c.lock()):find("^loom.Lock") ~= nil and
                       c.queue().put ~= nil and c.pool(1).submit ~= nil
        local lmt = getmetatable(c.lock())
        seen[1] = rawget(lmt, "evil")
        lmt.evil = true
        lmt.__tostring = nil
        local q = c.queue()
        seen[2] = q.evil
        getmetatable(q).methods.evil = true
        getmetatable(q).methods.put = nil
        local pmt = getmetatable(c.pool(1))
        seen[3] = pmt.methods.evil
        pmt.methods.evil = true
        pmt.methods.submit = nil
        return seen[1], seen[2], seen[3], intact
      end
      for _ = 1, 3 do
        local a, b, c, has = H.result(loom.thread(probe):start(), 30)
        assert.is_nil(a)
        assert.is_nil(b)
        assert.is_nil(c)
        assert.is_true(has)
      end
    end)
  end)

  describe("a pool's methods", function()
    it("are the same in an interpreter that never required loom", function()
      survives([[
        local core = require "loom.core"
        local H = require "helpers"
        local pool <close> = core.pool(2)
        local r = {H.result(core.thread(function(p)
          local out = p:map(function(x) return x * 2 end, {1, 2, 3})
          local got = {}
          for i, v in p:imap(function(x) return x + 1 end, {10, 20}) do got[i] = v end
          return out[1], out[3], got[1], got[2], package.loaded.loom == nil
        end, {pool, n = 1}):start(), 60)}
        assert(r[1] == 2 and r[2] == 6 and r[3] == 11 and r[4] == 21 and r[5] == true)
        assert(pool.map and pool.imap)
        print("survived")
      ]])
    end)
  end)
end)
