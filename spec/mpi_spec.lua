-- loom.mpi: pools on MPI ranks, run for real with Open MPI's mpiexec on
-- this machine (3 ranks, oversubscribed).  Every run is bounded by a scaled
-- timeout(1), so a hang fails the spec instead of hanging the suite.
local H = require "helpers"

local root = os.getenv("PWD") or "."

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok == true, code
end

local have_mpi = sh("command -v mpiexec"):match("mpiexec") and
  io.open(root .. "/loom/mpi/core.so") ~= nil
local is_root = sh("id -u"):match("^0") ~= nil

-- Runs the chunk as the script of `mpiexec -n ranks lua5.4 -l loom.mpi.run`
-- (ranks = 1 and spawn: a singleton that spawns its workers); returns its
-- output, success and exit code.
local function mpirun(chunk, opts)
  opts = opts or {}
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write("io.stdout:setvbuf('no')\nlocal H = require 'helpers'\nlocal loom = require 'loom'\nlocal mpi = require 'loom.mpi'\n", chunk)
  f:close()
  local env = string.format("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/?.lua;;' LUA_CPATH='%s/?.so;;' " ..
    "LOOM_SPEC_MACHINE=%.17g ", root, root, root, root, H.machine)
  local launch
  if opts.singleton then
    launch = string.format("%s -l loom.mpi.run %s", H.lua, path)
  else
    launch = string.format("mpiexec -n %d --oversubscribe %s%s %s -l loom.mpi.run %s",
      opts.ranks or 3, is_root and "--allow-run-as-root " or "", opts.mpiexec or "", H.lua, path)
  end
  local out, ok, code = sh(string.format("%s timeout -k 5 %.1f %s", env, H.t(opts.timeout or 60), launch))
  os.remove(path)
  return out, ok, code
end

local function expect(out, ok, code)
  assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s", tostring(code), out))
  return out
end

describe("loom.mpi.pool", function()
  before_each(function()
    if not have_mpi then
      pending("mpiexec or loom/mpi/core.so is missing: apt-get install openmpi-bin libopenmpi-dev, then make mpi")
    end
  end)

  it("runs submit, map, imap and imap_unordered on the other ranks of the world", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      local pool <close> = assert(mpi.pool())
      assert(pool.workers == 2 and pool.kind == "mpi")
      local f = pool:submit(function(x) return x * x, require("loom.mpi").rank() end, 12)
      local sq, rank = f:result(H.t(10))
      assert(sq == 144 and (rank == 1 or rank == 2), tostring(rank))
      -- several results and nils keep their place
      local a, b, c, n = pool:submit(function() return 1, nil, 3 end):result(H.t(10))
      assert(a == 1 and b == nil and c == 3 and n == nil)
      local ranks = {}
      local fs = {}
      for i = 1, 40 do
        fs[i] = pool:submit(function(x) require("loom").sleep(0.005) return x, require("loom.mpi").rank() end, i)
      end
      for i = 1, 40 do local v, r = fs[i]:result(H.t(20)); assert(v == i); ranks[r] = true end
      assert(ranks[1] and ranks[2], "both ranks served")
      local list = {}
      for i = 1, 1000 do list[i] = i end
      for _, cs in ipairs({ 1, 7, 1000 }) do
        local r = pool:map(function(x) return x * 2 end, list, { chunksize = cs })
        assert(r.n == 1000)
        for i = 1, 1000 do assert(r[i] == 2 * i) end
      end
      local seen, k = {}, 0
      for i, v in pool:imap(function(x) return x + 1 end, { 10, 20, 30 }) do
        k = k + 1; assert(i == k and v == 10 * i + 1)
      end
      for i, v in pool:imap_unordered(function(x) return -x end, list, { chunksize = 64 }) do
        assert(v == -i and not seen[i]); seen[i] = true; k = k + 1
      end
      assert(k == 1003)
      io.write("\nall ok\n")
    ]==]))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("sends portable values both ways: cycles, metatables, closures, C functions by name", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      local pool <close> = assert(mpi.pool(1))
      local t = setmetatable({ 1, 2.0, "three", math.mininteger, sub = {} }, { __index = { k = "mt" } })
      t.sub.back = t
      local count = 10
      local function bump(d) count = count + d return count end
      local r, fmt, b2 = pool:submit(function(x, g, h)
        assert(x.sub.back == x and x.k == "mt" and math.type(x[2]) == "float")
        assert(g == string.format)
        return x, h, function(d) return h(d) * 2 end
      end, t, string.format, bump):result(H.t(10))
      assert(r.sub.back == r and r.k == "mt" and math.type(r[4]) == "integer" and r[4] == math.mininteger)
      assert(fmt(5) == 15 and count == 10)
      assert(b2(1) == 32)
      io.write("\nall ok\n")
    ]==]))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("fails a task's future with its error, the remote traceback and the rank's host", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      local pool <close> = assert(mpi.pool())
      local f = pool:submit(function() error("boom") end)
      local ok, err = pcall(f.result, f, H.t(10))
      assert(not ok and err:match("boom\n%[rank %d on [^%]]+%] stack traceback:"), err)
      assert(not err:find("serve", 1, true), err)
      local e = pool:submit(function() error({ code = 7 }) end):error(H.t(10))
      assert(type(e) == "table" and e.code == 7)
      -- a task that would end its rank fails instead
      local x = pool:submit(function() os.exit(3) end)
      local ok2, err2 = pcall(x.result, x, H.t(10))
      assert(not ok2 and err2:match("os.exit called in a task on rank %d"), err2)
      -- a task its rank cannot decode: a module only rank 0 has
      package.loaded.only_here = { v = 1 }
      local m = package.loaded.only_here
      local y = pool:submit(function() return m.v end)
      local ok3, err3 = pcall(y.result, y, H.t(10))
      assert(not ok3 and err3:match("^cannot decode a task on rank %d on .-: module 'only_here' not found"), err3)
      -- results that cannot travel
      local z = pool:submit(function() return io.stdout end)
      local ok4, err4 = pcall(z.result, z, H.t(10))
      assert(not ok4 and err4:match("^cannot send the results of a task on rank %d on .-: " ..
        "cannot encode values%[2%]: userdata %(FILE%*%)"), err4)
      -- the pool goes on
      assert(pool:submit(function() return "after" end):result(H.t(10)) == "after")
      -- what cannot be sent is refused at submit, naming it
      local ok5, err5 = pcall(pool.submit, pool, function() end, 1, loom.lock())
      assert(not ok5 and err5:match("cannot encode args%[2%]: loom.Lock lives in this machine's shared heap"), err5)
      local ok6, err6 = pcall(pool.submit, pool, 42)
      assert(not ok6 and err6:match("bad argument #1 to 'submit' %(function expected, got number%)"), err6)
      -- hostile callers: a forged self, bad arguments to the pool and the core
      local forged = setmetatable({}, getmetatable(pool))
      local ok7, err7 = pcall(forged.submit, forged, print)
      assert(not ok7 and err7:match("bad argument #1 to 'submit' %(loom.mpi.Pool expected, got a forged loom.mpi.Pool%)"), err7)
      local ok8, err8 = pcall(pool.shutdown, loom.lock())
      assert(not ok8 and err8:match("loom.mpi.Pool expected, got loom.Lock"), err8)
      for _, c in ipairs({
        { mpi.pool, 0, "workers must be a positive integer" },
        { mpi.pool, 2 ^ 63, "workers must be a positive integer" },
        { mpi.pool, { init = 1 }, "init must be a function" },
        { mpi.pool, { init = print, initargs = 1 }, "initargs must be a table" },
        { mpi.pool, { initargs = {} }, "initargs given without init" },
      }) do
        local okc, errc = pcall(c[1], c[2])
        assert(not okc and errc:find(c[3], 1, true), tostring(errc))
      end
      local core = require "loom.mpi.core"
      local w = core.world()
      for _, c in ipairs({
        { core.send, { w, -1, 1, "x" }, "bad argument #2 to 'loom.mpi.core.send' (rank out of range)" },
        { core.send, { w, 2 ^ 31, 1, "x" }, "bad argument #2 to 'loom.mpi.core.send' (rank out of range)" },
        { core.send, { w, 1, 40000, "x" }, "bad argument #3 to 'loom.mpi.core.send' (tag out of range)" },
        { core.send, { 2 ^ 40, 1, 1, "x" }, "bad argument #1 to 'loom.mpi.core.send' (invalid communicator)" },
        { core.probe, { w, -1 }, "bad argument #2 to 'loom.mpi.core.probe' (timeout must be non-negative)" },
        { core.spawn, { "x", { 1 }, 1 }, "bad argument #2 to 'loom.mpi.core.spawn' (arguments must be strings)" },
        { core.spawn, { "x", {}, 0 }, "bad argument #3 to 'loom.mpi.core.spawn' (worker count out of range)" },
        { core.disconnect, { w }, "bad argument #1 to 'loom.mpi.core.disconnect' (cannot disconnect the world)" },
      }) do
        local okc, errc = pcall(c[1], table.unpack(c[2]))
        assert(not okc and errc:find(c[3], 1, true), tostring(errc))
      end
      io.write("\nall ok\n")
    ]==]))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("mixes its futures with loom's own in loom.wait and as_completed", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      local pool <close> = assert(mpi.pool())
      local tpool <close> = loom.pool(1)
      local promise = loom.future()
      local fs = {
        pool:submit(function() require("loom").sleep(0.05) return "mpi" end),
        tpool:submit(function() return "thread" end),
        promise,
      }
      local done, not_done = loom.wait(fs, H.t(10), "any")
      assert(#done >= 1)
      promise:set_result("promise")
      done, not_done = loom.wait(fs, H.t(10))
      assert(#done == 3 and #not_done == 0)
      local got = {}
      for f in loom.as_completed(fs, H.t(10)) do got[f:result()] = true end
      assert(got.mpi and got.thread and got.promise)
      io.write("\nall ok\n")
    ]==]))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("shuts down: cancels what is pending, refuses new tasks, opens again on the same ranks", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      local pool = assert(mpi.pool())
      local fs = {}
      for i = 1, 50 do fs[i] = pool:submit(function() require("loom").sleep(0.02) return 1 end) end
      assert(fs[1]:result(H.t(10)) == 1)
      assert(pool:shutdown(true, true, H.t(20)) == true)
      local ran, cancelled = 0, 0
      for i = 1, 50 do
        if fs[i]:cancelled() then cancelled = cancelled + 1 else assert(fs[i]:result(0) == 1); ran = ran + 1 end
      end
      assert(cancelled > 0 and ran > 0, ran .. " ran")
      local ok, err = pcall(pool.submit, pool, print)
      assert(not ok and err:match("cannot submit to a pool after shutdown"), err)
      assert(pool:shutdown() == true)   -- idempotent
      -- the world's ranks serve the next pool, with an initializer
      do
        local p2 <close> = assert(mpi.pool { workers = 2, init = function(x) VALUE = x end, initargs = { 41 } })
        local ok2, err2 = pcall(mpi.pool)
        assert(not ok2 and err2:match("an MPI pool is already open"), err2)
        assert(p2:submit(function() return VALUE + 1 end):result(H.t(10)) == 42)
      end
      local p3 <close> = assert(mpi.pool { init = function() error("no init") end })
      local f = p3:submit(print)
      local ok3, err3 = pcall(f.result, f, H.t(10))
      assert(not ok3 and err3:match("^pool initializer failed: .*no init %(rank %d on"), err3)
      local ok4, err4 = pcall(p3.submit, p3, print)
      assert(not ok4 and err4:match("cannot submit to a broken pool %(initializer failed%)"), err4)
      local ok5, err5 = pcall(mpi.pool, 3)
      assert(not ok5 and err5:match("an MPI pool is already open"), err5)
      p3:shutdown()
      local ok6, err6 = pcall(mpi.pool, 3)
      assert(not ok6 and err6:match("workers must be at most 2, the world's other ranks"), err6)
      io.write("\nall ok\n")
    ]==]))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("releases the ranks when the script raises or calls os.exit", function()
    if not have_mpi then return end
    local out, ok, code = mpirun([==[
      local pool = assert(mpi.pool())
      pool:submit(print)
      error("script failed")
    ]==])
    assert.is_false(ok, out)
    assert.equal(1, code, out)
    assert.matches("script failed", out)
    out, ok, code = mpirun([==[
      local pool = assert(mpi.pool())
      assert(pool:submit(function() return 1 end):result(H.t(10)) == 1)
      os.exit(5)
    ]==])
    assert.is_false(ok, out)
    assert.equal(5, code, out)
  end)

  it("spawns its workers from a single process with MPI_Comm_spawn", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      assert(mpi.size() == 1)
      local pool <close> = assert(mpi.pool(2))
      assert(pool.spawned)
      local r = pool:map(function(x) return x * 3 end, { 1, 2, 3, 4 })
      assert(r[4] == 12)
      local f = pool:submit(function() error("spawned boom") end)
      local ok, err = pcall(f.result, f, H.t(10))
      assert(not ok and err:match("spawned boom\n%[spawned rank %d on "), err)
      io.write("\nall ok\n")
    ]==], { singleton = true }))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("fails the futures of a rank killed on this host when MPI keeps the job (--enable-recovery)", function()
    if not have_mpi then return end
    local out = expect(mpirun([==[
      local pool <close> = assert(mpi.pool())
      local f = pool:submit(function() os.execute("kill -9 $PPID") require("loom").sleep(5) end)
      local ok, err = pcall(f.result, f, H.t(20))
      assert(not ok and err:match("^MPI rank %d %(pid %d+ on .-%) died while running this task"), tostring(err))
      for i = 1, 4 do assert(pool:submit(function() return i end):result(H.t(10)) == i) end
      io.write("\nall ok\n")
    ]==], { mpiexec = "--enable-recovery " }))
    assert.matches("\nall ok\n", out, 1, true)
  end)

  it("without recovery, a rank killed aborts the whole job: it ends, it does not hang", function()
    if not have_mpi then return end
    local out, ok = mpirun([==[
      local pool <close> = assert(mpi.pool())
      pool:submit(function() os.execute("kill -9 $PPID") end):result(H.t(20))
      io.write("not reached")
    ]==])
    assert.is_false(ok, out)
    assert.not_matches("not reached", out)
    assert.matches("signal 9", out)
  end)
end)
