/* barrier.c: loom.Barrier, a meeting point for a fixed number of threads
** or processes, following Python's threading.Barrier state machine.
** Lua: loom.core.barrier(n, [timeout], [action]) or barrier(n, {timeout=,
**      action=}) -> Barrier; wait([timeout]) -> index (0..n-1, as Python);
**      abort(); reset(); fields parties, n_waiting, broken.  A broken
**      barrier raises the error value "broken barrier".  The action is kept
**      encoded, and the party that trips the barrier decodes and runs it,
**      in whatever thread or process that party is.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <string.h>

/* B_ACTION: tripped, the last party runs the action; the others still
** wait, newcomers too, as if it ran under the lock as Python's does. */
enum { B_FILLING = 0, B_DRAINING = 1, B_ACTION = 2, B_RESETTING = -1,
       B_BROKEN = -2 };

/* barrier_pass's result for the party that must run the action. */
#define B_RUN_ACTION (-1000)

#define LOOM_BROKEN "broken barrier"

/* The callers of one process inside wait(), so that a survivor can tell
** when a process died there: a dead party never arrives nor leaves. */
typedef struct Party {
  pid_t pid;
  int n;                    /* 0: a free entry */
} Party;

/* count is always the sum of the parties' n (at every unlock): a holder
** that died between the two stores is repaired by barrier_reap. */
typedef struct Barrier {
  LoomObj obj;
  int parties;
  double timeout;           /* the default for wait(); < 0: none */
  int count;                /* callers inside wait(); mu held */
  int state;                /* B_*; mu held */
  pid_t runner;             /* the process running the action; mu held */
  LoomMsg *action;          /* NULL: none; immutable */
  pthread_mutex_t mu;
  LoomWaitq q;
  Party *procs;             /* nprocs entries in the heap, or NULL; mu held */
  int nprocs;
} Barrier;

/* ---- C core ---- */

static void barrier_destroy (LoomObj *o) {
  Barrier *b = (Barrier *)o;
  loomi_heap_free(b->procs);
  loomi_msg_free(b->action);
  pthread_mutex_destroy(&b->mu);
}

static Barrier *barrier_create (int parties, double timeout) {
  Barrier *b = (Barrier *)loomi_obj_new(sizeof(Barrier), LOOM_BARRIER,
                                        barrier_destroy);
  if (b == NULL)
    return NULL;
  if (loomi_mutex_init(&b->mu) != 0) {
    b->obj.destroy = NULL;
    loomi_obj_release(&b->obj);
    return NULL;
  }
  b->parties = parties;
  b->timeout = timeout;
  b->state = B_FILLING;
  return b;
}

static void barrier_break (Barrier *b) {
  b->state = B_BROKEN;
  loomi_wake_all(&b->q);
}

/* The calling process's entry, made when it has none: NULL when the heap
** is exhausted.  A larger table is filled, then published, then the old
** one freed, so a caller killed on the way leaks it at worst.  mu held. */
static Party *party_entry (Barrier *b) {
  pid_t me = loomi_self_pid();
  Party *free_ = NULL;
  for (int i = 0; i < b->nprocs; i++) {
    if (b->procs[i].n > 0 && b->procs[i].pid == me)
      return &b->procs[i];
    if (b->procs[i].n == 0 && free_ == NULL)
      free_ = &b->procs[i];
  }
  if (free_ == NULL) {   /* only when every entry holds a live process */
    int cap = b->nprocs > 0 ? b->nprocs * 2 : 4;
    Party *t = loomi_heap_alloc((size_t)cap * sizeof(Party));
    if (t == NULL)
      return NULL;
    for (int i = 0; i < cap; i++)
      t[i] = i < b->nprocs ? b->procs[i] : (Party){ 0, 0 };
    Party *old = b->procs;
    free_ = &t[b->nprocs];
    b->procs = t;
    b->nprocs = cap;
    loomi_heap_free(old);
  }
  free_->pid = me;
  return free_;
}

/* Looks for processes that died inside wait() (a zombie nobody reaped
** counts: the parent may be the one waiting here) and forgets their
** callers; a generation still filling can never trip with a dead party in
** it, so it breaks, as a timeout would; nor can a generation whose action
** ran in a process that died (the others would wait for it forever).
** Also makes count the sum of the
** entries again, after a holder of mu that died between its two stores.
** Runs when a wait slept a whole slice without news, and before the last
** party trips a generation other processes are in.  mu held. */
static void barrier_reap (Barrier *b) {
  pid_t me = loomi_self_pid();
  int dead = 0, sum = 0;
  for (int i = 0; i < b->nprocs; i++) {
    Party *e = &b->procs[i];
    if (e->n > 0 && e->pid != me && loomi_pid_gone(e->pid, 1)) {
      e->n = 0;
      dead = 1;
    }
    sum += e->n;
  }
  b->count = sum;
  if (!dead)
    return;
  if (b->state == B_FILLING ||
      (b->state == B_ACTION && loomi_pid_gone(b->runner, 1)))
    barrier_break(b);
  else if (sum == 0 && (b->state == B_DRAINING || b->state == B_RESETTING)) {
    b->state = B_FILLING;
    loomi_wake_all(&b->q);
  }
}

/* One wait on b->q: ECANCELED, EINTR, ETIMEDOUT as loomi_wait; 0 when
** woken or after a slice, when the parties are checked for dead ones. */
static int barrier_sleep (Barrier *b, const LoomDeadline *dl) {
  unsigned seq = loomi_wait_prepare(&b->q);
  int rc = loomi_wait_seq(&b->q, seq, &b->mu, &b->obj, dl);
  loomi_wait_finish(&b->q);
  if (rc == 0 && atomic_load(&b->q.seq) == seq)
    barrier_reap(b);
  return rc;
}

/* A party leaves wait(): the last one out of a generation that tripped
** (or was reset) opens the barrier to the next.  mu held. */
static void barrier_leave (Barrier *b) {
  Party *mine = party_entry(b);   /* the table may have moved; it has ours */
  if (mine != NULL)
    mine->n--;
  if (--b->count == 0 &&
      (b->state == B_DRAINING || b->state == B_RESETTING)) {
    b->state = B_FILLING;
    loomi_wake_all(&b->q);
  }
}

/* One wait(): the index (>= 0), -1 when the barrier is or gets broken (a
** timeout breaks it, and so does a party whose process died inside wait),
** or -ECANCELED (a cancel breaks it too, so the other parties do not wait
** for a thread that is gone), or -EINTR (Ctrl-C on the main thread, which
** breaks it too), or -ENOMEM (no room to record the caller's process: it
** fails alone), or B_RUN_ACTION: the caller tripped the barrier and must
** run the action, then call barrier_acted, before anyone is released.  A
** caller that comes
** while the last generation is still leaving waits for that without its
** deadline, as Python's does: the tripped generation has passed, and no
** timeout or cancel of a caller that is not part of it may break it (a
** cancelled or interrupted one fails alone). */
static int barrier_pass (Barrier *b, const LoomDeadline *dl) {
  int rc = 0, index = -1;
  loomi_mutex_lock(&b->mu);
  while ((b->state == B_DRAINING || b->state == B_RESETTING ||
          b->state == B_ACTION) && rc == 0)
    rc = barrier_sleep(b, NULL);
  if (rc != 0) {
    loomi_mutex_unlock(&b->mu);
    return -rc;   /* ECANCELED or EINTR: nothing else ends that wait */
  }
  if (b->state != B_FILLING) {
    loomi_mutex_unlock(&b->mu);
    return -1;
  }
  if (b->count + 1 == b->parties && b->nprocs > 1) {
    barrier_reap(b);   /* a party that died must not make up the number */
    if (b->state != B_FILLING) {
      loomi_mutex_unlock(&b->mu);
      return -1;
    }
  }
  Party *mine = party_entry(b);
  if (mine == NULL) {
    loomi_mutex_unlock(&b->mu);
    return -ENOMEM;
  }
  mine->n++;
  index = b->count++;
  if (index + 1 == b->parties && b->action != NULL) {
    b->state = B_ACTION;
    b->runner = loomi_self_pid();
    loomi_mutex_unlock(&b->mu);
    return B_RUN_ACTION;
  }
  if (index + 1 == b->parties) {
    b->state = B_DRAINING;
    loomi_wake_all(&b->q);
  }
  else {
    for (;;) {
      if (b->state == B_FILLING)
        rc = barrier_sleep(b, dl);
      else if (b->state == B_ACTION)
        rc = barrier_sleep(b, NULL);   /* no timeout while the action runs */
      else
        break;
      if (rc == ETIMEDOUT && b->state == B_ACTION)
        rc = 0;   /* tripped in time: the action runs as if under the lock */
      if (rc != 0)
        break;
    }
    if (b->state == B_FILLING || b->state == B_ACTION) {
      /* timed out or cancelled: break it */
      barrier_break(b);
      index = rc == ECANCELED || rc == EINTR ? -rc : -1;
    }
    else if (b->state < 0)
      index = rc == ECANCELED || rc == EINTR ? -rc : -1;
  }
  barrier_leave(b);
  loomi_mutex_unlock(&b->mu);
  return index;
}

/* The party that ran the action: ok releases the generation (unless an
** abort, reset or a waiter's cancel broke it meanwhile), a failed action
** breaks it.  The runner's index, or -1 when broken. */
static int barrier_acted (Barrier *b, int ok) {
  int index = b->parties - 1;
  loomi_mutex_lock(&b->mu);
  if (b->state == B_ACTION) {
    if (ok) {
      b->state = B_DRAINING;
      loomi_wake_all(&b->q);
    }
    else
      barrier_break(b);
  }
  if (b->state < 0)
    index = -1;
  barrier_leave(b);
  loomi_mutex_unlock(&b->mu);
  return index;
}

/* ---- Lua bindings ---- */

static Barrier *checkbarrier (lua_State *L, int arg) {
  return (Barrier *)loomi_checkobj(L, arg, LOOM_BARRIER);
}

/* barrier(n, [timeout], [action]) or barrier(n, {timeout=, action=}).
** The options land at stack indexes 2 (timeout) and 3 (action). */
static int barrier_new (lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1, 1, "parties must be positive");
  luaL_argcheck(L, n <= (1 << 30), 1, "too many parties (at most 2^30)");
  if (lua_istable(L, 2)) {
    luaL_argcheck(L, lua_isnoneornil(L, 3), 3, "no argument expected after options");
    lua_settop(L, 2);
    lua_getfield(L, 2, "action");
    lua_getfield(L, 2, "timeout");
    lua_replace(L, 2);
    if (!lua_isnoneornil(L, 2) && !lua_isnumber(L, 2))
      return luaL_argerror(L, 2, "timeout must be a number");
    if (!lua_isnil(L, 3) && !lua_isfunction(L, 3))
      return luaL_argerror(L, 2, "action must be a function");
  }
  else if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  double timeout = -1;
  if (!lua_isnil(L, 2)) {
    lua_Number t = luaL_checknumber(L, 2);
    luaL_argcheck(L, t >= 0, 2, "timeout must be non-negative");
    timeout = (double)t;
  }
  LoomObj **slot = loomi_proxy_new(L, LOOM_BARRIER);
  LoomMsg *action = NULL;
  if (!lua_isnil(L, 3))
    action = loomi_xfer_encode(L, 3, 1, "action");   /* may raise */
  Barrier *b = barrier_create((int)n, timeout);
  if (b == NULL) {
    loomi_msg_free(action);
    return luaL_error(L, "cannot create barrier: shared heap exhausted");
  }
  b->action = action;
  *slot = &b->obj;
  return 1;
}

/* Protected: decodes the action of the barrier (a light userdata at index
** 1) and calls it with no arguments. */
static int barrier_call_action (lua_State *L) {
  Barrier *b = lua_touserdata(L, 1);
  lua_settop(L, 0);
  loomi_xfer_decode(L, b->action);
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}

/* Runs the action in the party that tripped the barrier; its error breaks
** the barrier and is raised here, as Python raises it in that thread. */
static int barrier_run_action (lua_State *L, Barrier *b) {
  lua_pushcfunction(L, barrier_call_action);
  lua_pushlightuserdata(L, b);
  int rc = lua_pcall(L, 1, 0, 0);
  int index = barrier_acted(b, rc == LUA_OK);
  if (rc != LUA_OK)
    return lua_error(L);
  return index;
}

static int barrier_wait (lua_State *L) {
  Barrier *b = checkbarrier(L, 1);
  LoomDeadline dl;
  if (lua_isnoneornil(L, 2))
    loomi_deadline_in(&dl, b->timeout);
  else
    loomi_opttimeout(L, 2, &dl);
  loomi_block_begin(L);
  int index = barrier_pass(b, &dl);
  loomi_block_end(L);
  if (index == B_RUN_ACTION)
    index = barrier_run_action(L, b);
  if (index == -ECANCELED)
    return loomi_raise_cancelled(L);
  if (index == -EINTR)
    return loomi_push_interrupted(L);
  if (index == -ENOMEM)
    return luaL_error(L, "cannot wait: shared heap exhausted");
  if (index < 0) {
    lua_pushliteral(L, LOOM_BROKEN);
    return lua_error(L);
  }
  lua_pushinteger(L, index);
  return 1;
}

static int barrier_abort (lua_State *L) {
  Barrier *b = checkbarrier(L, 1);
  loomi_mutex_lock(&b->mu);
  barrier_break(b);
  loomi_mutex_unlock(&b->mu);
  return 0;
}

/* Callers inside wait() get "broken barrier"; later ones start afresh. */
static int barrier_reset (lua_State *L) {
  Barrier *b = checkbarrier(L, 1);
  loomi_mutex_lock(&b->mu);
  if (b->count > 0) {
    if (b->state == B_FILLING || b->state == B_BROKEN || b->state == B_ACTION)
      b->state = B_RESETTING;
  }
  else
    b->state = B_FILLING;
  loomi_wake_all(&b->q);
  loomi_mutex_unlock(&b->mu);
  return 0;
}

static int barrier_index (lua_State *L) {
  Barrier *b = checkbarrier(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "parties") == 0)
    lua_pushinteger(L, b->parties);
  else if (strcmp(key, "n_waiting") == 0) {
    loomi_mutex_lock(&b->mu);
    int n = b->state == B_FILLING ? b->count : 0;
    loomi_mutex_unlock(&b->mu);
    lua_pushinteger(L, n);
  }
  else if (strcmp(key, "broken") == 0) {
    loomi_mutex_lock(&b->mu);
    int broken = b->state == B_BROKEN;
    loomi_mutex_unlock(&b->mu);
    lua_pushboolean(L, broken);
  }
  else {
    luaL_getmetatable(L, LOOM_BARRIER);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
  }
  return 1;
}

static int barrier_newindex (lua_State *L) {
  checkbarrier(L, 1);
  return luaL_error(L, "cannot set field '%s' of a loom.Barrier",
                    luaL_checkstring(L, 2));
}

static int barrier_tostring (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_BARRIER);
  if (*slot == NULL) {
    lua_pushliteral(L, LOOM_BARRIER " (closed)");
    return 1;
  }
  Barrier *b = (Barrier *)*slot;
  loomi_mutex_lock(&b->mu);
  int waiting = b->state == B_FILLING ? b->count : 0;
  int broken = b->state == B_BROKEN;
  loomi_mutex_unlock(&b->mu);
  lua_pushfstring(L, LOOM_BARRIER " (%p, %s%d/%d waiting)", (void *)b,
                  broken ? "broken, " : "", waiting, b->parties);
  return 1;
}

static const luaL_Reg barrier_meta[] = {
  {"__index", barrier_index},
  {"__newindex", barrier_newindex},
  {"__tostring", barrier_tostring},
  {NULL, NULL}
};

static const luaL_Reg barrier_methods[] = {
  {"wait", barrier_wait},
  {"abort", barrier_abort},
  {"reset", barrier_reset},
  {NULL, NULL}
};

static const luaL_Reg barrier_funcs[] = {
  {"barrier", barrier_new},
  {NULL, NULL}
};

void loomi_barrier_open (lua_State *L) {
  loomi_newclass(L, LOOM_BARRIER, barrier_meta, NULL);
  luaL_getmetatable(L, LOOM_BARRIER);
  lua_newtable(L);
  luaL_setfuncs(L, barrier_methods, 0);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_setfuncs(L, barrier_funcs, 0);
}
