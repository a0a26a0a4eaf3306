/* sem.c: loom.Semaphore and loom.BoundedSemaphore, counters shared by
** threads and forks.
** Lua: loom.core.semaphore([n=1]), bounded_semaphore([n=1]);
**      acquire([blocking], [timeout]) -> bool; release([n=1]); hold([timeout]);
**      get_value().
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <limits.h>

typedef struct Sem {
  LoomObj obj;
  atomic_long value;        /* never negative */
  long bound;               /* the initial value of a bounded one, else -1 */
  LoomWaitq q;              /* waiters sleep here, without a mutex */
} Sem;

/* ---- C core ---- */

static Sem *sem_create (long value, int bounded) {
  Sem *s = (Sem *)loomi_obj_new(sizeof(Sem),
                                bounded ? LOOM_BSEMAPHORE : LOOM_SEMAPHORE,
                                NULL);
  if (s == NULL)
    return NULL;
  loomi_waitq_init(&s->q);
  atomic_init(&s->value, value);
  s->bound = bounded ? value : -1;
  return s;
}

static int sem_try (Sem *s) {
  long v = atomic_load(&s->value);
  while (v > 0) {
    if (atomic_compare_exchange_weak(&s->value, &v, v - 1))
      return 1;
  }
  return 0;
}

/* 0 taken, ETIMEDOUT, ECANCELED, EINTR.  No mutex: the sequence is read
** before the value is tried (loomi_wait_prepare), so a release between
** the two makes the sleep return at once.  Every waiter that wakes, even
** by its deadline, tries once more before leaving, so a wakeup is never
** lost; one that leaves without taking passes a wakeup on. */
static int sem_take (Sem *s, const LoomDeadline *dl) {
  int rc = 0;
  for (;;) {
    unsigned seq = loomi_wait_prepare(&s->q);
    if (sem_try(s)) {
      rc = 0;
      break;
    }
    if (rc == ETIMEDOUT || loomi_deadline_passed(dl)) {
      rc = ETIMEDOUT;
      break;
    }
    rc = loomi_wait_seq(&s->q, seq, NULL, &s->obj, dl);
    loomi_wait_finish(&s->q);
    if (rc == ECANCELED || rc == EINTR) {
      if (atomic_load(&s->value) > 0)
        loomi_wake(&s->q, 1);
      return rc;
    }
  }
  loomi_wait_finish(&s->q);
  return rc;
}

static void sem_wake (Sem *s, long n) {
  loomi_wake(&s->q, n >= INT_MAX ? INT_MAX : (int)n);
}

/* ---- Lua bindings ---- */

static Sem *checksem (lua_State *L, int arg) {
  LoomObj *o = arg == 1 ? loomi_fastself(L) : NULL;
  if (o != NULL)
    return (Sem *)o;
  const char *tname = luaL_testudata(L, arg, LOOM_BSEMAPHORE) != NULL
                      ? LOOM_BSEMAPHORE : LOOM_SEMAPHORE;
  return (Sem *)loomi_checkobj(L, arg, tname);
}

static int new_sem (lua_State *L, int bounded) {
  lua_Integer n = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, n >= 0, 1, "value must be non-negative");
  luaL_argcheck(L, n <= LONG_MAX / 2, 1, "value out of range");
  LoomObj **slot = loomi_proxy_new(L, bounded ? LOOM_BSEMAPHORE : LOOM_SEMAPHORE);
  Sem *s = sem_create((long)n, bounded);
  if (s == NULL)
    return luaL_error(L, "cannot create semaphore: shared heap exhausted");
  *slot = &s->obj;
  return 1;
}

static int sem_new (lua_State *L) {
  return new_sem(L, 0);
}

static int bsem_new (lua_State *L) {
  return new_sem(L, 1);
}

static int sem_acquire (lua_State *L) {
  Sem *s = checksem(L, 1);
  if (lua_gettop(L) == 1 && sem_try(s)) {   /* the common form */
    lua_pushboolean(L, 1);
    return 1;
  }
  int blocking = 1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TBOOLEAN);
    blocking = lua_toboolean(L, 2);
  }
  if (!blocking && !lua_isnoneornil(L, 3))
    return luaL_argerror(L, 3, "can't specify a timeout for a non-blocking call");
  LoomDeadline dl;
  loomi_opttimeout(L, 3, &dl);
  int rc = 0;
  if (!sem_try(s)) {
    if (!blocking)
      rc = ETIMEDOUT;
    else {
      loomi_block_begin(L);
      rc = sem_take(s, &dl);
      loomi_block_end(L);
    }
  }
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

static int sem_release (lua_State *L) {
  Sem *s = checksem(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1, 2, "n must be one or more");
  luaL_argcheck(L, n <= LONG_MAX / 2, 2, "n out of range");
  long v = atomic_load(&s->value);
  for (;;) {
    if (s->bound >= 0 ? v > s->bound - (long)n : v > LONG_MAX / 2 - (long)n)
      return luaL_error(L, s->bound >= 0 ? "semaphore released too many times"
                                         : "semaphore value out of range");
    if (atomic_compare_exchange_weak(&s->value, &v, v + (long)n))
      break;
  }
  sem_wake(s, (long)n);
  return 0;
}

static int sem_get_value (lua_State *L) {
  Sem *s = checksem(L, 1);
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->value));
  return 1;
}

static int sem_tostring (lua_State *L) {
  const char *tname = LOOM_BSEMAPHORE;
  LoomObj **slot = loomi_testslot(L, 1, LOOM_BSEMAPHORE);
  if (slot == NULL) {
    tname = LOOM_SEMAPHORE;
    slot = loomi_checkslot(L, 1, LOOM_SEMAPHORE);
  }
  if (*slot == NULL)
    lua_pushfstring(L, "%s (closed)", tname);
  else {
    Sem *s = (Sem *)*slot;
    lua_pushfstring(L, "%s (%p, value %I)", tname, (void *)s,
                    (lua_Integer)atomic_load(&s->value));
  }
  return 1;
}

static const luaL_Reg sem_meta[] = {
  {"__tostring", sem_tostring},
  {NULL, NULL}
};

static const luaL_Reg sem_methods[] = {
  {"acquire", sem_acquire},
  {"release", sem_release},
  {"get_value", sem_get_value},
  {"hold", loomi_hold},
  {NULL, NULL}
};

static const luaL_Reg sem_funcs[] = {
  {"semaphore", sem_new},
  {"bounded_semaphore", bsem_new},
  {NULL, NULL}
};

void loomi_sem_open (lua_State *L) {
  loomi_newclass(L, LOOM_SEMAPHORE, sem_meta, sem_methods);
  loomi_newclass(L, LOOM_BSEMAPHORE, sem_meta, sem_methods);
  loomi_fast_methods(L, LOOM_SEMAPHORE, sem_methods);
  loomi_fast_methods(L, LOOM_BSEMAPHORE, sem_methods);
  luaL_setfuncs(L, sem_funcs, 0);
}
