rockspec_format = "3.0"
package = "loom"
version = "scm-1"
source = {
  url = "git+https://example.invalid/loom.git",
}
description = {
  summary = "Real concurrency and parallelism for Lua 5.4",
  detailed = [[
    loom gives Lua 5.4 the tools of Python's threading, multiprocessing and
    concurrent.futures: OS threads that each run their own interpreter,
    shared-interpreter threads that take turns under a lock, thread and
    process pools with futures (wait, as_completed, map, cancellation),
    forked processes with exit codes and timeouts, locks, re-entrant locks,
    conditions, semaphores, events and barriers, shared typed values and
    arrays, and a queue, all usable across threads and forked processes
    through one shared heap, with waits that survive a participant killed
    at any moment. Values travel between interpreters by copy, functions
    with their upvalues included. Embeddable in C hosts (loom.h).
  ]],
  license = "MIT",
  labels = { "concurrency", "threads", "multiprocessing", "futures", "parallel" },
}
supported_platforms = { "linux" }
dependencies = {
  "lua >= 5.4, < 5.5",
}
-- The Makefile builds the module, so a LuaRocks build and `make` use the
-- same flags (C11, -pthread, hidden visibility, the warnings as errors).
build = {
  type = "make",
  build_target = "all",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_target = "install",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
  },
}
-- Offline, with the busted the system provides.
test = {
  type = "command",
  command = "make test",
}
