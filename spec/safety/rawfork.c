/* rawfork.c: a Lua module whose fork() is the bare system call, as a
** library other than loom would make it (luaposix): for specs of what a
** child that loom did not fork may do with what it inherited.
** SPDX-License-Identifier: MIT */
#include <sys/wait.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

static int rawfork_fork (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fork());
  return 1;
}

static int rawfork_exit (lua_State *L) {
  _exit((int)luaL_optinteger(L, 1, 0));
  return 0;
}

static int rawfork_wait (lua_State *L) {
  int status = 0;
  pid_t pid = waitpid((pid_t)luaL_checkinteger(L, 1), &status, 0);
  lua_pushinteger(L, pid);
  lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return 2;
}

int luaopen_rawfork (lua_State *L);

int luaopen_rawfork (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"fork", rawfork_fork}, {"exit", rawfork_exit}, {"wait", rawfork_wait},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
