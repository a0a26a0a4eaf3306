-- luacheck configuration: `make lint`.
std = "lua54"
max_line_length = false
-- Thread and process bodies and callbacks take arguments they ignore.
unused_args = false
ignore = {
  "21./_.*",        -- `_` names are placeholders
  "211/g%d*",       -- `local g <close> = lock:hold()`: a guard, used by its scope
  "211/guard",
  "431/loom",       -- a thread body requires loom in its own interpreter
}

files["spec/"] = { std = "+busted" }
files["spec/helpers.lua"] = { std = "lua54" }
-- These check that what one interpreter does to its globals and standard
-- tables stays there, so they write and read globals on purpose.
files["spec/thread_spec.lua"].globals = { "leaked", "undefined_name", "print", "string", "math", "table" }
files["spec/stress/reuse.lua"].globals = { "leaked", "undefined", "print", "string", "math" }
files["spec/xfer_spec.lua"].globals = { "x_global_in_thread" }
-- The notebook's parameter names, kept.
files["experiments/03_square_cube.lua"].ignore = { "431/numbers" }
-- Shared threads wrap coroutine.resume/wrap and debug.sethook/gethook.
files["lua/loom/gil.lua"].ignore = { "122" }
