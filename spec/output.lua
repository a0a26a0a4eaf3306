-- busted output handler: one line per failure with its message, a dot per
-- success, and the closing line CI reads: "spec: N passed, N failed".
local io, string, pairs = io, string, pairs

return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.base"()

  local function report(element, _, message, trace)
    io.write("\nFAIL ", handler.getFullName(element), "\n")
    if trace and trace.short_src then
      io.write("  at ", trace.short_src, ":", trace.currentline or "?", "\n")
    end
    io.write("  ", string.gsub(tostring(message), "\n", "\n  "), "\n")
    io.flush()
  end

  handler.testEnd = function(element, parent, status, trace)
    if status == "success" then
      io.write(".")
      io.flush()
    elseif status == "pending" then
      io.write("p")
    end
    return nil, true
  end

  handler.failure = function(element, parent, message, trace)
    report(element, parent, message, trace)
    return nil, true
  end

  handler.suiteEnd = function()
    local failed = handler.failuresCount + handler.errorsCount
    io.write("\n")
    for _, p in pairs(handler.pendings) do
      io.write("pending: ", p.name, "\n")
    end
    io.write(string.format("spec: %d passed, %d failed\n",
      handler.successesCount, failed))
    io.flush()
    return nil, true
  end

  busted.subscribe({ "test", "end" }, handler.testEnd, { predicate = handler.cancelOnPending })
  busted.subscribe({ "failure" }, handler.failure)
  busted.subscribe({ "error" }, handler.failure)
  busted.subscribe({ "suite", "end" }, handler.suiteEnd)
  return handler
end
