-- loom.mpi.worker: the entry of a worker that loom.mpi.pool spawned from a
-- singleton (lua5.4 -l loom.mpi.worker): serves its parent, then leaves.
local mpi = require "loom.mpi"
local core = require "loom.mpi.core"

mpi.init()
local parent = core.parent()
if not parent then
  error("loom.mpi.worker runs in processes that loom.mpi.pool spawns", 0)
end
mpi.serve(parent)
core.disconnect(parent)
core.finalize()
os.exit(0, true)
