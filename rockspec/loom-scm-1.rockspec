rockspec_format = "3.0"
package = "loom"
version = "scm-1"
source = {
  url = "git+https://example.invalid/loom.git",
}
description = {
  summary = "Real concurrency and parallelism for Lua 5.4",
  detailed = [[
    OS threads that each run their own interpreter, a worker pool with
    futures, forked processes, locks and the other synchronization
    primitives, shared typed values and arrays, and a queue.
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  type = "builtin",
  modules = {
    ["loom.core"] = {
      sources = {
        "csrc/array.c",
        "csrc/barrier.c",
        "csrc/clock.c",
        "csrc/cond.c",
        "csrc/core.c",
        "csrc/event.c",
        "csrc/gil.c",
        "csrc/heap.c",
        "csrc/lock.c",
        "csrc/notify.c",
        "csrc/obj.c",
        "csrc/pool.c",
        "csrc/process.c",
        "csrc/queue.c",
        "csrc/sem.c",
        "csrc/shared.c",
        "csrc/thread.c",
        "csrc/wait.c",
        "csrc/xfer.c",
      },
      incdirs = { "csrc" },
      libraries = { "pthread", "m" },
    },
    ["loom"] = "lua/loom/init.lua",
    ["loom.cqueues"] = "lua/loom/cqueues.lua",
    ["loom.gil"] = "lua/loom/gil.lua",
    ["loom.luv"] = "lua/loom/luv.lua",
    ["loom.pool"] = "lua/loom/pool.lua",
    ["loom.process"] = "lua/loom/process.lua",
  },
  platforms = {
    linux = {
      modules = {
        ["loom.core"] = {
          libraries = { "pthread", "m", "dl" },
        },
      },
    },
  },
}
test = {
  type = "busted",
}
