-- experiments/run.lua: runs the notebook experiments and prints one table.
--   lua5.4 experiments/run.lua [--quick] [--no-python] [--verbose] [names...]
-- A name selects experiments by number or name: `2`, `02`, `cpu_bound`.

local here = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
if here == nil or here == "" then here = "./" end
local lib = dofile(here .. "lib.lua")

local SCRIPTS = {
  "01_io_bound", "02_cpu_bound", "03_square_cube", "04_thread_process",
  "05_concurrency_parallelism", "06_processes_threads", "07_race_condition",
  "08_shared_value",
}

local opts = lib.args(arg, "experiments/run.lua", true)

local function selected(script)
  if #opts.names == 0 then return true end
  local num, name = script:match("^(%d+)_(.*)$")
  for _, want in ipairs(opts.names) do
    if want == script or want == name or tonumber(want) == tonumber(num) then
      return true
    end
  end
  return false
end

local chosen = {}
for _, script in ipairs(SCRIPTS) do
  if selected(script) then chosen[#chosen + 1] = script end
end

local results = {}
local start = lib.loom.now()
for i, script in ipairs(chosen) do
  local chunk, err = loadfile(here .. script .. ".lua")
  if chunk == nil then error(err, 0) end
  local exp = chunk({ runner = true })
  results[#results + 1] = lib.run(exp, opts, i .. "/" .. #chosen)
end
if #results == 0 then
  io.stderr:write("no experiment matches: ", table.concat(opts.names, " "), "\n")
  os.exit(2)
end

local load = lib.load()
lib.printf("\n== %d experiment(s)%s in %s, %d cores%s\n", #results,
  opts.quick and " (--quick)" or "", lib.fmt_time(lib.loom.now() - start),
  lib.loom.cpu_count(), load and string.format(", load average %.2f", load) or "")
local failed = lib.table(results)
os.exit(failed == 0 and 0 or 1)
