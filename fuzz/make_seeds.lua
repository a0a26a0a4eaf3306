-- Writes the seed corpus for fuzz/decode_fuzz.c: hand-built payloads in the
-- codec's wire format (see the tags in csrc/xfer.c), mode byte first.
local T = { NIL = 0, FALSE = 1, TRUE = 2, INT = 3, FLT = 4, STR = 5, TABLE = 6, REF = 7,
  LFUNC = 8, CFUNC = 9, OBJ = 10, GLOBALS = 11, LOADED = 12, LIGHTUD = 13, UPJOIN = 14,
  CNAMED = 15 }
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
-- loom.encode strings (mode byte 2): the header of this machine, then a
-- payload; the fuzz target does not check their checksum.
local function portable(payload)
  local head = "LOOM" .. string.char(1, 0x54, 8, 8, 8, 1) .. ("\0"):rep(6) ..
    pack("<I8 I8", #payload, 0)
  return head .. payload
end
local portables = {
  p_table = tbl({ int(1), str("two") }, { { str("self"), pack("<B I4", T.REF, 0) } }),
  p_cfunc = pack("<B I4", T.CNAMED, 6) .. "string" .. pack("<I4", 6) .. "format",
  p_module = pack("<B I4", T.CNAMED, 5) .. "print" .. pack("<I4", 0),
}
local dir = arg[1] or "fuzz/corpus"
local function write(name, mode, payload)
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(mode, payload)
  f:close()
end
for name, payload in pairs(seeds) do
  write(name, "\0", payload)
end
for name, payload in pairs(portables) do
  write(name, "\2", portable(payload))
end
