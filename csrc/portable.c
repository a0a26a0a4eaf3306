/* portable.c: a string form of Lua values that can be stored, or sent to
** another machine of the same architecture running the same Lua.
** Lua: loom.encode(...) -> string;  loom.decode(s) -> ...
** The payload is the transfer codec's (xfer.c) without addresses, behind a
** header that says what wrote it and guards the payload with a checksum.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <string.h>

/* The header, 32 bytes; multi-byte fields in the writer's byte order, which
** byte 9 names, and read only once the architecture matched:
**   0  "LOOM"        4  format version      5  Lua version (0x54)
**   6  sizeof(lua_Integer)  7  sizeof(lua_Number)  8  sizeof(void *)
**   9  1 little-endian, 0 big-endian        10..15  zero
**   16 payload length (u64)                 24 payload checksum (u64) */
#define PORT_HEAD     32
#define PORT_VERSION  1
#define PORT_LUA      ((LUA_VERSION_NUM / 100) * 16 + LUA_VERSION_NUM % 100)

static unsigned little_endian (void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b;
}

static void arch_bytes (unsigned char *h) {
  h[6] = (unsigned char)sizeof(lua_Integer);
  h[7] = (unsigned char)sizeof(lua_Number);
  h[8] = (unsigned char)sizeof(void *);
  h[9] = (unsigned char)little_endian();
}

static void head_fill (unsigned char *h, const unsigned char *payload,
                       size_t len) {
  uint64_t n = len, sum = loomi_xfer_checksum(payload, len);
  memset(h, 0, PORT_HEAD);
  memcpy(h, "LOOM", 4);
  h[4] = PORT_VERSION;
  h[5] = PORT_LUA;
  arch_bytes(h);
  memcpy(h + 16, &n, 8);
  memcpy(h + 24, &sum, 8);
}

static void push_arch (lua_State *L, const unsigned char *h) {
  lua_pushfstring(L, "%s-endian, %d-byte integers, %d-byte floats, "
                  "%d-bit pointers", h[9] ? "little" : "big", (int)h[6],
                  (int)h[7], (int)h[8] * 8);
}

/* Checks the header of s (n bytes) and returns the payload's length;
** raises, saying what differs, on anything this build cannot read. */
static size_t check_head (lua_State *L, const unsigned char *s, size_t n,
                          int checksum) {
  if (n < 5 || memcmp(s, "LOOM", 4) != 0)
    luaL_error(L, "cannot decode: not a string from loom.encode");
  if (s[4] != PORT_VERSION)
    luaL_error(L, "cannot decode: format version %d (this loom reads "
               "version %d)", (int)s[4], PORT_VERSION);
  if (n < PORT_HEAD)
    luaL_error(L, "cannot decode: truncated (%d bytes)", (int)n);
  if (s[5] != PORT_LUA)
    luaL_error(L, "cannot decode: encoded by Lua %d.%d, this is Lua %d.%d",
               s[5] >> 4, s[5] & 15, PORT_LUA >> 4, PORT_LUA & 15);
  unsigned char here[PORT_HEAD];
  arch_bytes(here);
  if (memcmp(s + 6, here + 6, 4) != 0) {
    push_arch(L, s);
    push_arch(L, here);
    luaL_error(L, "cannot decode: encoded on another architecture (%s; "
               "this one: %s)", lua_tostring(L, -2), lua_tostring(L, -1));
  }
  uint64_t len, sum;
  memcpy(&len, s + 16, 8);
  memcpy(&sum, s + 24, 8);
  if (len != n - PORT_HEAD)
    luaL_error(L, "cannot decode: %s (%d payload bytes, the header says "
               "%d)", len > n - PORT_HEAD ? "truncated" : "trailing bytes",
               (int)(n - PORT_HEAD), (int)(len > INT32_MAX ? INT32_MAX : len));
  if (checksum && loomi_xfer_checksum(s + PORT_HEAD, (size_t)len) != sum)
    luaL_error(L, "cannot decode: checksum mismatch (the string was altered)");
  return (size_t)len;
}

static int portable_encode (lua_State *L) {
  int n = lua_gettop(L);
  loomi_xfer_encode_portable(L, 1, n, PORT_HEAD, head_fill);
  return 1;
}

/* Bytecode is loaded as load(s, nil, "b") would: Lua does not verify it,
** so only the checksum stands between a corrupted string and the VM.  A
** string forged to pass it is as dangerous as forged bytecode. */
static int portable_decode (lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  size_t len = check_head(L, s, n, 1);
  lua_settop(L, 1);   /* keeps s alive while decoding */
  return loomi_xfer_decode_portable(L, s + PORT_HEAD, len, 0);
}

/* For the fuzzer: the header checks without the checksum, and then the
** payload with bytecode refused; raises on bad input. */
int loomi_portable_decode_unchecked (lua_State *L, const void *s, size_t n) {
  size_t len = check_head(L, s, n, 0);
  return loomi_xfer_decode_portable(L, (const unsigned char *)s + PORT_HEAD,
                                    len, 1);
}

static const luaL_Reg portable_funcs[] = {
  {"encode", portable_encode},
  {"decode", portable_decode},
  {NULL, NULL}
};

void loomi_portable_open (lua_State *L) {
  luaL_setfuncs(L, portable_funcs, 0);
}
