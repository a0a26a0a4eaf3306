/* A host that calls into one Lua state from several OS threads of its own,
** one at a time (as clingo's solver threads do): the script's global
** function `visit` runs on the main thread, then on each of two threads in
** turn, each passing its own OS thread id. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lualib.h"

static lua_State *L;
static int failed;

static void *visit (void *arg) {
  (void)arg;
  lua_getglobal(L, "visit");
  lua_pushinteger(L, (lua_Integer)syscall(SYS_gettid));
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    printf("%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    failed = 1;
  }
  return NULL;
}

int main (int argc, char **argv) {
  L = luaL_newstate();
  luaL_openlibs(L);
  if (argc < 2 || luaL_dofile(L, argv[1]) != LUA_OK) {
    printf("%s\n", argc < 2 ? "usage: foreign_threads script.lua" : lua_tostring(L, -1));
    return 1;
  }
  visit(NULL);
  for (int i = 0; i < 2; i++) {
    pthread_t t;
    pthread_create(&t, NULL, visit, NULL);
    pthread_join(t, NULL);
  }
  visit(NULL);
  lua_getglobal(L, "report");
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    printf("%s\n", lua_tostring(L, -1));
    failed = 1;
  }
  lua_close(L);
  return failed;
}
