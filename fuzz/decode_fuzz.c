/* decode_fuzz.c: libFuzzer target for the transfer codec's decoder.
** The first input byte picks the mode: odd, the rest is a whole message
** image whose header and checksum must hold before anything is decoded;
** 2 mod 4, a loom.encode string (portable.c) whose checksum is not checked
** so that mutations reach its payload, bytecode refused; otherwise a bare
** payload (bytecode refused: Lua does not verify bytecode, so only messages
** that pass the integrity check may carry it).
** Any input must end in values or a clean Lua error, never a crash.
** SPDX-License-Identifier: MIT */
#include <stddef.h>
#include <stdint.h>

#include "loomint.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static int decode (lua_State *L) {
  const uint8_t *data = lua_touserdata(L, 1);
  size_t size = (size_t)lua_tointeger(L, 2);
  lua_settop(L, 0);
  if (data[0] & 1)
    return loomi_xfer_decode_checked(L, data + 1, size - 1);
  if ((data[0] & 3) == 2)
    return loomi_portable_decode_unchecked(L, data + 1, size - 1);
  return loomi_xfer_decode_raw(L, data + 1, size - 1);
}

static lua_State *fuzz_state (void) {
  static lua_State *L = NULL;   /* one state for the whole run */
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "loom.core", luaopen_loom_core, 0);
    lua_pop(L, 1);
    /* a decoded module name must not load anything from disk */
    lua_getglobal(L, "package");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  return L;
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  lua_State *L = fuzz_state();
  lua_pushcfunction(L, decode);
  lua_pushlightuserdata(L, (void *)(uintptr_t)data);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pcall(L, 2, LUA_MULTRET, 0);
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
