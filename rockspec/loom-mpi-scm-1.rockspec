rockspec_format = "3.0"
package = "loom-mpi"
version = "scm-1"
source = {
  url = "git+https://example.invalid/loom.git",
}
description = {
  summary = "loom's pools on MPI ranks: the same pool beyond one machine",
  detailed = [[
    loom.mpi.pool is loom.pool's surface (submit, map, imap, futures that
    mix with loom.wait and loom.as_completed, shutdown, initializers) on
    MPI processes: the ranks of an mpiexec or srun world, or workers
    spawned from a single process. Tasks travel as loom.encode strings.
    Needs an MPI implementation with mpicc (Open MPI, MPICH).
  ]],
  license = "MIT",
  labels = { "concurrency", "mpi", "futures", "parallel", "hpc" },
}
supported_platforms = { "linux" }
dependencies = {
  "lua >= 5.4, < 5.5",
  "loom",
}
-- mpicc knows where its MPI's headers and libraries are: no
-- external_dependencies (Debian keeps mpi.h outside /usr/include).
build = {
  type = "make",
  build_target = "mpi",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_target = "install-mpi",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
  },
}
