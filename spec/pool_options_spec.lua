-- Pool options thread_name_prefix and max_tasks_per_child.
local loom = require "loom"
local H = require "helpers"

-- the pid and the loom name of the process that runs it
local function who()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  local l = require "loom"
  return pid, l.current_process().name, l.current().name
end

describe("loom.pool thread_name_prefix", function()
  it("names thread pool workers <prefix>-worker-N, tracebacks too", function()
    local pool <close> = loom.pool{workers = 2, thread_name_prefix = "io"}
    local _, _, name = H.result(pool:submit(who), 10)
    assert.matches("^io%-worker%-[12]$", name)
    local f = pool:submit(function() error("boom") end)
    local ok, err = pcall(f.result, f, H.t(10))
    assert.is_false(ok)
    assert.matches("%[thread io%-worker%-[12]%]", err)
  end)

  it("names process pool workers, as current_process() sees them", function()
    local pool <close> = loom.pool{workers = 1, kind = "process", thread_name_prefix = "cpu"}
    local _, pname = H.result(pool:submit(who), 10)
    assert.are.equal("cpu-worker-1", pname)
    local ok, err = pcall(function() return H.result(pool:submit(function() error("x") end), 10) end)
    assert.is_false(ok)
    assert.matches("%[process cpu%-worker%-1%]", err)
  end)

  it("keeps the default names without it", function()
    local pool <close> = loom.pool{workers = 1}
    local _, _, name = H.result(pool:submit(who), 10)
    assert.matches("^Pool%-%d+%-worker%-1$", name)
  end)

  it("checks its value", function()
    local function err(v)
      local ok, e = pcall(loom.pool, {thread_name_prefix = v})
      assert.is_false(ok)
      return e
    end
    assert.matches("thread_name_prefix must be a string", err(1))
    assert.matches("thread_name_prefix must not contain a NUL byte", err("a\0b"))
    assert.matches("thread_name_prefix too long %(at most 40 bytes%)", err(string.rep("x", 41)))
    local pool <close> = loom.pool{workers = 1, thread_name_prefix = string.rep("x", 40)}
    local _, _, name = H.result(pool:submit(who), 10)
    assert.are.equal(string.rep("x", 40) .. "-worker-1", name)
  end)
end)

describe("loom.pool max_tasks_per_child", function()
  it("replaces a worker process after that many tasks", function()
    local pool <close> = loom.pool{workers = 1, kind = "process", max_tasks_per_child = 2}
    local pids, seen = {}, {}
    for i = 1, 6 do
      pids[i] = H.result(pool:submit(who), 10)
      seen[pids[i]] = (seen[pids[i]] or 0) + 1
    end
    for i = 1, 6, 2 do
      assert.are.equal(pids[i], pids[i + 1])
    end
    assert(pids[1] ~= pids[3] and pids[3] ~= pids[5] and pids[1] ~= pids[5])
    for _, n in pairs(seen) do assert.are.equal(2, n) end
  end)

  it("runs every task of a batch, with several workers", function()
    local pool <close> = loom.pool{workers = 2, kind = "process", max_tasks_per_child = 1}
    local r = pool:map(function(x) return x * x end, {1, 2, 3, 4, 5, 6, 7, 8},
                       {timeout = H.t(30)})
    assert.are.same({1, 4, 9, 16, 25, 36, 49, 64, n = 8}, r)
    assert(pool:shutdown(true, false, H.t(10)))
  end)

  it("checks its value", function()
    local function err(opts)
      local ok, e = pcall(loom.pool, opts)
      assert.is_false(ok)
      return e
    end
    for _, v in ipairs{0, -1, 1.5, "2", true, math.mininteger} do
      assert.matches("max_tasks_per_child must be a positive integer",
                     err{kind = "process", max_tasks_per_child = v})
    end
    assert.matches("max_tasks_per_child is for process pools only",
                   err{max_tasks_per_child = 2})
  end)
end)
