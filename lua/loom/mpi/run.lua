-- loom.mpi.run: `mpiexec -n N lua5.4 -l loom.mpi.run script.lua [args]`.
-- Every rank but 0 serves loom.mpi pools until rank 0 is done; rank 0 runs
-- the script, then shuts its pool down, releases the other ranks and
-- finalizes MPI, whether the script returns, raises or calls os.exit.
local mpi = require "loom.mpi"
local core = require "loom.mpi.core"

local size, rank = mpi.init()
local world = core.world()
local real_exit = os.exit

if rank ~= 0 then
  if mpi.serve(world) ~= "dead" then core.finalize() end
  real_exit(0, true)
end

local script = type(arg) == "table" and arg[0]
if type(script) ~= "string" or script == "-" then
  io.stderr:write("loom.mpi.run needs a script: mpiexec -n N lua5.4 -l loom.mpi.run script.lua\n")
  for r = 1, size - 1 do core.send(world, r, mpi.TAG_EXIT, "") end
  core.finalize()
  real_exit(1, true)
end

local finished = false
local function finish(code)
  if not finished then
    finished = true
    local ok, err = pcall(mpi.close_all)
    if not ok then
      io.stderr:write("loom.mpi.run: ", tostring(err), "\n")
    end
    for r = 1, size - 1 do
      if not mpi.dead[r] then core.send(world, r, mpi.TAG_EXIT, next(mpi.dead) and "dead" or "") end
    end
    -- MPI_Finalize waits for every process of the world, a dead one too
    if not next(mpi.dead) then core.finalize() end
  end
  real_exit(code, true)
end

os.exit = function(code)   -- luacheck: ignore
  if code == nil or code == true then code = 0 elseif code == false then code = 1 end
  finish(code)
end

local chunk, err = loadfile(script)
if not chunk then
  io.stderr:write("lua5.4: ", err, "\n")
  finish(1)
end
local ok, msg = xpcall(chunk, debug.traceback, table.unpack(arg, 1, #arg))
if not ok then
  io.stderr:write("lua5.4: ", tostring(msg), "\n")
  finish(1)
end
finish(0)
