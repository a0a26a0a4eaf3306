/* cond.c: loom.Condition, a condition variable over a loom.Lock or
** loom.RLock, shared by threads and forks.
** Lua: loom.core.condition([lock]) -> Condition; acquire(...); release();
**      wait([timeout]) -> bool; wait_for(pred[, timeout]) -> pred's value;
**      notify([n=1]); notify_all(); hold([timeout]).
** Lock order: cond->mu and the user lock's internal mutex are never held
** together; loomi_wait takes the thread's reg_mu under cond->mu, as
** thread.c orders them.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <limits.h>

/* One per waiting call, in the shared heap so a notifier in another
** process can mark it; linked in arrival order (mu held). */
typedef struct CondWaiter {
  struct CondWaiter *next, *prev;
  int notified;
  pid_t pid;
} CondWaiter;

typedef struct Cond {
  LoomObj obj;
  LoomObj *lock;            /* a Lock or RLock; one reference */
  pthread_mutex_t mu;
  LoomWaitq q;              /* woken all; each waiter checks its own node */
  CondWaiter head;          /* sentinel of the waiter list */
} Cond;

/* ---- C core ---- */

static void cond_destroy (LoomObj *o) {
  Cond *c = (Cond *)o;
  CondWaiter *w = c->head.next;
  while (w != NULL && w != &c->head) {   /* left by processes that died */
    CondWaiter *next = w->next;
    loomi_heap_free(w);
    w = next;
  }
  loomi_obj_release(c->lock);
  pthread_mutex_destroy(&c->mu);
}

/* Takes over the caller's reference to lock. */
static Cond *cond_create (LoomObj *lock) {
  Cond *c = (Cond *)loomi_obj_new(sizeof(Cond), LOOM_CONDITION, cond_destroy);
  if (c == NULL) {
    loomi_obj_release(lock);     /* the reference it was handed */
    return NULL;
  }
  c->head.next = c->head.prev = &c->head;
  c->lock = lock;
  if (loomi_mutex_init(&c->mu) != 0) {
    c->obj.destroy = NULL;
    loomi_obj_release(lock);
    loomi_obj_release(&c->obj);
    return NULL;
  }
  return c;
}

static void unlink_waiter (CondWaiter *w) {
  w->prev->next = w->next;
  w->next->prev = w->prev;
  w->next = w->prev = NULL;
}

/* The waiting part of wait(): releases the user's lock, sleeps until
** notified, the deadline or a cancel, and takes the lock back in every
** case (as Python's finally does).  Returns 1 when notified, 0 when timed
** out, ECANCELED or EINTR when cancelled or interrupted before any
** notify.  w is freed. */
static int cond_block (Cond *c, CondWaiter *w, const LoomDeadline *dl) {
  loomi_mutex_lock(&c->mu);
  w->pid = loomi_self_pid();
  w->prev = c->head.prev;
  w->next = &c->head;
  c->head.prev->next = w;
  c->head.prev = w;
  loomi_mutex_unlock(&c->mu);
  int count = loomi_lock_release_all(c->lock);
  int rc = 0;
  loomi_mutex_lock(&c->mu);
  while (!w->notified && rc == 0)
    rc = loomi_wait(&c->q, &c->mu, &c->obj, dl);
  int notified = w->notified;
  if (!notified)
    unlink_waiter(w);
  loomi_mutex_unlock(&c->mu);
  loomi_heap_free(w);
  loomi_lock_restore(c->lock, count);
  if (notified)
    return 1;
  return rc == ECANCELED || rc == EINTR ? rc : 0;
}

/* Marks up to n waiters notified, oldest first, skipping those whose
** process died; returns how many. */
static int cond_notify (Cond *c, int n) {
  int woken = 0;
  loomi_mutex_lock(&c->mu);
  while (woken < n && c->head.next != &c->head) {
    CondWaiter *w = c->head.next;
    unlink_waiter(w);
    if (loomi_pid_gone(w->pid, 0)) {   /* a zombie's entry costs one notify */
      loomi_heap_free(w);
      continue;
    }
    w->notified = 1;
    woken++;
  }
  if (woken > 0)
    loomi_wake_all(&c->q);
  loomi_mutex_unlock(&c->mu);
  return woken;
}

/* ---- Lua bindings ---- */

static Cond *checkcond (lua_State *L, int arg) {
  return (Cond *)loomi_checkobj(L, arg, LOOM_CONDITION);
}

static int cond_new (lua_State *L) {
  LoomObj *lock = NULL;
  if (!lua_isnoneornil(L, 1)) {
    lock = loomi_toobj(L, 1);
    if (lock == NULL || !loomi_islock(lock))
      return luaL_typeerror(L, 1, "loom.Lock or loom.RLock");
  }
  LoomObj **slot = loomi_proxy_new(L, LOOM_CONDITION);
  if (lock != NULL)
    loomi_obj_retain(lock);
  else if ((lock = loomi_rlock_create()) == NULL)
    return luaL_error(L, "cannot create condition: shared heap exhausted");
  Cond *c = cond_create(lock);
  if (c == NULL)
    return luaL_error(L, "cannot create condition: shared heap exhausted");
  *slot = &c->obj;
  return 1;
}

static int cond_acquire (lua_State *L) {
  return loomi_lock_lacquire(L, checkcond(L, 1)->lock);
}

static int cond_release (lua_State *L) {
  return loomi_lock_lrelease(L, checkcond(L, 1)->lock);
}

/* 1 notified, 0 timed out, EINTR; raises on misuse or cancellation. */
static int cond_do_wait (lua_State *L, Cond *c, const LoomDeadline *dl) {
  if (!loomi_lock_owned(c->lock))
    return luaL_error(L, "cannot wait on un-acquired lock");
  CondWaiter *w = loomi_heap_calloc(sizeof(CondWaiter));
  if (w == NULL)
    return luaL_error(L, "cannot wait: shared heap exhausted");
  loomi_block_begin(L);
  int rc = cond_block(c, w, dl);
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  return rc;
}

static int cond_wait (lua_State *L) {
  Cond *c = checkcond(L, 1);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  int rc = cond_do_wait(L, c, &dl);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, rc);
  return 1;
}

/* wait_for(predicate[, timeout]): Python's loop, with one deadline for
** the whole call; returns the predicate's last value.  The lock must be
** held unless the predicate is true at once. */
static int cond_wait_for (lua_State *L) {
  Cond *c = checkcond(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  LoomDeadline dl;
  loomi_opttimeout(L, 3, &dl);
  lua_settop(L, 2);
  for (int waited = 0;; waited = 1) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1) || (waited && loomi_deadline_passed(&dl)))
      return 1;
    lua_pop(L, 1);
    if (cond_do_wait(L, c, &dl) == EINTR)   /* at least once, as Python */
      return loomi_push_interrupted(L);
  }
}

static int cond_notify_n (lua_State *L) {
  Cond *c = checkcond(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 0, 2, "n must be non-negative");
  if (!loomi_lock_owned(c->lock))
    return luaL_error(L, "cannot notify on un-acquired lock");
  cond_notify(c, n > INT_MAX ? INT_MAX : (int)n);
  return 0;
}

static int cond_notify_all (lua_State *L) {
  Cond *c = checkcond(L, 1);
  if (!loomi_lock_owned(c->lock))
    return luaL_error(L, "cannot notify on un-acquired lock");
  cond_notify(c, INT_MAX);
  return 0;
}

/* get_lock() -> the Lock or RLock this condition uses. */
static int cond_get_lock (lua_State *L) {
  loomi_proxy_push(L, checkcond(L, 1)->lock);
  return 1;
}

static const luaL_Reg cond_meta[] = {
  {NULL, NULL}
};

static const luaL_Reg cond_methods[] = {
  {"acquire", cond_acquire},
  {"release", cond_release},
  {"wait", cond_wait},
  {"wait_for", cond_wait_for},
  {"notify", cond_notify_n},
  {"notify_all", cond_notify_all},
  {"get_lock", cond_get_lock},
  {"hold", loomi_hold},
  {NULL, NULL}
};

static const luaL_Reg cond_funcs[] = {
  {"condition", cond_new},
  {NULL, NULL}
};

void loomi_cond_open (lua_State *L) {
  loomi_newclass(L, LOOM_CONDITION, cond_meta, cond_methods);
  luaL_setfuncs(L, cond_funcs, 0);
}
