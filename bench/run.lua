-- `make bench`: runs the workloads B1..B12 for loom and for Python in
-- one run and prints one table (median of 5 repetitions, min-max shown,
-- the ratio, the machine's raw limit where one applies, the target).
--
-- Usage: lua5.4 bench/run.lua [--quick] [--reps N] [B1 B7 ...]
--   --quick   3 repetitions of workloads cut to a tenth (a smoke run)
--   B<n>      only these rows (default: all)
-- A full run (all rows, not quick) also writes bench/results.md.
--
-- Every repetition of every workload runs in a fresh process
-- (`lua5.4 bench/loom_rows.lua ROW`, `python3 bench/python/rows.py ROW`),
-- loom's and Python's repetitions interleaved, so a row starts from a clean
-- interpreter and heap, peak RSS belongs to that workload alone, and a
-- drift in the machine's load touches both sides alike.

local LUA = os.getenv("LUA") or "lua5.4"
local PYTHON = os.getenv("PYTHON") or "python3"
local LIMITS = "build/limits"
local TIMEOUT = 120   -- seconds, one repetition
local ROW_BUDGET = 30 -- seconds, all repetitions of one row

local quick, reps, only = false, nil, {}
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--quick" then
      quick = true
    elseif a == "--reps" then
      i = i + 1
      reps = math.tointeger(tonumber(arg[i]))
    elseif a:match("^[Bb]%d+$") then
      only[a:upper()] = true
    else
      io.stderr:write("usage: lua5.4 bench/run.lua [--quick] [--reps N] [B1 ...]\n")
      os.exit(2)
    end
    i = i + 1
  end
end
reps = reps or (quick and 3 or 5)
local all_rows = next(only) == nil

-- Targets take (loom median, python median, reference median) and say
-- whether the figure meets them.
local function at_most(v)
  return function(l) return l <= v end
end
local function at_least(v)
  return function(l) return l >= v end
end
local function within_ref(x)
  return function(l, _, r) return r ~= nil and l <= x * r end
end

-- One row of the table.  loom/py: the argument lists of the two worker
-- scripts; key: the figure's key in their output; lower: smaller is
-- better; ref: a key of build/limits.
local ROWS = {
  { id = "B1", name = "spawn: start+join", unit = "µs/thread", key = "us_per_thread",
    lower = true, loom = { "B1" }, py = { "B1" }, ref = "thread_state",
    also = { "thread_spawn", "lua_state" },
    target = "<= 20 µs", ok = at_most(20) },
  { id = "B2", name = "pool roundtrip", unit = "µs/task", key = "us_per_task",
    lower = true, loom = { "B2" }, py = { "B2" }, ref = "cond_pingpong",
    target = "<= 1.5x ref", ok = within_ref(1.5) },
  { id = "B3", name = "pool throughput", unit = "tasks/s", key = "tasks_per_s",
    loom = { "B3" }, py = { "B3" },
    target = ">= 1e6", ok = at_least(1e6) },
  { id = "B4", name = "cpu n=5e6, 2 threads", unit = "speedup", key = "speedup",
    loom = { "B4", "threads", "5e6" }, py = { "B4", "threads", "5e6" },
    target = ">= 1.9x", ok = at_least(1.9) },
  { id = "B4", name = "cpu n=4e6, 2 threads", unit = "speedup", key = "speedup",
    loom = { "B4", "threads", "4e6" }, py = { "B4", "threads", "4e6" },
    target = ">= 1.9x", ok = at_least(1.9) },
  { id = "B4", name = "cpu n=5e6, 2 processes", unit = "speedup", key = "speedup",
    loom = { "B4", "processes", "5e6" }, py = { "B4", "processes", "5e6" },
    target = ">= 1.9x", ok = at_least(1.9) },
  { id = "B4", name = "cpu n=4e6, 2 processes", unit = "speedup", key = "speedup",
    loom = { "B4", "processes", "4e6" }, py = { "B4", "processes", "4e6" },
    target = ">= 1.9x", ok = at_least(1.9) },
  { id = "B4", name = "cpu n=5e6, 2 shared threads (GIL)", unit = "speedup", key = "speedup",
    loom = { "B4", "shared", "5e6" }, py = { "B4", "threads", "5e6" },
    target = "0.8-1.2x (the GIL)", ok = function(l) return l >= 0.8 and l <= 1.2 end },
  { id = "B4", name = "cpu n=4e6, 2 shared threads (GIL)", unit = "speedup", key = "speedup",
    loom = { "B4", "shared", "4e6" }, py = { "B4", "threads", "4e6" },
    target = "0.8-1.2x (the GIL)", ok = function(l) return l >= 0.8 and l <= 1.2 end },
  { id = "B4", name = "switching hook: loop while a shared thread runs", unit = "x instr",
    key = "ratio", lower = true, loom = { "B4hook", "during" }, reps = 1,
    target = "<= 2.2x", ok = at_most(2.2) },
  { id = "B4", name = "switching hook: loop after shared threads ended", unit = "x instr",
    key = "ratio", lower = true, loom = { "B4hook", "after" }, reps = 1,
    target = "<= 1.02x", ok = at_most(1.02) },
  { id = "B5", name = "sleep fan-out 1000: wall-0.2s", unit = "ms", key = "overhead_ms",
    lower = true, loom = { "B5" }, py = { "B5" }, ref = "sleep_fanout",
    target = "<= 50 ms", ok = at_most(50) },
  { id = "B5", name = "sleep fan-out 1000: peak RSS", unit = "MB", key = "peak_rss_mb",
    lower = true, loom = { "B5" }, py = { "B5" } },
  { id = "B6", name = "fork + result", unit = "µs/process", key = "us_per_process",
    lower = true, loom = { "B6" }, py = { "B6" }, ref = "fork_wait",
    target = "<= 250 µs", ok = at_most(250) },
  { id = "B7", name = "lock acquire+release", unit = "ns/pair", key = "ns_per_pair",
    lower = true, loom = { "B7" }, py = { "B7" }, ref = "empty_cpair",
    also = { "mutex_pair", "mutex_pair_robust" },
    target = "<= 2x ref", ok = within_ref(2) },
  { id = "B8", name = "counter, lock, 2 threads", unit = "ns/inc", key = "ns_per_inc",
    lower = true, loom = { "B8", "lock" }, py = { "B8", "lock" }, ref = "atomic_add" },
  { id = "B8", name = "counter, atomic add vs py Value+get_lock", unit = "ns/inc",
    key = "ns_per_inc", lower = true, loom = { "B8", "atomic" }, py = { "B8", "value" },
    ref = "atomic_add",
    target = ">= 10x py", ok = function(l, p) return p ~= nil and p / l >= 10 end },
  { id = "B8", name = "counter, get_lock, 2 processes", unit = "ns/inc", key = "ns_per_inc",
    lower = true, loom = { "B8", "get_lock" }, py = { "B8", "value" }, ref = "atomic_add" },
  { id = "B9", name = "queue, threads", unit = "msgs/s", key = "msgs_per_s",
    loom = { "B9", "threads" }, py = { "B9", "threads" }, ref = "queue_1024",
    target = ">= 3e6", ok = at_least(3e6) },
  { id = "B9", name = "queue, processes", unit = "msgs/s", key = "msgs_per_s",
    loom = { "B9", "processes" }, py = { "B9", "processes" },
    target = ">= 1e6", ok = at_least(1e6) },
  { id = "B10", name = "transfer 800 KB, thread worker", unit = "MB/s", key = "mb_per_s",
    loom = { "B10", "threads" }, py = { "B10", "threads" }, ref = "memcpy",
    target = ">= 500", ok = at_least(500) },
  { id = "B10", name = "transfer 800 KB, process worker", unit = "MB/s", key = "mb_per_s",
    loom = { "B10", "processes" }, py = { "B10", "processes" }, ref = "memcpy",
    target = ">= 500", ok = at_least(500) },
  { id = "B10", name = "portable encode+decode 800 KB (loom.encode vs pickle)", unit = "MB/s",
    key = "mb_per_s", loom = { "B10enc" }, py = { "B10pickle" }, ref = "memcpy" },
  { id = "B12", name = "MPI pool roundtrip, 2 ranks (vs mpi4py.futures)", unit = "µs/task",
    key = "us_per_task", lower = true, loom = { "B12", "roundtrip" }, py = { "B12", "roundtrip" },
    reps = 3 },
  { id = "B12", name = "MPI pool throughput, 2 ranks (vs mpi4py.futures)", unit = "tasks/s",
    key = "tasks_per_s", loom = { "B12", "throughput" }, py = { "B12", "throughput" },
    reps = 3 },
  { id = "B11", name = "heap alloc+free 64 B", unit = "ns/pair", key = "ns_per_pair",
    lower = true, loom = { "B11", "64", "1" }, ref = "malloc_64",
    target = "<= 2x ref", ok = within_ref(2) },
  { id = "B11", name = "heap alloc+free 64 B, 2 threads", unit = "ns/pair", key = "ns_per_pair",
    lower = true, loom = { "B11", "64", "2" }, ref = "malloc_64_2t",
    target = "<= 2x ref", ok = within_ref(2) },
  { id = "B11", name = "heap alloc+free 64 KB", unit = "ns/pair", key = "ns_per_pair",
    lower = true, loom = { "B11", "65536", "1" }, ref = "malloc_64k",
    target = "<= 2x ref", ok = within_ref(2) },
  { id = "B11", name = "heap alloc+free 64 KB, 2 threads", unit = "ns/pair", key = "ns_per_pair",
    lower = true, loom = { "B11", "65536", "2" }, ref = "malloc_64k_2t",
    target = "<= 2x ref", ok = within_ref(2) },
  { id = "B11", name = "RSS after a 600 MB transfer", unit = "MB", key = "rss_after_mb",
    lower = true, loom = { "B11rss", "600" }, reps = 1 },
}

-- What each row runs, for readers of results.md.
local WORKLOADS = {
  { "B1", "start + join 2000 threads one after another, each runs `function() return 1 end` (Python: threading.Thread)" },
  { "B2", "pool of 2 workers; 20000 x (submit `x -> x+1`, wait for its result) (ThreadPoolExecutor(2))" },
  { "B3", "pool of 2 workers; submit 100000 tasks `x -> x+1`, then gather all results (ThreadPoolExecutor(2))" },
  { "B4", "`res = res + ((i*i)+2.0)*1.45` for i = 0..n-1, twice in sequence vs once in each of 2 threads / 2 forked processes / 2 shared-interpreter threads (Python: 2 threads under its GIL); speedup = sequential / parallel wall time, where the shared threads' sequential run makes both calls in one shared thread, so that the switching hook is on in both. The switching hook rows: instructions of a 5e6-iteration loop `s = s + i` on the main thread while a shared thread sleeps, and after the last shared thread ended, over the same loop in a process that never had one (valgrind --tool=callgrind, start-up subtracted; deterministic, so 1 repetition)" },
  { "B5", "1000 threads started at once, each sleeps 0.2 s; join all; wall - 0.2 s, and the process's peak RSS" },
  { "B6", "500 x (start a process whose function returns a small table, join, read the result) (multiprocessing.Process + Pipe)" },
  { "B7", "uncontended acquire + release of one lock, 1e6 times (threading.Lock)" },
  { "B8", "2 workers x 500000 increments of one shared counter: loom.lock + loom.value / Value:add / Value:get_lock in 2 processes (threading.Lock over an int; multiprocessing.Value + get_lock in 2 processes); the final count is checked" },
  { "B9", "1 producer -> 1 consumer, 1e6 small integers through a queue of capacity 1024 (queue.Queue; multiprocessing.Queue)" },
  { "B10", "20 x (send a table of 100000 floats to a worker, get its sum back); payload MB/s (ThreadPoolExecutor, no copy; multiprocessing Pipe, pickled copy)" },
  { "B10enc", "20 x loom.decode(loom.encode(t)) of B10's table of 100000 floats (pickle.loads(pickle.dumps(t)), highest protocol); payload MB/s" },
  { "B12", "a loom.mpi pool on the 2 other ranks of `mpiexec -n 3 --oversubscribe` (mpi4py.futures.MPIPoolExecutor under `python3 -m mpi4py.futures`, Debian's python3-mpi4py): 3000 x (submit `x -> x+1`, wait for its result); then 30000 submitted at once and gathered" },
  { "B11", "the shared heap's allocate+free pair (loomi_heap_alloc/free, in C: build/heap_bench) of 64 B and of 64 KB, 2e6 / 5e5 pairs, in one thread or in each of 2 at once, against glibc malloc/free timed by the same loop (build/limits); ns per pair as each thread sees it. RSS: a 600 MB string put in a queue and taken by a thread worker; the process's VmRSS once the item is freed (before/during figures in the run's output)" },
}

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("l") or "?"
  f:close()
  return s:match("^(%S+)") or "?"
end

local REF_NAMES = {
  thread_state = "pthread create+join + Lua state",
  cond_pingpong = "cond-var ping-pong",
  fork_wait = "fork+waitpid",
  empty_cpair = "2 empty C methods",
  atomic_add = "contended atomic add",
  memcpy = "memcpy",
  sleep_fanout = "1000 sleeping pthreads",
  thread_spawn = "pthread create+join",
  lua_state = "Lua state+libs",
  mutex_pair = "mutex lock+unlock",
  mutex_pair_robust = "robust pshared mutex",
  queue_1024 = "C mutex+cond ring",
  malloc_64 = "glibc malloc+free",
  malloc_64_2t = "glibc malloc+free",
  malloc_64k = "glibc malloc+free",
  malloc_64k_2t = "glibc malloc+free",
}

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs a command; returns its output lines as a table of key -> value (a
-- number when it reads as one) or nil and a short reason.
local function run_worker(cmd)
  local errfile = os.tmpname()
  local p = io.popen(string.format("timeout %d %s 2>%s", TIMEOUT, cmd,
                                   shell_quote(errfile)))
  local out = p:read("a")
  local ok, _, code = p:close()
  local ef = io.open(errfile)
  local err = ef and ef:read("a") or ""
  if ef then ef:close() end
  os.remove(errfile)
  local fields = {}
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+)%s+(.*)$")
    if k then fields[k] = tonumber(v) or v end
  end
  if fields.na then
    return nil, "n/a (" .. fields.na .. ")"
  end
  if not ok then
    local last = err:match("([^\n]+)\n?$") or ""
    io.stderr:write(string.format("  failed (%s): %s\n%s", tostring(code), cmd, err))
    return nil, code == 124 and "timeout" or ("error: " .. last:sub(1, 60))
  end
  return fields
end

local function command(kind, argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = shell_quote(a) end
  if quick then parts[#parts + 1] = "--quick" end
  if kind == "loom" then
    return LUA .. " bench/loom_rows.lua " .. table.concat(parts, " ")
  end
  return PYTHON .. " bench/python/rows.py " .. table.concat(parts, " ")
end

-- Repetitions of one worker command, shared between the table rows that
-- read different keys of the same runs (B5).
local runs = {}

local function repeat_pair(row)
  local lk, pk = command("loom", row.loom), row.py and command("python", row.py)
  if runs[lk] and (not pk or runs[pk]) then return end
  local pending = {}
  if not runs[lk] then runs[lk] = {}; pending[#pending + 1] = lk end
  if pk and not runs[pk] then runs[pk] = {}; pending[#pending + 1] = pk end
  io.stderr:write(string.format("  %-4s %-48s ", row.id, row.name))
  local t0 = os.time()
  local row_reps = math.min(row.reps or reps, reps)
  for r = 1, row_reps do
    -- on a slow or loaded machine a row stops at 3 repetitions once its
    -- budget is spent, so the whole run stays within 10 minutes
    if r > 3 and (os.time() - t0) / (r - 1) * row_reps > ROW_BUDGET then
      for _, cmd in ipairs(pending) do runs[cmd].cut = r - 1 end
      break
    end
    for _, cmd in ipairs(pending) do
      local res = runs[cmd]
      if not res.na then
        local fields, why = run_worker(cmd)
        if fields then
          res[#res + 1] = fields
        else
          res.na = why
        end
      end
    end
    io.stderr:write(".")
  end
  io.stderr:write(string.format(" %d s\n", os.time() - t0))
end

-- {median, min, max} of one key over the repetitions, or nil and why.
local function stats(cmd, key)
  local res = runs[cmd]
  if res.na then return nil, res.na end
  local xs = {}
  for _, f in ipairs(res) do
    if type(f[key]) == "number" then xs[#xs + 1] = f[key] end
  end
  if #xs == 0 then return nil, "no figure" end
  table.sort(xs)
  local n = #xs
  local med = n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
  return { med = med, min = xs[1], max = xs[n], via = res[1].via, cut = res.cut }
end

local function num(x)
  local a = math.abs(x)
  if a >= 1e6 then return string.format("%.2fM", x / 1e6) end
  if a >= 1e4 then return string.format("%.0fk", x / 1e3) end
  if a >= 100 then return string.format("%.0f", x) end
  if a >= 10 then return string.format("%.1f", x) end
  return string.format("%.2f", x)
end

local function cell(s)
  if not s then return nil end
  return string.format("%s (%s–%s)", num(s.med), num(s.min), num(s.max))
end

-- The machine's limits, measured once.
local limits = {}
local function measure_limits(keys)
  if #keys == 0 then return end
  io.stderr:write("  limits: " .. table.concat(keys, " ") .. "\n")
  local p = io.popen(LIMITS .. " " .. table.concat(keys, " "))
  for line in p:lines() do
    local key, med, lo, hi, unit = line:match("^limit (%S+) (%S+) (%S+) (%S+) (%S+)")
    if key then
      limits[key] = { med = tonumber(med), min = tonumber(lo), max = tonumber(hi), unit = unit }
    end
  end
  if not p:close() then
    io.stderr:write("  build/limits failed (run `make build/limits`)\n")
  end
end

local function shell(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  local s = p:read("a") or ""
  p:close()
  return (s:gsub("%s+$", ""))
end

local function machine_line()
  local cpu = shell("sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1")
  local ncpu = shell("nproc")
  local mem = shell("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
  local kernel = shell("uname -sr")
  local lua = shell(LUA .. " -v")
  local py = shell(PYTHON .. " --version")
  return string.format("%s, %s CPUs, %s RAM, %s; %s; %s", cpu, ncpu, mem, kernel,
                       lua:match("^(Lua %S+)") or lua, py)
end

-- ---- the run ----

local selected = {}
local refkeys, seen = {}, {}
for _, row in ipairs(ROWS) do
  if all_rows or only[row.id] then
    selected[#selected + 1] = row
    local keys = { row.ref }
    for _, k in ipairs(row.also or {}) do keys[#keys + 1] = k end
    for _, k in ipairs(keys) do
      if not seen[k] then
        seen[k] = true
        refkeys[#refkeys + 1] = k
      end
    end
  end
end
if #selected == 0 then
  io.stderr:write("no such row\n")
  os.exit(2)
end

local started = os.time()
local load_start = loadavg()
io.stderr:write(string.format("loom bench: %d repetitions%s\n", reps,
                              quick and ", quick sizes" or ""))
measure_limits(refkeys)
for _, row in ipairs(selected) do
  repeat_pair(row)
end

local header = { "id", "workload", "unit", "loom", "Python", "loom vs Python",
                 "reference (this machine)", "target", "met" }
local lines = {}
for _, row in ipairs(selected) do
  local l, lwhy = stats(command("loom", row.loom), row.key)
  local p, pwhy
  if row.py then
    p, pwhy = stats(command("python", row.py), row.key)
  else
    pwhy = "–"
  end
  local ref = row.ref and limits[row.ref]
  local ratio = "–"
  if l and p and l.med > 0 and p.med > 0 then
    local adv = row.lower and p.med / l.med or l.med / p.med
    ratio = string.format("%.2fx %s", adv, adv >= 1 and "better" or "worse")
  end
  local refcell = "–"
  if ref then
    refcell = string.format("%s %s (%s)", num(ref.med), ref.unit, REF_NAMES[row.ref])
    for _, k in ipairs(row.also or {}) do
      local a = limits[k]
      if a then
        refcell = refcell .. string.format("; %s %s (%s)", num(a.med), a.unit, REF_NAMES[k])
      end
    end
  end
  local met = "–"
  if row.ok then
    if l then
      met = row.ok(l.med, p and p.med, ref and ref.med) and "yes" or "**no**"
    end
  end
  local name = row.name
  if l and l.via then name = name .. " (via " .. l.via .. ")" end
  local cut = (l and l.cut) or (p and p.cut)
  if cut then name = name .. string.format(" [%d reps]", cut) end
  lines[#lines + 1] = { row.id, name, row.unit, cell(l) or lwhy, cell(p) or pwhy,
                        ratio, refcell, row.target or "–", met }
end

local function markdown(rows)
  local out = { "| " .. table.concat(header, " | ") .. " |",
                "|" .. string.rep("---|", #header) }
  for _, r in ipairs(rows) do
    out[#out + 1] = "| " .. table.concat(r, " | ") .. " |"
  end
  return table.concat(out, "\n")
end

local function utf8_width(s)
  return utf8.len(s) or #s
end

local function plain(rows)
  local all = { header }
  for _, r in ipairs(rows) do all[#all + 1] = r end
  local widths = {}
  for _, r in ipairs(all) do
    for i, c in ipairs(r) do
      widths[i] = math.max(widths[i] or 0, utf8_width(c))
    end
  end
  local out = {}
  for n, r in ipairs(all) do
    local cells = {}
    for i, c in ipairs(r) do
      cells[i] = c .. string.rep(" ", widths[i] - utf8_width(c))
    end
    out[#out + 1] = table.concat(cells, "  ")
    if n == 1 then
      local rule = {}
      for i = 1, #header do rule[i] = string.rep("-", widths[i]) end
      out[#out + 1] = table.concat(rule, "  ")
    end
  end
  return table.concat(out, "\n")
end

local machine = machine_line()
local load = string.format("1-minute load average %s at the start, %s at the end", load_start, loadavg())
local date = os.date("!%Y-%m-%d %H:%M UTC")
print()
print("machine: " .. machine)
print("date:    " .. date .. string.format(" (%d s)", os.time() - started))
print("load:    " .. load)
print(string.format("figures: median of %d repetitions (min–max)%s", reps,
                    quick and ", quick sizes" or ""))
print()
print(plain(lines))

if all_rows and not quick then
  local f = assert(io.open("bench/results.md", "w"))
  f:write("# loom benchmark results\n\n")
  f:write("Written by `make bench` from its last full run; the workloads ",
          "(rows B1..B10) are listed at the end.\n\n")
  f:write("- machine: ", machine, "\n")
  f:write("- date: ", date, "\n")
  f:write("- load: ", load, " (the machine is shared; 2 CPUs)\n")
  f:write(string.format("- figures: median of %d repetitions, min–max in brackets ", reps),
          "(a row marked [3 reps] spent its time budget after 3); each ",
          "repetition is a fresh `lua5.4` / `python3` process, loom's and ",
          "Python's interleaved\n")
  f:write("- loom vs Python: how many times better loom's median is (time: ",
          "Python/loom; rate or speedup: loom/Python)\n")
  f:write("- reference: the machine's raw cost of the same thing without an ",
          "interpreter, measured by `build/limits` (bench/limits.c) in the same run\n")
  f:write("- run: `make bench` (all rows; rewrites this file), ",
          "`make bench ARGS='B1 B7'` (some rows), `make bench ARGS=--quick` ",
          "(3 repetitions of workloads cut to a tenth)\n\n")
  f:write(markdown(lines), "\n")
  f:write("\n## Workloads\n\n")
  for _, w in ipairs(WORKLOADS) do
    f:write("- ", w[1], ": ", w[2], "\n")
  end
  f:close()
  print()
  print("wrote bench/results.md")
end
