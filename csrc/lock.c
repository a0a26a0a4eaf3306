/* lock.c: loom.Lock and loom.RLock, mutexes shared by threads and forks,
** plus the hold() guard every lock-like primitive offers.
** Lua: loom.core.lock() -> Lock; loom.core.rlock() -> RLock;
**      acquire([blocking], [timeout]) -> true [, "owner died"] | false;
**      release(); locked(); hold([timeout]) -> guard | nil, "timeout".
** Lock order: a lock's mu is only ever taken alone.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Both kinds share one layout.  `owner` is the whole lock state: 0 when
** free, else the holder's pid << 32 | OS thread id (0 for a Lock, which
** any thread may release).  Taking the lock and recording who took it is a
** single compare-exchange, so a holder that dies is always identifiable. */
typedef struct LoomLock {
  LoomObj obj;
  _Atomic uint64_t owner;
  int count;                /* RLock recursion depth; the owner's alone */
  int recursive;
  LoomWaitq q;              /* waiters sleep here, without a mutex */
} LoomLock;

/* A sleeping waiter wakes this often to see whether the holder's process
** still exists; a holder that stays a zombie this long counts as dead. */
#define LOCK_SLICE  0.1

/* The calling process's pid, cached (getpid() is a system call, and the
** uncontended path must not make one), and the calling thread's owner
** number: an RLock's owner is a loom thread, not the OS thread under it (a
** worker runs one loom thread after another), so each loom thread, and
** each other OS thread, draws a number of its own from a process-wide
** counter on its first RLock.  The atfork child handler refreshes both
** (the child's only thread is the one that forked), so a fork never
** inherits its parent's identity. */
static pid_t self_pid = 0;
static LOOM_THREAD_LOCAL uint32_t self_tid = 0;
static atomic_uint owner_counter = 0;

void loomi_lock_new_owner (void) {
  self_tid = 0;
}
static pthread_once_t ident_once = PTHREAD_ONCE_INIT;

static void ident_atfork_child (void) {
  self_pid = getpid();
  self_tid = 0;
}

static void ident_init (void) {
  self_pid = getpid();
  pthread_atfork(NULL, NULL, ident_atfork_child);
}

pid_t loomi_self_pid (void) {
  return self_pid;
}

static uint64_t lock_me (const LoomLock *k) {
  uint64_t me = (uint64_t)(uint32_t)self_pid << 32;
  if (k->recursive) {
    while (self_tid == 0)      /* 0 is no owner: skipped when it wraps */
      self_tid = atomic_fetch_add(&owner_counter, 1) + 1;
    me |= self_tid;
  }
  return me;
}

/* A pid whose process is gone: no such process or, when `zombies` asks
** for the dearer check (a read of /proc), a zombie nobody has reaped yet
** (a dead child of the waiter itself stays one until it is joined, and
** must not deadlock that join). */
int loomi_pid_gone (pid_t pid, int zombies) {
  if (pid <= 0 || pid == self_pid)
    return 0;
  if (kill(pid, 0) == -1)
    return errno == ESRCH;
  if (!zombies)
    return 0;
  char path[48], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

/* ---- C core ---- */

static LoomLock *lock_create (int recursive) {
  LoomLock *k = (LoomLock *)loomi_obj_new(sizeof(LoomLock),
                                          recursive ? LOOM_RLOCK : LOOM_LOCK,
                                          NULL);
  if (k == NULL)
    return NULL;
  loomi_waitq_init(&k->q);
  atomic_init(&k->owner, 0);
  k->recursive = recursive;
  return k;
}

LoomObj *loomi_rlock_create (void) {
  pthread_once(&ident_once, ident_init);
  LoomLock *k = lock_create(1);
  return k != NULL ? &k->obj : NULL;
}

int loomi_islock (const LoomObj *o) {
  return o != NULL && (strcmp(o->tname, LOOM_LOCK) == 0 ||
                       strcmp(o->tname, LOOM_RLOCK) == 0);
}

static int lock_try (LoomLock *k, uint64_t me) {
  uint64_t free_ = 0;
  return atomic_compare_exchange_strong_explicit(&k->owner, &free_, me,
           memory_order_acquire, memory_order_relaxed);
}

/* Takes over a lock whose holder's process is gone: 1 when taken. */
static int lock_steal (LoomLock *k, uint64_t me, int zombies) {
  uint64_t cur = atomic_load_explicit(&k->owner, memory_order_relaxed);
  if (cur == 0 || !loomi_pid_gone((pid_t)(cur >> 32), zombies))
    return 0;
  return atomic_compare_exchange_strong(&k->owner, &cur, me);
}

typedef struct Grab { LoomLock *k; uint64_t me; } Grab;

static int lock_grab (const void *arg) {
  const Grab *g = arg;
  return atomic_load_explicit(&g->k->owner, memory_order_relaxed) == 0 &&
         lock_try(g->k, g->me);
}

/* The slow path: 0 taken, 1 taken from a dead holder, ETIMEDOUT when dl
** passes (NULL: forever), ECANCELED, EINTR (only when `cancellable`).  No
** mutex: the waiter counts itself and reads the sequence before it tries
** (loomi_wait_prepare), pairing with lock_wake.  It sleeps in slices of
** LOCK_SLICE, so that a holder that died is noticed even when nobody will
** ever release; after a whole slice without a release, a zombie holder
** counts as dead too. */
static int lock_take (LoomLock *k, uint64_t me, const LoomDeadline *dl,
                      int cancellable) {
  Grab g = { k, me };
  if (loomi_spin(lock_grab, &g))
    return 0;
  int rc = 0;
  double since = loomi_now();
  for (;;) {
    unsigned seq = loomi_wait_prepare(&k->q);
    if (lock_try(k, me)) {
      rc = 0;
      break;
    }
    if (lock_steal(k, me, loomi_now() - since >= LOCK_SLICE)) {
      rc = 1;
      break;
    }
    if (dl != NULL && loomi_deadline_passed(dl)) {
      rc = ETIMEDOUT;
      break;
    }
    /* a holder that died is looked for every LOCK_SLICE */
    LoomDeadline slice;
    loomi_deadline_in(&slice, LOCK_SLICE);
    if (dl != NULL && !dl->forever &&
        (dl->at.tv_sec < slice.at.tv_sec ||
         (dl->at.tv_sec == slice.at.tv_sec && dl->at.tv_nsec < slice.at.tv_nsec)))
      slice = *dl;
    rc = cancellable ? loomi_wait_seq(&k->q, seq, NULL, &k->obj, &slice)
                     : loomi_wait_plain(&k->q, seq, &slice);
    if (rc == ETIMEDOUT)
      rc = 0;   /* the slice, or dl: the loop looks at dl */
    loomi_wait_finish(&k->q);
    if (rc == ECANCELED || rc == EINTR) {
      if (atomic_load(&k->owner) == 0)
        loomi_wake(&k->q, 1);   /* pass on a wakeup this waiter took */
      return rc;
    }
    if (seq != atomic_load(&k->q.seq))
      since = loomi_now();   /* a release happened */
  }
  loomi_wait_finish(&k->q);
  if (rc == 1 && k->recursive)
    k->count = 0;
  return rc;
}

/* Frees the lock word's waiters: the store to owner comes first (see
** loomi_wake). */
static void lock_wake (LoomLock *k) {
  loomi_wake(&k->q, 1);
}

int loomi_lock_owned (LoomObj *o) {
  LoomLock *k = (LoomLock *)o;
  uint64_t cur = atomic_load(&k->owner);
  return k->recursive ? cur == lock_me(k) : cur != 0;
}

int loomi_lock_release_all (LoomObj *o) {
  LoomLock *k = (LoomLock *)o;
  int count = k->recursive ? k->count : 1;
  k->count = 0;
  atomic_store(&k->owner, 0);
  lock_wake(k);
  return count;
}

int loomi_lock_restore (LoomObj *o, int count) {
  LoomLock *k = (LoomLock *)o;
  uint64_t me = lock_me(k);
  int rc = 0;
  if (!lock_try(k, me))
    rc = lock_take(k, me, NULL, 0);
  if (k->recursive)
    k->count = count;
  return rc;
}

/* ---- Lua bindings ---- */

int loomi_lock_lacquire (lua_State *L, LoomObj *o) {
  LoomLock *k = (LoomLock *)o;
  int blocking = 1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TBOOLEAN);
    blocking = lua_toboolean(L, 2);
  }
  if (!blocking && !lua_isnoneornil(L, 3))
    return luaL_argerror(L, 3, "can't specify a timeout for a non-blocking call");
  LoomDeadline dl;
  loomi_opttimeout(L, 3, &dl);
  uint64_t me = lock_me(k);
  if (k->recursive &&
      atomic_load_explicit(&k->owner, memory_order_relaxed) == me) {
    if (k->count == INT_MAX)
      return luaL_error(L, "internal lock count overflowed");
    k->count++;
    lua_pushboolean(L, 1);
    return 1;
  }
  int rc;
  if (lock_try(k, me))
    rc = 0;
  else if (!blocking)
    rc = lock_steal(k, me, 0) ? 1 : ETIMEDOUT;   /* kept cheap: no /proc */
  else {
    loomi_block_begin(L);
    rc = lock_take(k, me, &dl, 1);
    loomi_block_end(L);
  }
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  if (rc == ETIMEDOUT) {
    lua_pushboolean(L, 0);
    return 1;
  }
  k->count = 1;
  lua_pushboolean(L, 1);
  if (rc == 1) {
    lua_pushliteral(L, "owner died");
    return 2;
  }
  return 1;
}

int loomi_lock_lrelease (lua_State *L, LoomObj *o) {
  LoomLock *k = (LoomLock *)o;
  if (k->recursive) {
    uint64_t me = lock_me(k);
    if (atomic_load_explicit(&k->owner, memory_order_relaxed) != me)
      return luaL_error(L, "cannot release un-acquired lock");
    if (--k->count > 0)
      return 0;
    atomic_store(&k->owner, 0);
  }
  else if (atomic_exchange(&k->owner, 0) == 0)
    return luaL_error(L, "release unlocked lock");
  lock_wake(k);
  return 0;
}

static int lock_new (lua_State *L) {
  LoomObj **slot = loomi_proxy_new(L, LOOM_LOCK);
  LoomLock *k = lock_create(0);
  if (k == NULL)
    return luaL_error(L, "cannot create lock: shared heap exhausted");
  *slot = &k->obj;
  return 1;
}

static int rlock_new (lua_State *L) {
  LoomObj **slot = loomi_proxy_new(L, LOOM_RLOCK);
  LoomLock *k = lock_create(1);
  if (k == NULL)
    return luaL_error(L, "cannot create lock: shared heap exhausted");
  *slot = &k->obj;
  return 1;
}

/* The methods carry their class's metatable as upvalue 1: comparing it is
** cheaper than luaL_checkudata's registry lookup, and acquire + release
** is the pair a program calls most. */
LoomObj *loomi_fastself (lua_State *L) {
  LoomProxy *p = loomi_proxy_shaped(L, 1);
  if (p != NULL && p->ref.o != NULL && lua_getmetatable(L, 1)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same)
      return p->ref.o;
  }
  return NULL;
}

static LoomObj *checkself (lua_State *L, const char *tname) {
  LoomObj *o = loomi_fastself(L);
  return o != NULL ? o : loomi_checkobj(L, 1, tname);
}

static int lock_acquire (lua_State *L) {
  LoomObj *o = checkself(L, LOOM_LOCK);
  if (lua_gettop(L) == 1) {   /* the common form: no blocking, no timeout */
    LoomLock *k = (LoomLock *)o;
    if (lock_try(k, (uint64_t)(uint32_t)self_pid << 32)) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  return loomi_lock_lacquire(L, o);
}

static int lock_release (lua_State *L) {
  return loomi_lock_lrelease(L, checkself(L, LOOM_LOCK));
}

static int rlock_acquire (lua_State *L) {
  LoomObj *o = checkself(L, LOOM_RLOCK);
  if (lua_gettop(L) == 1) {
    LoomLock *k = (LoomLock *)o;
    uint64_t me = lock_me(k);
    if (lock_try(k, me)) {
      k->count = 1;
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  return loomi_lock_lacquire(L, o);
}

static int rlock_release (lua_State *L) {
  return loomi_lock_lrelease(L, checkself(L, LOOM_RLOCK));
}

static int locked (LoomObj *o) {
  return atomic_load(&((LoomLock *)o)->owner) != 0;
}

static int lock_locked (lua_State *L) {
  lua_pushboolean(L, locked(checkself(L, LOOM_LOCK)));
  return 1;
}

static int rlock_locked (lua_State *L) {
  lua_pushboolean(L, locked(checkself(L, LOOM_RLOCK)));
  return 1;
}

static int lock_tostring (lua_State *L) {
  const char *tname = LOOM_LOCK;
  LoomObj **slot = loomi_testslot(L, 1, LOOM_LOCK);
  if (slot == NULL) {
    tname = LOOM_RLOCK;
    slot = loomi_checkslot(L, 1, LOOM_RLOCK);
  }
  if (*slot == NULL) {
    lua_pushfstring(L, "%s (closed)", tname);
    return 1;
  }
  LoomLock *k = (LoomLock *)*slot;
  uint64_t cur = atomic_load(&k->owner);
  if (cur == 0)
    lua_pushfstring(L, "%s (%p, unlocked)", tname, (void *)k);
  else if (!k->recursive)
    lua_pushfstring(L, "%s (%p, locked)", tname, (void *)k);
  else
    lua_pushfstring(L, "%s (%p, locked by %d:%d, count %d)", tname, (void *)k,
                    (int)(cur >> 32), (int)(uint32_t)cur, k->count);
  return 1;
}

/* ---- hold(): the guard of `local g <close> = x:hold()` ----
** A plain userdata (it never crosses states) whose user value is the held
** object; closing it calls the object's release once. */
#define LOOM_GUARD "loom.Guard"

typedef struct Guard { int held; } Guard;

/* Its size is checked too: a foreign userdata given the guard's
** metatable through the debug library must not be written to. */
static Guard *checkguard (lua_State *L, int arg) {
  Guard *g = luaL_checkudata(L, arg, LOOM_GUARD);
  luaL_argexpected(L, lua_rawlen(L, arg) == sizeof(Guard), arg, LOOM_GUARD);
  return g;
}

int loomi_hold (lua_State *L) {
  luaL_checktype(L, 1, LUA_TUSERDATA);
  if (!lua_isnoneornil(L, 2)) {
    LoomDeadline dl;
    loomi_opttimeout(L, 2, &dl);
  }
  lua_settop(L, 2);
  Guard *g = lua_newuserdatauv(L, sizeof(Guard), 1);   /* before acquiring */
  g->held = 0;
  luaL_setmetatable(L, LOOM_GUARD);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 3, 1);
  lua_getfield(L, 1, "acquire");
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 2);
  lua_call(L, 3, 1);
  if (!lua_toboolean(L, -1)) {
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_TIMEOUT);
    return 2;
  }
  g->held = 1;
  lua_pop(L, 1);
  return 1;
}

/* Runs the object's release in this frame rather than through lua_call:
** in a cancelled thread every call is hooked to raise, and a guard must
** still release while the cancellation unwinds. */
int loomi_guard_close (lua_State *L) {
  Guard *g = checkguard(L, 1);
  if (!g->held)
    return 0;
  g->held = 0;
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "release");
  lua_CFunction release = lua_tocfunction(L, -1);
  if (release == NULL)
    return luaL_error(L, "guarded object has no release method");
  lua_pop(L, 1);
  lua_replace(L, 1);
  lua_settop(L, 1);
  return release(L);
}

static int guard_tostring (lua_State *L) {
  Guard *g = checkguard(L, 1);
  lua_pushstring(L, g->held ? "loom.Guard (held)" : "loom.Guard (released)");
  return 1;
}

static const luaL_Reg guard_meta[] = {
  {"__close", loomi_guard_close},
  {"__tostring", guard_tostring},
  {NULL, NULL}
};

static const luaL_Reg lock_meta[] = {
  {"__tostring", lock_tostring},
  {NULL, NULL}
};

static const luaL_Reg lock_methods[] = {
  {"acquire", lock_acquire},
  {"release", lock_release},
  {"locked", lock_locked},
  {"hold", loomi_hold},
  {NULL, NULL}
};

static const luaL_Reg rlock_methods[] = {
  {"acquire", rlock_acquire},
  {"release", rlock_release},
  {"locked", rlock_locked},
  {"hold", loomi_hold},
  {NULL, NULL}
};

static const luaL_Reg lock_funcs[] = {
  {"lock", lock_new},
  {"rlock", rlock_new},
  {NULL, NULL}
};

void loomi_fast_methods (lua_State *L, const char *tname,
                         const luaL_Reg *methods) {
  luaL_getmetatable(L, tname);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  lua_pop(L, 2);
}

void loomi_lock_open (lua_State *L) {
  pthread_once(&ident_once, ident_init);
  loomi_newclass(L, LOOM_LOCK, lock_meta, lock_methods);
  loomi_newclass(L, LOOM_RLOCK, lock_meta, rlock_methods);
  loomi_fast_methods(L, LOOM_LOCK, lock_methods);
  loomi_fast_methods(L, LOOM_RLOCK, rlock_methods);
  if (luaL_newmetatable(L, LOOM_GUARD)) {
    luaL_setfuncs(L, guard_meta, 0);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, lock_funcs, 0);
}
