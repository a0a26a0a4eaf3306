-- Participants that die: a process killed (SIGKILL, terminate) while it
-- waits, holds a lock, produces or consumes must not hang the survivors,
-- nor the script's end.  Each case runs in its own interpreter under
-- timeout(1), so a hang fails the spec instead of hanging the suite.
-- They fork while no other thread runs, except the process pools'
-- supervisors (tagged #fork_while_threads, see spec/sanitize.sh).
local H = require "helpers"

-- A fresh lua5.4 killed after H.t(limit) s: a hang fails, not hangs.
local guarded = H.run

local function expect(chunk, limit, want)
  local out, ok, code = guarded(chunk, limit)
  assert(ok, string.format("exit %s (124: hung and killed by timeout):\n%s",
    tostring(code), out))
  assert.matches(want or "done", out)
  return out
end

-- the pid of the calling process, from the kernel
local PID = [[
local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("a"):match("^(%d+)"))
  f:close()
  return pid
end
]]

describe("a participant that dies", function()
  it("case 1: a killed event waiter lets the script end", function()
    expect([[
local loom = require "loom"
local e = loom.event()
local p = loom.process(function() e:wait() end):start()
loom.sleep(0.3); p:kill(); p:join()
print("done")
]], 10)
  end)

  describe("case 2: a daemon process blocked when the script ends", function()
    for _, how in ipairs{"q:get()", "e:wait()", "l:acquire()", "s:acquire()",
                         "c:acquire(); c:wait()", "b:wait()"} do
      it("in " .. how, function()
        expect([[
local loom = require "loom"
q, e, l, s, c, b = loom.queue(), loom.event(), loom.lock(), loom.semaphore(0),
  loom.condition(), loom.barrier(3)
l:acquire()
local p = loom.process{target = function() ]] .. how .. [[ end, daemon = true}
p:start()
loom.sleep(0.3)
assert(p:is_alive())
print("done")
]], 15)
      end)
    end
  end)

  describe("case 3: after a waiter died blocked", function()
    it("on an event, a live waiter and set() still work", function()
      expect([[
local loom = require "loom"
local H = require "helpers"
local e = loom.event()
local p = loom.process(function() e:wait() end):start()
loom.sleep(0.3); p:kill(); p:join()
local t = loom.thread(function(ev) return ev:wait(30) end, e):start()
loom.sleep(0.1)
e:set()
assert(H.result(t, 10) == true)
assert(e:wait(0))
print("done")
]], 20)
    end)

    it("on a semaphore, a live waiter and release() still work", function()
      expect([[
local loom = require "loom"
local H = require "helpers"
local s = loom.semaphore(0)
for i = 1, 3 do
  local p = loom.process(function() s:acquire() end):start()
  loom.sleep(0.1); p:kill(); p:join()
end
local t = loom.thread(function(sem) return sem:acquire(true, 30) end, s):start()
loom.sleep(0.1)
s:release()
assert(H.result(t, 10) == true)
assert(s:get_value() == 0)
s:release(2)
assert(s:acquire(false) and s:acquire(false) and not s:acquire(false))
print("done")
]], 20)
    end)

    it("on the get side of a queue, a live getter and put() still work",
       function()
      expect([[
local loom = require "loom"
local H = require "helpers"
local q = loom.queue()
for i = 1, 3 do
  local p = loom.process(function() q:get() end):start()
  loom.sleep(0.1); p:kill(); p:join()
end
local t = loom.thread(function(qq) return qq:get(30) end, q):start()
loom.sleep(0.1)
q:put("x")
assert(H.result(t, 10) == "x")
assert(q:size() == 0)
print("done")
]], 20)
    end)

    it("on the put side of a full queue, a live putter and get() still work",
       function()
      expect([[
local loom = require "loom"
local H = require "helpers"
local q = loom.queue(1)
q:put("first")
for i = 1, 3 do
  local p = loom.process(function() q:put("dead" .. i) end):start()
  loom.sleep(0.1); p:kill(); p:join()
end
local t = loom.thread(function(qq) return qq:put("live", 30) end, q):start()
loom.sleep(0.1)
assert(q:get(5) == "first")
assert(H.result(t, 10) == true)
assert(H.get(q, 5) == "live")
assert(q:size() == 0 and q:empty())
print("done")
]], 20)
    end)

    it("on a lock, a live waiter gets it when it is released", function()
      expect([[
local loom = require "loom"
local H = require "helpers"
local l = loom.lock()
l:acquire()
for i = 1, 3 do
  local p = loom.process(function() l:acquire() end):start()
  loom.sleep(0.1); p:kill(); p:join()
end
local t = loom.thread(function(lk) return lk:acquire(true, 30) end, l):start()
loom.sleep(0.1)
l:release()
assert(H.result(t, 10) == true)
assert(l:locked())
l:release()
print("done")
]], 20)
    end)

    it("on a condition, a live waiter is still notified", function()
      expect([[
local loom = require "loom"
local H = require "helpers"
local c = loom.condition()
local p = loom.process(function() c:acquire(); c:wait() end):start()
loom.sleep(0.3); p:kill(); p:join()
local t = loom.thread(function(cc)
  cc:acquire(); local r = cc:wait(30); cc:release(); return r
end, c):start()
loom.sleep(0.2)
c:acquire(); c:notify_all(); c:release()
assert(H.result(t, 10) == true)
print("done")
]], 20)
    end)
  end)

  it("case 4: a consumer terminated in get() is replaced and the work done",
     function()
    expect([[
local loom = require "loom"
local H = require "helpers"
local q, out = loom.queue(), loom.queue()
local function consumer()
  while true do
    local v = q:get()
    if v == nil or v == "stop" then return end
    out:put(v * 2)
  end
end
local c1 = loom.process(consumer):start()
loom.sleep(0.3)
assert(c1:terminate())
c1:join()
assert(c1.exitcode == -15)
local c2 = loom.process(consumer):start()
for i = 1, 100 do q:put(i) end
q:put("stop")
local sum = 0
for i = 1, 100 do sum = sum + H.get(out, 10) end
H.join(c2, 10)
assert(sum == 10100, sum)
print("done")
]], 30)
  end)

  it("case 5: a process pool replaces a killed busy and a killed idle worker #fork_while_threads",
     function()
    expect(PID .. [[
local loom = require "loom"
local H = require "helpers"
local pool = loom.pool{workers = 2, kind = "process"}
local e, pids = loom.event(), loom.queue()
local busy = pool:submit(function(ev, q, getpid)
  q:put(getpid()); ev:wait()
end, e, pids, mypid)
local bpid = H.get(pids, 10)
local ipid = H.result(pool:submit(mypid), 10)
assert(bpid ~= ipid)
loom.sleep(0.2)   -- the idle one back asleep in the task queue
os.execute("kill -9 " .. bpid .. " " .. ipid)
local ok, err = pcall(H.result, busy, 10)
assert(not ok and err:match("killed by signal 9"), err)
local fs = {}
for i = 1, 50 do fs[i] = pool:submit(function(x) return x * x end, i) end
for i = 1, 50 do assert(H.result(fs[i], 10) == i * i) end
assert(pool:shutdown(true, false, H.t(10)))
print("done")
]], 40)
  end)

  it("case 5b: pool futures watched by loom.wait survive the kill too #fork_while_threads",
     function()
    expect(PID .. [[
local loom = require "loom"
local H = require "helpers"
local pool = loom.pool{workers = 2, kind = "process"}
local e, pids = loom.event(), loom.queue()
local busy = pool:submit(function(ev, q, getpid)
  q:put(getpid()); ev:wait()
end, e, pids, mypid)
local other = pool:submit(function() return 7 end)
local bpid = H.get(pids, 10)
os.execute("kill -9 " .. bpid)
local done, notdone = loom.wait({busy, other}, H.t(10))
assert(#done == 2 and #notdone == 0)
assert(H.result(other, 1) == 7)
assert(pool:shutdown(true, false, H.t(10)))
print("done")
]], 40)
  end)

  it("case 6: producers and consumers killed at random keep the queue whole",
     function()
    expect([[
local loom = require "loom"
local H = require "helpers"
math.randomseed(6)
local q = loom.queue(8)
local got = loom.array("int64", 4000)   -- got[id]: times delivered
local put = loom.array("int64", 4000)   -- put[id]: 1 once put() returned
local function producer(base)
  for i = 0, 399 do
    q:put(base + i)
    put[base + i + 1] = 1
  end
end
local function consumer()
  while true do
    local v = q:get()
    if v == nil then return end
    got[v + 1] = got[v + 1] + 1
  end
end
for round = 0, 9 do
  local ps = {
    loom.process(producer, round * 400):start(),
    loom.process(consumer):start(),
    loom.process(consumer):start(),
  }
  loom.sleep(math.random() * 0.05)
  local victim = ps[math.random(#ps)]
  victim:kill()
  victim:join()
  -- the survivors finish: replace the killed consumer or producer's rest
  if victim == ps[1] then
    for _, p in ipairs{ps[2], ps[3]} do p:kill(); p:join() end
  else
    H.join(ps[1], 20)
    for _, p in ipairs{ps[2], ps[3]} do if p ~= victim then p:kill(); p:join() end end
  end
end
-- the queue still works and holds only items never delivered
local left = {}
while true do
  local v = q:try_get()
  if v == nil then break end
  left[#left + 1] = v
end
assert(q:size() == 0)
for _, v in ipairs(left) do
  assert(got[v + 1] == 0, "delivered twice: " .. v)
  got[v + 1] = 1
end
-- an item put and never delivered can only be one a consumer took just
-- before it was killed: at most one per consumer killed
local lost = 0
for id = 1, 4000 do
  assert(got[id] <= 1, "delivered twice: " .. (id - 1))
  if put[id] == 1 and got[id] == 0 then lost = lost + 1 end
end
assert(lost <= 20, lost .. " items lost")
local t = loom.thread(function(qq) for i = 1, 1000 do qq:put(i) end end, q):start()
for i = 1, 1000 do assert(H.get(q, 10) == i) end
H.join(t, 10)
q:close()
print("done")
]], 90)
  end)
end)
