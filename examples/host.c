/* host.c: a small C program that embeds Lua and links loom statically.
** It registers a state hook so every state loom creates sees the host's own
** C function `host_add`, preloads loom.core, and runs a Lua script with its
** arguments, like the `lua` command.  `host --cycles N script` opens, runs
** and closes a fresh Lua state N times (lifecycle stress).
** SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "loom.h"

/* The host's own function, which worker threads reach through the hook. */
static int host_add (lua_State *L) {
  lua_Integer a = luaL_checkinteger(L, 1), b = luaL_checkinteger(L, 2);
  lua_pushinteger(L, a + b);
  return 1;
}

/* A state runs on one OS thread, so the limiting allocator keeps its
** count per thread.  Blocks made before the switch come from the same
** malloc, so freeing them here is fine; the count may go below zero. */
static size_t mem_limit = 0;
static _Thread_local long long mem_used = 0;

static void *limited_alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (ptr == NULL)
    osize = 0;
  if (nsize == 0) {
    free(ptr);
    mem_used -= (long long)osize;
    return NULL;
  }
  if (nsize > osize && mem_used + (long long)(nsize - osize) > (long long)mem_limit)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (p != NULL)
    mem_used += (long long)nsize - (long long)osize;
  return p;
}

/* LOOM_HOST_REFUSE=text makes the hook refuse every state with that text,
** to show how a refusal reaches the script. */
static const char *refusal = NULL;

static int prepare_state (lua_State *L, void *ud) {
  (void)ud;
  if (refusal != NULL) {
    lua_pushstring(L, refusal);   /* the message that goes with the code */
    return 3;
  }
  lua_pushcfunction(L, host_add);
  lua_setglobal(L, "host_add");
  if (mem_limit > 0) {
    mem_used = 0;
    lua_setallocf(L, limited_alloc, NULL);
  }
  return 0;
}

static int message_handler (lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static int run_script (const char *script, int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "host: cannot create state\n");
    return 1;
  }
  luaL_openlibs(L);
  lua_pushcfunction(L, host_add);
  lua_setglobal(L, "host_add");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_loom_core);
  lua_setfield(L, -2, "loom.core");
  lua_pop(L, 1);
  lua_createtable(L, argc, 1);
  lua_pushstring(L, script);
  lua_rawseti(L, -2, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setglobal(L, "arg");
  int status = 0;
  lua_pushcfunction(L, message_handler);
  if (luaL_loadfile(L, script) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    status = 1;
  }
  else {
    for (int i = 0; i < argc; i++)
      lua_pushstring(L, argv[i]);
    if (lua_pcall(L, argc, 0, 1) != LUA_OK) {
      fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
      status = 1;
    }
  }
  lua_close(L);   /* loom waits for non-daemon threads here */
  return status;
}

int main (int argc, char **argv) {
  int cycles = 1;
  int first = 1;
  if (argc > 2 && strcmp(argv[1], "--cycles") == 0) {
    cycles = atoi(argv[2]);
    first = 3;
  }
  if (first >= argc || cycles < 1) {
    fprintf(stderr, "usage: host [--cycles N] script.lua [args...]\n");
    return 2;
  }
  const char *limit = getenv("LOOM_HOST_MEMLIMIT");
  if (limit != NULL)
    mem_limit = (size_t)strtoull(limit, NULL, 10);
  refusal = getenv("LOOM_HOST_REFUSE");
  loom_set_state_hook(prepare_state, NULL);
  int status = 0;
  for (int i = 0; i < cycles && status == 0; i++)
    status = run_script(argv[first], argc - first - 1, argv + first + 1);
  return status;
}
