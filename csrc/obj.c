/* obj.c: refcounted shared objects, the proxies that hold them in a
** lua_State, and the process-shared robust mutex helpers.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdlib.h>
#include <string.h>

/* A proxy: the object and the process its reference belongs to.  A forked
** child inherits its states' proxies but not the references they stand for
** (the counts live in the shared heap, and the parent's proxies still hold
** theirs), so a proxy only ever releases in the process that made it: in
** any other it lets go without releasing.  loom's own fork takes, in the
** parent, a reference for the child on every object the forking state
** holds (loomi_proxy_hold), which the parent gives back once the child is
** reaped; the child writes nothing on what it inherited. */
typedef LoomProxy Proxy;

/* ---- the owner-aware reference holder ---- */

void loomi_ref_set (LoomRef *r, LoomObj *o) {
  r->o = o;
  r->owner = loomi_self_pid();
}

int loomi_ref_mine (const LoomRef *r) {
  return r->o != NULL && r->owner == loomi_self_pid();
}

LoomObj *loomi_ref_take (LoomRef *r) {
  LoomObj *o = loomi_ref_mine(r) ? r->o : NULL;
  r->o = NULL;
  return o;
}

void loomi_ref_drop (LoomRef *r) {
  loomi_obj_release(loomi_ref_take(r));
}

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
  loomi_ref_set(&p->ref, NULL);
  p->magic = LOOM_PROXY_MAGIC;
  return p;
}

/* Every loom class's metatable, as a key of a private registry table (the
** value is its type name): a proxy is recognised by its metatable's
** identity, which Lua code cannot forge, and never by a field it could set
** on a foreign metatable.  The size and the magic word also refuse a
** foreign userdata given a loom metatable through debug.setmetatable. */
static const char CLASSES_KEY = 'c';

static void class_register (lua_State *L, int mt, const char *tname) {
  mt = lua_absindex(L, mt);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CLASSES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CLASSES_KEY);
  }
  lua_pushvalue(L, mt);
  lua_pushstring(L, tname);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void loomi_class_table (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CLASSES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
}

/* The proxy at idx when it is one of any loom class, else NULL. */
static Proxy *toproxy (lua_State *L, int idx) {
  if (!loomi_proxy_shaped(L, idx) || !lua_getmetatable(L, idx))
    return NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CLASSES_KEY);
  int known = 0;
  if (lua_istable(L, -1)) {
    lua_pushvalue(L, -2);
    known = lua_rawget(L, -2) == LUA_TSTRING;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return known ? lua_touserdata(L, idx) : NULL;
}

LoomObj **loomi_testslot (lua_State *L, int arg, const char *tname) {
  if (!loomi_proxy_shaped(L, arg))
    return NULL;
  return luaL_testudata(L, arg, tname);
}

LoomObj **loomi_checkslot (lua_State *L, int arg, const char *tname) {
  LoomObj **slot = loomi_testslot(L, arg, tname);
  if (slot == NULL)
    luaL_typeerror(L, arg, tname);
  return slot;
}


LoomObj **loomi_proxy_new (lua_State *L, const char *tname) {
  Proxy *p = proxy_alloc(L, 1);
  luaL_setmetatable(L, tname);
  proxy_track(L);
  return &p->ref.o;
}

LoomObj **loomi_proxy_new_at (lua_State *L, int mt, int tbl, int nuv) {
  Proxy *p = proxy_alloc(L, nuv);
  lua_pushvalue(L, mt);
  lua_setmetatable(L, -2);
  proxy_track_in(L, tbl);
  return &p->ref.o;
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
  p->ref.o = o;
}

LoomObj *loomi_checkobj (lua_State *L, int arg, const char *tname) {
  LoomObj **slot = loomi_checkslot(L, arg, tname);
  if (*slot == NULL)
    luaL_error(L, "attempt to use a closed %s", tname);
  return *slot;
}

LoomObj *loomi_toobj (lua_State *L, int idx) {
  Proxy *p = toproxy(L, idx);
  return p != NULL ? p->ref.o : NULL;
}

/* Any loom proxy may be closed through any class's __gc: they all hold the
** same kind of reference.  Anything else is refused. */
int loomi_proxy_gc (lua_State *L) {
  Proxy *p = toproxy(L, 1);
  if (p == NULL)
    return luaL_typeerror(L, 1, "loom object");
  loomi_ref_drop(&p->ref);
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
    if (p != NULL && p->ref.o != NULL)
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
    loomi_obj_retain(p->ref.o);
    f->h->objs[f->h->n++] = p->ref.o;
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
  (void)ud;
  if (loomi_ref_mine(&p->ref))
    loomi_ref_drop(&p->ref);
}

void loomi_proxy_release_own (lua_State *L) {
  proxy_each(L, release_own, NULL);
}

static int proxy_tostring (lua_State *L) {
  Proxy *p = toproxy(L, 1);
  if (p == NULL)
    return luaL_typeerror(L, 1, "loom object");
  LoomObj **slot = &p->ref.o;
  const char *tname = (*slot != NULL) ? (*slot)->tname : "loom object";
  if (lua_getmetatable(L, 1)) {
    if (lua_getfield(L, -1, "__name") == LUA_TSTRING)
      tname = lua_tostring(L, -1);
    lua_pop(L, 1);   /* tname stays alive through the metatable */
  }
  if (*slot == NULL)
    lua_pushfstring(L, "%s (closed)", tname);
  else
    lua_pushfstring(L, "%s (%p)", tname, (void *)*slot);
  return 1;
}

static int proxy_eq (lua_State *L) {
  LoomObj *a = loomi_toobj(L, 1), *b = loomi_toobj(L, 2);
  lua_pushboolean(L, a != NULL && a == b);
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
  class_register(L, -1, tname);
  if (methods != NULL) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* The attributes every loom mutex is made with: built once per process (a
** fork inherits them), never changed or destroyed after, so that making a
** shared object (a pool's Future, for every task) does not build and tear
** them down each time.  Waits need no condition variable: see wait.c. */
static pthread_mutexattr_t mutex_attr;
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
  }
}

int loomi_mutex_init (pthread_mutex_t *mu) {
  pthread_once(&attr_once, attr_init);
  return attr_err != 0 ? attr_err : pthread_mutex_init(mu, &mutex_attr);
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

/* The name string at idx for a buffer of cap bytes: raises rather than
** cut it short at a NUL byte or at the buffer's end. */
const char *loomi_checkname (lua_State *L, int idx, size_t cap) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_error(L, "name must not contain a NUL byte");
  if (len >= cap)
    luaL_error(L, "name too long (at most %d bytes)", (int)cap - 1);
  return s;
}

/* Raises "cannot set field 'k' of a <tname>", naming a key that is not a
** string by its value and type rather than by its type alone. */
int loomi_field_error (lua_State *L, int key, const char *tname) {
  if (lua_type(L, key) == LUA_TSTRING)
    return luaL_error(L, "cannot set field '%s' of a %s", lua_tostring(L, key),
                      tname);
  const char *k = luaL_tolstring(L, key, NULL);
  return luaL_error(L, "cannot set key %s (a %s) of a %s", k,
                    luaL_typename(L, key), tname);
}
