/* obj.c: refcounted shared objects, the proxies that hold them in a
** lua_State, and the process-shared robust mutex and condition helpers.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdlib.h>

/* A proxy: the object and the process its reference belongs to.  A forked
** child inherits its states' proxies but not the references they stand for
** (the counts live in the shared heap, and the parent's proxies still hold
** theirs), so a proxy only ever releases in the process that made it: in
** any other it lets go without releasing.  loom's own fork takes, in the
** parent, a reference for the child on every object the forking state
** holds (loomi_proxy_hold), which the parent gives back once the child is
** reaped; the child writes nothing on what it inherited. */
typedef struct Proxy {
  LoomObj *o;              /* first: code elsewhere reads a proxy as LoomObj** */
  pid_t owner;
} Proxy;

LoomObj *loomi_obj_new (size_t size, const char *tname, LoomDestroy destroy) {
  LoomObj *o = loomi_heap_calloc(size);
  if (o == NULL)
    return NULL;
  atomic_init(&o->refs, 1);
  o->tname = tname;
  o->destroy = destroy;
  return o;
}

void loomi_obj_retain (LoomObj *o) {
  atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

void loomi_obj_release (LoomObj *o) {
  if (o == NULL)
    return;
  if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) {
    if (o->destroy != NULL)
      o->destroy(o);
    loomi_heap_free(o);
  }
}

/* Every proxy of a state is remembered in a table, so that loom's fork can
** take a reference for the child on each one's object.  A sequence with
** weak values: appending costs less than a weak-keyed insert, and a
** collected proxy leaves a hole that a later append refills (it goes at
** a border, which is always a hole or the end). */
static const char PROXIES_KEY = 'p';

void loomi_proxy_table (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 8);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
  }
}

/* Records the proxy on top of the stack in the table at tbl. */
static void proxy_track_in (lua_State *L, int tbl) {
  tbl = lua_absindex(L, tbl);
  lua_Unsigned border = lua_rawlen(L, tbl);
  lua_pushvalue(L, -1);
  lua_rawseti(L, tbl, (lua_Integer)border + 1);
}

static void proxy_track (lua_State *L) {
  /* stack: proxy */
  loomi_proxy_table(L);
  lua_insert(L, -2);                  /* table proxy */
  proxy_track_in(L, -2);
  lua_remove(L, -2);
}

static Proxy *proxy_alloc (lua_State *L, int nuv) {
  Proxy *p = lua_newuserdatauv(L, sizeof(Proxy), nuv);
  p->o = NULL;
  p->owner = loomi_self_pid();
  return p;
}

LoomObj **loomi_proxy_new (lua_State *L, const char *tname) {
  Proxy *p = proxy_alloc(L, 1);
  luaL_setmetatable(L, tname);
  proxy_track(L);
  return &p->o;
}

LoomObj **loomi_proxy_new_at (lua_State *L, int mt, int tbl, int nuv) {
  Proxy *p = proxy_alloc(L, nuv);
  lua_pushvalue(L, mt);
  lua_setmetatable(L, -2);
  proxy_track_in(L, tbl);
  return &p->o;
}

void loomi_proxy_push (lua_State *L, LoomObj *o) {
  Proxy *p = proxy_alloc(L, 1);
  proxy_track(L);
  if (luaL_getmetatable(L, o->tname) != LUA_TTABLE) {
    /* a state loom made opens loom.core on demand (loomi_newstate) */
    lua_pop(L, 1);
    luaL_checkstack(L, 4, "cannot open loom.core");
    luaL_requiref(L, "loom.core", luaopen_loom_core, 0);
    lua_pop(L, 1);
    if (luaL_getmetatable(L, o->tname) != LUA_TTABLE)
      luaL_error(L, "loom type %s is not registered in this state", o->tname);
  }
  lua_setmetatable(L, -2);
  loomi_obj_retain(o);
  p->o = o;
}

LoomObj *loomi_checkobj (lua_State *L, int arg, const char *tname) {
  LoomObj **slot = luaL_checkudata(L, arg, tname);
  if (*slot == NULL)
    luaL_error(L, "attempt to use a closed %s", tname);
  return *slot;
}

/* Recognises a proxy by the __loom field every loom metatable carries. */
LoomObj *loomi_toobj (lua_State *L, int idx) {
  LoomObj *o = NULL;
  if (lua_type(L, idx) == LUA_TUSERDATA && lua_getmetatable(L, idx)) {
    if (lua_getfield(L, -1, "__loom") == LUA_TBOOLEAN) {
      LoomObj **slot = lua_touserdata(L, idx);
      o = *slot;
    }
    lua_pop(L, 2);
  }
  return o;
}

int loomi_proxy_gc (lua_State *L) {
  Proxy *p = lua_touserdata(L, 1);
  if (p != NULL && p->o != NULL) {
    LoomObj *o = p->o;
    p->o = NULL;
    if (p->owner == loomi_self_pid())
      loomi_obj_release(o);
  }
  return 0;
}

/* Calls fn on every open proxy of L's state; allocates nothing, so no
** collection runs meanwhile. */
static void proxy_each (lua_State *L, void (*fn) (Proxy *p, void *ud),
                        void *ud) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    Proxy *p = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (p != NULL && p->o != NULL)
      fn(p, ud);
  }
  lua_pop(L, 1);
}

static void count_one (Proxy *p, void *ud) {
  (void)p;
  (*(size_t *)ud)++;
}

typedef struct HoldFill { LoomHeld *h; size_t cap; } HoldFill;

static void hold_one (Proxy *p, void *ud) {
  HoldFill *f = ud;
  if (f->h->n < f->cap) {    /* always: nothing ran between the two walks */
    loomi_obj_retain(p->o);
    f->h->objs[f->h->n++] = p->o;
  }
}

LoomHeld *loomi_proxy_hold (lua_State *L) {
  size_t n = 0;
  proxy_each(L, count_one, &n);
  LoomHeld *h = loomi_heap_alloc(sizeof(LoomHeld) + n * sizeof(LoomObj *));
  if (h == NULL)
    return NULL;
  h->n = 0;
  HoldFill f = { h, n };
  proxy_each(L, hold_one, &f);
  return h;
}

void loomi_held_release (LoomHeld *h) {
  if (h == NULL)
    return;
  for (size_t i = 0; i < h->n; i++)
    loomi_obj_release(h->objs[i]);
  loomi_heap_free(h);
}

static void release_own (Proxy *p, void *ud) {
  pid_t *self = ud;
  if (p->owner == *self) {
    LoomObj *o = p->o;
    p->o = NULL;
    loomi_obj_release(o);
  }
}

void loomi_proxy_release_own (lua_State *L) {
  pid_t self = loomi_self_pid();
  proxy_each(L, release_own, &self);
}

static int proxy_tostring (lua_State *L) {
  LoomObj **slot = lua_touserdata(L, 1);
  const char *tname = "loom object";
  if (lua_getmetatable(L, 1)) {
    if (lua_getfield(L, -1, "__name") == LUA_TSTRING)
      tname = lua_tostring(L, -1);
    lua_pop(L, 1);   /* tname stays alive through the metatable */
  }
  if (slot == NULL || *slot == NULL)
    lua_pushfstring(L, "%s (closed)", tname);
  else
    lua_pushfstring(L, "%s (%p)", tname, (void *)*slot);
  return 1;
}

static int proxy_eq (lua_State *L) {
  LoomObj **a = lua_touserdata(L, 1), **b = lua_touserdata(L, 2);
  lua_pushboolean(L, a != NULL && b != NULL && *a != NULL && *a == *b);
  return 1;
}

void loomi_newclass (lua_State *L, const char *tname,
                     const luaL_Reg *meta, const luaL_Reg *methods) {
  if (!luaL_newmetatable(L, tname)) {   /* already built in this state */
    lua_pop(L, 1);
    return;
  }
  luaL_setfuncs(L, meta, 0);
  static const struct { const char *name; lua_CFunction fn; } defaults[] = {
    {"__gc", loomi_proxy_gc}, {"__close", loomi_proxy_gc},
    {"__tostring", proxy_tostring}, {"__eq", proxy_eq},
  };
  for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
    if (lua_getfield(L, -1, defaults[i].name) == LUA_TNIL) {
      lua_pushcfunction(L, defaults[i].fn);
      lua_setfield(L, -3, defaults[i].name);
    }
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "__loom");
  if (methods != NULL) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* The attributes every loom mutex and condition is made with: built once
** per process (a fork inherits them), never changed or destroyed after,
** so that making a shared object (a pool's Future, for every task) does
** not build and tear them down each time. */
static pthread_mutexattr_t mutex_attr;
static pthread_condattr_t cond_attr;
static int attr_err;
static pthread_once_t attr_once = PTHREAD_ONCE_INIT;

static void attr_init (void) {
  attr_err = pthread_mutexattr_init(&mutex_attr);
  if (attr_err == 0) {
    pthread_mutexattr_setpshared(&mutex_attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&mutex_attr, PTHREAD_MUTEX_ROBUST);
#ifdef LOOM_DEBUG
    pthread_mutexattr_settype(&mutex_attr, PTHREAD_MUTEX_ERRORCHECK);
#endif
    attr_err = pthread_condattr_init(&cond_attr);
  }
  if (attr_err == 0) {
    pthread_condattr_setpshared(&cond_attr, PTHREAD_PROCESS_SHARED);
    pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
  }
}

int loomi_mutex_init (pthread_mutex_t *mu) {
  pthread_once(&attr_once, attr_init);
  return attr_err != 0 ? attr_err : pthread_mutex_init(mu, &mutex_attr);
}

int loomi_cond_init (pthread_cond_t *cv) {
  pthread_once(&attr_once, attr_init);
  return attr_err != 0 ? attr_err : pthread_cond_init(cv, &cond_attr);
}

/* Leaves the condvar as it is.  glibc's pthread_cond_destroy waits until
** every waiter has left, and a waiter in a process killed during its wait
** never leaves: the thread freeing the object would block for ever (seen
** as a worker stuck in a collection, long after the spec that killed the
** child).  A condvar owns nothing but its bytes, which go back to the heap
** with the object. */
void loomi_cond_destroy (pthread_cond_t *cv) {
  (void)cv;
}

int loomi_mutex_lock (pthread_mutex_t *mu) {
  int err = pthread_mutex_lock(mu);
  if (err == EOWNERDEAD) {
    pthread_mutex_consistent(mu);
    return EOWNERDEAD;
  }
  if (err != 0)
    abort();   /* a broken invariant: unrecoverable */
  return 0;
}

void loomi_mutex_unlock (pthread_mutex_t *mu) {
  if (pthread_mutex_unlock(mu) != 0)
    abort();
}
