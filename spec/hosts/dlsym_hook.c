/* A host that loads the LuaRocks-built loom/core.so like any C module and
** finds loom_set_state_hook with dlsym, to give every state loom makes its
** own C function.  Runs the script named by argv[1]. */
#include <dlfcn.h>
#include <stdio.h>

#include "lauxlib.h"
#include "lualib.h"

typedef int (*StateHook) (lua_State *L, void *ud);
typedef void (*SetStateHook) (StateHook hook, void *ud);

static int host_twice (lua_State *L) {
  lua_pushinteger(L, 2 * luaL_checkinteger(L, 1));
  return 1;
}

static int register_host (lua_State *L, void *ud) {
  (void)ud;
  lua_register(L, "host_twice", host_twice);
  return 0;
}

int main (int argc, char **argv) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_register(L, "host_twice", host_twice);
  /* where require would find loom.core, then the already loaded library */
  if (luaL_dostring(L, "require 'loom'; return package.searchpath('loom.core', package.cpath)") != 0) {
    printf("%s\n", lua_tostring(L, -1));
    return 1;
  }
  void *lib = dlopen(lua_tostring(L, -1), RTLD_NOW | RTLD_NOLOAD);
  lua_pop(L, 1);
  SetStateHook set_hook = lib != NULL ? (SetStateHook)(void (*)(void))dlsym(lib, "loom_set_state_hook") : NULL;
  if (set_hook == NULL) {
    printf("loom_set_state_hook not found: %s\n", dlerror());
    return 1;
  }
  set_hook(register_host, NULL);
  int rc = argc > 1 ? luaL_dofile(L, argv[1]) : 0;
  if (rc != 0)
    printf("%s\n", lua_tostring(L, -1));
  lua_close(L);
  dlclose(lib);
  return rc != 0;
}
