/* A host that links Lua statically without exporting its symbols (no
** -Wl,-E): a C module it loads cannot resolve the Lua API.  Runs the
** script named by argv[1] and prints its error, if any. */
#include <stdio.h>

#include "lauxlib.h"
#include "lualib.h"

int main (int argc, char **argv) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  int rc = argc > 1 ? luaL_dofile(L, argv[1]) : 0;
  if (rc != 0)
    printf("%s\n", lua_tostring(L, -1));
  lua_close(L);
  return rc != 0;
}
