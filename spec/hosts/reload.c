/* A host that makes, uses and closes its Lua state again and again (as
** gnuplot does on `reset`), running the script named by argv[1] in each;
** prints the process's OS thread count after every close. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

#include "lauxlib.h"
#include "lualib.h"

static int os_threads (void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  if (d == NULL)
    return -1;
  for (struct dirent *e; (e = readdir(d)) != NULL; )
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

int main (int argc, char **argv) {
  int rounds = argc > 2 ? atoi(argv[2]) : 10;
  for (int i = 0; i < rounds; i++) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (argc < 2 || luaL_dofile(L, argv[1]) != LUA_OK) {
      printf("%s\n", argc < 2 ? "usage: reload script.lua [rounds]" : lua_tostring(L, -1));
      return 1;
    }
    lua_close(L);
    printf("%d\n", os_threads());
    fflush(stdout);
  }
  return 0;
}
