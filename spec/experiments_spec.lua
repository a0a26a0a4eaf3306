-- The notebook experiments, each run with --quick: every claim a script
-- checks must hold (exit status 0), and the output must show what the
-- notebook showed.  Timing claims carry generous margins; a comparison of
-- two timings becomes a note when the machine's cores are busy.

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1", "r")
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

-- Whether every failed claim in out is a parallel-speedup one, or one
-- that needs quiet cores: the machine's second core can be taken from
-- under a short run (a virtual CPU the host lends elsewhere, or another
-- job) without the load average showing it.
local function only_parallel_failed(out)
  local failed = false
  for line in out:gmatch("[^\n]+") do
    if line:find("CLAIM FAILED:", 1, true) then
      if not (line:find("[parallel]", 1, true) or line:find("[quiet]", 1, true)) then
        return false
      end
      failed = true
    end
  end
  return failed
end

-- Runs an experiment; one whose only failed claims are parallel speedups
-- gets two more tries.  A speedup that three tries never show is the
-- machine's to answer for (`make bench` rows B4 measure it): the run then
-- counts as passed, every other claim having held, and says so on stderr.
local function experiment(script, ...)
  local cmd = "lua5.4 experiments/" .. script .. ".lua " .. table.concat({ ... }, " ")
  local out, ok, code
  for _ = 1, 3 do
    out, ok, code = run(cmd)
    if ok or not only_parallel_failed(out) then return out, ok, code end
  end
  io.stderr:write("\nnote: " .. script .. ": no parallel speedup in three tries; cores not free\n")
  return out, true, 0, "parallel only"
end

local function has(out, text)
  return out:find(text, 1, true) ~= nil
end

local function assert_ok(out, ok)
  assert(ok, "claims failed:\n" .. out)
  assert(out:match("claims: %d+ passed, 0 failed") or only_parallel_failed(out), out)
end

local function python3()
  return os.execute("command -v python3 >/dev/null 2>&1") == true
end

-- What the notebooks' cells printed, line by line, for the cells each
-- script reproduces (the --quick runs print the same lines; only sums and
-- times differ, so those lines are patterns).  Lines two threads printed
-- into each other in a notebook ("square :cube : 27") are listed whole.
-- Each literal line must be a line of the notebook, each pattern must match
-- one, and the script must print every listed line at least as often.
local TIME = "%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d%d%d%d"
local STAMPS = { pattern = "^" .. TIME .. " " .. TIME .. "$" }
local FLOAT = "%d+%.%d+"
-- lines{ {n, line}, line, ... }: the list with each {n, line} n times.
local function lines(spec)
  local t = {}
  for _, item in ipairs(spec) do
    if type(item) == "table" and item.pattern == nil then
      for _ = 1, item[1] do t[#t + 1] = item[2] end
    else
      t[#t + 1] = item
    end
  end
  return t
end
local PRINTED = {
  ["01_io_bound"] = { notebook = "000_", lines = lines{
    -- In [3] and In [4]
    {2, "Thread T1 Executed"}, {2, "Thread T2 Executed"}, {2, STAMPS} } },
  ["02_cpu_bound"] = { notebook = "000_", lines = lines{
    -- In [6] and In [7]; the sums as at the --quick sizes
    {2, { pattern = "^Task T1 Executed%. Result :  " .. FLOAT .. "e%+%d+$" }},
    {2, { pattern = "^Task T2 Executed%. Result :  " .. FLOAT .. "e%+%d+$" }},
    {2, STAMPS} } },
  ["03_square_cube"] = { notebook = "001_", lines = lines{
    -- In [5], [11], [15], [17], and In [14] (whose processes' lines Jupyter lost)
    {4, "calculate square numbers"}, {2, "calcuate cube of numbers"},
    {2, "calculate cube of numbers"},
    {4, "square : 4"}, {4, "square : 9"}, {4, "square : 64"}, {4, "square : 81"},
    {4, "cube : 8"}, {4, "cube : 27"}, {4, "cube : 512"}, {4, "cube : 729"},
    {5, { pattern = "^done in : " .. FLOAT .. " secs$" }},
    {5, "hah....i am done with my all work"} } },
  ["04_thread_process"] = { notebook = "002_", lines = lines{
    -- In [1] and In [2]
    {2, "Task A started."}, {2, "Task B started."}, {2, "Task A completed."},
    {2, "Task B completed."}, {2, "All tasks completed."} } },
  ["05_concurrency_parallelism"] = { notebook = "003_", lines = lines{
    -- In [9], [10], [11]
    {3, "Task 0 started"}, {3, "Task 1 started"}, {3, "Task 2 started"},
    {3, "Task 0 finished"}, {3, "Task 1 finished"}, {3, "Task 2 finished"},
    {3, "All tasks done"},
    {3, { pattern = "^Time to finish the takss are: " .. FLOAT .. " seconds$" }} } },
  ["06_processes_threads"] = { notebook = "004_", lines = lines{
    -- In [2] and In [3]
    {2, "end main"} } },
  ["07_race_condition"] = { notebook = "004_", lines = lines{
    -- In [5]
    "Start value 0", "end value 1", "end main" } },
  -- 08_shared_value: the notebook's cell never ran (In [None]) and printed
  -- nothing; the script prints what its code would
  ["08_shared_value"] = { notebook = "004_", lines = lines{} },
}

local function lines_of(text)
  local t = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

local function count(printed, want)
  local n = 0
  for _, line in ipairs(printed) do
    if type(want) == "table" then
      if line:match(want.pattern) then n = n + 1 end
    elseif line == want then
      n = n + 1
    end
  end
  return n
end

local function show(want)
  return type(want) == "table" and "pattern " .. want.pattern or want
end

-- The notebooks live beside the project's checkouts, not in them.
local function notebook_text(prefix)
  for _, dir in ipairs({ os.getenv("LOOM_NOTEBOOKS") or "../shared/notebooks",
                         "../shared/notebooks", "../../shared/notebooks" }) do
    local p = io.popen("ls " .. dir .. "/" .. prefix .. "*.txt 2>/dev/null")
    local path = p:read("l")
    p:close()
    if path then
      local f = assert(io.open(path))
      local text = f:read("a")
      f:close()
      return text, path
    end
  end
end

describe("experiments", function()
  describe("01_io_bound", function()
    it("sleeps side by side on two threads", function()
      local out, ok = experiment("01_io_bound", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "\nThread T1 Executed\n"))
      assert.is_true(has(out, "\nThread T2 Executed\n"))
      assert.is_true(has(out, "claims: 2 passed, 0 failed"))
    end)
  end)

  describe("02_cpu_bound", function()
    it("prints Python's exact sums for the --quick sizes", function()
      local out, ok = experiment("02_cpu_bound", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "\nTask T1 Executed. Result :  6.041664854169139e+19\n"))
      assert.is_true(has(out, "\nTask T2 Executed. Result :  3.0933321733343285e+19\n"))
    end)

    it("prints the notebook's exact sums at the notebook's sizes", function()
      local out, ok = experiment("02_cpu_bound", "--no-python")
      assert_ok(out, ok)
      local _, t1 = out:gsub("\nTask T1 Executed%. Result :  6%.0416664854174735e%+22\n", "")
      local _, t2 = out:gsub("\nTask T2 Executed%. Result :  3%.0933332173336498e%+22\n", "")
      assert.is_true(t1 >= 2 and t1 == t2, out)
    end)

    it("runs the shared-interpreter variant where the build has it", function()
      local out = experiment("02_cpu_bound", "--quick", "--no-python")
      if require("loom").shared_thread == nil then
        assert.is_true(has(out, "two shared-interpreter threads: skipped (needs loom.shared_thread)"))
      else
        assert.is_true(has(out, "claim ok: two shared-interpreter threads: T1 = 6.041664854169139e+19"), out)
        assert.is_true(has(out, "claim ok: in a row, in one shared thread: T1 = 6.041664854169139e+19"), out)
        assert.is_true(has(out, "claim ok: sequential"), out)
      end
    end)
  end)

  describe("03_square_cube", function()
    it("computes every square and cube in each variant", function()
      local out, ok = experiment("03_square_cube", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "claim ok: sequential: squares 4 9 64 81, cubes 8 27 512 729"))
      assert.is_true(has(out, "\nsquare : 81\n"))
      assert.is_true(has(out, "\ncube : 729\n"))
    end)
  end)

  describe("04_thread_process", function()
    it("runs task on two threads and two processes", function()
      local out, ok = experiment("04_thread_process", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "\nTask B completed.\n"))
    end)
  end)

  describe("05_concurrency_parallelism", function()
    it("overlaps the waits and spreads the computing", function()
      local out, ok = experiment("05_concurrency_parallelism", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "\nTask 2 finished\n"))
      assert.is_true(has(out, "cpu task 2: "))
    end)
  end)

  describe("06_processes_threads", function()
    it("reports what starting a thread and a process costs", function()
      local out, ok = experiment("06_processes_threads", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "start-up of one thread"))
    end)
  end)

  describe("07_race_condition", function()
    it("loses one update without the lock and none with it", function()
      local out, ok = experiment("07_race_condition", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "\nend value 1\n"))
      assert.is_true(has(out, "\nend value 2\n"))
      assert.is_true(has(out, "claim ok: without the lock one update is lost: end value 1"))
      assert.is_true(has(out, "claim ok: with the lock both updates land: end value 2"))
    end)
  end)

  describe("08_shared_value", function()
    it("ends at exactly 2n with get_lock() and with the atomic add", function()
      local out, ok = experiment("08_shared_value", "--quick", "--no-python")
      assert_ok(out, ok)
      assert.is_true(has(out, "claim ok: with get_lock(): exactly 100"))
      assert.is_true(has(out, "claim ok: with the atomic add: exactly 100"))
    end)
  end)

  describe("print what the notebooks printed", function()
    local scripts = {}
    for script in pairs(PRINTED) do scripts[#scripts + 1] = script end
    table.sort(scripts)
    for _, script in ipairs(scripts) do
      local spec = PRINTED[script]
      it(script .. ": every line the notebook's cells printed, character for character", function()
        local text, path = notebook_text(spec.notebook)
        if text then
          local nb = lines_of(text)
          for _, want in ipairs(spec.lines) do
            assert(count(nb, want) > 0, path .. " has no line " .. show(want))
          end
        end
        local out = experiment(script, "--quick", "--no-python")
        local got = lines_of(out)
        local checked = {}
        for _, want in ipairs(spec.lines) do
          local key = show(want)
          if not checked[key] then
            checked[key] = true
            local need = 0
            for _, other in ipairs(spec.lines) do
              if show(other) == key then need = need + 1 end
            end
            local have = count(got, want)
            assert(have >= need, ("%s printed %s %d times, the notebook %d:\n%s"):format(
              script, key, have, need, out))
          end
        end
        if not text then
          pending("notebooks not found beside the checkout: only the script was checked")
        end
      end)
    end
  end)

  describe("run.lua", function()
    it("runs the experiments named and ends with one table", function()
      local out, ok = run("lua5.4 experiments/run.lua --quick --no-python 7 race_condition 01")
      assert_ok(out, ok)
      assert.is_true(has(out, "== 2 experiment(s) (--quick)"))
      assert.is_true(out:find("experiment%s+variant%s+loom%s+vs seq%s+notebook%s+python") ~= nil, out)
      assert.is_true(out:find("01 io_bound%s+sequential") ~= nil, out)
      assert.is_true(out:find("07 race_condition%s+two threads, no lock") ~= nil, out)
    end)

    it("refuses a name that matches no experiment", function()
      local out, ok, code = run("lua5.4 experiments/run.lua --quick nothing_like_this")
      assert.is_falsy(ok)
      assert.are.equal(2, code)
      assert.is_true(has(out, "no experiment matches: nothing_like_this"))
    end)

    it("fills the python column from the Python twin when python3 is there", function()
      if not python3() then return end
      local out, ok = run("lua5.4 experiments/run.lua --quick 7")
      assert_ok(out, ok)
      local line = out:match("\n(07 race_condition[^\n]*)")
      assert.is_truthy(line, out)
      assert.is_true(line:find("end value 1%s+0%.%d+ s") ~= nil, line)
    end)
  end)
end)
