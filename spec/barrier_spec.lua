-- loom.Barrier
local H = require "helpers"
local loom = require "loom"
-- thread functions see these as upvalues: a spec file's environment is
-- busted's, not a table a thread could rebuild
local pcall, concat = pcall, table.concat

-- Passes the barrier `gens` times; returns the indices joined by commas.
local function passer(b, gens)
  local got = {}
  for g = 1, gens do got[g] = H.wait(b, 10) end
  return concat(got, ",")
end

local function run_generations(parties, gens, spawn)
  spawn = spawn or loom.thread
  local b = loom.barrier(parties)
  local ts = {}
  finally(function() for _, t in ipairs(ts) do t:join(H.t(10)) end end)
  for i = 1, parties do ts[i] = spawn(passer, b, gens):start() end
  local per_gen = {}
  for i = 1, parties do
    local g = 0
    for idx in H.result(ts[i], 60):gmatch("%d+") do
      g = g + 1
      per_gen[g] = per_gen[g] or {}
      per_gen[g][#per_gen[g] + 1] = tonumber(idx)
    end
  end
  for g = 1, gens do
    table.sort(per_gen[g])
    for k = 1, parties do assert.equal(k - 1, per_gen[g][k]) end
  end
  assert.is_false(b.broken)
  assert.equal(0, b.n_waiting)
end

describe("loom.Barrier", function()
  it("has parties, n_waiting and broken fields", function()
    local b = loom.barrier(3)
    assert.equal(3, b.parties)
    assert.equal(0, b.n_waiting)
    assert.is_false(b.broken)
    assert.matches("^loom%.Barrier %(0x%x+, 0/3 waiting%)$", tostring(b))
    assert.has_error(function() b.parties = 4 end, "cannot set field 'parties' of a loom.Barrier")
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() loom.barrier(0) end,
      "bad argument #1 to 'barrier' (parties must be positive)")
    assert.has_error(function() loom.barrier() end,
      "bad argument #1 to 'barrier' (number expected, got no value)")
    assert.has_error(function() loom.barrier(2, -1) end,
      "bad argument #2 to 'barrier' (timeout must be non-negative)")
  end)

  describe(":wait()", function()
    it("returns 0 at once for a single party", function()
      local b = loom.barrier(1)
      assert.equal(0, b:wait())
      assert.equal(0, b:wait(0))
    end)

    it("gives each party a distinct index 0..n-1 in every generation", function()
      run_generations(3, 5)
    end)

    it("survives many generations #stress", function()
      run_generations(4, 2000)
    end)

    it("counts the parties waiting", function()
      local b = loom.barrier(2)
      local t = loom.thread(function(bar) return H.wait(bar, 5) end, b):start()
      finally(function() t:join(H.t(5)) end)
      local deadline = loom.now() + H.t(5)
      while b.n_waiting < 1 and loom.now() < deadline do loom.sleep(0.005) end
      assert.equal(1, b.n_waiting)
      local mine = H.wait(b, 5)
      local theirs = H.result(t, 5)
      assert.same({0, 1}, mine < theirs and {mine, theirs} or {theirs, mine})
    end)

    it("breaks the barrier on timeout", function()
      local b = loom.barrier(2)
      assert.has_error(function() b:wait(0.02) end, "broken barrier")
      assert.is_true(b.broken)
      assert.matches("broken", tostring(b))
      assert.has_error(function() H.wait(b, 1) end, "broken barrier")
    end)

    it("uses the default timeout given to barrier()", function()
      local b = loom.barrier(2, 0.02)
      assert.has_error(function() b:wait() end, "broken barrier")
      assert.is_true(b.broken)
    end)

    it("raises on a negative timeout", function()
      local b = loom.barrier(2)
      assert.has_error(function() b:wait(-1) end,
        "bad argument #1 to 'wait' (timeout must be non-negative)")
    end)

    it("wakes the others with 'broken barrier' when one times out", function()
      local b = loom.barrier(3)
      local t = loom.thread(function(bar) return pcall(bar.wait, bar, H.t(5)) end, b):start()
      finally(function() t:join(H.t(5)) end)
      local deadline = loom.now() + H.t(5)
      while b.n_waiting < 1 and loom.now() < deadline do loom.sleep(0.005) end
      assert.has_error(function() b:wait(0.02) end, "broken barrier")
      local ok, err = H.result(t, 5)
      assert.is_false(ok)
      assert.equal("broken barrier", err)
    end)

    it("is woken by cancel(), which breaks it", function()
      local b = loom.barrier(2)
      local t = loom.thread(function(bar) return bar:wait() end, b):start()
      finally(function() t:join(H.t(5)) end)
      assert.is_false(t:join(0.05))
      t:cancel()
      local r, err = H.result(t, 5)
      assert.is_nil(r)
      assert.equal("cancelled", err)
      assert.is_true(b.broken)
    end)
  end)

  describe("between processes", function()
    it("gives each party a distinct index in every generation", function()
      run_generations(3, 5, loom.process)
    end)
  end)

  describe(":abort()", function()
    it("breaks the barrier for waiters and later callers", function()
      local b = loom.barrier(2)
      local t = loom.thread(function(bar) return pcall(bar.wait, bar, H.t(5)) end, b):start()
      finally(function() t:join(H.t(5)) end)
      local deadline = loom.now() + H.t(5)
      while b.n_waiting < 1 and loom.now() < deadline do loom.sleep(0.005) end
      b:abort()
      local ok, err = H.result(t, 5)
      assert.is_false(ok)
      assert.equal("broken barrier", err)
      assert.is_true(b.broken)
      assert.equal(0, b.n_waiting)
      assert.has_error(function() b:wait(0) end, "broken barrier")
    end)
  end)

  describe(":reset()", function()
    it("makes a broken barrier usable again", function()
      local b = loom.barrier(2)
      b:abort()
      b:reset()
      assert.is_false(b.broken)
      local t = loom.thread(function(bar) return H.wait(bar, 5) end, b):start()
      finally(function() t:join(H.t(5)) end)
      local mine = H.wait(b, 5)
      assert.equal(1, mine + H.result(t, 5))
    end)

    it("raises 'broken barrier' in the parties waiting", function()
      local b = loom.barrier(3)
      local t = loom.thread(function(bar) return pcall(bar.wait, bar, H.t(5)) end, b):start()
      finally(function() t:join(H.t(5)) end)
      local deadline = loom.now() + H.t(5)
      while b.n_waiting < 1 and loom.now() < deadline do loom.sleep(0.005) end
      b:reset()
      local ok, err = H.result(t, 5)
      assert.is_false(ok)
      assert.equal("broken barrier", err)
      assert.is_false(b.broken)
      assert.equal(0, b.n_waiting)
    end)
  end)
end)
