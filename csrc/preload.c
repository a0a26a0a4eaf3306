/* preload.c: modules of the host's own state, offered to every state loom
** makes.  A host that registers a module in its state (with luaL_requiref,
** say) leaves it out of reach of threads and workers, whose fresh states
** only find what is on package.path and package.cpath.  loom.preload(name,
** value) keeps an encoded copy of the module, or of a loader function, and
** a searcher that every loom-made state has finds it on `require`.
** Lua: loom.core.preload(name, [value])
**
** The entries are private to the process (a forked child has its own copy),
** and their bytes are too: a child may drop or replace an entry without
** touching its parent's.  An entry is immutable once made; replacing one
** swaps the pointer, and the old one goes when the last decoder lets go.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct Preload {
  struct Preload *next;
  unsigned refs;          /* the list's, plus one per decode running */
  int loader;             /* the value is a loader function to call */
  int32_t pid;            /* the encoding process, for its C functions */
  size_t len;
  char *name;
  unsigned char bytes[];  /* the encoded value */
} Preload;

static pthread_mutex_t preload_mu = PTHREAD_MUTEX_INITIALIZER;
static Preload *preloads = NULL;

static void preload_unref (Preload *p) {
  pthread_mutex_lock(&preload_mu);
  unsigned left = --p->refs;
  pthread_mutex_unlock(&preload_mu);
  if (left == 0) {
    free(p->name);
    free(p);
  }
}

/* A fork while another thread holds the mutex must not leave it locked in
** the child: taken around fork, released on both sides. */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void prefork (void) { pthread_mutex_lock(&preload_mu); }
static void postfork (void) { pthread_mutex_unlock(&preload_mu); }
static void register_fork (void) {
  pthread_atfork(prefork, postfork, postfork);
}

/* Encodes the value at idx into a new entry; raises with the path of what
** cannot be kept. */
static Preload *preload_encode (lua_State *L, int idx, const char *name) {
  unsigned char small[4096];
  size_t len = sizeof small;
  LoomMsg *m = loomi_xfer_encode_inline(L, idx, 1, "module", small, &len);
  unsigned char *big = NULL;   /* the collector's, whatever raises */
  if (m != NULL) {   /* too large for `small`, or holding loom objects */
    len = loomi_msg_size(m);
    loomi_msg_free(m);
    big = lua_newuserdatauv(L, len > 0 ? len : 1, 0);
    size_t cap = len;
    m = loomi_xfer_encode_inline(L, idx, 1, "module", big, &len);
    if (m != NULL || len > cap) {
      loomi_msg_free(m);
      luaL_error(L, "bad argument #2 to 'preload' (a module cannot hold loom "
                 "objects: give them to threads as arguments)");
    }
  }
  Preload *p = malloc(sizeof *p + len);
  char *copy = strdup(name);
  if (p == NULL || copy == NULL) {
    free(p);
    free(copy);
    luaL_error(L, "not enough memory");
  }
  memcpy(p->bytes, big != NULL ? big : small, len);
  if (big != NULL)
    lua_pop(L, 1);
  p->len = len;
  p->name = copy;
  p->refs = 1;
  p->pid = (int32_t)getpid();
  p->loader = lua_type(L, idx) == LUA_TFUNCTION;
  p->next = NULL;
  return p;
}

/* Puts p in the list under its name (NULL: removes the name). */
static void preload_set (const char *name, Preload *p) {
  Preload *old = NULL;
  pthread_mutex_lock(&preload_mu);
  Preload **at = &preloads;
  while (*at != NULL && strcmp((*at)->name, name) != 0)
    at = &(*at)->next;
  if (*at != NULL) {
    old = *at;
    *at = old->next;
  }
  if (p != NULL) {
    p->next = preloads;
    preloads = p;
  }
  pthread_mutex_unlock(&preload_mu);
  if (old != NULL)
    preload_unref(old);
}

/* preload(name, [value]): value nil takes package.loaded[name] of the
** caller; false removes the entry; a function is a loader, called as
** package.preload's are (name, ":preload:"); anything else is the module. */
static int preload_register (lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_argcheck(L, name[0] != '\0', 1, "module name must not be empty");
  pthread_once(&fork_once, register_fork);
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, name) == LUA_TNIL)
      return luaL_error(L, "bad argument #2 to 'preload' (no value given, "
                        "and module '%s' is not loaded here)", name);
    lua_replace(L, 2);
    lua_pop(L, 1);
  }
  if (lua_type(L, 2) == LUA_TBOOLEAN && !lua_toboolean(L, 2)) {
    preload_set(name, NULL);
    return 0;
  }
  if (lua_istable(L, 2)) {
    /* the codec sends a table of package.loaded by its name, to be
    ** required on arrival: the module's own table goes as a copy */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, 3);
    }
    if (lua_getmetatable(L, 2))
      lua_setmetatable(L, 3);
    lua_replace(L, 2);
  }
  preload_set(name, preload_encode(L, 2, name));
  return 0;
}

static int return_upvalue (lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

/* Protected: decodes entry upvalue-1 and pushes its loader. */
static int decode_loader (lua_State *L) {
  Preload *p = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (loomi_xfer_decode_inline(L, p->bytes, p->len, p->pid) != 1)
    return luaL_error(L, "preloaded module '%s' did not decode to one value",
                      p->name);
  if (!p->loader)
    lua_pushcclosure(L, return_upvalue, 1);
  return 1;
}

/* The searcher: a loader for a preloaded name, or why there is none. */
static int preload_search (lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  pthread_mutex_lock(&preload_mu);
  Preload *p = preloads;
  while (p != NULL && strcmp(p->name, name) != 0)
    p = p->next;
  if (p != NULL)
    p->refs++;
  pthread_mutex_unlock(&preload_mu);
  if (p == NULL) {
    lua_pushfstring(L, "no loom.preload entry '%s'", name);
    return 1;
  }
  lua_pushcfunction(L, decode_loader);
  lua_pushlightuserdata(L, p);
  int rc = lua_pcall(L, 1, 1, 0);
  preload_unref(p);
  if (rc != LUA_OK)
    return lua_error(L);
  lua_pushliteral(L, ":preload:");
  return 2;
}

/* Second in package.searchers, after package.preload's own: a host module
** wins over a file of the same name, as it does in the host's state. */
void loomi_preload_install (lua_State *L) {
  int top = lua_gettop(L);
  if (lua_getglobal(L, "package") == LUA_TTABLE &&
      lua_getfield(L, -1, "searchers") == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = n; i >= 2; i--) {
      lua_rawgeti(L, -1, i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, preload_search);
    lua_rawseti(L, -2, n >= 1 ? 2 : 1);
  }
  lua_settop(L, top);
}

void loomi_preload_open (lua_State *L) {
  lua_pushcfunction(L, preload_register);
  lua_setfield(L, -2, "preload");
}
