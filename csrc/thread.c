/* thread.c: loom.Thread, an OS thread running its own lua_State; the
** cancellable wait every loom blocking call goes through; sleep, current.
** Lua: loom.core.thread(fn, args, opts) -> Thread; Thread:start(),
**      join([t]), result([t]), error(), is_alive(), cancel(); sleep(s).
** Lock order: a primitive's mutex, then a thread's reg_mu; a canceller
** takes reg_mu alone, then the primitive's mutex, never both at once.
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
  pthread_cond_t cv;         /* done, and the thread's own sleeps */
  int state;
  int daemon;
  int failed;                /* error holds (error value, traceback) */
  int collected;             /* result() or error() has seen the error */
  int main;                  /* stands for a thread loom did not start */
  int listed;                /* a reference is held by a Children list */
  atomic_int cancel;
  lua_State *L;              /* the running state, for lua_sethook */
  LoomMsg *call;             /* function and arguments, until it starts */
  LoomMsg *results;
  LoomMsg *error;
  LoomMsg *reporter;         /* the starting state's reporter, if it has one */
  char *path, *cpath;        /* package paths for the new state (malloc) */
  char failmsg[160];         /* an error that happened before any state */
  int64_t ident;             /* the pthread_t, as Python's ident */
  int64_t native_id;         /* the kernel's thread id */
  char name[64];
  /* the wait this thread is blocked in, for cancel() */
  pthread_mutex_t reg_mu;
  pthread_cond_t *wait_cv;
  pthread_mutex_t *wait_mu;
  LoomObj *wait_obj;
} LoomThread;

/* The loom thread the calling OS thread runs, NULL for others. */
static _Thread_local LoomThread *self_thread = NULL;

/* Default thread names count up across the process, like Python's. */
static atomic_long thread_counter = 0;

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
  pthread_cond_destroy(&t->cv);
  pthread_mutex_destroy(&t->reg_mu);
}

static LoomThread *thread_create (void) {
  LoomThread *t = (LoomThread *)loomi_obj_new(sizeof(LoomThread), LOOM_THREAD,
                                              thread_destroy);
  if (t == NULL)
    return NULL;
  if (loomi_mutex_init(&t->mu) != 0 || loomi_cond_init(&t->cv) != 0 ||
      loomi_mutex_init(&t->reg_mu) != 0) {
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

int loomi_wait (pthread_cond_t *cv, pthread_mutex_t *mu, LoomObj *obj,
                const LoomDeadline *dl) {
  LoomThread *t = self_thread;
  if (t != NULL) {
    if (atomic_load(&t->cancel))
      return ECANCELED;
    pthread_mutex_lock(&t->reg_mu);
    t->wait_cv = cv;
    t->wait_mu = mu;
    t->wait_obj = obj;
    pthread_mutex_unlock(&t->reg_mu);
    if (atomic_load(&t->cancel)) {
      pthread_mutex_lock(&t->reg_mu);
      t->wait_cv = NULL;
      t->wait_mu = NULL;
      t->wait_obj = NULL;
      pthread_mutex_unlock(&t->reg_mu);
      return ECANCELED;
    }
  }
  int rc = dl == NULL || dl->forever ? pthread_cond_wait(cv, mu)
                                     : pthread_cond_timedwait(cv, mu, &dl->at);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(mu);
    rc = 0;
  }
  if (t != NULL) {
    pthread_mutex_lock(&t->reg_mu);
    t->wait_cv = NULL;
    t->wait_mu = NULL;
    t->wait_obj = NULL;
    pthread_mutex_unlock(&t->reg_mu);
    if (atomic_load(&t->cancel))
      return ECANCELED;
  }
  return rc == ETIMEDOUT ? ETIMEDOUT : 0;
}

int loomi_cancel_requested (void) {
  LoomThread *t = self_thread;
  return t != NULL && atomic_load(&t->cancel);
}

int loomi_raise_cancelled (lua_State *L) {
  lua_pushliteral(L, LOOM_CANCELLED);
  return lua_error(L);
}

/* Set by the shared-interpreter threads when they exist. */
static void (*block_hooks[2]) (lua_State *L) = { NULL, NULL };

void loomi_block_begin (lua_State *L) {
  if (block_hooks[0] != NULL)
    block_hooks[0](L);
}

void loomi_block_end (lua_State *L) {
  if (block_hooks[1] != NULL)
    block_hooks[1](L);
}

/* Raises on every call and instruction of a cancelled thread, except on
** the call of the __close handlers that release loom objects and hold()
** guards, so that unwinding the cancellation still releases a lock. */
static void cancel_hook (lua_State *L, lua_Debug *ar) {
  if (!loomi_cancel_requested())
    return;
  if (ar->event == LUA_HOOKCALL && lua_getinfo(L, "f", ar)) {
    lua_CFunction f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (f == loomi_guard_close || f == loomi_proxy_gc)
      return;
  }
  loomi_raise_cancelled(L);
}

/* Flags t, reaches a pure-Lua loop through a hook on its state, and wakes
** it from whatever loom wait it is blocked in. */
static void thread_request_cancel (LoomThread *t) {
  atomic_store(&t->cancel, 1);
  pthread_mutex_lock(&t->mu);
  if (t->L != NULL)
    lua_sethook(t->L, cancel_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
  pthread_mutex_unlock(&t->mu);
  pthread_mutex_lock(&t->reg_mu);
  pthread_cond_t *cv = t->wait_cv;
  pthread_mutex_t *mu = t->wait_mu;
  LoomObj *obj = t->wait_obj;
  if (obj != NULL)
    loomi_obj_retain(obj);
  pthread_mutex_unlock(&t->reg_mu);
  if (cv != NULL) {
    loomi_mutex_lock(mu);
    pthread_cond_broadcast(cv);
    loomi_mutex_unlock(mu);
  }
  loomi_obj_release(obj);
}

/* Waits until t is done; 0, ETIMEDOUT or ECANCELED. */
static int thread_wait_done (LoomThread *t, const LoomDeadline *dl) {
  int rc = 0;
  loomi_mutex_lock(&t->mu);
  while (t->state != TH_DONE && rc == 0)
    rc = loomi_wait(&t->cv, &t->mu, &t->obj, dl);
  if (t->state == TH_DONE)
    rc = 0;
  loomi_mutex_unlock(&t->mu);
  return rc;
}

static void push_error (lua_State *L, LoomThread *t);

/* Uncollected errors are reported when a handle dies, through the
** reporter in the registry (set by loom.excepthook), or to stderr. */
static const char REPORTER_KEY = 'r';

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
    lua_insert(L, 1);
    lua_call(L, 1, 0);
    return 0;
  }
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
  lua_pop(L, 1);
  lua_pushcfunction(L, store_error);
  const char *msg = lua_tostring(L, errbase);
  if (msg != NULL)
    lua_pushstring(L, msg);
  else
    lua_pushfstring(L, "(error object is a %s value)",
                    luaL_typename(L, errbase));
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

static void *thread_main (void *arg) {
  LoomThread *t = arg;
  self_thread = t;
  loomi_mutex_lock(&t->mu);
  t->native_id = os_thread_id();
  loomi_mutex_unlock(&t->mu);
  char err[sizeof t->failmsg];
  lua_State *L = loomi_newstate(t->path, t->cpath, err, sizeof err);
  free(t->path);
  free(t->cpath);
  t->path = t->cpath = NULL;
  if (L == NULL) {
    loomi_mutex_lock(&t->mu);
    memcpy(t->failmsg, err, sizeof err);
    t->failed = 1;
    loomi_mutex_unlock(&t->mu);
  }
  else {
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
    lua_close(L);   /* waits for the threads this one started */
  }
  /* The running thread's reference goes in the same critical section that
  ** marks it done, so a dying handle that sees "done" can trust the count;
  ** an error no handle will ever see is reported now. */
  loomi_mutex_lock(&t->mu);
  t->state = TH_DONE;
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
  pthread_cond_broadcast(&t->cv);
  loomi_mutex_unlock(&t->mu);
  self_thread = NULL;
  if (last)
    loomi_obj_release(&t->obj);
  return NULL;
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

static int children_gc (lua_State *L) {
  children_shutdown(lua_touserdata(L, 1));
  return 0;
}

static Children *children_of (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CHILDREN_KEY) == LUA_TUSERDATA) {
    Children *c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return c;
  }
  lua_pop(L, 1);
  Children *c = lua_newuserdatauv(L, sizeof(Children), 0);
  memset(c, 0, sizeof *c);
  c->pid = getpid();
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, children_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CHILDREN_KEY);
  return c;
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
  const char *name = luaL_optstring(L, 3, NULL);
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
  if (t->main || t->state != TH_NEW || t->call != NULL)
    return luaL_error(L, "threads can only be started once");
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);
  if (!lua_istable(L, 2))
    return luaL_error(L, "threads can only be started once");
  lua_rawgeti(L, 2, 1);         /* target */
  lua_rawgeti(L, 2, 2);         /* args */
  lua_remove(L, 2);
  lua_Integer n = 0;
  if (lua_getfield(L, 3, "n") == LUA_TNUMBER)
    n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, (int)(n > 0 ? n : 0) + 8, "too many arguments");
  for (lua_Integer i = 1; i <= n; i++)
    lua_rawgeti(L, 3, i);
  lua_remove(L, 3);
  t->call = loomi_xfer_encode_call(L, 2, (int)n + 1);
  t->path = dup_field(L, "path");
  t->cpath = dup_field(L, "cpath");
  lua_pushcfunction(L, encode_reporter);
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    lua_pop(L, 1);   /* a reporter that cannot travel: the default one */
  Children *c = children_of(L);
  children_prune(c);
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 8;
    LoomThread **list = realloc(c->list, cap * sizeof *list);
    if (list == NULL) {
      loomi_msg_free(t->call);
      t->call = NULL;
      return luaL_error(L, "not enough memory");
    }
    c->list = list;
    c->cap = cap;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, (size_t)2 << 20);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);   /* the new thread inherits it */
  loomi_obj_retain(&t->obj);                  /* the running thread's ref */
  t->state = TH_RUNNING;
  pthread_t tid;
  int err = pthread_create(&tid, &attr, thread_main, t);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) {
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

/* Common prologue of join and result: 0 done, ETIMEDOUT; raises when
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
  lua_pushboolean(L, thread_await(L, t, 2) == 0);
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
  if (thread_await(L, t, 2) == ETIMEDOUT) {
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
  LoomObj **slot = lua_touserdata(L, 1);
  LoomThread *t = (LoomThread *)*slot;
  if (t == NULL)
    return 0;
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
  return loomi_proxy_gc(L);
}

static int thread_index (lua_State *L) {
  LoomThread *t = checkthread(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0)
    lua_pushstring(L, t->name);
  else if (strcmp(key, "ident") == 0 || strcmp(key, "native_id") == 0) {
    loomi_mutex_lock(&t->mu);
    int64_t id = key[0] == 'i' ? t->ident : t->native_id;
    loomi_mutex_unlock(&t->mu);
    if (id != 0)
      lua_pushinteger(L, (lua_Integer)id);
    else
      lua_pushnil(L);
  }
  else if (strcmp(key, "daemon") == 0)
    lua_pushboolean(L, t->daemon);
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
    snprintf(t->name, sizeof t->name, "%s", luaL_checkstring(L, 3));
    return 0;
  }
  if (strcmp(key, "daemon") == 0) {
    if (t->state != TH_NEW)
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
static const char MAIN_KEY = 'm';

static int thread_current (lua_State *L) {
  if (self_thread != NULL) {
    loomi_proxy_push(L, &self_thread->obj);
    return 1;
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &MAIN_KEY) == LUA_TUSERDATA)
    return 1;
  lua_pop(L, 1);
  LoomObj **slot = loomi_proxy_new(L, LOOM_THREAD);
  LoomThread *t = thread_create();
  if (t == NULL)
    return luaL_error(L, "cannot create thread: shared heap exhausted");
  *slot = &t->obj;
  t->main = 1;
  t->state = TH_RUNNING;
  t->ident = (int64_t)pthread_self();
  t->native_id = os_thread_id();
  snprintf(t->name, sizeof t->name, "%s",
           getpid() == t->native_id ? "MainThread" : "Thread");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &MAIN_KEY);
  return 1;
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
  if (t != NULL) {
    loomi_mutex_lock(&t->mu);
    while (rc == 0 && !loomi_deadline_passed(&dl))
      rc = loomi_wait(&t->cv, &t->mu, &t->obj, &dl);
    loomi_mutex_unlock(&t->mu);
  }
  else {
    while (!loomi_deadline_passed(&dl))
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl.at, NULL);
  }
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
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

int loomi_thread_forked (lua_State *L) {
  int was = self_thread != NULL;
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
  children_of(L);   /* made now so it is finalized after later objects */
}
