-- experiments/lib.lua: what every notebook experiment shares: timing of its
-- variants, its claims, the Python run, progress lines and the final table.
--
-- An experiment script builds a table {id=, name=, title=, python=, needs=,
-- run=function(x) ... end} and ends with `return lib.main(experiment, ...)`.
-- Run alone, the script runs itself and prints its table; loaded by the
-- runner (which passes {runner = true}), it hands the table back instead.

local here = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
if here == nil or here == "" then here = "./" end
local root = here:match("^(.-)experiments/$") or (here .. "../")
if root == "" then root = "./" end

-- loom from this checkout, before any installed one; threads inherit these.
package.path = root .. "lua/?.lua;" .. root .. "lua/?/init.lua;" .. package.path
package.cpath = root .. "?.so;" .. package.cpath

local loom = require "loom"

local io, os, string, table, math = io, os, string, table, math
local select, type, tostring, ipairs = select, type, tostring, ipairs
local pcall = pcall

-- Task output from several threads and forked processes: one line per
-- write, flushed at once, so lines never merge or repeat after a fork.
io.stdout:setvbuf("line")

local lib = { root = root, dir = here, loom = loom }

-- How much slower than an idle machine of the project's kind this run may
-- be: under the specs, their machine and checker factors (spec/helpers.lua
-- passes them down).  Upper bounds on time are scaled by it; a lower bound
-- never is.
lib.slowdown = math.max(1, tonumber(os.getenv("LOOM_SPEC_MACHINE")) or 1)
  * math.max(1, tonumber(os.getenv("LOOM_SPEC_SLOWDOWN")) or 1)

--- lib.print(...): print for tasks; the whole line goes out in one write,
-- so lines printed by parallel tasks never merge.
function lib.print(...)
  local n = select("#", ...)
  local parts = { ... }
  for i = 1, n do parts[i] = tostring(parts[i]) end
  io.write(table.concat(parts, "\t", 1, n) .. "\n")
end

--- lib.pyprint(...): Python's print: the values' text joined by one space,
-- floats as Python prints them, so that a line comes out as the notebook
-- printed it; the whole line goes out in one write, like lib.print.
function lib.pyprint(...)
  local n = select("#", ...)
  local parts = { ... }
  for i = 1, n do parts[i] = lib.repr(parts[i]) end
  io.write(table.concat(parts, " ", 1, n) .. "\n")
end

-- os.time() has whole seconds only: the fraction comes from the monotonic
-- clock, counted from the second the library was loaded in.
local wall0, mono0 = os.time(), loom.now()

--- lib.datetime(): the time now as Python's str(datetime.now()) prints it,
-- "2025-10-27 12:05:01.473860".
function lib.datetime()
  local t = wall0 + (loom.now() - mono0)
  local whole = math.floor(t)
  local micro = math.floor((t - whole) * 1e6)
  return os.date("%Y-%m-%d %H:%M:%S", whole) .. string.format(".%06d", micro)
end

local function printf(fmt, ...)
  io.write(string.format(fmt, ...))
end

--- lib.fmt_time(seconds): "9.01 s", "0.053 s", "1.25 ms", "842 us".
function lib.fmt_time(s)
  if s == nil then return "-" end
  if s < 0.001 then return string.format("%.0f us", s * 1e6) end
  if s < 0.01 then return string.format("%.2f ms", s * 1e3) end
  if s < 0.1 then return string.format("%.3f s", s) end
  return string.format("%.2f s", s)
end

--- lib.repr(x): a float the way Python prints it (the shortest text that
-- reads back as the same number), so results compare with the notebook.
function lib.repr(x)
  if math.type(x) ~= "float" then return tostring(x) end
  for digits = 1, 17 do
    local s = string.format("%." .. digits .. "g", x)
    if tonumber(s) == x then
      if not s:find("[.eni]") then s = s .. ".0" end
      return s
    end
  end
  return string.format("%.17g", x)
end

--- lib.has(name): whether loom offers the primitive `name` in this build.
function lib.has(name)
  return loom[name] ~= nil
end

--- lib.pool_offers(what): nil when this build's pools offer `what`
-- ("map": Pool:map; "process": pools of processes), else why not.
function lib.pool_offers(what)
  if loom.pool == nil then return "needs loom.pool" end
  local opts = { workers = 1, kind = what == "process" and "process" or "thread" }
  local ok, pool = pcall(loom.pool, opts)
  if not ok then return "needs a pool of kind '" .. opts.kind .. "'" end
  local has_map = pool.map ~= nil
  pool:shutdown(true)
  if what == "map" and not has_map then return "needs Pool:map" end
  return nil
end

local function missing(needs)
  for _, name in ipairs(needs or {}) do
    if not lib.has(name) then return "loom." .. name end
  end
  return nil
end

local function have_python()
  return os.execute("command -v python3 >/dev/null 2>&1") == true
end

-- A background thread that prints "... label: N s" every `every` seconds
-- while a long run goes; stop() cancels it (a cancelled sleep ends it).
local function ticker(label, every)
  local t = loom.thread({
    target = function(text, period)
      local l = require "loom"
      local start = l.now()
      while true do
        l.sleep(period)
        io.write(string.format("    ... %s: %.0f s\n", text, l.now() - start))
      end
    end,
    args = { label, every },
    daemon = true,
    name = "progress",
  }):start()
  return function()
    t:cancel()
    t:join(5)
  end
end

-- ---------------------------------------------------------------------------
-- The context an experiment's run(x) receives.

local Context = {}
Context.__index = Context

local function new_context(exp, opts)
  return setmetatable({
    exp = exp, opts = opts, quick = opts.quick,
    rows = {}, byvar = {}, claims = {}, notes = {},
  }, Context)
end

--- x:pick(full, quick): the notebook's parameter, or its --quick stand-in.
function Context:pick(full, quick)
  if self.quick then return quick end
  return full
end

function Context:section(text)
  printf("\n  -- %s\n", text)
end

function Context:note(fmt, ...)
  local text = string.format(fmt, ...)
  self.notes[#self.notes + 1] = text
  printf("  note: %s\n", text)
end

--- x:variant(key, label, opts, fn, ...): run fn(...) once and time it.
-- opts: notebook = the notebook's figure (seconds), notebook_note = the
-- same as text, needs = {primitives}, skip = why it cannot run here,
-- base = the key its speedup is measured against ("sequential"), group =
-- rows whose bars share one scale (default: the whole experiment).
-- Returns the elapsed seconds and fn's results, or nil when skipped.
function Context:variant(key, label, opts, fn, ...)
  opts = opts or {}
  local row = {
    key = key, label = label, notebook = opts.notebook,
    notebook_note = opts.notebook_note, base = opts.base or "sequential",
    group = opts.group,
  }
  self.rows[#self.rows + 1] = row
  self.byvar[key] = row
  local lack = opts.skip or missing(opts.needs)
  if lack then
    row.skipped = opts.skip or ("needs " .. lack)
    printf("\n  %s: skipped (%s)\n", label, row.skipped)
    return nil
  end
  printf("\n  %s\n", label)
  local stop = ticker(label, self.opts.tick or 5)
  local start = loom.now()
  local res = table.pack(pcall(fn, ...))
  local elapsed = loom.now() - start
  stop()
  if not res[1] then
    row.error = tostring(res[2])
    self:check(false, "%s ran without error (%s)", label, row.error)
    return nil
  end
  row.time = elapsed
  printf("  => %s: %s\n", label, lib.fmt_time(elapsed))
  return elapsed, table.unpack(res, 2, res.n)
end

--- x:record(key, label, seconds, opts): a row measured by the experiment
-- itself (opts as for x:variant).
function Context:record(key, label, seconds, opts)
  opts = opts or {}
  local row = {
    key = key, label = label, time = seconds, notebook = opts.notebook,
    notebook_note = opts.notebook_note, base = opts.base or "sequential",
    group = opts.group,
  }
  self.rows[#self.rows + 1] = row
  self.byvar[key] = row
  printf("  => %s: %s\n", label, lib.fmt_time(seconds))
end

--- x:time(key): the measured seconds of a variant (nil if it did not run).
function Context:time(key)
  local row = self.byvar[key]
  return row and row.time
end

--- x:check(ok, fmt, ...): record and print one of the experiment's claims.
function Context:check(ok, fmt, ...)
  local text = string.format(fmt, ...)
  self.claims[#self.claims + 1] = { ok = not not ok, text = text }
  printf("  %s %s\n", ok and "claim ok:" or "CLAIM FAILED:", text)
  return ok
end

--- lib.load(): the 1-minute load average, or nil where /proc has none.
function lib.load()
  local f = io.open("/proc/loadavg", "r")
  if f == nil then return nil end
  local load = tonumber(f:read("l"):match("^(%S+)"))
  f:close()
  return load
end

-- Whether two plain Lua processes, started by the shell, fail to run side
-- by side right now: the machine's other work has a core.  The load
-- average lags by a minute and misses short bursts; this asks the machine
-- itself, without loom.
local function cores_taken()
  local lua = arg and arg[-1] or "lua5.4"
  local loop = string.format("%s -e 'local s = 0; for i = 1, 3e7 do s = s + i end'", lua)
  local function timed(cmd)
    local t0 = loom.now()
    os.execute(cmd)
    return loom.now() - t0
  end
  local one = timed(loop)
  local both = timed(string.format("%s & %s & wait", loop, loop))
  return both > 1.4 * one, one, both
end

-- A claim about time that failed while the cores were busy, by the load
-- average or by asking the machine itself, becomes a note: true then.
function Context:busy_by_load(text)
  local load = lib.load()
  if load and load >= loom.cpu_count() * 0.75 then
    self:note("not checked, the cores were busy (load %.2f on %d): %s",
      load, loom.cpu_count(), text)
    return true
  end
  return false
end

function Context:busy_by_test(text)
  local taken, one, both = cores_taken()
  if taken then
    self:note("not checked, the cores were busy (two plain Lua loops took %s side by side, %s alone): %s",
      lib.fmt_time(both), lib.fmt_time(one), text)
    return true
  end
  return false
end

--- x:check_faster(fast, slow, factor, why [, kind]): time(fast) <
-- factor * time(slow).  Two timings taken one after the other compare only
-- while nothing else competes for the cores: when a claim fails on a
-- machine whose other work keeps them busy, it becomes a note instead.
-- kind "parallel" (or true) marks a speedup claim, which needs both cores
-- idle; kind "quiet" a claim that two runs took turns alike, which any
-- competitor for a core upsets.  Both also ask the machine itself, since
-- the load average lags, and are tagged so that the spec can retry them.
function Context:check_faster(fast, slow, factor, why, kind)
  if kind == true then kind = "parallel" end
  local a, b = self:time(fast), self:time(slow)
  if a == nil or b == nil then return end
  -- a parallel claim has its own test of busy cores below
  if kind ~= "parallel" then factor = factor * lib.slowdown end
  local text = string.format("%s (%s) < %.2f x %s (%s): %s",
    self.byvar[fast].label, lib.fmt_time(a), factor,
    self.byvar[slow].label, lib.fmt_time(b), why)
  if a >= factor * b and (self:busy_by_load(text) or (kind and self:busy_by_test(text))) then
    return
  end
  self:check(a < factor * b, "%s%s", text, kind and (" [" .. kind .. "]") or "")
end

--- x:check_time(key, lo, hi, what): a timing claim with generous bounds,
-- checked only when the variant ran.  Only the upper bound depends on the
-- machine: one exceeded while other work keeps the cores busy becomes a
-- note, as a comparison of two timings does (check_faster).
function Context:check_time(key, lo, hi, what)
  local t = self:time(key)
  if t == nil then return end
  hi = hi and hi * lib.slowdown
  local bounds = hi and string.format("%.2f .. %.2f s", lo, hi)
    or string.format(">= %.2f s", lo)
  local text = string.format("%s took %s (%s; expected %s)", self.byvar[key].label,
    lib.fmt_time(t), what, bounds)
  if t >= lo and hi ~= nil and t > hi and (self:busy_by_load(text) or self:busy_by_test(text)) then
    return
  end
  self:check(t >= lo and (hi == nil or t <= hi), "%s", text)
end

-- Runs the experiment's Python equivalent once; "##row key seconds" lines
-- carry its figures, every other line is its task output.
function Context:run_python()
  local script = self.exp.python
  if script == nil then return end
  if self.opts.python == false then
    self.python_note = "python skipped (--no-python)"
    return
  end
  if not have_python() then
    self.python_note = "python3 not found: Python figures skipped"
    printf("\n  note: %s\n", self.python_note)
    return
  end
  local cmd = string.format("python3 -u %s %s 2>&1", lib.dir .. "python/" .. script,
    self.quick and "--quick" or "")
  printf("\n  python3 experiments/python/%s%s\n", script, self.quick and " --quick" or "")
  local stop = ticker("python " .. script, self.opts.tick or 5)
  local start = loom.now()
  local p = io.popen(cmd, "r")
  self.python = {}
  local out = {}
  for line in p:lines() do
    local key, secs = line:match("^##row (%S+) (%S+)$")
    if key then
      self.python[key] = tonumber(secs)
    else
      out[#out + 1] = line
      if self.opts.verbose then printf("    py| %s\n", line) end
    end
  end
  local ok, how, code = p:close()
  stop()
  printf("  => python: %s\n", lib.fmt_time(loom.now() - start))
  if not ok then
    self.python_note = string.format("python3 %s failed (%s %s)", script, how, code)
    printf("  note: %s\n", self.python_note)
    for i = math.max(1, #out - 5), #out do printf("    py| %s\n", out[i]) end
  end
  self.python_output = out
end

--- lib.run(exp, opts, [position]): run one experiment and its Python twin
-- (position, e.g. "3/8", shows how far the runner has come); returns
-- {exp=, rows=, claims=, notes=, python=, skipped=}.
function lib.run(exp, opts, position)
  printf("\n== %s. %s%s\n", exp.id, exp.title, position and "  [" .. position .. "]" or "")
  local lack = missing(exp.needs)
  if lack then
    local why = "needs " .. lack .. ", not in this build"
    printf("  skipped: %s\n", why)
    return { exp = exp, rows = {}, claims = {}, notes = {}, skipped = why }
  end
  local x = new_context(exp, opts)
  local ok, err = pcall(exp.run, x)
  if not ok then
    x:check(false, "experiment ran to the end (%s)", tostring(err))
  end
  x:run_python()
  return x
end

-- ---------------------------------------------------------------------------
-- The table.

local BAR_WIDTH = 14
local EIGHTHS = { "", "▏", "▎", "▍", "▌", "▋", "▊", "▉" }

local function bar(t, max)
  if t == nil or max == nil or max <= 0 then return "" end
  local units = math.floor(t / max * BAR_WIDTH * 8 + 0.5)
  if units < 1 and t > 0 then units = 1 end
  return string.rep("█", units // 8) .. EIGHTHS[units % 8 + 1]
end

-- Display width: bars and dashes are one column per UTF-8 character.
local function width(s)
  return utf8.len(s) or #s
end

local function pad(s, w, right)
  local fill = string.rep(" ", math.max(0, w - width(s)))
  if right then return fill .. s end
  return s .. fill
end

local function fmt_fig(s)
  if s == nil then return "-" end
  if type(s) == "string" then return s end
  return string.format("%.2f s", s)
end

--- lib.table(results): the closing table; returns the number of failed claims.
function lib.table(results)
  local head = { "experiment", "variant", "loom", "", "vs seq", "notebook", "python", "" }
  local right = { false, false, true, false, true, true, true, false }
  local lines, passed, failed, notes = {}, 0, 0, {}
  for _, r in ipairs(results) do
    local name = r.exp.id .. " " .. r.exp.name
    if r.skipped then
      lines[#lines + 1] = { name, "skipped: " .. r.skipped, "", "", "", "", "", "" }
    end
    local maxof = {}
    for _, row in ipairs(r.rows) do
      local g = row.group or ""
      maxof[g] = math.max(maxof[g] or 0, row.time or 0, r.python and r.python[row.key] or 0)
    end
    for i, row in ipairs(r.rows) do
      local base = r.byvar[row.base]
      local speed = "-"
      if row.time and base and base.time then
        speed = string.format("%.2fx", base.time / row.time)
      end
      local py = r.python and r.python[row.key]
      local max = maxof[row.group or ""]
      local loomtime = row.time and lib.fmt_time(row.time)
        or (row.skipped and "skipped") or (row.error and "error") or "-"
      lines[#lines + 1] = {
        i == 1 and name or "", row.label, loomtime, bar(row.time, max), speed,
        row.notebook_note or fmt_fig(row.notebook),
        py and lib.fmt_time(py) or "-", bar(py, max),
      }
      if row.skipped then notes[#notes + 1] = row.label .. ": " .. row.skipped end
    end
    for _, c in ipairs(r.claims) do
      if c.ok then passed = passed + 1 else
        failed = failed + 1
        notes[#notes + 1] = "FAILED " .. r.exp.id .. ": " .. c.text
      end
    end
    for _, n in ipairs(r.notes) do notes[#notes + 1] = r.exp.id .. ": " .. n end
    if r.python_note then notes[#notes + 1] = r.exp.id .. ": " .. r.python_note end
  end
  local w = {}
  for c = 1, #head do
    w[c] = width(head[c])
    for _, l in ipairs(lines) do w[c] = math.max(w[c], width(l[c])) end
  end
  local function emit(cells)
    local out = {}
    for c = 1, #cells do out[c] = pad(cells[c], w[c], right[c]) end
    io.write((table.concat(out, "  "):gsub("%s+$", "")), "\n")
  end
  io.write("\n")
  emit(head)
  local rule = {}
  for c = 1, #head do rule[c] = string.rep("-", w[c]) end
  emit(rule)
  local prev
  for _, l in ipairs(lines) do
    if l[1] ~= "" and prev ~= nil then io.write("\n") end
    emit(l)
    prev = l
  end
  io.write("\n")
  for _, n in ipairs(notes) do printf("%s\n", n) end
  printf("claims: %d passed, %d failed\n", passed, failed)
  return failed
end

-- ---------------------------------------------------------------------------
-- Command line.

local USAGE = "usage: lua5.4 %s [--quick] [--no-python] [--verbose] %s"

--- lib.args(argv): {quick=, python=, verbose=, names={...}}.
function lib.args(argv, script, takes_names)
  local opts = { quick = false, python = true, verbose = false, names = {} }
  for i = 1, #argv do
    local a = argv[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--no-python" then opts.python = false
    elseif a == "--verbose" or a == "-v" then opts.verbose = true
    elseif a == "--help" or a == "-h" then
      printf(USAGE .. "\n", script, takes_names and "[experiments...]" or "")
      os.exit(0)
    elseif a:sub(1, 1) ~= "-" and takes_names then
      opts.names[#opts.names + 1] = a
    else
      io.stderr:write(string.format(USAGE .. "\n", script, takes_names and "[experiments...]" or ""))
      os.exit(2)
    end
  end
  return opts
end

--- lib.main(exp, ...): the last line of every experiment script.
function lib.main(exp, first, ...)
  if type(first) == "table" and first.runner then return exp end
  local opts = lib.args({ first, ... }, "experiments/" .. exp.id .. "_" .. exp.name .. ".lua")
  local result = lib.run(exp, opts)
  local failed = lib.table({ result })
  os.exit(failed == 0 and 0 or 1)
end

lib.printf = printf
return lib
