/* core.c: luaopen_loom_core, the states loom creates, small utilities.
** Lua: loom.core.now(), cpu_count(), configure{heap_size=}, heap_size(),
**      heap_used(), heap(); every primitive's functions are added by its open.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The host's state hook (loom.h).  Process-global by design: a host installs
** it once; every state loom creates runs it. */
static pthread_mutex_t hook_mu = PTHREAD_MUTEX_INITIALIZER;
static loom_StateHook state_hook = NULL;
static void *state_hook_ud = NULL;

LOOM_API void loom_set_state_hook (loom_StateHook hook, void *ud) {
  pthread_mutex_lock(&hook_mu);
  state_hook = hook;
  state_hook_ud = ud;
  pthread_mutex_unlock(&hook_mu);
}

/* Fork safety for what core.c owns: hook_mu is private to the process. */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void core_prefork (void) {
  pthread_mutex_lock(&hook_mu);
}

static void core_postfork_parent (void) {
  pthread_mutex_unlock(&hook_mu);
}

static void core_postfork_child (void) {
  pthread_mutex_unlock(&hook_mu);
}

/* The signal mask of the thread that first opened loom in this process
** (the host's, before any loom thread, which blocks every signal, exists):
** what every forked child starts with, whichever thread forks it. */
static sigset_t original_mask;

/* A process that exits without closing its states (os.exit without
** close, hosts that never call lua_close) ends its threads and children
** as closing would; then there are none left for this to do. */
static void core_atexit (void) {
  loomi_thread_atexit();
  loomi_process_atexit();
}

static void core_register_fork (void) {
  pthread_sigmask(SIG_SETMASK, NULL, &original_mask);
  pthread_atfork(core_prefork, core_postfork_parent, core_postfork_child);
  atexit(core_atexit);
}

void loomi_child_sigmask (void) {
  pthread_sigmask(SIG_SETMASK, &original_mask, NULL);
}

static int run_host_hook (lua_State *L) {
  pthread_mutex_lock(&hook_mu);
  loom_StateHook hook = state_hook;
  void *ud = state_hook_ud;
  pthread_mutex_unlock(&hook_mu);
  return hook != NULL ? hook(L, ud) : 0;
}

typedef struct Paths { const char *path, *cpath; } Paths;

static int open_state (lua_State *L) {
  const Paths *p = lua_touserdata(L, 1);
  const char *path = p->path, *cpath = p->cpath;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  if (path != NULL) {
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
  }
  if (cpath != NULL) {
    lua_pushstring(L, cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  /* opened on first require, or when a loom object first arrives
  ** (loomi_proxy_push): half a state's making, which a thread that never
  ** touches loom need not pay */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_loom_core);
  lua_setfield(L, -2, "loom.core");
  lua_pop(L, 1);
  loomi_preload_install(L);
  int top = lua_gettop(L);
  int rc = run_host_hook(L);
  if (rc != 0) {
    if (lua_gettop(L) > top && lua_type(L, -1) == LUA_TSTRING)
      return luaL_error(L, "state hook failed with code %d: %s", rc,
                        lua_tostring(L, -1));
    return luaL_error(L, "state hook failed with code %d", rc);
  }
  return 0;
}

lua_State *loomi_newstate (const char *path, const char *cpath,
                           char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    snprintf(err, errlen, "not enough memory");
    return NULL;
  }
  Paths p = { path, cpath };
  lua_pushcfunction(L, open_state);
  lua_pushlightuserdata(L, &p);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    snprintf(err, errlen, "%s", msg ? msg : "cannot open state");
    lua_close(L);
    return NULL;
  }
  return L;
}

int loomi_argcount (lua_State *L, int t) {
  lua_Integer n;
  int isint = 1;
  if (lua_getfield(L, t, "n") == LUA_TNIL)
    n = (lua_Integer)lua_rawlen(L, t);
  else
    n = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  /* checked as a lua_Integer: 2^32 - 4 or 2^31 must not wrap to a small
  ** or negative int */
  if (!isint || n < 0 || n > LOOM_MAXARGS)
    return luaL_error(L, "args.n must be an integer from 0 to %d", LOOM_MAXARGS);
  return (int)n;
}

static int core_now (lua_State *L) {
  lua_pushnumber(L, loomi_now());
  return 1;
}

static int core_cpu_count (lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static int core_configure (lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getfield(L, 1, "heap_size") != LUA_TNIL) {
    int isint;
    lua_Integer n = lua_tointegerx(L, -1, &isint);   /* 64 * 2^20 is one too */
    luaL_argcheck(L, isint && lua_type(L, -1) == LUA_TNUMBER, 1,
                  "heap_size must be an integer");
    luaL_argcheck(L, n >= (1 << 20), 1, "heap_size must be at least 1 MiB");
    luaL_argcheck(L, (lua_Unsigned)n <= ((lua_Unsigned)1 << 46), 1,
                  "heap_size must be at most 64 TiB");
    int err = loomi_heap_configure((size_t)n);
    if (err == EBUSY)
      return luaL_error(L, "heap_size can only be set before the first loom object exists");
    if (err != 0) {
      luaL_pushfail(L);
      lua_pushfstring(L, "shared heap: %s", strerror(err));
      lua_pushinteger(L, err);
      return 3;
    }
  }
  lua_pop(L, 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int core_heap_size (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)loomi_heap_size());
  return 1;
}

static int core_heap_used (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)loomi_heap_used());
  return 1;
}

/* {size=, used=, free=, largest_free=, free_blocks=, recovered=}: the stats are taken
** first, under the heap's lock, and pushed after it is released. */
static int core_heap (lua_State *L) {
  LoomHeapStats st;
  loomi_heap_stats(&st);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)st.size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)st.used);
  lua_setfield(L, -2, "used");
  lua_pushinteger(L, (lua_Integer)st.free);
  lua_setfield(L, -2, "free");
  lua_pushinteger(L, (lua_Integer)st.largest_free);
  lua_setfield(L, -2, "largest_free");
  lua_pushinteger(L, (lua_Integer)st.free_blocks);
  lua_setfield(L, -2, "free_blocks");
  lua_pushinteger(L, (lua_Integer)st.recovered);
  lua_setfield(L, -2, "recovered");
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"now", core_now},
  {"cpu_count", core_cpu_count},
  {"configure", core_configure},
  {"heap_size", core_heap_size},
  {"heap_used", core_heap_used},
  {"heap", core_heap},
  {NULL, NULL}
};

/* Adding a primitive means one new file and one new row. */
static const struct {
  const char *name;
  void (*open) (lua_State *L);
} primitives[] = {
  {"thread", loomi_thread_open},
  {"gil", loomi_gil_open},
  {"lock", loomi_lock_open},
  {"semaphore", loomi_sem_open},
  {"condition", loomi_cond_open},
  {"event", loomi_event_open},
  {"barrier", loomi_barrier_open},
  {"value", loomi_value_open},
  {"array", loomi_array_open},
  {"queue", loomi_queue_open},
  {"process", loomi_process_open},
  {"pool", loomi_pool_open},
  {"portable", loomi_portable_open},
  {"notifier", loomi_notify_open},
};

/* A thread may still be leaving loom's code when the state that loaded the
** library closes and unloads it: pin the library for the process's life,
** whatever flags it was linked with (LuaRocks builds cannot pass -z
** nodelete). */
static pthread_once_t pin_once = PTHREAD_ONCE_INIT;

static void pin_library (void) {
  Dl_info info;
  if (dladdr((void *)(uintptr_t)luaopen_loom_core, &info) != 0 &&
      info.dli_fname != NULL)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

LOOM_API int luaopen_loom_core (lua_State *L) {
  pthread_once(&pin_once, pin_library);
  pthread_once(&fork_once, core_register_fork);
  int err = loomi_heap_init();
  if (err != 0) {
    size_t n;
    if (loomi_heap_env(&n) < 0)
      return luaL_error(L, "invalid LOOM_HEAP_SIZE '%s': bytes (at least 1 MiB), "
                        "or a number with a K, M or G suffix", getenv("LOOM_HEAP_SIZE"));
    return luaL_error(L, "cannot map the shared heap of %d MiB: %s (set "
                      "LOOM_HEAP_SIZE to a smaller size, such as 64M)",
                      (int)(loomi_heap_size() >> 20), strerror(err));
  }
  lua_newtable(L);
  luaL_setfuncs(L, core_funcs, 0);
  lua_pushliteral(L, "loom " LOOM_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, LOOM_VERSION_MAJOR);
  lua_setfield(L, -2, "major");
  lua_pushinteger(L, LOOM_VERSION_MINOR);
  lua_setfield(L, -2, "minor");
  lua_pushinteger(L, LOOM_VERSION_PATCH);
  lua_setfield(L, -2, "patch");
  lua_setfield(L, -2, "version");
  for (size_t i = 0; i < sizeof primitives / sizeof primitives[0]; i++)
    primitives[i].open(L);
  loomi_preload_open(L);
  return 1;
}
