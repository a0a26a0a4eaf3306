-- loom.mpi: loom.pool's surface on MPI ranks, the Lua form of mpi4py's
-- MPIPoolExecutor.  Rank 0 submits; the other ranks of the world (started
-- with `mpiexec -n N lua5.4 -l loom.mpi.run script.lua`), or workers spawned
-- from a singleton with MPI_Comm_spawn, run the tasks.  Tasks and results
-- travel as loom.encode strings; each future is a loom.future() settled by
-- the pool's dispatcher thread, so it mixes with loom.wait/as_completed.
local loom = require "loom"
local core = require "loom.mpi.core"
local lpool = require "loom.pool"

local error, type, setmetatable, pcall, xpcall, tostring =
  error, type, setmetatable, pcall, xpcall, tostring
local math_type = math.type
local table_pack, table_unpack = table.pack, table.unpack
local encode, decode = loom.encode, loom.decode

local M = {}

-- Message tags: rank 0 to a worker, then a worker to rank 0.
local TAG_OPEN, TAG_TASK, TAG_CLOSE, TAG_EXIT = 1, 2, 3, 4
local TAG_READY, TAG_RESULT = 11, 12
M.TAG_EXIT = TAG_EXIT
-- The world's ranks a pool saw die (loom.mpi.run sends them nothing more).
M.dead = {}

-- A worker answers for at most this many tasks sent ahead, so that a task
-- is ready on the rank when the previous one ends (the round trip hidden)
-- and the rest stay cancellable at rank 0.
local AHEAD = 2

local threads_ok = true

--- Initializes MPI (once); returns the world's size and this rank.
function M.init()
  local _, serialized = core.init()
  threads_ok = serialized
  local w = core.world()
  return core.size(w), core.rank(w)
end

function M.rank() M.init() return core.rank(core.world()) end
function M.size() M.init() return core.size(core.world()) end
function M.hostname() M.init() return core.hostname() end
M.wait, M.as_completed = loom.wait, loom.as_completed

---------------------------------------------------------------- workers --

local function where_am_i(comm)
  local parent = core.parent()
  if parent then
    return ("spawned rank %d on %s"):format(core.rank(core.world()), core.hostname())
  end
  return ("rank %d on %s"):format(core.rank(comm), core.hostname())
end

-- One task: the result string, encode(true, results...) or encode(false,
-- err); never raises.
local function run_task(body, where)
  local t = table_pack(pcall(decode, body))
  if not t[1] then
    return encode(false, ("cannot decode a task on %s: %s"):format(where, tostring(t[2])))
  end
  local fn = t[2]
  local traceback
  local r = table_pack(xpcall(fn, function(e)
    traceback = debug.traceback(nil, 2)
    -- the frames below the task are the serve loop's: not the user's
    local cut = traceback:find("\n\t%[C%]: in function 'xpcall'")
    if cut then traceback = traceback:sub(1, cut - 1) end
    return e
  end, table_unpack(t, 3, t.n)))
  if r[1] then
    local ok, s = pcall(encode, true, table_unpack(r, 2, r.n))
    if ok then return s end
    return encode(false, ("cannot send the results of a task on %s: %s"):format(where, s))
  end
  local e = r[2]
  if type(e) == "string" then
    return encode(false, e .. "\n[" .. where .. "] " .. (traceback or ""))
  end
  local ok, s = pcall(encode, false, e)
  if ok then return s end
  return encode(false, ("error object of a task on %s cannot be sent: %s"):format(where, tostring(e)))
end

--- Serves tasks from rank 0 of comm (the world, or a spawned worker's
-- parent) until told to exit.  The main loop of every rank but 0.  Returns
-- "dead" when a rank of the world died: MPI_Finalize would then wait for
-- it, so the caller leaves without.
function M.serve(comm)
  M.init()
  comm = comm or core.world()
  local where = where_am_i(comm)
  -- a task that ends its rank's process would end the whole job under MPI:
  -- os.exit fails the task instead, until serving ends
  local real_exit = os.exit
  os.exit = function()   -- luacheck: ignore
    error("os.exit called in a task on " .. where, 2)
  end
  while true do
    local src, tag = core.probe(comm)
    local msg = core.recv(comm, src, tag)
    if tag == TAG_EXIT then
      os.exit = real_exit   -- luacheck: ignore
      return msg   -- "": finalize; "dead": a rank died, MPI_Finalize would wait for it
    elseif tag == TAG_OPEN then
      local ok, err = pcall(function()
        local t = table_pack(decode(msg))
        if t[1] ~= nil then t[1](table_unpack(t, 2, t.n)) end
      end)
      local pid
      local stat = io.open("/proc/self/stat")
      if stat then pid = stat:read("n"); stat:close() end
      core.send(comm, src, TAG_READY, encode(not ok and ("%s (%s)"):format(tostring(err), where) or nil,
        core.hostname(), pid))
    elseif tag == TAG_TASK then
      core.send(comm, src, TAG_RESULT, msg:sub(1, 8) .. run_task(msg:sub(9), where))
    end -- TAG_CLOSE: the pool is gone; wait for the next one
  end
end

------------------------------------------------------------- dispatcher --

-- Runs in the pool's own loom thread, the only one making MPI calls while
-- the pool is open: opens the pool on its ranks, sends tasks as ranks free
-- up, settles futures as results come, and closes the ranks at the end.
local function dispatch_loop(q, comm, ranks, hello, spawned, ready, inflight, pending)
  local lm = require "loom"
  local mc = require "loom.mpi.core"
  local ldecode = lm.decode
  local unpack, spack, sunpack = table.unpack, string.pack, string.unpack
  for _, r in ipairs(ranks) do mc.send(comm, r, TAG_OPEN, hello) end
  local broken
  local here, pids, hosts, dead = mc.hostname(), {}, {}, {}
  for _ = 1, #ranks do
    local src, tag = mc.probe(comm)
    local err, host, pid = ldecode(mc.recv(comm, src, tag))
    if err and not broken then broken = err end
    hosts[src] = host
    if host == here then pids[src] = pid end
  end
  ready:set_result(broken)
  local phead, ptail = 1, 0
  local nfl = 0
  local load = {}
  for _, r in ipairs(ranks) do load[r] = 0 end
  local closing, backoff = false, 1e-5
  local function settle(f, body)
    local t = table.pack(pcall(ldecode, body))
    local ok, err
    if not t[1] then
      ok, err = pcall(f.set_error, f, "cannot decode the results of a task: " .. tostring(t[2]))
    elseif t[2] then
      ok, err = pcall(f.set_result, f, unpack(t, 3, t.n))
      if not ok then
        ok, err = pcall(f.set_error, f, err)
      end
    else
      ok, err = pcall(f.set_error, f, t[3])
    end
    return ok, err
  end
  local function dispatch()
    for _, r in ipairs(ranks) do
      while load[r] < AHEAD and phead <= ptail do
        local it = pending[phead]
        pending[phead] = nil
        phead = phead + 1
        if it[3]:set_running_or_notify_cancel() then
          mc.send(comm, r, TAG_TASK, spack("<i8", it[2]) .. it[4])
          inflight[it[2]] = { it[3], r }
          load[r] = load[r] + 1
          nfl = nfl + 1
        end
      end
    end
  end
  -- A rank of this host that died (kill -9, a crash) while MPI kept the
  -- job alive (Open MPI's --enable-recovery) is seen by its pid: its tasks
  -- fail and it gets no more.  A rank of another host cannot be watched so.
  local function alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local st = f:read("a")
    f:close()
    return not st:match("^%d+ %b() [ZX]")
  end
  local last_check = lm.now()
  local function check_ranks()
    last_check = lm.now()
    for _, r in ipairs(ranks) do
      if not dead[r] and pids[r] and load[r] > 0 and not alive(pids[r]) then
        dead[r] = true
        load[r] = math.huge
        for id, fl in pairs(inflight) do
          if fl[2] == r then
            inflight[id] = nil
            nfl = nfl - 1
            pcall(fl[1].set_error, fl[1], ("MPI rank %d (pid %d on %s) died while running this task"):format(
              r, pids[r], hosts[r]))
          end
        end
      end
    end
    local left = false
    for _, r in ipairs(ranks) do left = left or not dead[r] end
    if not left then
      broken = broken or "every MPI rank of the pool died"
      for i = phead, ptail do
        pcall(pending[i][3].set_error, pending[i][3], "pool broken: " .. broken)
        pending[i] = nil
      end
      phead = ptail + 1
    end
  end
  local wait = nil
  while true do
    local item
    if wait == nil then
      item = q:get()
    else
      -- tasks out: wait on MPI first, where the next event most likely
      -- comes from, for at most `wait`; new submits wait that long at most
      mc.probe(comm, wait)
      item = q:get(0)
    end
    while item do
      if item[1] == "task" then
        if broken then
          pcall(item[3].set_error, item[3], "pool initializer failed: " .. broken)
        else
          ptail = ptail + 1
          pending[ptail] = item
        end
      else   -- "close", cancel_pending
        closing = true
        if item[2] then
          for i = phead, ptail do pending[i][3]:cancel(); pending[i] = nil end
          phead = ptail + 1
        end
      end
      item = q:get(0)
    end
    dispatch()
    local got = false
    while nfl > 0 do
      local src, tag = mc.probe(comm, 0)
      if not src then break end
      local msg = mc.recv(comm, src, tag)
      if tag == TAG_RESULT and #msg >= 8 then
        local id = sunpack("<i8", msg)
        local fl = inflight[id]
        if fl then
          inflight[id] = nil
          nfl = nfl - 1
          load[fl[2]] = load[fl[2]] - 1
          settle(fl[1], msg:sub(9))
          dispatch()
        end
      end
      got = true
    end
    if nfl > 0 and lm.now() - last_check > 0.2 then check_ranks() end
    if closing and nfl == 0 and phead > ptail then break end
    -- nothing in flight: sleep until the next submit; else poll the ranks,
    -- backing off from 10 us to 1 ms while they stay silent
    backoff = got and 1e-5 or math.min(backoff * 2, 1e-3)
    wait = nfl > 0 and backoff or nil
  end
  for _, r in ipairs(ranks) do
    if not dead[r] then mc.send(comm, r, spawned and TAG_EXIT or TAG_CLOSE, "") end
  end
  if spawned and not next(dead) then mc.disconnect(comm) end
  local lost = {}
  for r in pairs(dead) do lost[#lost + 1] = r end
  return true, lost
end

-- A dispatcher that fails (an MPI error: a rank gone, a send refused)
-- fails every future it holds and every later task, until the pool is
-- shut down, so that no waiter hangs on a future nobody will settle.
local function dispatcher(q, comm, ranks, hello, spawned, ready)
  local inflight, pending = {}, {}
  local ok, err, lost = pcall(dispatch_loop, q, comm, ranks, hello, spawned, ready,
    inflight, pending)
  if ok then return true, lost end
  local why = "MPI pool failed: " .. tostring(err)
  if not ready:done() then pcall(ready.set_result, ready, why) end
  local function fail(f) pcall(f.set_error, f, why) end
  for _, fl in pairs(inflight) do fail(fl[1]) end
  for _, it in pairs(pending) do fail(it[3]) end
  while true do
    local item = q:get()
    if item[1] ~= "task" then break end
    fail(item[3])
  end
  error(why, 0)
end

------------------------------------------------------------------- pool --

local Pool = { __name = "loom.mpi.Pool" }
Pool.__index = Pool

local open_pool      -- the pool whose dispatcher makes this process's MPI calls

-- The pools this module made: a table given Pool's metatable by hand is
-- not one of them.
local pools = setmetatable({}, { __mode = "k" })

local function typename(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and type(mt.__name) == "string" and mt.__name or type(v)
end

local function checkpool(p, name)
  if not pools[p] then
    error(("bad argument #1 to '%s' (loom.mpi.Pool expected, got %s)"):format(
      name, pools[p] == nil and getmetatable(p) == Pool and "a forged loom.mpi.Pool" or typename(p)), 3)
  end
  return p
end

local function worker_command(opts)
  if opts.command then return opts.command, opts.args or {} end
  local lua = "lua5.4"
  if type(arg) == "table" then
    local i = -1
    while arg[i - 1] ~= nil do i = i - 1 end
    lua = arg[i] or lua
  end
  return lua, { "-e", ("package.path=%q package.cpath=%q"):format(package.path, package.cpath),
    "-l", "loom.mpi.worker" }
end

local function parse(n)
  local opts = {}
  if type(n) == "table" then
    opts = n
    n = opts.workers
  end
  if n ~= nil and (math_type(n) ~= "integer" or n < 1) then
    error("bad argument #1 to 'pool' (workers must be a positive integer)", 3)
  end
  if opts.init ~= nil and type(opts.init) ~= "function" then
    error("bad argument #1 to 'pool' (init must be a function)", 3)
  end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    error("bad argument #1 to 'pool' (initargs must be a table)", 3)
  end
  if opts.info ~= nil and type(opts.info) ~= "table" then
    error("bad argument #1 to 'pool' (info must be a table)", 3)
  end
  if opts.initargs ~= nil and opts.init == nil then
    error("bad argument #1 to 'pool' (initargs given without init)", 3)
  end
  return n, opts
end

--- loom.mpi.pool([n | {workers=, init=, initargs=, command=, args=, info=}]).
function M.pool(n)
  local opts
  n, opts = parse(n)
  if open_pool and not open_pool._closed then
    error("an MPI pool is already open in this process (shut it down first)", 2)
  end
  local size, rank = M.init()
  if not threads_ok then
    error("this MPI library cannot be called from another thread " ..
      "(MPI_THREAD_SERIALIZED not provided), which the pool's dispatcher needs", 2)
  end
  if core.parent() then
    error("cannot open an MPI pool in a spawned worker", 2)
  end
  local world = core.world()
  local comm, ranks, spawned = world, {}, false
  if size > 1 then
    if rank ~= 0 then
      error("an MPI pool is opened by rank 0; the other ranks serve it " ..
        "(run the script with lua5.4 -l loom.mpi.run)", 2)
    end
    n = n or size - 1
    if n > size - 1 then
      error(("bad argument #1 to 'pool' (workers must be at most %d, the world's other ranks)"):format(
        size - 1), 2)
    end
    for r = 1, n do ranks[r] = r end
  else
    n = n or loom.cpu_count()
    local cmd, argv = worker_command(opts)
    -- a singleton's runtime offers as many slots as cores, one of them its
    -- own: by default the workers go on this host, as many as asked for
    -- (loom.pool(n) takes any n too); opts.info places them otherwise
    local info = opts.info or { host = "localhost:" .. (n + 1) }
    local inter, err = core.spawn(cmd, argv, n, info)
    if not inter then
      return nil, "cannot spawn MPI workers: " .. tostring(err)
    end
    comm, spawned = inter, true
    for r = 1, n do ranks[r] = r - 1 end
  end
  local initargs = opts.initargs or {}
  local hello = encode(opts.init, table_unpack(initargs, 1, initargs.n or #initargs))
  local q, ready = loom.queue(), loom.future()
  local t = loom.thread { target = dispatcher, daemon = true, name = "MPIPool-dispatcher",
    args = { q, comm, ranks, hello, spawned, ready } }
  t:start()
  local p = setmetatable({ workers = n, kind = "mpi", spawned = spawned,
    _q = q, _t = t, _ready = ready, _id = 0 }, Pool)
  pools[p] = true
  open_pool = p
  return p
end

--- pool:submit(fn, ...) -> loom.Future
function Pool.submit(p, fn, ...)
  checkpool(p, "submit")
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'submit' (function expected, got %s)"):format(type(fn)), 2)
  end
  if p._closed then
    error("cannot submit to a pool after shutdown", 2)
  end
  if p._ready:done() then
    local broken = p._ready:result(0)
    if broken then
      error("cannot submit to a broken pool (initializer failed)", 2)
    end
  end
  local ok, body = pcall(encode, fn, ...)
  if not ok then
    error((body:gsub("^cannot encode values%[1%]", "cannot encode target")
      :gsub("^cannot encode values%[(%d+)%]", function(i)
        return ("cannot encode args[%d]"):format(tonumber(i) - 1)
      end)), 2)
  end
  local id = p._id + 1
  p._id = id
  local f = loom.future()
  p._q:put({ "task", id, f, body })
  return f
end

Pool.map = lpool.map
Pool.imap = lpool.imap

--- pool:imap_unordered(fn, list [, {chunksize=, timeout=}]): i, result as
-- tasks finish, in no particular order.
function Pool.imap_unordered(p, fn, list, opts)
  checkpool(p, "imap_unordered")
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'imap_unordered' (function expected, got %s)"):format(type(fn)), 2)
  end
  if type(list) ~= "table" then
    error(("bad argument #2 to 'imap_unordered' (table expected, got %s)"):format(type(list)), 2)
  end
  opts = opts or {}
  local chunksize = opts.chunksize or 1
  if math_type(chunksize) ~= "integer" or chunksize < 1 then
    error("bad argument #3 to 'imap_unordered' (chunksize must be a positive integer)", 2)
  end
  local n = list.n or #list
  local fs, first = {}, {}
  for i = 1, n, chunksize do
    local last = math.min(i + chunksize - 1, n)
    local f = p:submit(function(g, chunk, m)
      local out = {}
      for j = 1, m do out[j] = (g(chunk[j])) end
      return out
    end, fn, table_pack(table_unpack(list, i, last)), last - i + 1)
    fs[#fs + 1] = f
    first[f] = i
  end
  local co = coroutine.wrap(function()
    for f in loom.as_completed(fs, opts.timeout) do
      local out = f:result()
      local base = first[f]
      for j = 1, math.min(chunksize, n - base + 1) do
        coroutine.yield(base + j - 1, out[j])
      end
    end
  end)
  return co
end

--- pool:shutdown([wait=true], [cancel_pending=false], [timeout]) -> boolean
function Pool.shutdown(p, wait, cancel_pending, timeout)
  checkpool(p, "shutdown")
  if not p._closed then
    p._closed = true
    p._q:put({ "close", cancel_pending and true or false })
  end
  if wait == false then return true end
  if p._joined then return true end
  local done = p._t:join(timeout)
  if done then
    p._joined = true
    local ok, err = p._t:result(0)
    if not ok and err ~= nil then error(err, 2) end
    if not p.spawned and type(err) == "table" then
      for _, r in ipairs(err) do M.dead[r] = true end
    end
  end
  return done
end

Pool.__close = function(p) p:shutdown(true) end
Pool.__gc = function(p) if not p._closed then p:shutdown(false) end end
Pool.__tostring = function(p)
  return ("loom.mpi.Pool (%d workers%s, %s)"):format(p.workers,
    p.spawned and ", spawned" or "", p._closed and "shut down" or "open")
end

--- Shuts down the open pool, waiting for its tasks (loom.mpi.run at exit).
function M.close_all()
  if open_pool then
    open_pool:shutdown(true)
    open_pool = nil
  end
end

return M
