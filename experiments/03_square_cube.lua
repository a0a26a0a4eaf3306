-- 3. calc_square and calc_cube over {2, 3, 8, 9}, 0.2 s per item:
-- sequential, two threads, pools of 2 and 3 workers, two processes.
-- Notebook: 1.67 s, 0.85 s, 0.86 s, 0.85 s; its processes "took" 0.15 s
-- because Jupyter lost their output.  loom's processes print theirs.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "lib.lua")
local loom = require "loom"
local print = lib.pyprint

local experiment = {
  id = "03", name = "square_cube", title = "calc_square and calc_cube: threads, pools, processes",
  python = "03_square_cube.py", needs = { "thread" },
}

local numbers = { 2, 3, 8, 9 }
local DELAY = 0.2      -- set from the parameters before any task starts

-- What the notebook's cells print, its typo included: "calcuate" in the
-- first two cells, "calculate" in the later ones.
local function calc_square(numbers)
  local out = {}
  print("calculate square numbers")
  for _, n in ipairs(numbers) do
    loom.sleep(DELAY)
    print("square :", n * n)
    out[#out + 1] = n * n
  end
  return out
end

local function calc_cube(numbers, typo)
  local out = {}
  print(typo and "calcuate cube of numbers" or "calculate cube of numbers")
  for _, n in ipairs(numbers) do
    loom.sleep(DELAY)
    print("cube :", n * n * n)
    out[#out + 1] = n * n * n
  end
  return out
end

local function two(spawn, typo)
  return function()
    local t1 = spawn(calc_square, numbers)
    local t2 = spawn(calc_cube, numbers, typo)
    t1:start()
    t2:start()
    return t1:result(), t2:result()
  end
end

local function pool(workers)
  return function()
    local executor <close> = loom.pool(workers)
    local f1 = executor:submit(calc_square, numbers)
    local f2 = executor:submit(calc_cube, numbers)
    return f1:result(), f2:result()
  end
end

function experiment.run(x)
  DELAY = x:pick(0.2, 0.05)
  local results = {}
  -- each cell ends with its "done in" line and a sigh of relief
  local function variant(key, label, opts, fn)
    local function timed()
      local t = loom.now()
      local squares, cubes = fn()
      print("done in :", loom.now() - t, "secs")
      print("hah....i am done with my all work")
      return squares, cubes
    end
    local elapsed, squares, cubes = x:variant(key, label, opts, timed)
    if elapsed then results[key] = { squares, cubes } end
  end

  variant("sequential", "sequential", { notebook = 1.67 }, function()
    return calc_square(numbers), calc_cube(numbers, true)
  end)
  variant("threads", "two threads", { notebook = 0.85 }, two(loom.thread, true))
  variant("pool2", "pool, max_workers=2", { notebook = 0.86, needs = { "pool" } }, pool(2))
  variant("pool3", "pool, max_workers=3", { notebook = 0.85, needs = { "pool" } }, pool(3))
  variant("processes", "two processes",
    { notebook_note = "0.15 s (lost)", needs = { "process" } },
    function() return two(loom.process)() end)

  if x:time("processes") then
    x:note("the notebook's 0.15 s for processes was Jupyter losing their output; "
      .. "here they print it and take four sleeps like the threads")
  end

  local function same(a, b)
    return table.concat(a, ",") == table.concat(b, ",")
  end
  for _, row in ipairs(x.rows) do
    local r = results[row.key]
    if r then
      x:check(same(r[1], { 4, 9, 64, 81 }) and same(r[2], { 8, 27, 512, 729 }),
        "%s: squares %s, cubes %s", row.label, table.concat(r[1], " "),
        table.concat(r[2], " "))
    end
  end
  local all, half = 8 * DELAY, 4 * DELAY
  x:check_time("sequential", all * 0.98, all * 1.5 + 0.1, "eight sleeps in a row")
  for _, key in ipairs({ "threads", "pool2", "pool3", "processes" }) do
    x:check_time(key, half * 0.98, half * 1.5 + 0.15, "two lists side by side: four sleeps")
  end
end

return lib.main(experiment, ...)
