local H = require "helpers"
local loom = require "loom"

describe("loom transfer codec", function()
  describe("upvalues", function()
    it("carries module tables reached through a nested function's upvalues", function()
      local io_, table_ = io, table
      local function join(s) return io_.write ~= nil and table_.concat({ s, s }) end
      local function task(s) return join(s), loom.now() > 0 end
      local t = loom.thread(task, "ab"):start()
      finally(function() t:join(H.t(5)) end)
      local a, b = H.result(t, 5)
      assert.are.equal("abab", a)
      assert.is_true(b)
    end)
  end)
end)
