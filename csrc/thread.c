/* thread.c: loom.Thread, an OS thread running its own lua_State; the
** cancellable wait every loom blocking call goes through; sleep, current.
** Lua: loom.core.thread(fn, args, opts) -> Thread; Thread:start(),
**      join([t]), result([t]), error(), is_alive(), cancel(); sleep(s);
**      enumerate(), active_count(), main_thread(), get_ident(),
**      get_native_id(), stack_size([n]), TIMEOUT_MAX.
** Lock order: a primitive's mutex, then a thread's reg_mu; a canceller
** takes reg_mu alone, then the primitive's mutex, never both at once.
** live_mu is taken alone.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { TH_NEW, TH_RUNNING, TH_DONE };

typedef struct LoomThread {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards every field below but cancel */
  LoomWaitq done_q;          /* done, and native_id known */
  LoomWaitq sleep_q;         /* the thread's own sleeps */
  int state;
  int daemon;
  int failed;                /* error holds (error value, traceback) */
  int collected;             /* result() or error() has seen the error */
  int main;                  /* stands for a thread loom did not start */
  int borrowed;              /* a shared thread's (gil.c) */
  int listed;                /* a reference is held by a Children list */
  atomic_int cancel;
  atomic_int done;           /* state is TH_DONE, for a look without mu */
  lua_State *L;              /* the running state, for lua_sethook */
  LoomMsg *call;             /* function and arguments, until it starts */
  LoomMsg *results;
  LoomMsg *error;
  LoomMsg *reporter;         /* the starting state's reporter, if it has one */
  char *path, *cpath;        /* package paths for the new state (malloc) */
  char failmsg[160];         /* an error that happened before any state */
  struct CoLink *running;    /* coroutines it resumed that still run */
  /* a cancellation unwinding; touched by the thread itself only */
  int unwinding;             /* "cancelled" was raised in it */
  lua_State *closing_L;      /* the state running a __close handler of it */
  int closing_depth;         /* the stack depth of that handler */
  int64_t ident;             /* the pthread_t, as Python's ident */
  int64_t native_id;         /* the kernel's thread id */
  struct LoomThread *live_prev, *live_next;   /* live_mu */
  int live;                  /* on this process's live list; live_mu */
  char name[64];
  /* the wait this thread is blocked in, for cancel() */
  pthread_mutex_t reg_mu;
  LoomWaitq *wait_q;
  LoomObj *wait_obj;
} LoomThread;

/* A coroutine a loom thread resumed, while it runs: a node on the C stack
** of the resume, linked from the thread (under its mu) so that cancel()
** can put its hook on the coroutine actually running. */
typedef struct CoLink {
  lua_State *co;
  struct CoLink *outer;
} CoLink;

/* The loom thread the calling OS thread runs, NULL for others. */
static LOOM_THREAD_LOCAL LoomThread *self_thread = NULL;

/* The name current() gives an OS thread loom did not start as a loom
** thread (a pool worker, the child of a fork), empty for the default. */
static LOOM_THREAD_LOCAL char os_thread_name[64];

/* The calling OS thread's id, once current() needed it (0 before). */
static LOOM_THREAD_LOCAL int64_t current_tid = 0;

/* Default thread names count up across the process, like Python's. */
static atomic_long thread_counter = 0;

/* Process-global: the threads of this process that run now (isolated and
** shared), for enumerate(); emptied in a fork, where none of them runs.
** Listed from start() to the end of the body, so a listed thread holds
** the reference its run takes. */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static LoomThread *live_head = NULL;
static int live_count = 0;

/* Process-global: the stack size of threads made from now on
** (loom.stack_size), 0 for loom's default. */
static atomic_size_t stack_size_set = 0;
#define LOOM_STACK_DEFAULT ((size_t)2 << 20)
#define LOOM_STACK_LEAST ((size_t)512 << 10)   /* 200 nested C calls of Lua fit */
#define LOOM_STACK_MOST ((size_t)1 << 30)

/* Process-global: the main thread of this process (the thread whose
** kernel id is the pid: in a fork, the one that forked), as seen from the
** other threads; made on first demand, forgotten in a fork. */
static LoomThread *main_obj = NULL;      /* live_mu */
static _Atomic int64_t main_ident = 0;   /* its pthread_t, once known */

/* ---- C core ---- */

static void thread_destroy (LoomObj *o) {
  LoomThread *t = (LoomThread *)o;
  loomi_msg_free(t->call);
  loomi_msg_free(t->results);
  loomi_msg_free(t->error);
  loomi_msg_free(t->reporter);
  free(t->path);
  free(t->cpath);
  pthread_mutex_destroy(&t->mu);
  pthread_mutex_destroy(&t->reg_mu);
}

static LoomThread *thread_create (void) {
  LoomThread *t = (LoomThread *)loomi_obj_new(sizeof(LoomThread), LOOM_THREAD,
                                              thread_destroy);
  if (t == NULL)
    return NULL;
  if (loomi_mutex_init(&t->mu) != 0 || loomi_mutex_init(&t->reg_mu) != 0) {
    t->obj.destroy = NULL;
    loomi_obj_release(&t->obj);
    return NULL;
  }
  atomic_init(&t->cancel, 0);
  t->state = TH_NEW;
  return t;
}

static int64_t os_thread_id (void) {
  return (int64_t)syscall(SYS_gettid);
}

static pthread_once_t live_once = PTHREAD_ONCE_INIT;
static void live_init (void);

static void live_set (LoomThread *t, int on) {
  pthread_once(&live_once, live_init);
  pthread_mutex_lock(&live_mu);
  if (on && !t->live) {
    t->live_prev = NULL;
    t->live_next = live_head;
    if (live_head != NULL)
      live_head->live_prev = t;
    live_head = t;
    live_count++;
    t->live = 1;
  }
  else if (!on && t->live) {
    if (t->live_prev != NULL)
      t->live_prev->live_next = t->live_next;
    else
      live_head = t->live_next;
    if (t->live_next != NULL)
      t->live_next->live_prev = t->live_prev;
    live_count--;
    t->live = 0;
  }
  pthread_mutex_unlock(&live_mu);
}

/* The ident of a shared thread's object, known to start() before the
** thread itself runs. */
void loomi_thread_set_ident (LoomObj *o, int64_t ident) {
  LoomThread *t = (LoomThread *)o;
  loomi_mutex_lock(&t->mu);
  t->ident = ident;
  loomi_mutex_unlock(&t->mu);
}

void loomi_thread_live (LoomObj *o, int on) {
  live_set((LoomThread *)o, on);
}

size_t loomi_stack_size (void) {
  size_t n = atomic_load(&stack_size_set);
  return n != 0 ? n : LOOM_STACK_DEFAULT;
}

static void live_atfork_prepare (void) {
  pthread_mutex_lock(&live_mu);
}

static void live_atfork_parent (void) {
  pthread_mutex_unlock(&live_mu);
}

/* The parent's threads do not run in the child, and its main thread is
** the one that forked; the parent's objects stay the parent's. */
static void live_atfork_child (void) {
  pthread_mutex_unlock(&live_mu);
  live_head = NULL;
  live_count = 0;
  main_obj = NULL;
  atomic_store(&main_ident, (int64_t)pthread_self());
}

/* At the exit of a process whose interpreters were never closed (hosts
** such as neomutt and gnuplot exit without lua_close, and os.exit does not
** close by default), the isolated threads still running are treated as a
** closing interpreter treats its own: daemon threads are cancelled (and
** given up to 2 s each), the others waited for, as Python's interpreter
** waits at exit.  A closed interpreter already did this, and left none.
** Shared threads are not waited for: they need their interpreter's lock,
** which the exiting thread may hold. */
static void thread_request_cancel (LoomThread *t);
static int thread_wait_done (LoomThread *t, const LoomDeadline *dl);

void loomi_thread_atexit (void) {
  LoomThread **list = NULL;
  int n = 0;
  pthread_mutex_lock(&live_mu);
  if (live_count > 0)
    list = malloc((size_t)live_count * sizeof *list);
  for (LoomThread *t = live_head; list != NULL && t != NULL; t = t->live_next)
    if (!t->borrowed && t != self_thread) {
      loomi_obj_retain(&t->obj);
      list[n++] = t;
    }
  pthread_mutex_unlock(&live_mu);
  for (int i = 0; i < n; i++)
    if (list[i]->daemon)
      thread_request_cancel(list[i]);
  for (int i = 0; i < n; i++) {
    LoomDeadline dl;
    loomi_deadline_in(&dl, list[i]->daemon ? 2.0 : -1);
    thread_wait_done(list[i], &dl);
    loomi_obj_release(&list[i]->obj);
  }
  free(list);
}

static void live_init (void) {
  pthread_atfork(live_atfork_prepare, live_atfork_parent, live_atfork_child);
}

int loomi_on_loom_thread (void) {
  return self_thread != NULL;
}

/* Whether t's cancellation is to be raised now: not while a __close
** handler run by its unwinding is running (it may block like any code). */
static int cancel_due (LoomThread *t) {
  return atomic_load(&t->cancel) && t->closing_L == NULL;
}

int loomi_thread_wait_enter (LoomWaitq *q, LoomObj *obj) {
  LoomThread *t = self_thread;
  if (t == NULL)
    return 0;
  if (cancel_due(t))
    return ECANCELED;
  pthread_mutex_lock(&t->reg_mu);
  t->wait_q = q;
  t->wait_obj = obj;
  pthread_mutex_unlock(&t->reg_mu);
  if (cancel_due(t)) {
    loomi_thread_wait_leave();
    return ECANCELED;
  }
  return 0;
}

int loomi_thread_wait_leave (void) {
  LoomThread *t = self_thread;
  if (t == NULL)
    return 0;
  pthread_mutex_lock(&t->reg_mu);
  t->wait_q = NULL;
  t->wait_obj = NULL;
  pthread_mutex_unlock(&t->reg_mu);
  return cancel_due(t);
}

int loomi_cancel_requested (void) {
  LoomThread *t = self_thread;
  return t != NULL && cancel_due(t);
}

int loomi_cancellable (void) {
  return self_thread != NULL;
}

int loomi_raise_cancelled (lua_State *L) {
  if (self_thread != NULL) {
    self_thread->unwinding = 1;
    self_thread->closing_L = NULL;
    /* the hook on L (ours, or the GIL's) must see the calls of the
    ** __close handlers this error is about to run */
    lua_Hook h = lua_gethook(L);
    int mask = lua_gethookmask(L);
    if (h != NULL && !(mask & LUA_MASKCALL))
      lua_sethook(L, h, mask | LUA_MASKCALL, lua_gethookcount(L));
  }
  lua_pushliteral(L, LOOM_CANCELLED);
  return lua_error(L);
}

/* Shared-interpreter threads release their lock here (gil.c). */
void loomi_block_begin (lua_State *L) {
  loomi_intr_begin(L);
  loomi_gil_block_begin(L);
}

void loomi_block_end (lua_State *L) {
  loomi_gil_block_end(L);
  loomi_intr_end();
}

/* The number of active calls in L: an upper bound found by doubling, then
** halved down (lua_getstack walks the call list, so a plain count would
** be quadratic). */
static int stack_depth (lua_State *L) {
  lua_Debug ar;
  int lo = 0, hi = 1;          /* level lo - 1 exists, level hi may not */
  while (lua_getstack(L, hi - 1, &ar)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    int mid = lo + (hi - lo) / 2;
    if (lua_getstack(L, mid - 1, &ar))
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Whether the function being called (level 0) was called from C or from
** the bottom of the stack, as the __close handlers that an error's
** unwinding runs are. */
static int called_from_c (lua_State *L) {
  lua_Debug ar;
  if (!lua_getstack(L, 1, &ar))
    return 1;
  return lua_getinfo(L, "S", &ar) && ar.what[0] == 'C';
}

/* Whether the hook of a cancelled thread is to raise "cancelled" now.  It
** raises on every call and instruction of a cancelled thread,
** so that a pcall that catches it gets it again at once.  But once it was
** raised, a function that C calls (the unwinding calling a __close
** handler: it has no Lua caller) runs to its end untouched, with
** everything it calls, as under any other error; loom's own guards are
** let through in every case, so that unwinding still releases a lock. */
int loomi_cancel_hook_due (lua_State *L, lua_Debug *ar) {
  LoomThread *t = self_thread;
  if (t == NULL || !atomic_load(&t->cancel))
    return 0;
  if (t->closing_L != NULL) {
    if (t->closing_L == L && stack_depth(L) >= t->closing_depth)
      return 0;
    t->closing_L = NULL;       /* that handler has returned */
  }
  if (ar->event == LUA_HOOKCALL || ar->event == LUA_HOOKTAILCALL) {
    if (lua_getinfo(L, "f", ar)) {
      lua_CFunction f = lua_tocfunction(L, -1);
      lua_pop(L, 1);
      if (f == loomi_guard_close || f == loomi_proxy_gc || f == loomi_msgh)
        return 0;
    }
    if (t->unwinding && ar->event == LUA_HOOKCALL && called_from_c(L)) {
      t->closing_L = L;
      t->closing_depth = stack_depth(L);
      return 0;
    }
  }
  return 1;
}

static void cancel_hook (lua_State *L, lua_Debug *ar) {
  if (loomi_cancel_hook_due(L, ar))
    loomi_raise_cancelled(L);
}

/* Flags t, reaches a pure-Lua loop through a hook on its state, and wakes
** it from whatever loom wait it is blocked in. */
static void thread_request_cancel (LoomThread *t) {
  atomic_store(&t->cancel, 1);
  pthread_mutex_lock(&t->mu);
  if (t->L != NULL)
    lua_sethook(t->L, cancel_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
  for (CoLink *c = t->running; c != NULL; c = c->outer)
    lua_sethook(c->co, cancel_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
  pthread_mutex_unlock(&t->mu);
  pthread_mutex_lock(&t->reg_mu);
  LoomWaitq *q = t->wait_q;
  LoomObj *obj = t->wait_obj;
  if (obj != NULL)
    loomi_obj_retain(obj);
  if (q != NULL)   /* the object's reference, or reg_mu, keeps q alive */
    loomi_wake_all(q);
  pthread_mutex_unlock(&t->reg_mu);
  loomi_obj_release(obj);
}

static int flag_set (const void *arg) {
  return atomic_load((const atomic_int *)arg) != 0;
}

/* Waits until t is done; 0, ETIMEDOUT or ECANCELED. */
static int thread_wait_done (LoomThread *t, const LoomDeadline *dl) {
  int rc = 0;
  loomi_spin(flag_set, &t->done);
  loomi_mutex_lock(&t->mu);
  while (t->state != TH_DONE && rc == 0)
    rc = loomi_wait(&t->done_q, &t->mu, &t->obj, dl);
  if (t->state == TH_DONE)
    rc = 0;
  loomi_mutex_unlock(&t->mu);
  return rc;
}

static void push_error (lua_State *L, LoomThread *t);

/* No handle is left to collect what t returned or raised: the starter's
** list of threads (pruned only when full) must not keep it in the heap
** meanwhile.  t->mu held. */
static void drop_outcome (LoomThread *t) {
  loomi_msg_free(t->results);
  t->results = NULL;
  loomi_msg_free(t->error);
  t->error = NULL;
}

/* Uncollected errors are reported when a handle dies, through the
** reporter in the registry (set by loom.excepthook), or to stderr. */
static const char REPORTER_KEY = 'r';

/* Message handler for the reporter: its error as text, with a traceback. */
static int hook_msgh (lua_State *L) {
  const char *msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int report_error (lua_State *L) {
  LoomThread *t = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, t->name);
  lua_setfield(L, 1, "name");
  lua_pushinteger(L, (lua_Integer)t->ident);
  lua_setfield(L, 1, "ident");
  push_error(L, t);
  lua_setfield(L, 1, "traceback");
  lua_setfield(L, 1, "error");
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &REPORTER_KEY) == LUA_TFUNCTION) {
    /* a reporter that fails loses neither error: its own is reported,
    ** then the thread's by the default reporter (Python's "Exception in
    ** threading.excepthook") */
    lua_pushcfunction(L, hook_msgh);
    lua_insert(L, -2);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 0, -3) == LUA_OK)
      return 0;
    fprintf(stderr, "loom: exception in loom.excepthook:\n%s\n",
            lua_tostring(L, -1));
    lua_settop(L, 1);
  }
  else
    lua_pop(L, 1);
  lua_getfield(L, 1, "error");
  const char *msg = luaL_tolstring(L, -1, NULL);
  lua_getfield(L, 1, "traceback");
  const char *tb = lua_tostring(L, -1);
  fprintf(stderr, "loom: exception in thread %s:\n%s\n%s\n", t->name, msg,
          tb ? tb : "");
  fflush(stderr);
  return 0;
}

/* ---- the thread body ---- */

static const char TRACEBACK_KEY = 't';

/* Message handler: keeps the error value as it is and the traceback of
** where it was raised in the registry, for loomi_push_traceback. */
int loomi_msgh (lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
  return 1;
}

void loomi_push_traceback (lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
}

/* Runs in the new state, protected: decodes the call, runs it, and stores
** the encoded results in t. */
static int thread_run (lua_State *L) {
  LoomThread *t = lua_touserdata(L, 1);
  lua_settop(L, 0);
  int n = loomi_xfer_decode(L, t->call);
  loomi_msg_free(t->call);
  t->call = NULL;
  if (n < 1 || !lua_isfunction(L, 1))
    return luaL_error(L, "thread target is not a function");
  lua_call(L, n - 1, LUA_MULTRET);
  LoomMsg *res = loomi_xfer_encode(L, 1, lua_gettop(L), "results[]");
  t->results = res;
  return 0;
}

/* Protected: encodes the two values below the slot pointer. */
static int store_error (lua_State *L) {
  LoomMsg **slot = lua_touserdata(L, 3);
  lua_settop(L, 2);
  *slot = loomi_xfer_encode(L, 1, 2, "error");
  return 0;
}

LoomMsg *loomi_error_encode (lua_State *L, int errbase) {
  LoomMsg *m = NULL;
  errbase = lua_absindex(L, errbase);
  if (!lua_checkstack(L, 4))
    return NULL;
  lua_pushcfunction(L, store_error);
  lua_pushvalue(L, errbase);
  lua_pushvalue(L, errbase + 1);
  lua_pushlightuserdata(L, &m);
  if (lua_pcall(L, 3, 0, 0) == LUA_OK)
    return m;
  /* it cannot travel as it is: its text, or what it was and why not */
  const char *why = lua_tostring(L, -1);
  lua_pushcfunction(L, store_error);
  const char *msg = lua_tostring(L, errbase);
  if (msg != NULL)
    lua_pushstring(L, msg);
  else
    lua_pushfstring(L, "(error object is a %s value that cannot be sent: %s)",
                    luaL_typename(L, errbase), why ? why : "?");
  lua_remove(L, -3);            /* why, now copied */
  lua_pushvalue(L, errbase + 1);
  lua_pushlightuserdata(L, &m);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return NULL;
  }
  return m;
}

int loomi_raise_remote (lua_State *L, int errbase, const char *where) {
  errbase = lua_absindex(L, errbase);
  if (lua_type(L, errbase) == LUA_TSTRING &&
      lua_type(L, errbase + 1) == LUA_TSTRING) {
    lua_pushfstring(L, "%s\n[%s] %s", lua_tostring(L, errbase), where,
                    lua_tostring(L, errbase + 1));
    return lua_error(L);
  }
  lua_pushvalue(L, errbase);
  return lua_error(L);
}

static void thread_fail (LoomThread *t, lua_State *L, int errbase) {
  /* stack: error value, traceback */
  const char *text = lua_tostring(L, errbase);
  snprintf(t->failmsg, sizeof t->failmsg, "%s",
           text ? text : "(error object is not a string)");
  t->error = loomi_error_encode(L, errbase);
  if (t->error == NULL)
    snprintf(t->failmsg, sizeof t->failmsg, "%s", "not enough memory");
  t->failed = 1;
}

static int install_reporter (lua_State *L) {
  LoomThread *t = lua_touserdata(L, 1);
  if (loomi_xfer_decode(L, t->reporter) == 1 && lua_isfunction(L, -1))
    lua_rawsetp(L, LUA_REGISTRYINDEX, &REPORTER_KEY);
  return 0;
}

/* An error that no handle can collect any more is reported here, through
** the reporter the starting state had, while this state is still open. */
static void report_orphan (LoomThread *t, lua_State *L) {
  loomi_mutex_lock(&t->mu);
  int orphan = !t->collected && !atomic_load(&t->cancel) &&
               atomic_load(&t->obj.refs) == 1 + t->listed;
  if (orphan)
    t->collected = 1;
  loomi_mutex_unlock(&t->mu);
  if (!orphan)
    return;
  if (t->reporter != NULL) {
    lua_pushcfunction(L, install_reporter);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
      lua_pop(L, 1);
  }
  lua_pushcfunction(L, report_error);
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    lua_pop(L, 1);
}

typedef struct Worker Worker;
static lua_State *worker_state (Worker *w, LoomThread *t);
static int co_install (lua_State *L);

/* Runs thread t on worker w, up to marking it done. */
static void worker_run (Worker *w, LoomThread *t) {
  self_thread = t;
  loomi_lock_new_owner();
  loomi_mutex_lock(&t->mu);
  t->native_id = os_thread_id();
  t->ident = (int64_t)pthread_self();
  loomi_wake_all(&t->done_q);   /* a reader of native_id may wait */
  loomi_mutex_unlock(&t->mu);
  lua_State *L = worker_state(w, t);
  if (L != NULL) {
    loomi_mutex_lock(&t->mu);
    t->L = L;
    loomi_mutex_unlock(&t->mu);
    if (atomic_load(&t->cancel))
      lua_sethook(L, cancel_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
    lua_pushcfunction(L, loomi_msgh);
    lua_pushcfunction(L, thread_run);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK) {
      loomi_push_traceback(L);
      thread_fail(t, L, lua_gettop(L) - 1);
      report_orphan(t, L);
    }
    lua_settop(L, 0);
    loomi_mutex_lock(&t->mu);
    t->L = NULL;
    loomi_mutex_unlock(&t->mu);
    lua_sethook(L, NULL, 0, 0);   /* no cancel may reach the next thread */
    loomi_thread_shutdown(L);   /* as closing the state would */
  }
  live_set(t, 0);
  /* The running thread's reference goes in the same critical section that
  ** marks it done, so a dying handle that sees "done" can trust the count;
  ** an error no handle will ever see is reported now. */
  loomi_mutex_lock(&t->mu);
  t->state = TH_DONE;
  atomic_store(&t->done, 1);
  int last = 0, refs = atomic_load(&t->obj.refs);
  do {
    if (refs == 1) {
      last = 1;
      break;
    }
  } while (!atomic_compare_exchange_weak(&t->obj.refs, &refs, refs - 1));
  if (t->failed && !t->collected && !atomic_load(&t->cancel) &&
      (last || refs - 1 == t->listed)) {
    t->collected = 1;
    fprintf(stderr, "loom: exception in thread %s:\n%s\n", t->name,
            t->failmsg);
    fflush(stderr);
  }
  if (!last && refs - 1 == t->listed)
    drop_outcome(t);
  loomi_wake_all(&t->done_q);   /* under mu: our reference is gone */
  loomi_mutex_unlock(&t->mu);
  self_thread = NULL;
  if (last)
    loomi_obj_release(&t->obj);
}

/* ---- the per-state list of started threads, for lifecycle ---- */

typedef struct Children {
  LoomThread **list;
  size_t n, cap;
  pid_t pid;             /* the process whose references the list holds */
} Children;

static const char CHILDREN_KEY = 'c';

static void children_prune (Children *c) {
  size_t keep = 0;
  for (size_t i = 0; i < c->n; i++) {
    LoomThread *t = c->list[i];
    loomi_mutex_lock(&t->mu);
    int done = t->state == TH_DONE;
    if (done)
      t->listed = 0;
    loomi_mutex_unlock(&t->mu);
    if (done)
      loomi_obj_release(&t->obj);
    else
      c->list[keep++] = t;
  }
  c->n = keep;
}

/* When the state that started threads closes: cancel the daemons, then
** wait for everyone (a daemon stuck outside Lua is given up on after a
** grace period; the library stays mapped, see the Makefile). */
static void children_shutdown (Children *c) {
  if (c->pid != getpid())
    c->n = 0;   /* a copy made by a fork loom did not do: not ours to wait */
  for (size_t i = 0; i < c->n; i++)
    if (c->list[i]->daemon)
      thread_request_cancel(c->list[i]);
  for (size_t i = 0; i < c->n; i++) {
    LoomThread *t = c->list[i];
    LoomDeadline dl;
    loomi_deadline_in(&dl, t->daemon ? 2.0 : -1);
    thread_wait_done(t, &dl);
    loomi_obj_release(&t->obj);
  }
  free(c->list);
  c->list = NULL;
  c->n = c->cap = 0;
}

#define LOOM_CHILDREN "loom.Children"

static int children_gc (lua_State *L) {
  children_shutdown(luaL_checkudata(L, 1, LOOM_CHILDREN));
  return 0;
}

static Children *children_of (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CHILDREN_KEY) == LUA_TUSERDATA) {
    Children *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (c->pid != getpid()) {    /* a fork loom did not make: the parent's */
      c->n = 0;
      c->pid = getpid();
    }
    return c;
  }
  lua_pop(L, 1);
  Children *c = lua_newuserdatauv(L, sizeof(Children), 0);
  memset(c, 0, sizeof *c);
  c->pid = getpid();
  if (luaL_newmetatable(L, LOOM_CHILDREN)) {
    lua_pushcfunction(L, children_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CHILDREN_KEY);
  return c;
}

/* ---- clean interpreters: what a fresh state looks like, and going back ----
** A state made for a thread records once the contents of every table its
** globals reach (the globals, every library table, package.loaded and the
** tables those hold), their metatables, the metatables of the basic types
** (the string one among them), the default input and output files,
** loom's own registry entries and the metatables of loom's classes.  Putting those back makes the state look
** fresh to the next thread.  What C modules keep in the registry (their
** references and metatables), and the C libraries a thread loaded, stay. */

static const char SNAPSHOT_KEY = 's';
static const char MAIN_KEY = 'm';

/* Fields of the snapshot table.  SNAP_TABLES is a sequence of quadruples:
** table, its copy, its Print, its metatable (false when none). */
enum { SNAP_TABLES = 1, SNAP_TYPES, SNAP_REGISTRY, SNAP_GCMODE, SNAP_BASEKB };

static const int basic_types[] = {
  LUA_TNIL, LUA_TBOOLEAN, LUA_TLIGHTUSERDATA, LUA_TNUMBER, LUA_TSTRING,
  LUA_TFUNCTION, LUA_TTHREAD
};
#define NBASIC ((int)(sizeof basic_types / sizeof basic_types[0]))

/* Pushes one value of a basic type, to reach the type's metatable. */
static void push_basic (lua_State *L, int type) {
  switch (type) {
    case LUA_TNIL: lua_pushnil(L); break;
    case LUA_TBOOLEAN: lua_pushboolean(L, 0); break;
    case LUA_TLIGHTUSERDATA: lua_pushlightuserdata(L, NULL); break;
    case LUA_TNUMBER: lua_pushinteger(L, 0); break;
    case LUA_TSTRING: lua_pushliteral(L, ""); break;
    case LUA_TFUNCTION: lua_pushcfunction(L, loomi_msgh); break;
    default: lua_pushthread(L); break;
  }
}

/* The registry entries a thread may change through the libraries. */
static const char *const reg_names[] = { "_IO_input", "_IO_output" };
#define NREGNAMES ((int)(sizeof reg_names / sizeof reg_names[0]))
static const void *const reg_keys[] = { &REPORTER_KEY, &TRACEBACK_KEY,
                                        &MAIN_KEY };
#define NREGKEYS ((int)(sizeof reg_keys / sizeof reg_keys[0]))

static void push_reg (lua_State *L, int i) {
  if (i < NREGNAMES)
    lua_getfield(L, LUA_REGISTRYINDEX, reg_names[i]);
  else
    lua_rawgetp(L, LUA_REGISTRYINDEX, reg_keys[i - NREGNAMES]);
}

static void set_reg (lua_State *L, int i) {
  if (i < NREGNAMES)
    lua_setfield(L, LUA_REGISTRYINDEX, reg_names[i]);
  else
    lua_rawsetp(L, LUA_REGISTRYINDEX, reg_keys[i - NREGNAMES]);
}

/* A table's entries in traversal order, each key and value reduced to its
** type and identity: comparing a table with it costs no lookup, and a table
** nobody changed traverses in the same order.  The copy is what the table
** is put back from when they differ. */
typedef struct Slot {
  int type;                  /* lua_type, or -1 for an integer */
  union { const void *p; lua_Integer i; lua_Number f; int b; } u;
} Slot;

typedef struct Print {
  lua_Integer n;             /* entries */
  Slot s[];                  /* key, value, key, value... */
} Print;

static void slot_get (lua_State *L, int idx, Slot *s) {
  s->type = lua_type(L, idx);
  switch (s->type) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        s->type = -1;
        s->u.i = lua_tointeger(L, idx);
      }
      else
        s->u.f = lua_tonumber(L, idx);
      break;
    case LUA_TBOOLEAN: s->u.b = lua_toboolean(L, idx); break;
    default: s->u.p = lua_topointer(L, idx); break;
  }
}

/* True when the value at idx is the one s describes (a NaN never is). */
static int slot_same (lua_State *L, int idx, const Slot *s) {
  Slot v;
  slot_get(L, idx, &v);
  if (v.type != s->type)
    return 0;
  switch (v.type) {
    case -1: return v.u.i == s->u.i;
    case LUA_TNUMBER: return v.u.f == s->u.f;
    case LUA_TBOOLEAN: return v.u.b == s->u.b;
    default: return v.u.p == s->u.p;
  }
}

/* Records table t (stack index), which has p->n entries, into p. */
static void print_record (lua_State *L, int t, Print *p) {
  lua_Integer i = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (i < p->n) {
      slot_get(L, -2, &p->s[2 * i]);
      slot_get(L, -1, &p->s[2 * i + 1]);
    }
    i++;
    lua_pop(L, 1);
  }
}

static int print_matches (lua_State *L, int t, const Print *p) {
  lua_Integer i = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (i >= p->n || !slot_same(L, -2, &p->s[2 * i]) ||
        !slot_same(L, -1, &p->s[2 * i + 1])) {
      lua_pop(L, 2);
      return 0;
    }
    i++;
    lua_pop(L, 1);
  }
  return i == p->n;
}

/* Queues the table at idx (seen set at 2, queue at 3) once. */
static void snap_enqueue (lua_State *L, int idx, lua_Integer *qn) {
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx))
    return;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, 2) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, 2);
  lua_pushvalue(L, idx);
  lua_rawseti(L, 3, ++*qn);
}

/* Protected: records the snapshot of a new state in its registry.  A state
** that is kept opens loom.core first (loomi_newstate leaves it to the first
** require), so that threads requiring loom find it in the clean state. */
static int snapshot_take (lua_State *L) {
  luaL_requiref(L, "loom.core", luaopen_loom_core, 0);
  lua_settop(L, 0);
  lua_createtable(L, 4, 0);                   /* 1: snapshot */
  lua_createtable(L, 0, 32);                  /* 2: seen */
  lua_createtable(L, 32, 0);                  /* 3: queue */
  lua_Integer qn = 0;
  lua_createtable(L, NBASIC, 0);              /* 4: type metatables */
  for (int i = 0; i < NBASIC; i++) {
    push_basic(L, basic_types[i]);
    if (!lua_getmetatable(L, -1))
      lua_pushboolean(L, 0);
    snap_enqueue(L, -1, &qn);
    lua_rawseti(L, 4, i + 1);
    lua_pop(L, 1);
  }
  lua_rawseti(L, 1, SNAP_TYPES);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  snap_enqueue(L, -1, &qn);
  lua_pop(L, 1);
  /* loom's own classes: their metatables and what those reach (methods)
  ** are as much a part of a fresh state as the libraries */
  loomi_class_table(L);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    snap_enqueue(L, -1, &qn);
  }
  lua_pop(L, 1);
  lua_createtable(L, (int)(4 * 32), 0);       /* 4: the quadruples */
  lua_Integer k = 0;
  for (lua_Integer qi = 1; qi <= qn; qi++) {
    lua_rawgeti(L, 3, qi);                    /* 5: table */
    lua_newtable(L);                          /* 6: its copy */
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, 5)) {
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, 6);
      n++;
      snap_enqueue(L, -1, &qn);
      lua_pop(L, 1);
    }
    if (!lua_getmetatable(L, 5))
      lua_pushboolean(L, 0);
    snap_enqueue(L, -1, &qn);
    lua_rawseti(L, 4, k + 4);
    Print *p = lua_newuserdatauv(L, sizeof(Print) +
                                    (size_t)(2 * n) * sizeof(Slot), 0);
    p->n = n;
    print_record(L, 5, p);
    lua_rawseti(L, 4, k + 3);
    lua_rawseti(L, 4, k + 2);
    lua_rawseti(L, 4, k + 1);
    k += 4;
  }
  lua_rawseti(L, 1, SNAP_TABLES);
  lua_createtable(L, NREGNAMES + NREGKEYS, 0);
  for (int i = 0; i < NREGNAMES + NREGKEYS; i++) {
    push_reg(L, i);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushboolean(L, 0);
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_rawseti(L, 1, SNAP_REGISTRY);
  int mode = lua_gc(L, LUA_GCINC, 0, 0, 0);
  lua_gc(L, mode, 0, 0, 0);
  lua_pushinteger(L, mode);
  lua_rawseti(L, 1, SNAP_GCMODE);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SNAPSHOT_KEY);
  lua_gc(L, LUA_GCCOLLECT);
  lua_pushinteger(L, lua_gc(L, LUA_GCCOUNT));   /* KiB a clean state holds */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SNAPSHOT_KEY);
  lua_insert(L, -2);
  lua_rawseti(L, -2, SNAP_BASEKB);
  return 0;
}

/* Makes table t (stack index) hold exactly what copy c holds again;
** `count` is the number of entries of c. */
static void restore_table (lua_State *L, int t, int c, lua_Integer count) {
  lua_Integer same = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {                    /* key value */
    lua_pushvalue(L, -2);
    lua_rawget(L, c);                         /* key value saved */
    if (lua_rawequal(L, -1, -2)) {
      same++;
      lua_pop(L, 2);
      continue;
    }
    if (!lua_isnil(L, -1))
      same++;
    lua_pushvalue(L, -3);
    lua_insert(L, -2);
    lua_rawset(L, t);          /* an existing field: allowed while iterating */
    lua_pop(L, 1);
  }
  if (same == count)
    return;
  lua_pushnil(L);                             /* some saved keys are gone */
  while (lua_next(L, c)) {
    lua_pushvalue(L, -2);
    if (lua_rawget(L, t) == LUA_TNIL) {
      lua_pushvalue(L, -3);
      lua_pushvalue(L, -3);
      lua_rawset(L, t);
    }
    lua_pop(L, 2);
  }
}

/* Puts back what the snapshot at stack index 1 holds; the stack is left
** with only the snapshot. */
static void snapshot_apply (lua_State *L) {
  lua_settop(L, 1);
  lua_rawgeti(L, 1, SNAP_TYPES);              /* 2 */
  for (int i = 0; i < NBASIC; i++) {
    push_basic(L, basic_types[i]);
    if (lua_rawgeti(L, 2, i + 1) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
  }
  lua_rawgeti(L, 1, SNAP_REGISTRY);           /* 3 */
  for (int i = 0; i < NREGNAMES + NREGKEYS; i++) {
    if (lua_rawgeti(L, 3, i + 1) == LUA_TBOOLEAN) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    set_reg(L, i);
  }
  lua_rawgeti(L, 1, SNAP_TABLES);             /* 4 */
  lua_Integer n = (lua_Integer)lua_rawlen(L, 4);
  for (lua_Integer k = 0; k + 4 <= n; k += 4) {
    lua_rawgeti(L, 4, k + 1);                 /* 5: table */
    lua_rawgeti(L, 4, k + 2);                 /* 6: copy */
    lua_rawgeti(L, 4, k + 3);
    Print *p = lua_touserdata(L, -1);         /* the snapshot keeps it */
    lua_pop(L, 1);
    if (!print_matches(L, 5, p)) {
      restore_table(L, 5, 6, p->n);
      print_record(L, 5, p);    /* the order may have changed with it */
    }
    if (lua_rawgeti(L, 4, k + 4) != LUA_TTABLE) {     /* 7: metatable */
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    int has = lua_getmetatable(L, 5);
    int same = has ? lua_rawequal(L, -1, 7) : lua_isnil(L, 7);
    if (!same) {
      lua_pushvalue(L, 7);
      lua_setmetatable(L, 5);
    }
    lua_settop(L, 4);
  }
  lua_settop(L, 1);
}

/* Protected: puts a state that ran a thread back as it was made.  When
** the thread left much garbage behind, a full collection frees it now and
** runs its finalizers, which may touch the libraries again; otherwise the
** collector goes on at its own pace. */
static int snapshot_restore (lua_State *L) {
  lua_settop(L, 0);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SNAPSHOT_KEY) != LUA_TTABLE)
    return luaL_error(L, "state has no snapshot");
  snapshot_apply(L);
  lua_rawgeti(L, 1, SNAP_GCMODE);
  int mode = (int)lua_tointeger(L, -1);
  lua_rawgeti(L, 1, SNAP_BASEKB);
  int base = (int)lua_tointeger(L, -1);
  lua_settop(L, 1);
  if (!lua_gc(L, LUA_GCISRUNNING))
    lua_gc(L, LUA_GCRESTART);         /* which also resets the debt: rare */
  lua_gc(L, mode, 0, 0, 0);
  if (lua_gc(L, LUA_GCCOUNT) > 2 * base + 64) {
    lua_gc(L, LUA_GCCOLLECT);
    snapshot_apply(L);
  }
  lua_warning(L, "@off", 0);
  lua_getglobal(L, "math");
  if (lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION)
    lua_call(L, 0, 0);                /* a seed the last thread set goes */
  lua_settop(L, 0);
  return 0;
}

/* ---- workers: OS threads kept, idle, with their interpreters ----
** A worker runs one thread after another.  When a thread's body is over,
** it waits for the threads that state started, marks the thread done,
** joins the idle list, cleans its state and waits there to be handed the
** next start() (one whose package paths its state was made with, if any
** such worker is idle).  Idle workers are detached and wait for nothing
** but work: a closing state never waits for them, and they leave after
** WORKER_IDLE_SECONDS, or at once when idle_max wait already.  A forked
** child starts with no idle workers. */

#define WORKER_IDLE_SECONDS 5.0

struct Worker {
  struct Worker *next;       /* in the idle list */
  struct Worker *prev_all, *next_all;   /* in all_workers */
  pthread_cond_t cv;         /* a job arrived; idle_mu */
  _Atomic(LoomThread *) job; /* set under idle_mu while w is idle */
  pthread_t tid;             /* set by the worker before it first parks */
  lua_State *L;              /* kept between jobs, NULL when none */
  char *path, *cpath;        /* the package paths L was made with */
  size_t stack;              /* its stack size */
};

/* Process-global: the idle workers of this process.  idle_mu guards the
** list, the count and the job field of every idle worker. */
static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static Worker *idle_list = NULL;
static int idle_count = 0;
/* Every worker, idle or not: in a forked child, the parent's workers stay
** listed (never run, never freed) so their memory is not leaked but kept. */
static Worker *all_workers = NULL;
static int live_workers = 0;   /* of this process: 0 in a fork */
static int idle_max = 4;
static pthread_once_t worker_once = PTHREAD_ONCE_INIT;

static void worker_atfork_prepare (void) {
  pthread_mutex_lock(&idle_mu);
}

static void worker_atfork_parent (void) {
  pthread_mutex_unlock(&idle_mu);
}

/* The idle workers are threads of the parent: the child has none (they stay
** in all_workers). */
static void worker_atfork_child (void) {
  pthread_mutex_unlock(&idle_mu);
  idle_list = NULL;
  idle_count = 0;
  live_workers = 0;
}

static void worker_init (void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n > 2)
    idle_max = (int)(2 * n);
  pthread_atfork(worker_atfork_prepare, worker_atfork_parent,
                 worker_atfork_child);
}

static int same_string (const char *a, const char *b) {
  return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void worker_list (Worker *w) {
  pthread_mutex_lock(&idle_mu);
  w->prev_all = NULL;
  w->next_all = all_workers;
  if (all_workers != NULL)
    all_workers->prev_all = w;
  all_workers = w;
  live_workers++;
  pthread_mutex_unlock(&idle_mu);
}

static void worker_unlist (Worker *w) {
  pthread_mutex_lock(&idle_mu);
  if (w->prev_all != NULL)
    w->prev_all->next_all = w->next_all;
  else
    all_workers = w->next_all;
  if (w->next_all != NULL)
    w->next_all->prev_all = w->prev_all;
  live_workers--;
  pthread_mutex_unlock(&idle_mu);
}

/* Whether a new state is worth a snapshot, which costs about as much as
** making the state: only a worker that stays idle afterwards runs another
** thread in it, and no more than idle_max do.  In a burst of more threads
** running at once than that, the surplus closes its state when done
** (worker_clean finds no snapshot); one that does get another thread makes
** it afresh. */
static int worker_may_stay (void) {
  pthread_mutex_lock(&idle_mu);
  int stay = live_workers - idle_count <= idle_max;
  pthread_mutex_unlock(&idle_mu);
  return stay;
}

/* Takes an idle worker out of the list and hands it t, in one critical
** section: one whose state was made with t's paths, else any (it makes a
** new state).  Once out of the list a worker whose idle wait times out
** finds its job set, so it never frees itself under a start().  Sets *tid;
** NULL when none is idle. */
static Worker *worker_take (LoomThread *t, pthread_t *tid) {
  const char *path = t->path, *cpath = t->cpath;
  size_t stack = loomi_stack_size();
  pthread_mutex_lock(&idle_mu);
  Worker **best = NULL;
  for (Worker **p = &idle_list; *p != NULL; p = &(*p)->next) {
    if ((*p)->stack != stack)
      continue;              /* made before a stack_size() call */
    if (same_string((*p)->path, path) && same_string((*p)->cpath, cpath)) {
      best = p;
      break;
    }
    if (best == NULL)
      best = p;
  }
  Worker *w = NULL;
  if (best != NULL) {
    w = *best;
    *best = w->next;
    w->next = NULL;
    idle_count--;
    *tid = w->tid;
    w->job = t;
    pthread_cond_signal(&w->cv);
  }
  pthread_mutex_unlock(&idle_mu);
  return w;
}

/* Puts w, its thread done, at the head of the idle list, where start()
** looks first: w is handed the next thread even while it still cleans its
** state, and takes it without a wake-up.  0: enough wait, w leaves. */
static int worker_offer (Worker *w) {
  pthread_mutex_lock(&idle_mu);
  atomic_store(&w->job, NULL);
  int ok = idle_count < idle_max;
  if (ok) {
    w->next = idle_list;
    idle_list = w;
    idle_count++;
  }
  pthread_mutex_unlock(&idle_mu);
  return ok;
}

static int job_arrived (const void *arg) {
  return atomic_load(&((const Worker *)arg)->job) != NULL;
}

/* Waits in the idle list for a thread to run; NULL after
** WORKER_IDLE_SECONDS, w out of the list. */
static LoomThread *worker_wait (Worker *w) {
  loomi_spin(job_arrived, w);
  pthread_mutex_lock(&idle_mu);
  LoomDeadline dl;
  loomi_deadline_in(&dl, WORKER_IDLE_SECONDS);
  while (atomic_load(&w->job) == NULL &&
         pthread_cond_timedwait(&w->cv, &idle_mu, &dl.at) != ETIMEDOUT)
    ;
  LoomThread *t = atomic_load(&w->job);
  if (t == NULL) {
    for (Worker **p = &idle_list; *p != NULL; p = &(*p)->next)
      if (*p == w) {
        *p = w->next;
        idle_count--;
        break;
      }
  }
  pthread_mutex_unlock(&idle_mu);
  return t;
}

static void worker_drop_state (Worker *w) {
  if (w->L != NULL)
    lua_close(w->L);
  w->L = NULL;
  free(w->path);
  free(w->cpath);
  w->path = w->cpath = NULL;
}

/* Makes sure w has a clean state for t's paths; NULL with t->failmsg set
** when no state can be made.  Takes t's paths. */
static lua_State *worker_state (Worker *w, LoomThread *t) {
  if (w->L != NULL &&
      !(same_string(w->path, t->path) && same_string(w->cpath, t->cpath))) {
    lua_close(w->L);
    w->L = NULL;
  }
  if (w->L == NULL) {
    char err[sizeof t->failmsg];
    lua_State *L = loomi_newstate(t->path, t->cpath, err, sizeof err);
    if (L == NULL) {
      loomi_mutex_lock(&t->mu);
      memcpy(t->failmsg, err, sizeof err);
      t->failed = 1;
      loomi_mutex_unlock(&t->mu);
    }
    else {
      lua_pushcfunction(L, co_install);
      if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        lua_pop(L, 1);      /* the standard ones stay: cancel misses loops in them */
      lua_pushcfunction(L, snapshot_take);
      if (worker_may_stay() && lua_pcall(L, 0, 0, 0) != LUA_OK)
        lua_pop(L, 1);      /* no snapshot: the state is not kept */
      lua_settop(L, 0);
      w->L = L;
      free(w->path);
      free(w->cpath);
      w->path = t->path;
      w->cpath = t->cpath;
      t->path = t->cpath = NULL;
    }
  }
  free(t->path);
  free(t->cpath);
  t->path = t->cpath = NULL;
  return w->L;
}

/* Cleans w's state for the next thread, or closes it when that fails (w
** is in the idle list: its paths stay as they are). */
static void worker_clean (Worker *w) {
  lua_State *L = w->L;
  if (L == NULL)
    return;
  lua_pushcfunction(L, snapshot_restore);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    lua_close(L);
    w->L = NULL;
  }
}

static void *worker_main (void *arg) {
  Worker *w = arg;
  LoomThread *t = w->job;
  w->tid = pthread_self();
  while (t != NULL) {
    worker_run(w, t);
    if (!worker_offer(w))
      break;
    worker_clean(w);
    loomi_heap_flush();      /* an idle worker holds no freed heap blocks */
    t = worker_wait(w);
  }
  worker_drop_state(w);
  worker_unlist(w);
  pthread_cond_destroy(&w->cv);
  free(w);
  return NULL;
}

/* Starts t on an idle worker or a new one: 0 with *tid set, or an errno. */
static int worker_start (LoomThread *t, pthread_t *tid) {
  pthread_once(&worker_once, worker_init);
  Worker *w = worker_take(t, tid);
  if (w != NULL)
    return 0;
  w = calloc(1, sizeof *w);
  if (w == NULL)
    return ENOMEM;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int err = pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (err != 0) {
    free(w);
    return err;
  }
  w->job = t;
  w->stack = loomi_stack_size();
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, w->stack);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);   /* the new thread inherits it */
  worker_list(w);
  err = pthread_create(tid, &attr, worker_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    worker_unlist(w);
    pthread_cond_destroy(&w->cv);
    free(w);
  }
  return err;
}

/* ---- Lua bindings ---- */

static LoomThread *checkthread (lua_State *L, int arg) {
  return (LoomThread *)loomi_checkobj(L, arg, LOOM_THREAD);
}

static char *dup_field (lua_State *L, const char *field) {
  char *s = NULL;
  lua_getglobal(L, "package");
  if (lua_istable(L, -1) && lua_getfield(L, -1, field) == LUA_TSTRING) {
    s = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  else if (lua_istable(L, -1))
    lua_pop(L, 1);
  lua_pop(L, 1);
  return s;
}

static int encode_reporter (lua_State *L) {
  LoomThread *t = lua_touserdata(L, 1);
  loomi_msg_free(t->reporter);
  t->reporter = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &REPORTER_KEY) == LUA_TFUNCTION)
    t->reporter = loomi_xfer_encode(L, -1, 1, "reporter");
  return 0;
}

/* thread(target, args, name, daemon): the Lua layer has sorted out the two
** call forms; args is a sequence table with an n field. */
static int thread_new (lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *name = lua_isnoneornil(L, 3) ? NULL
                     : loomi_checkname(L, 3, sizeof ((LoomThread *)0)->name);
  int daemon = lua_toboolean(L, 4);
  LoomObj **slot = loomi_proxy_new(L, LOOM_THREAD);
  lua_createtable(L, 2, 0);      /* the call, kept until start() */
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 2);
  lua_setiuservalue(L, -2, 1);
  LoomThread *t = thread_create();
  if (t == NULL)
    return luaL_error(L, "cannot create thread: shared heap exhausted");
  *slot = &t->obj;
  t->daemon = daemon;
  if (name != NULL)
    snprintf(t->name, sizeof t->name, "%s", name);
  else
    snprintf(t->name, sizeof t->name, "Thread-%ld",
             atomic_fetch_add(&thread_counter, 1) + 1);
  return 1;
}

static int thread_start (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  loomi_mutex_lock(&t->mu);
  int state = t->state;           /* a worker may be ending it right now */
  loomi_mutex_unlock(&t->mu);
  if (t->main || state != TH_NEW || t->call != NULL)
    return luaL_error(L, "threads can only be started once");
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);
  if (!lua_istable(L, 2))
    return luaL_error(L, "threads can only be started once");
  lua_rawgeti(L, 2, 1);         /* target */
  lua_rawgeti(L, 2, 2);         /* args */
  lua_remove(L, 2);
  if (!lua_isfunction(L, 2) || !lua_istable(L, 3))
    return luaL_error(L, "threads can only be started once");
  int n = loomi_argcount(L, 3);
  luaL_checkstack(L, n + 8, "too many arguments");
  for (int i = 1; i <= n; i++)
    lua_rawgeti(L, 3, i);
  lua_remove(L, 3);
  t->call = loomi_xfer_encode_call(L, 2, n + 1);
  t->path = dup_field(L, "path");
  t->cpath = dup_field(L, "cpath");
  lua_pushcfunction(L, encode_reporter);
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    lua_pop(L, 1);   /* a reporter that cannot travel: the default one */
  Children *c = children_of(L);
  /* Pruning locks every listed thread: only when the list is full, and
  ** growing it when that leaves it more than half full, so that starting
  ** many threads at once costs O(1) each and not O(running). */
  if (c->n == c->cap) {
    children_prune(c);
    if (c->n == c->cap || c->n > c->cap / 2) {
      size_t cap = c->cap ? c->cap * 2 : 8;
      LoomThread **list = realloc(c->list, cap * sizeof *list);
      if (list == NULL && c->n == c->cap) {
        loomi_msg_free(t->call);
        t->call = NULL;
        return luaL_error(L, "not enough memory");
      }
      if (list != NULL) {
        c->list = list;
        c->cap = cap;
      }
    }
  }
  loomi_obj_retain(&t->obj);                  /* the running thread's ref */
  t->state = TH_RUNNING;
  pthread_once(&live_once, live_init);
  live_set(t, 1);
  pthread_t tid;
  int err = worker_start(t, &tid);
  if (err != 0) {
    live_set(t, 0);
    t->state = TH_NEW;
    loomi_msg_free(t->call);
    t->call = NULL;
    loomi_msg_free(t->reporter);
    t->reporter = NULL;
    free(t->path);
    free(t->cpath);
    t->path = t->cpath = NULL;
    loomi_obj_release(&t->obj);
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot start thread: %s", strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  loomi_obj_retain(&t->obj);
  loomi_mutex_lock(&t->mu);
  t->ident = (int64_t)tid;
  t->listed = 1;
  loomi_mutex_unlock(&t->mu);
  c->list[c->n++] = t;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1);
  lua_settop(L, 1);
  return 1;
}

/* Common prologue of join and result: 0 done, ETIMEDOUT, EINTR; raises when
** cancelled itself or on misuse. */
static int thread_await (lua_State *L, LoomThread *t, int arg) {
  LoomDeadline dl;
  loomi_opttimeout(L, arg, &dl);
  if (t->main)
    return luaL_error(L, "cannot join the main thread");
  if (t == self_thread)
    return luaL_error(L, "cannot join current thread");
  loomi_mutex_lock(&t->mu);
  int never = t->state == TH_NEW;
  loomi_mutex_unlock(&t->mu);
  if (never)
    return luaL_error(L, "cannot join thread before it is started");
  loomi_block_begin(L);
  int rc = thread_wait_done(t, &dl);
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  return rc;
}

static int thread_join (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  int rc = thread_await(L, t, 2);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* Pushes the error value and traceback of a failed thread. */
static void push_error (lua_State *L, LoomThread *t) {
  if (t->error != NULL) {
    int n = loomi_xfer_decode(L, t->error);
    if (n < 2)
      lua_settop(L, lua_gettop(L) - n + 2);
  }
  else {
    lua_pushstring(L, t->failmsg);
    lua_pushnil(L);
  }
}

static int was_cancelled (LoomThread *t) {
  return t->failed && atomic_load(&t->cancel);
}

static int thread_result (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  int rc = thread_await(L, t, 2);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  if (rc == ETIMEDOUT) {
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_TIMEOUT);
    return 2;
  }
  lua_settop(L, 1);
  if (was_cancelled(t)) {
    t->collected = 1;
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_CANCELLED);
    return 2;
  }
  if (t->failed) {
    t->collected = 1;
    push_error(L, t);
    lua_pushfstring(L, "thread %s", t->name);
    return loomi_raise_remote(L, 2, lua_tostring(L, -1));
  }
  if (t->results == NULL)
    return 0;
  return loomi_xfer_decode(L, t->results);
}

/* error() -> nil when the thread did not fail, else the error value and
** the remote traceback; never raises the thread's error. */
static int thread_error (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  lua_settop(L, 1);
  loomi_mutex_lock(&t->mu);
  int done = t->state == TH_DONE;
  loomi_mutex_unlock(&t->mu);
  if (!done || !t->failed) {
    lua_pushnil(L);
    return 1;
  }
  t->collected = 1;
  if (was_cancelled(t)) {
    lua_pushliteral(L, LOOM_CANCELLED);
    return 1;
  }
  push_error(L, t);
  return 2;
}

static int thread_is_alive (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  loomi_mutex_lock(&t->mu);
  lua_pushboolean(L, t->main || t->state == TH_RUNNING);
  loomi_mutex_unlock(&t->mu);
  return 1;
}

static int thread_cancel (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  loomi_mutex_lock(&t->mu);
  int state = t->state;
  loomi_mutex_unlock(&t->mu);
  if (t->main || state == TH_DONE) {
    lua_pushboolean(L, 0);
    return 1;
  }
  thread_request_cancel(t);
  lua_pushboolean(L, 1);
  return 1;
}

static int thread_cancelled (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  lua_pushboolean(L, atomic_load(&t->cancel));
  return 1;
}

static int thread_gc (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_THREAD);
  LoomThread *t = (LoomThread *)*slot;
  if (t == NULL)
    return 0;
  if (!loomi_ref_mine((LoomRef *)slot))   /* a fork's copy: the parent's */
    return loomi_proxy_gc(L);
  loomi_mutex_lock(&t->mu);
  int report = t->state == TH_DONE && t->failed && !t->collected &&
               atomic_load(&t->obj.refs) == 1 + t->listed &&
               !was_cancelled(t);
  if (report)
    t->collected = 1;
  loomi_mutex_unlock(&t->mu);
  if (report) {
    /* a finalizer must not raise: a failing reporter is ignored */
    lua_pushcfunction(L, report_error);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
      lua_pop(L, 1);
  }
  loomi_mutex_lock(&t->mu);
  if (t->state == TH_DONE && atomic_load(&t->obj.refs) == 1 + t->listed)
    drop_outcome(t);   /* this was the last handle */
  loomi_mutex_unlock(&t->mu);
  return loomi_proxy_gc(L);
}

static int thread_index (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0)
    lua_pushstring(L, t->name);
  else if (strcmp(key, "ident") == 0 || strcmp(key, "native_id") == 0) {
    loomi_mutex_lock(&t->mu);
    /* start() returns before the OS thread has run: the kernel's id comes
    ** from the thread itself, within microseconds, so it is waited for */
    int rc = 0;
    while (key[0] == 'n' && t->native_id == 0 && t->state == TH_RUNNING &&
           rc == 0)
      rc = loomi_wait(&t->done_q, &t->mu, &t->obj, NULL);
    int64_t id = key[0] == 'i' ? t->ident : t->native_id;
    loomi_mutex_unlock(&t->mu);
    if (id != 0)
      lua_pushinteger(L, (lua_Integer)id);
    else
      lua_pushnil(L);
  }
  else if (strcmp(key, "daemon") == 0)
    lua_pushboolean(L, t->daemon);
  else if (strcmp(key, "status") == 0) {
    loomi_mutex_lock(&t->mu);
    int state = t->main ? TH_RUNNING : t->state;
    const char *st = state == TH_NEW ? "pending"
                   : state == TH_RUNNING ? "running"
                   : was_cancelled(t) ? "cancelled"
                   : t->failed ? "error" : "done";
    loomi_mutex_unlock(&t->mu);
    lua_pushstring(L, st);
  }
  else {
    luaL_getmetatable(L, LOOM_THREAD);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
  }
  return 1;
}

static int thread_newindex (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0) {
    snprintf(t->name, sizeof t->name, "%s", loomi_checkname(L, 3, sizeof t->name));
    return 0;
  }
  if (strcmp(key, "daemon") == 0) {
    loomi_mutex_lock(&t->mu);
    int state = t->state;
    loomi_mutex_unlock(&t->mu);
    if (state != TH_NEW)
      return luaL_error(L, "cannot set daemon status of active thread");
    t->daemon = lua_toboolean(L, 3);
    return 0;
  }
  return luaL_error(L, "cannot set field '%s' of a loom.Thread", key);
}

static int thread_tostring (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  static const char *const states[] = { "initial", "started", "stopped" };
  loomi_mutex_lock(&t->mu);
  int state = t->main ? TH_RUNNING : t->state;
  loomi_mutex_unlock(&t->mu);
  lua_pushfstring(L, "loom.Thread (%s, %s%s)", t->name, states[state],
                  t->daemon ? ", daemon" : "");
  return 1;
}

/* current() -> the Thread running this code; the main thread of a program
** gets a handle of its own, made once per state. */

static int thread_current (lua_State *L) {
  if (self_thread != NULL) {
    loomi_proxy_push(L, &self_thread->obj);
    return 1;
  }
  /* A host may call one state from several OS threads of its own (one at
  ** a time): each gets a handle of its own, kept by its OS thread id with
  ** a weak reference, so a host thread that ended leaves nothing behind. */
  if (current_tid == 0)
    current_tid = os_thread_id();
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &MAIN_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &MAIN_KEY);
  }
  int handles = lua_gettop(L);
  if (lua_rawgeti(L, handles, (lua_Integer)current_tid) == LUA_TUSERDATA) {
    lua_remove(L, handles);   /* callers count on one value pushed */
    return 1;
  }
  lua_pop(L, 1);
  LoomObj **slot = loomi_proxy_new(L, LOOM_THREAD);
  LoomThread *t = thread_create();
  if (t == NULL)
    return luaL_error(L, "cannot create thread: shared heap exhausted");
  *slot = &t->obj;
  t->main = 1;
  t->state = TH_RUNNING;
  t->ident = (int64_t)pthread_self();
  t->native_id = current_tid;
  snprintf(t->name, sizeof t->name, "%s",
           os_thread_name[0] != '\0' ? os_thread_name
           : getpid() == t->native_id ? "MainThread" : "Thread");
  lua_pushvalue(L, -1);
  lua_rawseti(L, handles, (lua_Integer)current_tid);
  lua_remove(L, handles);
  return 1;
}

/* Whether the calling OS thread is its process's main thread. */
static int on_main_thread (void) {
  return self_thread == NULL && os_thread_id() == (int64_t)getpid();
}

/* main_thread() -> the Thread of the process's main thread: current() there;
** elsewhere one handle made once per process, which knows its ident and
** native_id only if loom was first opened on the main thread. */
static int thread_main (lua_State *L) {
  if (on_main_thread())
    return thread_current(L);
  LoomObj **slot = loomi_proxy_new(L, LOOM_THREAD);
  pthread_once(&live_once, live_init);
  pthread_mutex_lock(&live_mu);
  if (main_obj != NULL) {
    loomi_obj_retain(&main_obj->obj);
    *slot = &main_obj->obj;
    pthread_mutex_unlock(&live_mu);
    return 1;
  }
  pthread_mutex_unlock(&live_mu);
  LoomThread *fresh = thread_create();   /* made outside live_mu */
  if (fresh == NULL)
    return luaL_error(L, "cannot create thread: shared heap exhausted");
  fresh->main = 1;
  fresh->state = TH_RUNNING;
  snprintf(fresh->name, sizeof fresh->name, "MainThread");
  pthread_once(&live_once, live_init);
  pthread_mutex_lock(&live_mu);
  if (main_obj == NULL) {
    fresh->ident = atomic_load(&main_ident);
    fresh->native_id = (int64_t)getpid();
    main_obj = fresh;        /* the global's reference */
    fresh = NULL;
  }
  loomi_obj_retain(&main_obj->obj);
  *slot = &main_obj->obj;
  pthread_mutex_unlock(&live_mu);
  if (fresh != NULL)
    loomi_obj_release(&fresh->obj);
  return 1;
}

/* enumerate() -> a list of the threads of this process that run now: the
** main thread first, then every started isolated or shared thread whose
** body has not ended, as current() names them.  The proxies are made
** before live_mu is taken (no allocation under it), then filled. */
static int thread_enumerate (lua_State *L) {
  lua_settop(L, 0);
  thread_main(L);                                /* 1 */
  pthread_once(&live_once, live_init);
  for (;;) {
    pthread_mutex_lock(&live_mu);
    int want = live_count;
    pthread_mutex_unlock(&live_mu);
    lua_settop(L, 1);
    luaL_checkstack(L, want + 4, "too many threads");
    for (int i = 0; i < want; i++)
      loomi_proxy_new(L, LOOM_THREAD);
    pthread_mutex_lock(&live_mu);
    if (live_count > want) {
      pthread_mutex_unlock(&live_mu);
      continue;              /* more started meanwhile: more proxies */
    }
    int i = 0;
    for (LoomThread *t = live_head; t != NULL; t = t->live_next, i++) {
      loomi_obj_retain(&t->obj);
      *(LoomObj **)lua_touserdata(L, 2 + i) = &t->obj;
    }
    pthread_mutex_unlock(&live_mu);
    lua_settop(L, 1 + i);    /* the unused ones are collected, empty */
    break;
  }
  int n = lua_gettop(L);     /* 1: main, 2..n: newest first */
  lua_createtable(L, n, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  for (int k = 2; k <= n; k++) {
    lua_pushvalue(L, n - k + 2);
    lua_rawseti(L, -2, k);
  }
  return 1;
}

/* active_count() -> #enumerate(), without making handles. */
static int thread_active_count (lua_State *L) {
  pthread_once(&live_once, live_init);
  pthread_mutex_lock(&live_mu);
  int n = live_count;
  pthread_mutex_unlock(&live_mu);
  lua_pushinteger(L, (lua_Integer)n + 1);
  return 1;
}

static int thread_get_ident (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)(int64_t)pthread_self());
  return 1;
}

static int thread_get_native_id (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)os_thread_id());
  return 1;
}

/* stack_size([n]) -> the previous setting (0: loom's default); n = 0
** restores the default, else the stack of threads made from now on. */
static int thread_stack_size (lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_pushinteger(L, (lua_Integer)atomic_load(&stack_size_set));
    return 1;
  }
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0, 1, "size must be non-negative");
  luaL_argcheck(L, n == 0 || (lua_Unsigned)n >= LOOM_STACK_LEAST, 1,
                "size too small (at least 512 KiB)");
  luaL_argcheck(L, (lua_Unsigned)n <= LOOM_STACK_MOST, 1,
                "size too large (at most 1 GiB)");
  if (n != 0) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    int err = pthread_attr_setstacksize(&attr, (size_t)n);
    pthread_attr_destroy(&attr);
    if (err != 0)
      return luaL_argerror(L, 1, lua_pushfstring(L, "size not valid: %s",
                                                 strerror(err)));
  }
  lua_pushinteger(L, (lua_Integer)atomic_exchange(&stack_size_set, (size_t)n));
  return 1;
}

/* ---- coroutines in a loom thread's state: resume and wrap register the
** coroutine they run, so that cancel() reaches a loop inside one ---- */

/* Resumes co with the narg values on top of L.  Pushes its results onto L
** and returns how many, or pushes the error and returns -1.  Never raises
** while co is registered. */
static int co_resume (lua_State *L, lua_State *co, int narg) {
  LoomThread *t = self_thread;
  if (!lua_checkstack(co, narg)) {
    lua_pop(L, narg);
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  CoLink link = { co, NULL };
  if (t != NULL) {
    loomi_mutex_lock(&t->mu);
    link.outer = t->running;
    t->running = &link;
    if (atomic_load(&t->cancel))   /* made before cancel(): no hook yet */
      lua_sethook(co, cancel_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
    loomi_mutex_unlock(&t->mu);
  }
  int nres = 0;
  int status = lua_resume(co, L, narg, &nres);
  if (t != NULL) {
    loomi_mutex_lock(&t->mu);
    t->running = link.outer;
    loomi_mutex_unlock(&t->mu);
  }
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

/* coroutine.resume(co, ...) */
static int thread_co_resume (lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  lua_State *co = lua_tothread(L, 1);
  int n = co_resume(L, co, lua_gettop(L) - 1);
  if (n < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(n + 1));
  return n + 1;
}

/* The function coroutine.wrap returns: upvalue 1 is the coroutine.  A
** coroutine that fails is closed (its pending <close> variables run) and
** its error raised on, a string one with the caller's position, as the
** standard wrap does. */
static int thread_co_wrapped (lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int n = co_resume(L, co, lua_gettop(L));
  if (n >= 0)
    return n;
  int status = lua_status(co);
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushvalue(L, -1);   /* the error, where closing co looks for it */
    lua_xmove(L, co, 1);
#if LUA_VERSION_RELEASE_NUM >= 50406
    status = lua_closethread(co, L);
#else
    status = lua_resetthread(co);
#endif
    lua_pop(L, 1);
    lua_xmove(co, L, 1);    /* the error, or the one a handler raised */
  }
  if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

/* coroutine.wrap(f) */
static int thread_co_wrap (lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, thread_co_wrapped, 1);
  return 1;
}

/* Protected: puts resume and wrap into the state's coroutine library. */
static int co_install (lua_State *L) {
  lua_getglobal(L, "coroutine");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, thread_co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, thread_co_wrap);
    lua_setfield(L, -2, "wrap");
  }
  return 0;
}

/* sleep(seconds): cancellable in a loom thread. */
static int thread_sleep (lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s == s, 1, "seconds must be a number");
  luaL_argcheck(L, s >= 0, 1, "seconds must be non-negative");
  LoomDeadline dl;
  loomi_deadline_in(&dl, (double)s);
  LoomThread *t = self_thread;
  int rc = 0;
  loomi_block_begin(L);
  if (t != NULL)
    rc = loomi_sleep_until(&t->sleep_q, &t->obj, &dl);
  else {
    LoomWaitq q;   /* nobody wakes it: a cut-short sleep for Ctrl-C */
    loomi_waitq_init(&q);
    rc = loomi_sleep_until(&q, NULL, &dl);
  }
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  return 0;
}

/* set_excepthook(fn | nil) -> the previous reporter */
static int thread_set_excepthook (lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &REPORTER_KEY);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &REPORTER_KEY);
  return 1;
}

/* ---- for gil.c: a shared thread borrows a thread object, so its waits
** are cancellable and current() names it ---- */

LoomObj *loomi_thread_borrowed (const char *name, int daemon) {
  LoomThread *t = thread_create();
  if (t == NULL)
    return NULL;
  t->state = TH_RUNNING;
  t->daemon = daemon;
  t->borrowed = 1;
  snprintf(t->name, sizeof t->name, "%s", name);
  return &t->obj;
}

void loomi_thread_enter (LoomObj *o) {
  LoomThread *t = (LoomThread *)o;
  self_thread = t;
  loomi_mutex_lock(&t->mu);
  t->ident = (int64_t)pthread_self();
  t->native_id = os_thread_id();
  loomi_mutex_unlock(&t->mu);
}

void loomi_thread_leave (LoomObj *o) {
  LoomThread *t = (LoomThread *)o;
  live_set(t, 0);
  loomi_mutex_lock(&t->mu);
  t->state = TH_DONE;
  loomi_mutex_unlock(&t->mu);
  loomi_wake_all(&t->done_q);
  self_thread = NULL;
}

void loomi_thread_cancel (LoomObj *o) {
  thread_request_cancel((LoomThread *)o);
}

int loomi_thread_cancelled (LoomObj *o) {
  return atomic_load(&((LoomThread *)o)->cancel);
}

int loomi_thread_is_self (LoomObj *o) {
  return self_thread != NULL && o == &self_thread->obj;
}

void loomi_thread_name_os (const char *name) {
  snprintf(os_thread_name, sizeof os_thread_name, "%s", name);
}

int loomi_thread_forked (lua_State *L) {
  int was = self_thread != NULL;
  /* the child's only thread is the one that forked, and keeps its name
  ** (as Python's threading does after os.fork) */
  if (self_thread != NULL)
    loomi_thread_name_os(self_thread->name);
  else if (current_tid != 0) {   /* still the forking thread's id here */
    int top = lua_gettop(L);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &MAIN_KEY) == LUA_TTABLE &&
        lua_rawgeti(L, -1, (lua_Integer)current_tid) == LUA_TUSERDATA) {
      LoomObj **slot = lua_touserdata(L, -1);
      if (*slot != NULL)
        loomi_thread_name_os(((LoomThread *)*slot)->name);
    }
    lua_settop(L, top);
  }
  current_tid = 0;
  self_thread = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CHILDREN_KEY) == LUA_TUSERDATA) {
    Children *c = lua_touserdata(L, -1);
    c->n = 0;
    c->pid = getpid();
  }
  lua_pop(L, 1);
  lua_pushnil(L);   /* current() makes the child a main thread of its own */
  lua_rawsetp(L, LUA_REGISTRYINDEX, &MAIN_KEY);
  return was;
}

void loomi_thread_shutdown (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CHILDREN_KEY) == LUA_TUSERDATA)
    children_shutdown(lua_touserdata(L, -1));
  lua_pop(L, 1);
}

static const luaL_Reg thread_meta[] = {
  {"__index", thread_index},
  {"__newindex", thread_newindex},
  {"__gc", thread_gc},
  {"__close", thread_gc},
  {"__tostring", thread_tostring},
  {NULL, NULL}
};

static const luaL_Reg thread_methods[] = {
  {"start", thread_start},
  {"join", thread_join},
  {"result", thread_result},
  {"error", thread_error},
  {"is_alive", thread_is_alive},
  {"cancel", thread_cancel},
  {"cancelled", thread_cancelled},
  {NULL, NULL}
};

static const luaL_Reg thread_funcs[] = {
  {"thread", thread_new},
  {"current", thread_current},
  {"sleep", thread_sleep},
  {"set_excepthook", thread_set_excepthook},
  {"main_thread", thread_main},
  {"enumerate", thread_enumerate},
  {"active_count", thread_active_count},
  {"get_ident", thread_get_ident},
  {"get_native_id", thread_get_native_id},
  {"stack_size", thread_stack_size},
  {NULL, NULL}
};

void loomi_thread_open (lua_State *L) {
  loomi_newclass(L, LOOM_THREAD, thread_meta, NULL);
  luaL_getmetatable(L, LOOM_THREAD);
  lua_newtable(L);
  luaL_setfuncs(L, thread_methods, 0);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_setfuncs(L, thread_funcs, 0);
  lua_pushinteger(L, (lua_Integer)LOOM_TIMEOUT_MAX);
  lua_setfield(L, -2, "TIMEOUT_MAX");
  if (os_thread_id() == (int64_t)getpid())
    atomic_store(&main_ident, (int64_t)pthread_self());
  children_of(L);   /* made now so it is finalized after later objects */
}
