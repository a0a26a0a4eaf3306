-- loom's side of the benchmark (rows B1..B11, listed in bench/results.md).
-- Usage: lua5.4 bench/loom_rows.lua ROW [VARIANT] [--quick]
-- Runs one repetition of one row in this fresh process and prints
-- `key value` lines, the first being the row's figure, or one line
-- `na <reason>` when the primitive the row needs is not in this build.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local loom = require "loom"

local quick = false
local args = {}
for _, a in ipairs(arg) do
  if a == "--quick" then quick = true else args[#args + 1] = a end
end

local now = loom.now

local function scaled(n, quick_n)
  return quick and quick_n or n
end

local function emit(key, value)
  print(string.format("%s %.6g", key, value))
end

-- Returns true when every named primitive exists; otherwise says which
-- one is missing and the row prints n/a.
local function needs(...)
  for i = 1, select("#", ...) do
    local name = select(i, ...)
    if loom[name] == nil then
      print("na needs loom." .. name)
      return false
    end
  end
  return true
end

local rows = {}

function rows.B1()
  local n = scaled(2000, 500)
  local fn = function() return 1 end
  local t0 = now()
  for _ = 1, n do
    loom.thread(fn):start():join()
  end
  emit("us_per_thread", (now() - t0) / n * 1e6)
end

local function inc(x) return x + 1 end

-- B2 and B3 are the pool's own benchmark functions (bench/pool_bench.lua).
local function pool_bench()
  return dofile("bench/pool_bench.lua")
end

function rows.B2()
  if not needs("pool") then return end
  local pool <close> = loom.pool(2)
  pool:submit(inc, 0):result()
  emit("us_per_task", pool_bench().b2(pool, scaled(20000, 2000)))
end

function rows.B3()
  if not needs("pool") then return end
  local pool <close> = loom.pool(2)
  pool:submit(inc, 0):result()
  emit("tasks_per_s", pool_bench().b3(pool, scaled(100000, 10000)))
end

-- The notebook's CPU-bound task.
local function cpu_task(n)
  local res = 0
  for i = 0, n - 1 do
    res = res + ((i * i) + 2.0) * 1.45
  end
  return res
end

function rows.B4(kind, n)
  n = math.tointeger(tonumber(n))
  n = scaled(n, n // 10)
  local make
  if kind == "threads" then
    make = loom.thread
  elseif kind == "shared" then
    if not needs("shared_thread") then return end
    make = loom.shared_thread
  else
    if not needs("process") then return end
    make = loom.process
  end
  local t0 = now()
  if kind == "shared" then
    -- the same two calls in one shared thread: the switching hook is on in
    -- both runs, so the ratio shows the lock taking turns, not the hook's
    -- cost (rows "switching hook" measure that)
    make(function() cpu_task(n); cpu_task(n) end):start():join()
  else
    cpu_task(n)
    cpu_task(n)
  end
  local seq = now() - t0
  local workers = { make(cpu_task, n), make(cpu_task, n) }
  t0 = now()
  for _, w in ipairs(workers) do w:start() end
  for _, w in ipairs(workers) do w:join() end
  local par = now() - t0
  emit("speedup", seq / par)
  emit("seq_s", seq)
  emit("par_s", par)
end

-- The shared threads' switching hook, in instructions (callgrind counts
-- them, so the figure does not depend on the machine's load): a tight loop
-- on the main thread while a shared thread exists ("during") or after the
-- last one ended ("after"), against the same loop in a process that never
-- had one.  bench/gil_bench.lua runs the loops; start-up is subtracted.
local function callgrind_instructions(mode, n)
  local cmd = ("valgrind --tool=callgrind --callgrind-out-file=/dev/null %s bench/gil_bench.lua loop-%s %d 2>&1")
    :format(arg[-1] or "lua5.4", mode, n)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  local count = out:match("Collected%s*:%s*(%d+)")
  return count and tonumber(count)
end

function rows.B4hook(mode)
  if not needs("shared_thread") then return end
  if not os.execute("command -v valgrind >/dev/null 2>&1") then
    print("na valgrind not found")
    return
  end
  local n = scaled(5000000, 1000000)
  local function loop_cost(m)
    local full, empty = callgrind_instructions(m, n), callgrind_instructions(m, 0)
    assert(full and empty, "callgrind printed no instruction count")
    return full - empty
  end
  local base, hooked = loop_cost("base"), loop_cost(mode)
  emit("ratio", hooked / base)
  emit("instr_per_iter", hooked / n)
end

local function peak_rss_mb()
  local f = assert(io.open("/proc/self/status"))
  local status = f:read("a")
  f:close()
  return tonumber(status:match("VmHWM:%s*(%d+)")) / 1024
end

function rows.B5()
  local n = scaled(1000, 200)
  local threads = {}
  for i = 1, n do
    threads[i] = loom.thread(loom.sleep, 0.2)
  end
  local t0 = now()
  for i = 1, n do threads[i]:start() end
  for i = 1, n do threads[i]:join() end
  local dt = now() - t0
  emit("overhead_ms", (dt - 0.2) * 1e3)
  emit("peak_rss_mb", peak_rss_mb())
end

function rows.B6()
  if not needs("process") then return end
  local n = scaled(500, 100)
  local fn = function() return { ok = true, n = 42, name = "done" } end
  local t0 = now()
  for _ = 1, n do
    local p = loom.process(fn)
    p:start()
    p:join()
    assert(p:result().n == 42)
  end
  emit("us_per_process", (now() - t0) / n * 1e6)
end

function rows.B7()
  if not needs("lock") then return end
  local n = scaled(1000000, 100000)
  local lock = loom.lock()
  local t0 = now()
  for _ = 1, n do
    lock:acquire()
    lock:release()
  end
  emit("ns_per_pair", (now() - t0) / n * 1e9)
end

-- Two workers of `make` (thread or process) each run body(per, ...);
-- returns the wall time of both.
local function two_workers(make, body, ...)
  local workers = { make(body, ...), make(body, ...) }
  local t0 = now()
  for _, w in ipairs(workers) do w:start() end
  for _, w in ipairs(workers) do w:result() end
  return now() - t0
end

local function locked_adds(per, lock, v)
  for _ = 1, per do
    lock:acquire()
    v.value = v.value + 1
    lock:release()
  end
end

local function atomic_adds(per, v)
  for _ = 1, per do
    v:add(1)
  end
end

local function get_lock_adds(per, v)
  local lock = v:get_lock()
  for _ = 1, per do
    lock:acquire()
    v.value = v.value + 1
    lock:release()
  end
end

function rows.B8(kind)
  local per = scaled(500000, 50000)
  local v, dt
  if kind == "lock" then
    if not needs("lock", "value") then return end
    v = loom.value("int64", 0)
    dt = two_workers(loom.thread, locked_adds, per, loom.lock(), v)
  elseif kind == "atomic" then
    if not needs("value") then return end
    v = loom.value("int64", 0)
    dt = two_workers(loom.thread, atomic_adds, per, v)
  else
    if not needs("value", "process") then return end
    v = loom.value("int64", 0)
    dt = two_workers(loom.process, get_lock_adds, per, v)
  end
  assert(v.value == 2 * per, "counter is " .. tostring(v.value))
  emit("ns_per_inc", dt / (2 * per) * 1e9)
end

local function produce(q, n)
  for i = 1, n do
    q:put(i)
  end
  q:put(-1)
end

function rows.B9(kind)
  local n = scaled(1000000, 100000)
  local make
  if kind == "threads" then
    if not needs("queue") then return end
    make = loom.thread
  else
    if not needs("queue", "process") then return end
    make = loom.process
  end
  local q = loom.queue(1024)
  local worker = make(produce, q, n)
  local t0 = now()
  worker:start()
  local count = 0
  while q:get() ~= -1 do
    count = count + 1
  end
  local dt = now() - t0
  worker:join()
  assert(count == n)
  emit("msgs_per_s", n / dt)
end

local function sum(t)
  local s = 0
  for i = 1, #t do
    s = s + t[i]
  end
  return s
end

-- A worker that answers every table from `inq` with its sum on `outq`.
local function summer(inq, outq, rounds)
  for _ = 1, rounds do
    local t = inq:get()
    outq:put(sum(t))
  end
end

function rows.B10(kind)
  local rounds = scaled(20, 5)
  local payload = {}
  for i = 1, 100000 do
    payload[i] = (i - 1) * 0.5
  end
  local expect = sum(payload)
  local t0, dt
  if kind == "threads" then
    if loom.pool then
      local pool <close> = loom.pool(1)
      pool:submit(inc, 0):result()
      t0 = now()
      for _ = 1, rounds do
        assert(pool:submit(sum, payload):result() == expect)
      end
      dt = now() - t0
      print("via pool")
    else
      -- until the pool exists: one thread per round, its argument copied in
      t0 = now()
      for _ = 1, rounds do
        assert(loom.thread(sum, payload):start():result() == expect)
      end
      dt = now() - t0
      print("via thread")
    end
  else
    if not needs("queue", "process") then return end
    local inq, outq = loom.queue(1), loom.queue(1)
    local p = loom.process(summer, inq, outq, rounds)
    p:start()
    t0 = now()
    for _ = 1, rounds do
      inq:put(payload)
      assert(outq:get() == expect)
    end
    dt = now() - t0
    p:join()
    print("via queue")
  end
  emit("mb_per_s", rounds * #payload * 8 / dt / 1e6)
end

-- The shared heap's allocate+free pair, in C (build/heap_bench links the
-- heap in): a Lua call around each pair would be most of what is timed.
function rows.B11(size, threads)
  local p = assert(io.popen(string.format("build/heap_bench %d %d",
                                          math.tointeger(tonumber(size)),
                                          math.tointeger(tonumber(threads)))))
  local out = p:read("a")
  if not p:close() then
    print("na build/heap_bench failed (run `make build/heap_bench`)")
    return
  end
  io.write(out)
end

-- Resident memory around one large transfer: a `bytes` string through a
-- queue to a thread worker and its length back; RSS (this process, its
-- share of the heap included) before, while the item is in the heap, and
-- after it was taken and freed.
local function rss_mb()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) / 1024
end

function rows.B11rss(mb)
  local n = math.tointeger(tonumber(mb)) * 1000000
  local q = loom.queue()
  assert(q:put(1) and q:get() == 1)
  local before = rss_mb()
  local payload = string.rep("x", n)
  q:put(payload)
  local during = rss_mb()
  payload = nil  -- luacheck: ignore 311 (dropped for the collector)
  collectgarbage()
  local during_heap = rss_mb()
  -- the worker collects its own copy before it goes idle: an idle worker's
  -- interpreter keeps its garbage until it runs again, which is not the heap
  local t = loom.thread(function(inq)
    local len = #inq:get()
    collectgarbage()
    return len
  end, q):start()
  assert(t:result() == n)
  collectgarbage()
  local after = rss_mb()
  emit("rss_after_mb", after)
  emit("rss_before_mb", before)
  emit("rss_during_mb", during)
  emit("rss_during_heap_only_mb", during_heap)
  emit("heap_used_after", loom.heap_used())
end

-- The portable encoding of B10's table: encode + decode, MB/s of payload.
function rows.B10enc()
  local rounds = scaled(20, 5)
  local payload = {}
  for i = 1, 100000 do
    payload[i] = (i - 1) * 0.5
  end
  local encode, decode = loom.encode, loom.decode
  local t0 = now()
  for _ = 1, rounds do
    local back = decode(encode(payload))
    assert(#back == #payload)
  end
  local dt = now() - t0
  emit("mb_per_s", rounds * #payload * 8 / dt / 1e6)
  emit("bytes", #encode(payload))
end

-- A loom.mpi pool of 2 ranks (mpiexec -n 3): bench/mpi_rows.lua.
function rows.B12(kind)
  if io.open("loom/mpi/core.so") == nil then
    print("na loom.mpi not built (make mpi)")
    return
  end
  local root = os.getenv("PWD") or "."
  local cmd = string.format("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' " ..
    "mpiexec -n 3 --oversubscribe %s lua5.4 -l loom.mpi.run bench/mpi_rows.lua %s%s",
    root, root, root, os.getenv("USER") == "root" or io.popen("id -u"):read("l") == "0"
      and "--allow-run-as-root" or "", kind, quick and " --quick" or "")
  local p = io.popen(cmd)
  io.write(p:read("a"))
  assert(p:close(), "mpiexec failed")
end

local row = rows[args[1]]
if row == nil then
  io.stderr:write("usage: lua5.4 bench/loom_rows.lua B1..B12|B4hook|B10enc [variant] [--quick]\n")
  os.exit(2)
end
row(table.unpack(args, 2))
