-- Fault injection: each fault ends in a clear error, nothing lost, no hang.
local H = require "helpers"

local sh = H.sh

local function script(body)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(H.prelude, "\n", body)
  f:close()
  return path
end

describe("fault injection", function()
  it("fails only the thread whose interpreter runs out of memory", function()
    assert(sh("make --no-print-directory host"))
    local path = script [[
      local loom = require "loom"
      local hog = loom.thread(function() local t = {} for i = 1, 1e8 do t[i] = i end end):start()
      local ok = loom.thread(function(x) return x + 1 end, 1):start()
      print(H.result(ok, 10))
      print(pcall(hog.result, hog, H.t(60)))
      print(H.result(loom.thread(function() return "still fine" end):start(), 10))
    ]]
    finally(function() os.remove(path) end)
    local ok, out = sh("LOOM_HOST_MEMLIMIT=8000000 build/host " .. path)
    assert(ok, out)
    assert.are.equal("2\nfalse\tnot enough memory\nstill fine\n", out)
  end)

  it("reports thread creation failure as fail, message, errno and goes on", function()
    local path = script [[
      local loom = require "loom"
      loom.excepthook(function() end)   -- threads whose state could not be made
      local started, failed, msg, code = {}, 0
      -- every thread lives until all were tried, however slowly they start
      local go = loom.event()
      -- stop at the first refusal: past it, any allocation may fail
      for _ = 1, 1000 do
        local t = loom.thread(function(e) e:wait() end, go)
        local ok, err, errno = t:start()
        if ok then started[#started + 1] = t else failed, msg, code = failed + 1, err, errno; break end
      end
      go:set()
      for _, t in ipairs(started) do assert(H.join(t, 30)) end
      print(failed > 0, msg, math.type(code))
      print(H.result(loom.thread(function() return "after" end):start(), 10))
    ]]
    finally(function() os.remove(path) end)
    local ok, out = sh("ulimit -v 600000; MALLOC_ARENA_MAX=2 LOOM_HEAP_SIZE=16M " .. H.lua .. " " .. path)
    assert(ok, out)
    assert.are.equal("true\tcannot start thread: Resource temporarily unavailable\tinteger\nafter\n", out)
  end)

  describe("fork failure", function()
    local shim = os.tmpname() .. ".so"
    setup(function()
      assert(sh("cc -std=c11 -shared -fPIC -o " .. shim .. " spec/fault/failfork.c -ldl"))
    end)
    teardown(function() os.remove(shim) end)

    -- Runs body with the fork() calls listed in `fails` failing.
    local function run(fails, body)
      local path = script(body)
      finally(function() os.remove(path) end)
      return sh(string.format("timeout %d env LOOM_FAIL_FORKS=%s LD_PRELOAD=%s %s %s",
                              math.ceil(H.t(60)), fails, shim, H.lua, path))
    end

    it("makes start return fail, message, errno; the handle can start later", function()
      local ok, out = run("1", [[
        local loom = require "loom"
        local p = loom.process(function() return 42 end)
        print(p:start())
        print(p:is_alive(), p.pid, p.exitcode)
        assert(p:start() == p)
        print(H.result(p, 30), p.exitcode)
      ]])
      assert(ok, out)
      assert.are.equal("nil\tcannot start process: Resource temporarily unavailable\t11\n" ..
                       "false\tnil\tnil\n42\t0\n", out)
    end)

    it("makes a process pool whose fork server cannot be forked return fail", function()
      local ok, out = run("all", [[
        local loom = require "loom"
        print(loom.pool{ workers = 2, kind = "process" })
      ]])
      assert(ok, out)
      assert.are.equal("nil\tcannot start pool worker: Resource temporarily unavailable\t11\n", out)
    end)

    -- the fork server is the parent's fork 1; it counts on from there
    it("breaks a process pool none of whose workers can be forked", function()
      local ok, out = run("2,3", [[
        local loom = require "loom"
        local pool <close> = loom.pool{ workers = 2, kind = "process" }
        -- the supervisor may have given up before this submit or after it
        local queued, f = pcall(pool.submit, pool, function() return 1 end)
        if queued then print(pcall(f.result, f, H.t(30))) end
        print(pcall(pool.submit, pool, function() end))
      ]])
      assert(ok, out)
      local broken = "false\tcannot submit to a broken pool (cannot start a worker process: " ..
                     "Resource temporarily unavailable)\n"
      if out ~= broken then
        assert.are.equal("false\tcannot start a pool worker process: Resource temporarily unavailable\n" ..
                         broken, out)
      end
    end)

    it("leaves a process pool working on the workers that could be forked", function()
      local ok, out = run("2", [[
        local loom = require "loom"
        local pool <close> = loom.pool{ workers = 2, kind = "process" }
        local sum = 0
        for _, r in ipairs(pool:map(function(x) return x * 2 end, { 1, 2, 3, 4, 5 })) do
          sum = sum + r
        end
        print(sum)
      ]])
      assert(ok, out)
      assert.are.equal("30\n", out)
    end)
  end)

  it("reports an exhausted shared heap as a clear error", function()
    local path = script [[
      local loom = require "loom"
      local big = string.rep("x", 8 << 20)
      local ok, err = pcall(function() return loom.thread(function(s) return #s end, big):start() end)
      print(ok, err)
    ]]
    finally(function() os.remove(path) end)
    local ok, out = sh("LOOM_HEAP_SIZE=4M " .. H.lua .. " " .. path)
    assert(ok, out)
    assert.matches("false\t.*cannot transfer args: shared heap exhausted", out)
  end)
end)
