local H = require "helpers"
local loom = require "loom"

local function inc(x) return x + 1 end
local function sleeper(s, v)
  require("loom").sleep(s)
  return v
end

describe("loom.Future", function()
  describe(":result()", function()
    it("returns every result", function()
      local pool <close> = loom.pool(1)
      local a, b, c = H.result(pool:submit(function() return 1, nil, "x" end), 5)
      assert.equal(1, a)
      assert.is_nil(b)
      assert.equal("x", c)
    end)

    it("re-raises the task's error with the remote traceback", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function() error("boom", 0) end)
      local ok, err = pcall(f.result, f, H.t(5))
      assert.is_false(ok)
      assert.matches("^boom\n%[thread Pool%-%d+%-worker%-1%] stack traceback:", err)
    end)

    it("re-raises a non-string error as is", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function() error({ code = 7 }) end)
      local ok, err = pcall(f.result, f, H.t(5))
      assert.is_false(ok)
      assert.same({ code = 7 }, err)
    end)

    it("returns fail, 'timeout'", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(sleeper, 0.2, 1)
      local v, err = f:result(0.01)
      assert.is_nil(v)
      assert.equal("timeout", err)
      assert.equal(1, H.result(f, 5))
    end)

    it("can be waited on from another thread", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(sleeper, 0.05, "far")
      local t = loom.thread(function(fut) return H.result(fut, 5) end, f):start()
      assert.equal("far", H.result(t, 5))
      assert.equal("far", H.result(f, 5))
    end)

    it("can be waited on from a forked process #fork", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(sleeper, 0.05, "near")
      local p = loom.process(function(fut) return H.result(fut, 5) end, f):start()
      assert.equal("near", H.result(p, 10))
    end)

    it("rejects a negative timeout", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(inc, 1)
      assert.has_error(function() f:result(-1) end,
        "bad argument #1 to 'result' (timeout must be non-negative)")
    end)
  end)

  describe(":error()", function()
    it("is nil for a successful task", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(inc, 1)
      H.result(f, 5)
      assert.is_nil(f:error())
    end)

    it("returns the error and traceback without raising", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(function() error("soft", 0) end)
      loom.wait({ f }, H.t(5))
      local err, tb = f:error()
      assert.equal("soft", err)
      assert.matches("^stack traceback:", tb)
    end)
  end)

  describe(":cancel()", function()
    it("cancels a pending task", function()
      local pool <close> = loom.pool(1)
      local busy = pool:submit(sleeper, 0.3, 0)
      local f = pool:submit(inc, 1)
      assert.is_true(f:cancel())
      assert.is_true(f:cancel())
      assert.is_true(f:cancelled())
      assert.is_true(f:done())
      assert.is_false(f:running())
      local v, err = H.result(f, 5)
      assert.is_nil(v)
      assert.equal("cancelled", err)
      assert.equal("cancelled", f:error())
      H.result(busy, 5)
    end)

    it("returns false for a running task", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(sleeper, 0.5, "ran")
      local deadline = loom.now() + H.t(5)
      while not f:running() and loom.now() < deadline do loom.sleep(0.001) end
      assert.is_true(f:running())
      assert.is_false(f:cancel())
      assert.equal("ran", H.result(f, 5))
    end)

    it("returns false for a finished task", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(inc, 1)
      H.result(f, 5)
      assert.is_false(f:cancel())
      assert.is_false(f:cancelled())
    end)
  end)

  describe("a closed handle", function()
    it("raises on use and is refused by wait", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(inc, 1)
      do local g <close> = f end
      assert.has_error(function() H.result(f, 1) end, "attempt to use a closed loom.Future")
      assert.has_error(function() loom.wait({ f }) end,
        "bad argument #1 to 'wait' (loom.Future expected at index 1, got a closed loom.Future)")
      assert.equal("loom.Future (closed)", tostring(f))
    end)
  end)

  describe("__tostring", function()
    it("shows the state", function()
      local pool <close> = loom.pool(1)
      local f = pool:submit(inc, 1)
      H.result(f, 5)
      assert.matches("^loom.Future %(.*, finished%)$", tostring(f))
    end)
  end)
end)

describe("loom.wait", function()
  it("waits for all by default", function()
    local pool <close> = loom.pool(2)
    local fs = {}
    for i = 1, 6 do fs[i] = pool:submit(sleeper, 0.01 * i, i) end
    local done, not_done = loom.wait(fs, H.t(5))
    assert.equal(6, #done)
    assert.equal(0, #not_done)
  end)

  it("returns at the first finished with 'any'", function()
    local pool <close> = loom.pool(2)
    local slow = pool:submit(sleeper, 0.5, 1)
    local quick = pool:submit(sleeper, 0.01, 2)
    local done, not_done = loom.wait({ slow, quick }, H.t(5), "any")
    assert.equal(1, #done)
    assert.equal(quick, done[1])
    assert.equal(slow, not_done[1])
  end)

  it("returns at the first error with 'first_error'", function()
    local pool <close> = loom.pool(2)
    local slow = pool:submit(sleeper, 0.5, 1)
    local bad = pool:submit(function() error("x") end)
    local done, not_done = loom.wait({ slow, bad }, H.t(5), "first_error")
    assert.same({ bad }, done)
    assert.same({ slow }, not_done)
  end)

  it("takes the mode second when there is no timeout", function()
    local pool <close> = loom.pool(2)
    local slow = pool:submit(sleeper, 0.5, 1)
    local quick = pool:submit(inc, 1)
    local done = loom.wait({ slow, quick }, "any")
    assert.same({ quick }, done)
  end)

  it("returns what is done at the timeout", function()
    local pool <close> = loom.pool(1)
    local slow = pool:submit(sleeper, 0.3, 1)
    local done, not_done = loom.wait({ slow }, 0.01)
    assert.equal(0, #done)
    assert.equal(1, #not_done)
  end)

  it("counts a repeated future once", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(inc, 1)
    local done = loom.wait({ f, f, f }, H.t(5))
    assert.equal(1, #done)
  end)

  it("rejects bad arguments", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(inc, 1)
    assert.has_error(function() loom.wait(f) end,
      "bad argument #1 to 'wait' (table expected, got loom.Future)")
    assert.has_error(function() loom.wait({ f, 3 }) end,
      "bad argument #1 to 'wait' (loom.Future expected at index 2, got number)")
    assert.has_error(function() loom.wait({ f }, -1) end,
      "bad argument #2 to 'wait' (timeout must be non-negative)")
    assert.has_error(function() loom.wait({ f }, nil, "some") end,
      "bad argument #3 to 'wait' (invalid option 'some')")
  end)
end)

describe("loom.as_completed", function()
  it("yields futures in the order they finish", function()
    local pool <close> = loom.pool(3)
    local fs = {
      pool:submit(sleeper, 0.3, "c"),
      pool:submit(sleeper, 0.01, "a"),
      pool:submit(sleeper, 0.15, "b"),
    }
    local order = {}
    for f in loom.as_completed(fs, H.t(5)) do order[#order + 1] = f:result() end
    assert.same({ "a", "b", "c" }, order)
  end)

  it("yields finished futures first, in the order given", function()
    local pool <close> = loom.pool(1)
    local a, b = pool:submit(inc, 1), pool:submit(inc, 2)
    loom.wait({ a, b }, H.t(5))
    local got = {}
    for f in loom.as_completed({ b, a }) do got[#got + 1] = f end
    assert.same({ b, a }, got)
  end)

  it("raises 'timeout' when the deadline passes", function()
    local pool <close> = loom.pool(1)
    local f = pool:submit(sleeper, 0.3, 1)
    local ok, err = pcall(function()
      for _ in loom.as_completed({ f }, 0.01) do end
    end)
    assert.is_false(ok)
    assert.equal("timeout", err)
  end)

  it("can be left early", function()
    local pool <close> = loom.pool(2)
    local fs = { pool:submit(inc, 1), pool:submit(sleeper, 0.1, 2) }
    for _ in loom.as_completed(fs, H.t(5)) do break end  -- luacheck: ignore 512
    assert.equal(2, H.result(fs[2], 5))
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() loom.as_completed({}, -1) end,
      "bad argument #2 to 'as_completed' (timeout must be non-negative)")
    assert.has_error(function() loom.as_completed(nil) end,
      "bad argument #1 to 'as_completed' (table expected, got nil)")
    assert.has_error(function() loom.as_completed({ {} }) end,
      "bad argument #1 to 'as_completed' (loom.Future expected at index 1, got table)")
  end)
end)
