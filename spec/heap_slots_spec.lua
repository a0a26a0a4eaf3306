-- The heap's slots: a freed block of a middle size (257 B to 256 KiB)
-- waits in its thread's slot for the next request of about its size, so
-- a thread that frees and allocates one in a loop never takes the heap's
-- lock.  What waits there must never make an allocation fail, whichever
-- thread or process left it there, nor be handed out twice.  Each case
-- runs in a fresh interpreter with a small heap (LOOM_HEAP_SIZE).
local H = require "helpers"

local function expect_ok(heap, chunk, limit)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(H.prelude, "\n", chunk)
  f:close()
  local p = assert(io.popen(string.format(
    "LOOM_HEAP_SIZE=%s LOOM_SPEC_MACHINE=%.17g timeout -k 2 %.1f %s %s 2>&1",
    heap, H.machine or 1, H.t(limit or 60), H.lua, path)))
  local out = p:read("a")
  local ok, _, code = p:close()
  os.remove(path)
  assert(ok and out:find("ok\n$"), string.format(
    "subprocess failed (exit %s; 124: hung, killed by timeout):\n%s", tostring(code), out))
end

-- Takes the heap's figures before any slot holds a block (loom.heap()
-- empties them), then has threads or processes that stay alive leave
-- blocks in their slots, and asks for every free byte but the bookkeeping
-- without emptying the slots first: the failing search must empty them.
local FILL = [[
local loom = require "loom"
local BOOK = 16 * 1024
local SIZE = os.getenv("SHOW")
local ready, go, begin = loom.semaphore(0), loom.event(), loom.event()
collectgarbage() collectgarbage()
local h0 = loom.heap()
local function leave_in_slot(n, ready_, go_, begin_)
  local lm = require "loom"
  begin_:wait()   -- every worker's objects are made: the blocks lie above
  if n == 0 then ready_:release(); go_:wait(); return true end
  local a = lm.array("char", n, false)
  a[n] = 1
  a = nil
  collectgarbage() collectgarbage()   -- freed: the block goes to a slot
  ready_:release()
  go_:wait()
  return true
end
-- slack: the workers' own objects (handles, semaphore and event proxies),
-- far less than the blocks they leave in slots
local function big_one(what, count, slack)
  begin:set()
  for _ = 1, count do assert(ready:acquire(true, 60), "a worker never got ready") end
  local want = h0.size - h0.used - BOOK - slack
  if os.getenv("SHOW") then
    local h = loom.heap()
    print("workers hold", h.used - h0.used, "largest", h.largest_free, "want", want)
  end
  local ok, a = pcall(loom.array, "char", want, false)
  assert(ok, what .. ": an array of size - used - bound failed: " .. tostring(a))
  a[#a] = 7
  a = nil
  collectgarbage() collectgarbage()
  go:set()
end
]]

describe("the heap's slots", function()
  it("never make an allocation fail: blocks left there by threads", function()
    expect_ok("8M", FILL .. [[
      local ts = {}
      for i = 1, 20 do   -- more threads than slots: some share one
        ts[i] = loom.thread(leave_in_slot, SIZE and 0 or 150000 + i * 1000, ready, go, begin):start()
      end
      big_one("with 20 threads", 20, 256 * 1024)
      for i = 1, 20 do assert(ts[i]:result() == true) end
      print("ok")
    ]])
  end)

  it("never make an allocation fail: blocks left there by processes, one killed #fork", function()
    expect_ok("8M", FILL .. [[
      -- one that loops through its slot until it is killed, first
      local p = loom.process(function()
        local lm = require "loom"
        while true do
          local a = lm.array("char", 20000, false)
          a = nil
          collectgarbage()
        end
      end):start()
      loom.sleep(0.2)
      assert(p:kill()); p:join()
      local ps = {}
      for i = 1, 6 do ps[i] = loom.process(leave_in_slot, SIZE and 0 or 200000 + i * 1000, ready, go, begin):start() end
      big_one("with 6 processes", 6, 256 * 1024)
      for i = 1, 6 do assert(ps[i]:result() == true) end
      print("ok")
    ]])
  end)

  it("hand a block to one thread at a time, of the size it asked for", function()
    -- threads of a few sizes each fill their arrays with a mark of their
    -- own and check it before they free them; a block given to two at
    -- once, or one too small, breaks a mark
    expect_ok("64M", [[
      local loom = require "loom"
      local function churn(id, rounds)
        local lm = require "loom"
        local sizes = { 300, 5000, 65536, 65536 + 8000, 250000 }
        for r = 1, rounds do
          local n = sizes[(id + r) % #sizes + 1]
          local a = lm.array("int32", n // 4, false)
          local mark = id * 100000 + r
          for k = 1, #a, 97 do a[k] = mark end
          a[#a] = mark
          for k = 1, #a, 97 do
            if a[k] ~= mark then error("block shared: " .. a[k] .. " ~= " .. mark) end
          end
          assert(a[#a] == mark)
          a = nil
          if r % 3 == 0 then collectgarbage() end
        end
        return true
      end
      local ws = {}
      for i = 1, 3 do ws[#ws + 1] = loom.thread(churn, i, 400):start() end
      for i = 4, 5 do ws[#ws + 1] = loom.process(churn, i, 400):start() end
      assert(churn(6, 400))
      for _, w in ipairs(ws) do assert(w:result() == true) end
      ws = nil
      collectgarbage() collectgarbage()
      local h = loom.heap()
      assert(h.free + h.used <= h.size and h.size - h.free - h.used <= 16 * 1024)
      print("ok")
    ]], 120)
  end)
end)
