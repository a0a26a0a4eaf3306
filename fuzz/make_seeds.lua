-- Writes the seed corpus for fuzz/decode_fuzz.c: hand-built payloads in the
-- codec's wire format (see the tags in csrc/xfer.c), mode byte first.
local T = { NIL = 0, FALSE = 1, TRUE = 2, INT = 3, FLT = 4, STR = 5, TABLE = 6, REF = 7,
  LFUNC = 8, CFUNC = 9, OBJ = 10, GLOBALS = 11, LOADED = 12, LIGHTUD = 13, UPJOIN = 14 }
local pack = string.pack

local function str(s) return pack("<B I4", T.STR, #s) .. s end
local function int(i) return pack("<B i8", T.INT, i) end
local function flt(x) return pack("<B d", T.FLT, x) end
local function tbl(arr, hash, mt)
  local out = { pack("<B I4 I4", T.TABLE, #arr, #hash) }
  for _, v in ipairs(arr) do out[#out + 1] = v end
  for _, kv in ipairs(hash) do out[#out + 1] = kv[1] .. kv[2] end
  out[#out + 1] = mt or string.char(T.NIL)
  return table.concat(out)
end

local seeds = {
  scalars = string.char(T.NIL, T.TRUE, T.FALSE) .. int(math.mininteger) .. flt(-0.0) .. flt(0 / 0),
  string = str("hello\0world"),
  table = tbl({ int(1), str("two") }, { { str("key"), flt(1.5) } }),
  cycle = tbl({ pack("<B I4", T.REF, 0) }, { { str("self"), pack("<B I4", T.REF, 0) } }),
  nested = tbl({ tbl({ tbl({ int(3) }, {}) }, {}) }, {}),
  metatable = tbl({}, {}, tbl({}, { { str("__index"), pack("<B", T.GLOBALS) } })),
  module = pack("<B I4", T.LOADED, 6) .. "string",
  light = pack("<B I8", T.LIGHTUD, 0x1234),
}
local dir = arg[1] or "fuzz/corpus"
for name, payload in pairs(seeds) do
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write("\0", payload)
  f:close()
end
