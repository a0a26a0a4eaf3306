/* pool.c: loom.Pool, worker threads with persistent interpreters fed from
** one task queue, and loom.Future, the outcome of one task; wait and
** as_completed over futures.
** Lua: loom.core.pool(n | {workers=, init=, initargs=, kind=}) -> Pool;
**      Pool:submit(fn, ...) -> Future; Pool:shutdown([wait], [cancel], [timeout]);
**      Future:result([t]), error([t]), done(), running(), cancel(), cancelled(),
**      add_done_callback(fn); future() -> a Future settled by Lua code
**      (set_result, set_error, set_running_or_notify_cancel);
**      wait(futures, [t], [mode]) -> done, not_done; as_completed(fs, [t]).
** Three parts: the Future and the TaskQueue (a FIFO of futures, each
** carrying its call as one message), both in the shared heap, with
** queue_serve, the loop any worker runs over a queue; and the runner, which
** decides how a worker exists (here: a detached thread with its own state,
** see worker_main; or a forked process under a supervisor thread, see
** supervisor_main): both call the same queue_serve.
** Lock order: a future's mu, then a waiter's mu.  The queue's mu is never
** held with either.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* <sys/wait.h>'s WAIT_ANY (waitpid's "any child") would shadow the wait
** mode below; this file only ever waits for a given pid. */
#undef WAIT_ANY

#define LOOM_TASKQUEUE  "loom.TaskQueue"    /* internal: never proxied */
#define LOOM_WAITER     "loom.Waiter"
#define LOOM_ASCOMPLETED "loom.AsCompleted"
#define POOL_MAXWORKERS 1024
#define LOOM_PREFIX_MAX 40       /* a worker's name fits 63 bytes */

enum { F_PENDING, F_RUNNING, F_DONE, F_FAILED, F_CANCELLED };

static const char *const future_states[] = {
  "pending", "running", "finished", "failed", "cancelled"
};

typedef struct Waiter Waiter;

/* One future's registration with one waiter (lives inside the waiter). */
typedef struct WaitLink {
  Waiter *w;
  uint32_t index;            /* the future's place in the waiter's list */
  int linked;               /* on the future's list, not yet notified */
  struct WaitLink *next;     /* the future's mu held */
} WaitLink;

/* Sleeps until futures finish: loom.wait and as_completed register one with
** every future they watch; a finishing future appends its index. */
struct Waiter {
  LoomObj obj;
  pthread_mutex_t mu;
  LoomWaitq q;
  uint32_t n;
  uint32_t nready;           /* ready[0..nready) in completion order */
  uint32_t nfailed;
  WaitLink *links;           /* n of them, then ready[n] */
  uint32_t *ready;
};

typedef struct Future {
  LoomObj obj;
  pthread_mutex_t mu;
  LoomWaitq q;               /* result() callers */
  atomic_int state;          /* written under mu, read anywhere */
  struct Future *next;       /* queue link; the queue holds a reference */
  LoomMsg *call;             /* (fn, args...) until a worker claims it */
  LoomMsg *results;
  LoomMsg *error;            /* (error, traceback); NULL + F_FAILED: no state */
  WaitLink *links;           /* mu held */
  LoomNotifyLink *nlinks;    /* notifiers watching; mu held */
  int pool_id, worker;       /* who ran it, for the remote traceback */
  char prefix[LOOM_PREFIX_MAX + 1];  /* its pool's thread_name_prefix, or "" */
  int by_process;            /* a worker process ran it */
  int promise;              /* made by loom.future(): Lua code settles it */
  atomic_int settled;        /* a promise's set_result/set_error has begun */
} Future;

typedef struct TaskQueue {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards every field below */
  LoomWaitq task_q;          /* a task arrived, or shutdown */
  LoomWaitq exit_q;          /* a worker left */
  Future *head, *tail;
  atomic_size_t nqueued;     /* written under mu, polled without it */
  atomic_int shutdown;
  atomic_int broken;         /* no more tasks: see broken_errno */
  int broken_errno;          /* 0: the initializer failed; else why no
                                worker process could be forked */
  char broken_why[160];      /* else why no worker could start, if known */
  int nalive;                /* workers not yet gone */
  int nnamed;                /* thread kind: workers that took an index */
  int id;
  char prefix[LOOM_PREFIX_MAX + 1];  /* worker names: "<prefix>-worker-N";
                                        "" for "Pool-<id>" */
  lua_Integer max_tasks;     /* process kind: tasks before a worker is
                                replaced, 0 for no limit */
  LoomMsg *init;             /* (init, initargs...) or NULL */
  char *path, *cpath;        /* package paths for worker states (heap) */
  Future **claimed;          /* process kind: the task each worker runs,
                                so a crash fails that future (heap) */
} TaskQueue;

typedef struct Pool {
  LoomObj obj;
  TaskQueue *q;
  int nworkers;
  int process;               /* kind = "process" */
  pid_t owner;               /* its workers are this process's */
} Pool;

/* Pool ids count up across the process, for worker names. */
static atomic_int pool_counter = 0;

/* The queue the calling OS thread serves, NULL for other threads. */
static LOOM_THREAD_LOCAL TaskQueue *self_queue = NULL;

/* ---- futures ---- */

static void future_destroy (LoomObj *o) {
  Future *f = (Future *)o;
  loomi_msg_free(f->call);
  loomi_msg_free(f->results);
  loomi_msg_free(f->error);
  pthread_mutex_destroy(&f->mu);
}

static Future *future_create (void) {
  Future *f = (Future *)loomi_obj_new(sizeof(Future), LOOM_FUTURE,
                                      future_destroy);
  if (f == NULL)
    return NULL;
  if (loomi_mutex_init(&f->mu) != 0) {
    f->obj.destroy = NULL;
    loomi_obj_release(&f->obj);
    return NULL;
  }
  atomic_init(&f->state, F_PENDING);
  return f;
}

static int finished (int state) {
  return state >= F_DONE;
}

/* Wakes result() callers and registered waiters.  f->mu held.  Each
** link leaves the list as its waiter is told, and a link is told once
** (`linked`, under the waiter's mu), so that a notifier killed half-way
** leaves the rest for whoever notifies again (proc_reaped). */
static void future_notify (Future *f, int state) {
  loomi_wake_all(&f->q);
  while (f->links != NULL) {
    WaitLink *l = f->links;
    WaitLink *next = l->next;  /* once told, the waiter may free l */
    Waiter *w = l->w;
    loomi_mutex_lock(&w->mu);
    if (l->linked) {
      w->ready[w->nready] = l->index;
      w->nready++;
      if (state == F_FAILED)
        w->nfailed++;
      l->linked = 0;
      loomi_wake(&w->q, 1);
    }
    loomi_mutex_unlock(&w->mu);
    f->links = next;
  }
  if (f->nlinks != NULL)
    loomi_notify_fire(&f->nlinks);
}

/* Moves a claimed future to its final state; the future owns the messages
** afterwards. */
static void future_finish (Future *f, int state, LoomMsg *results,
                           LoomMsg *error) {
  loomi_mutex_lock(&f->mu);
  f->results = results;
  f->error = error;
  atomic_store(&f->state, state);
  future_notify(f, state);
  loomi_mutex_unlock(&f->mu);
}

/* PENDING -> RUNNING for the worker that will run it; 0 when it was
** cancelled meanwhile.  The call message passes to the caller.  No lock:
** whoever wins the exchange out of PENDING owns the call, and nobody
** waiting cares about the step to RUNNING. */
static int future_claim (Future *f, LoomMsg **call) {
  int expected = F_PENDING;
  if (!atomic_compare_exchange_strong(&f->state, &expected, F_RUNNING))
    return 0;
  *call = f->call;
  f->call = NULL;
  return 1;
}

/* PENDING -> CANCELLED; true when the future is (now) cancelled. */
static int future_cancel (Future *f) {
  int state = F_PENDING;
  if (!atomic_compare_exchange_strong(&f->state, &state, F_CANCELLED))
    return state == F_CANCELLED;
  LoomMsg *call = f->call;
  f->call = NULL;
  loomi_mutex_lock(&f->mu);
  future_notify(f, F_CANCELLED);
  loomi_mutex_unlock(&f->mu);
  loomi_msg_free(call);
  return 1;
}

/* Settles a promise with state F_DONE or F_FAILED and the message m,
** which the future then owns; -1 (m untouched) when it was settled or
** cancelled before.  Only the first settler passes the exchange, so two
** racing set_result calls never both write the outcome. */
static int future_settle (Future *f, int state, LoomMsg *m) {
  if (atomic_exchange(&f->settled, 1))
    return -1;
  int s = F_PENDING;
  if (!atomic_compare_exchange_strong(&f->state, &s, F_RUNNING) &&
      s != F_RUNNING)
    return -1;               /* cancelled */
  future_finish(f, state, state == F_DONE ? m : NULL,
                state == F_FAILED ? m : NULL);
  return 0;
}

/* ---- the task queue ---- */

static void queue_destroy (LoomObj *o) {
  TaskQueue *q = (TaskQueue *)o;
  Future *f = q->head;
  while (f != NULL) {
    Future *next = f->next;
    future_cancel(f);
    loomi_obj_release(&f->obj);
    f = next;
  }
  loomi_msg_free(q->init);
  loomi_heap_free(q->path);
  loomi_heap_free(q->cpath);
  loomi_heap_free(q->claimed);
  pthread_mutex_destroy(&q->mu);
}

static TaskQueue *queue_create (void) {
  TaskQueue *q = (TaskQueue *)loomi_obj_new(sizeof(TaskQueue),
                                            LOOM_TASKQUEUE, queue_destroy);
  if (q == NULL)
    return NULL;
  if (loomi_mutex_init(&q->mu) != 0) {
    q->obj.destroy = NULL;
    loomi_obj_release(&q->obj);
    return NULL;
  }
  q->id = atomic_fetch_add(&pool_counter, 1) + 1;
  return q;
}

/* Takes the queue's mutex.  A worker process killed while it held it may
** have left the list half-linked: the tail and the count are rebuilt
** from the head, which every step keeps reachable. */
static void queue_lock (TaskQueue *q) {
  if (loomi_mutex_lock(&q->mu) != EOWNERDEAD)
    return;
  Future *last = NULL;
  size_t n = 0;
  for (Future *f = q->head; f != NULL; f = f->next) {
    last = f;
    n++;
  }
  q->tail = last;
  atomic_store(&q->nqueued, n);
}

/* Appends f, which gains the queue's reference; EPIPE after shutdown,
** EIO when broken. */
static int queue_push (TaskQueue *q, Future *f) {
  queue_lock(q);
  int err = q->broken ? EIO : q->shutdown ? EPIPE : 0;
  if (err == 0) {
    loomi_obj_retain(&f->obj);
    if (q->tail != NULL)
      q->tail->next = f;
    else
      q->head = f;
    q->tail = f;
    atomic_fetch_add(&q->nqueued, 1);
    loomi_wake(&q->task_q, 1);
  }
  loomi_mutex_unlock(&q->mu);
  return err;
}

/* Takes every queued future (the caller inherits their references). */
static Future *queue_take_all (TaskQueue *q) {
  Future *all = q->head;
  q->head = q->tail = NULL;
  atomic_store(&q->nqueued, 0);
  return all;
}

/* Protected: a full collection of a worker's state. */
static int worker_collect (lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}

static int task_ready (const void *arg) {
  const TaskQueue *q = arg;
  return atomic_load_explicit(&q->nqueued, memory_order_relaxed) != 0 ||
         atomic_load_explicit(&q->shutdown, memory_order_relaxed);
}

/* The next task, blocking; NULL once the queue is shut down and empty, or
** broken.  The caller inherits the queue's reference; a process worker's
** is recorded in claimed[] before the task leaves the list, so that no
** moment exists at which its death would lose the task.  Before sleeping, a
** worker whose state ran tasks since it last slept (*dirty) collects it:
** what those tasks left behind may hold loom objects, this pool's own
** handle among them, which must not stay alive for as long as it idles. */
static Future *queue_pop (TaskQueue *q, lua_State *L, int *dirty,
                          int worker) {
  Future *f = NULL;
  int polled = 0;
  queue_lock(q);
  for (;;) {
    if (q->broken)
      break;
    f = q->head;
    if (f != NULL) {
      if (q->claimed != NULL)
        q->claimed[worker - 1] = f;
      q->head = f->next;
      if (q->head == NULL)
        q->tail = NULL;
      atomic_fetch_sub(&q->nqueued, 1);
      f->next = NULL;
      /* more work than this worker: pass the wake-up on */
      if (q->head != NULL)
        loomi_wake(&q->task_q, 1);
      break;
    }
    if (q->shutdown)
      break;
    if (!polled) {
      polled = 1;
      loomi_mutex_unlock(&q->mu);
      loomi_spin(task_ready, q);
      queue_lock(q);
      continue;
    }
    if (*dirty) {
      *dirty = 0;
      loomi_mutex_unlock(&q->mu);
      lua_pushcfunction(L, worker_collect);
      if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        lua_pop(L, 1);
      queue_lock(q);
      continue;
    }
    loomi_wait(&q->task_q, &q->mu, &q->obj, NULL);
    polled = 0;
  }
  loomi_mutex_unlock(&q->mu);
  return f;
}

/* Refuses new tasks; with cancel, every queued task is cancelled.  Never
** blocks beyond the queue's mutex. */
static void queue_shutdown (TaskQueue *q, int cancel) {
  Future *all = NULL;
  queue_lock(q);
  q->shutdown = 1;
  if (cancel)
    all = queue_take_all(q);
  loomi_wake_all(&q->task_q);
  loomi_mutex_unlock(&q->mu);
  while (all != NULL) {
    Future *next = all->next;
    all->next = NULL;
    future_cancel(all);
    loomi_obj_release(&all->obj);
    all = next;
  }
}

/* Waits until every worker has left; 0, ETIMEDOUT, ECANCELED or EINTR. */
static int queue_join (TaskQueue *q, const LoomDeadline *dl) {
  int rc = 0;
  loomi_mutex_lock(&q->mu);
  while (q->nalive > 0 && rc == 0)
    rc = loomi_wait(&q->exit_q, &q->mu, &q->obj, dl);
  if (q->nalive == 0)
    rc = 0;
  loomi_mutex_unlock(&q->mu);
  return rc;
}

static void queue_worker_gone (TaskQueue *q) {
  loomi_mutex_lock(&q->mu);
  q->nalive--;
  loomi_wake_all(&q->exit_q);
  loomi_mutex_unlock(&q->mu);
}

/* ---- the worker loop: the same for every kind of runner ---- */

typedef struct Task {
  Future *f;
  LoomMsg *call;
  LoomMsg *results;
} Task;

/* Protected: decodes the call, runs it, encodes its results. */
static int task_run (lua_State *L) {
  Task *t = lua_touserdata(L, 1);
  lua_settop(L, 0);
  int n = loomi_xfer_decode(L, t->call);
  lua_call(L, n - 1, LUA_MULTRET);
  t->results = loomi_xfer_encode(L, 1, lua_gettop(L), "results");
  return 0;
}

/* Marks the queue broken and fails every queued task with the error and
** traceback on top of L's stack, or with a fixed text when L is NULL (no
** state could be made). */
static void queue_break (TaskQueue *q, lua_State *L) {
  queue_lock(q);
  q->broken = 1;
  Future *all = queue_take_all(q);
  loomi_wake_all(&q->task_q);
  loomi_mutex_unlock(&q->mu);
  while (all != NULL) {
    Future *f = all;
    all = f->next;
    f->next = NULL;
    LoomMsg *call = NULL;
    if (future_claim(f, &call)) {
      loomi_msg_free(call);
      future_finish(f, F_FAILED, NULL,
                    L != NULL ? loomi_error_encode(L, -2) : NULL);
    }
    loomi_obj_release(&f->obj);
  }
}

/* Protected: no state could be made for a worker; the queued tasks fail
** with why (in L, a bare state made for this). */
static int break_with (lua_State *L) {
  TaskQueue *q = lua_touserdata(L, 1);
  const char *why = lua_touserdata(L, 2);
  lua_pushfstring(L, "pool worker could not start: %s", why);
  lua_pushnil(L);
  queue_break(q, L);
  return 0;
}

static void queue_break_why (TaskQueue *q, const char *why) {
  loomi_mutex_lock(&q->mu);
  if (q->broken_why[0] == '\0')
    snprintf(q->broken_why, sizeof q->broken_why, "%s", why);
  loomi_mutex_unlock(&q->mu);
  lua_State *L = luaL_newstate();
  if (L != NULL) {
    lua_pushcfunction(L, break_with);
    lua_pushlightuserdata(L, q);
    lua_pushlightuserdata(L, (void *)(uintptr_t)why);
    int ok = lua_pcall(L, 2, 0, 0) == LUA_OK;
    lua_close(L);
    if (ok)
      return;
  }
  queue_break(q, NULL);
}

/* Protected: runs the initializer. */
static int task_init (lua_State *L) {
  const LoomMsg *init = lua_touserdata(L, 1);
  lua_settop(L, 0);
  int n = loomi_xfer_decode(L, init);
  lua_call(L, n - 1, 0);
  return 0;
}

/* How worker n of q is named, in current(), tracebacks and the OS. */
static void worker_name (char *buf, size_t size, const char *prefix, int id,
                         int worker) {
  if (prefix[0] != '\0')
    snprintf(buf, size, "%s-worker-%d", prefix, worker);
  else
    snprintf(buf, size, "Pool-%d-worker-%d", id, worker);
}

/* The worker loop, for any runner: in a state made for this worker, runs
** the initializer, then tasks until the queue is shut down and empty.
** Returns when the worker should go; the runner then closes the state and
** calls queue_worker_gone. */
static void queue_serve (TaskQueue *q, lua_State *L, int worker) {
  self_queue = q;
  char name[64];             /* as the remote tracebacks name it */
  worker_name(name, sizeof name, q->prefix, q->id, worker);
  loomi_thread_name_os(name);
  lua_settop(L, 0);
  lua_pushcfunction(L, loomi_msgh);
  if (q->init != NULL) {
    lua_pushcfunction(L, task_init);
    lua_pushlightuserdata(L, q->init);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK) {
      /* stack: msgh, error */
      lua_pushfstring(L, "pool initializer failed: %s",
                      lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                     : luaL_typename(L, -1));
      loomi_push_traceback(L);
      queue_break(q, L);
      lua_settop(L, 0);
      self_queue = NULL;
      return;
    }
  }
  Future *f;
  int dirty = 0;
  lua_Integer ran = 0;
  while ((q->max_tasks == 0 || ran < q->max_tasks) &&
         (f = queue_pop(q, L, &dirty, worker)) != NULL) {
    dirty = 1;
    Task t = { f, NULL, NULL };
    if (future_claim(f, &t.call)) {
      ran++;
      f->pool_id = q->id;
      f->worker = worker;
      memcpy(f->prefix, q->prefix, sizeof f->prefix);
      f->by_process = q->claimed != NULL;
      lua_pushcfunction(L, task_run);
      lua_pushlightuserdata(L, &t);
      if (lua_pcall(L, 1, 0, 1) == LUA_OK)
        future_finish(f, F_DONE, t.results, NULL);
      else {
        loomi_push_traceback(L);
        future_finish(f, F_FAILED, NULL, loomi_error_encode(L, -2));
      }
      loomi_msg_free(t.call);
      lua_settop(L, 1);
    }
    if (q->claimed != NULL)
      q->claimed[worker - 1] = NULL;
    loomi_obj_release(&f->obj);
  }
  lua_settop(L, 0);
  self_queue = NULL;
}

/* ---- the thread runner ---- */

/* arg is the queue, with a reference taken for the worker.  The worker
** takes its index itself: a block malloc'd for it would be lost in a
** process forked before the worker ran, which owns the block but no
** thread that could free it. */
static void *worker_main (void *arg) {
  TaskQueue *q = arg;
  loomi_mutex_lock(&q->mu);
  int index = ++q->nnamed;
  loomi_mutex_unlock(&q->mu);
  char err[160];
  lua_State *L = loomi_newstate(q->path, q->cpath, err, sizeof err);
  if (L == NULL)
    queue_break_why(q, err);
  else {
    queue_serve(q, L, index);
    lua_close(L);
  }
  queue_worker_gone(q);
  loomi_obj_release(&q->obj);
  return NULL;
}

/* Starts n detached worker threads with every signal blocked; 0 or the
** error of pthread_create (the workers started so far stay). */
static int start_threads (TaskQueue *q, int n) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, loomi_stack_size());
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = 0;
  for (int i = 0; i < n && err == 0; i++) {
    loomi_obj_retain(&q->obj);
    loomi_mutex_lock(&q->mu);
    q->nalive++;
    loomi_mutex_unlock(&q->mu);
    pthread_t tid;
    err = pthread_create(&tid, &attr, worker_main, q);
    if (err != 0) {
      queue_worker_gone(q);
      loomi_obj_release(&q->obj);
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  return err;
}

/* ---- the process runner ----
** Workers are forked by a fork server, a child forked when the pool is
** made (from a short-lived thread of the caller's, so that it carries no
** loom thread's state but the descriptors of that moment, less those
** close_fds drops).  It is single-threaded and runs no Lua: it forks a
** worker whenever the supervisor, a thread of the parent, asks (at the
** start, and to replace one), reaps its workers and tells the supervisor
** each one's wait status over a socket pair.  Each worker makes a fresh
** state, serves the queue, then leaves with _exit.  A worker that dies fails
** the future it had claimed (with its signal or exit code) and is replaced
** while there is work.  The supervisor reports a worker gone only once it is
** reaped, so shutdown(true) returns with no worker left; it then tells the
** server to leave and reaps it.  The server watches its parent (a pidfd, or
** getppid): if the parent dies, it kills its workers and leaves; workers
** die with the server (PR_SET_PDEATHSIG, the server having one thread). */

enum { FS_SPAWN, FS_QUIT, FS_SPAWNED, FS_FAILED, FS_EXITED };

/* One message either way: SPAWN(index) and QUIT to the server; SPAWNED(index,
** pid), FAILED(index, errno), EXITED(index, wait status) back. */
typedef struct FsMsg {
  int32_t what, index, value;
} FsMsg;

typedef struct ProcWorker {
  pid_t pid;                 /* 0: no worker; -1: asked for, not yet told */
  int pidfd;                 /* the supervisor's, to outwait it if the
                                server dies */
} ProcWorker;

typedef struct Supervisor {
  TaskQueue *q;              /* the supervisor's reference */
  int n;
  int sock;                  /* our end of the socket pair */
  pid_t server;
  lua_State *L;              /* a bare state, to encode crash errors */
  ProcWorker w[];
} Supervisor;

/* What the fork server is made with; read by the forking thread while the
** maker waits for it. */
typedef struct Forker {
  TaskQueue *q;
  int n;
  int sock, other;           /* the server's end, and the supervisor's */
  pid_t parent;
  char parent_name[64];      /* the maker's, for parent_process() */
  int close_fds;
  const int *keep;           /* pass_fds */
  size_t nkeep;
  pid_t pid;                 /* the server, or -1 and err */
  int err;
} Forker;

static int fs_send (int sock, int what, int index, int value) {
  FsMsg m = { what, index, value };
  ssize_t r;
  do
    r = send(sock, &m, sizeof m, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  return r == (ssize_t)sizeof m ? 0 : -1;
}

static int open_pidfd (pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  return -1;
#endif
}

/* A worker's life, from the server's fork to _exit. */
static void fs_worker (const Forker *fk, int index, pid_t server) {
  TaskQueue *q = fk->q;
  /* the server's thread is the server: its end is the worker's */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != server)
    _exit(1);
  loomi_child_sigmask();
  char name[64];
  worker_name(name, sizeof name, q->prefix, q->id, index);
  loomi_process_adopted(name, fk->parent, fk->parent_name);
  /* what the parent had buffered is the parent's to write */
  __fpurge(stdout);
  __fpurge(stderr);
  char err[160];
  lua_State *L = loomi_newstate(q->path, q->cpath, err, sizeof err);
  if (L == NULL)
    queue_break_why(q, err);
  else {
    queue_serve(q, L, index);
    lua_close(L);            /* the worker's own files and objects only */
  }
  loomi_process_leave();
  loomi_heap_flush();
  fflush(stdout);
  fflush(stderr);
  _exit(0);
}

/* The server's last act: no worker outlives it. */
static void fs_leave (pid_t *pids, int n) {
  for (int i = 0; i < n; i++)
    if (pids[i] > 0)
      kill(pids[i], SIGKILL);
  for (int i = 0; i < n; i++)
    if (pids[i] > 0)
      while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
        ;
  _exit(0);
}

/* The fork server, from fork to _exit.  Every signal stays blocked (the
** forking thread blocked them): Ctrl-C in the terminal is for the parent,
** and the server ends with it. */
static void fs_main (const Forker *fk) {
  int n = fk->n, sock = fk->sock;
  pid_t parent = fk->parent, self = getpid();
  close(fk->other);
  prctl(PR_SET_NAME, "loom-forkserver");
  if (fk->close_fds) {
    int *keep = malloc((fk->nkeep + 1) * sizeof *keep);
    if (keep == NULL)
      _exit(1);
    if (fk->nkeep > 0)
      memcpy(keep, fk->keep, fk->nkeep * sizeof *keep);
    keep[fk->nkeep] = sock;
    loomi_close_fds(keep, fk->nkeep + 1, 0);
    free(keep);
  }
  int parentfd = open_pidfd(parent);
  if (getppid() != parent)
    _exit(0);                /* the parent died already */
  pid_t *pids = calloc((size_t)n, sizeof *pids);
  int *fds = malloc((size_t)n * sizeof *fds);
  int *slot = malloc((size_t)n * sizeof *slot);
  struct pollfd *pf = malloc(((size_t)n + 2) * sizeof *pf);
  if (pids == NULL || fds == NULL || slot == NULL || pf == NULL)
    _exit(1);                /* the supervisor sees the end of the socket */
  for (int i = 0; i < n; i++)
    fds[i] = -1;
  for (;;) {
    int nfds = 2, blind = parentfd < 0;
    pf[0] = (struct pollfd){ sock, POLLIN, 0 };
    pf[1] = (struct pollfd){ parentfd, POLLIN, 0 };   /* -1: ignored */
    for (int i = 0; i < n; i++) {
      if (pids[i] <= 0)
        continue;
      if (fds[i] < 0)
        blind = 1;
      else {
        slot[nfds - 2] = i;
        pf[nfds++] = (struct pollfd){ fds[i], POLLIN, 0 };
      }
    }
    poll(pf, (nfds_t)nfds, blind ? 50 : -1);
    if (parentfd >= 0 ? pf[1].revents != 0 : getppid() != parent)
      fs_leave(pids, n);
    if (pf[0].revents != 0) {
      FsMsg m;
      ssize_t r = recv(sock, &m, sizeof m, 0);
      if (r < 0 && (errno == EINTR || errno == EAGAIN))
        continue;
      if (r != (ssize_t)sizeof m || m.what == FS_QUIT)
        fs_leave(pids, n);
      int i = m.index;
      if (m.what == FS_SPAWN && i >= 0 && i < n && pids[i] == 0) {
        pid_t pid = fork();
        if (pid == 0) {
          close(sock);
          if (parentfd >= 0)
            close(parentfd);
          for (int j = 0; j < n; j++)
            if (fds[j] >= 0)
              close(fds[j]);
          fs_worker(fk, i + 1, self);
        }
        if (pid < 0)
          fs_send(sock, FS_FAILED, i, errno);
        else {
          pids[i] = pid;
          fds[i] = open_pidfd(pid);
          fs_send(sock, FS_SPAWNED, i, pid);
        }
      }
    }
    for (int i = 0; i < n; i++) {
      int st;
      if (pids[i] > 0 && waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        if (fds[i] >= 0)
          close(fds[i]);
        fds[i] = -1;
        pids[i] = 0;
        fs_send(sock, FS_EXITED, i, st);
      }
    }
  }
}

static void *forker_main (void *arg) {
  Forker *fk = arg;
  fk->pid = fork();
  if (fk->pid == 0)
    fs_main(fk);             /* never returns */
  fk->err = fk->pid < 0 ? errno : 0;
  return NULL;
}

/* Forks the fork server from a new thread, with every signal blocked;
** 0 or an errno. */
static int fork_server (Forker *fk) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t tid;
  int err = pthread_create(&tid, NULL, forker_main, fk);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0)
    return err;
  pthread_join(tid, NULL);
  return fk->pid < 0 ? fk->err : 0;
}

/* Worker i could not be forked.  While others live they serve the queue;
** with none left the queued tasks would wait forever, so the pool breaks
** and they fail with the reason. */
static void proc_spawn_failed (Supervisor *s, int i, int err) {
  s->w[i].pid = 0;
  queue_worker_gone(s->q);
  for (int j = 0; j < s->n; j++)
    if (s->w[j].pid != 0)
      return;
  s->q->broken_errno = err;
  lua_settop(s->L, 0);
  lua_pushfstring(s->L, "cannot start a pool worker process: %s", strerror(err));
  lua_pushnil(s->L);
  queue_break(s->q, s->L);
  lua_settop(s->L, 0);
}

/* Protected: encodes (message, nil) as a future's error. */
static int encode_crash (lua_State *L) {
  LoomMsg **out = lua_touserdata(L, 1);
  lua_pushvalue(L, 2);
  lua_pushnil(L);
  *out = loomi_xfer_encode(L, 3, 2, "error");
  return 0;
}

/* Worker i has ended with `status` and been reaped: its task fails, and
** it is replaced while there is work. */
static void proc_reaped (Supervisor *s, int i, int status) {
  TaskQueue *q = s->q;
  if (s->w[i].pidfd >= 0)
    close(s->w[i].pidfd);
  s->w[i].pid = 0;
  s->w[i].pidfd = -1;
  /* Under the queue's lock, which the worker held when it took f: this
  ** orders the submitter's writes to f before ours for a race checker,
  ** which cannot follow the dead child. */
  queue_lock(q);
  Future *f = q->claimed[i];
  q->claimed[i] = NULL;
  /* killed inside queue_pop before f left the list: f is still queued,
  ** with the queue's reference, for another worker */
  for (Future *g = q->head; g != NULL && f != NULL; g = g->next)
    if (g == f)
      f = NULL;
  loomi_mutex_unlock(&q->mu);
  if (f != NULL) {
    LoomMsg *call = NULL;
    if (future_claim(f, &call))   /* taken from the queue, never started */
      loomi_msg_free(call);
    int state = atomic_load(&f->state);
    if (finished(state)) {
      /* it may have died inside future_finish: tell whoever it had not */
      loomi_mutex_lock(&f->mu);
      future_notify(f, state);
      loomi_mutex_unlock(&f->mu);
    }
    else if (state == F_RUNNING) {
      LoomMsg *err = NULL;
      lua_settop(s->L, 0);
      lua_pushcfunction(s->L, encode_crash);
      lua_pushlightuserdata(s->L, &err);
      if (WIFSIGNALED(status))
        lua_pushfstring(s->L, "pool worker process killed by signal %d",
                        WTERMSIG(status));
      else
        lua_pushfstring(s->L, "pool worker process exited with code %d",
                        WEXITSTATUS(status));
      if (lua_pcall(s->L, 2, 0, 0) != LUA_OK)
        err = NULL;
      future_finish(f, F_FAILED, NULL, err);
    }
    loomi_obj_release(&f->obj);   /* the dead worker's reference */
  }
  int again = !atomic_load(&q->broken) &&
              (!atomic_load(&q->shutdown) || atomic_load(&q->nqueued) > 0);
  if (!again)
    queue_worker_gone(q);
  else {
    s->w[i].pid = -1;
    fs_send(s->sock, FS_SPAWN, i, 0);   /* a dead server: seen by recv */
  }
}

/* The fork server is gone (killed): so are its workers, or soon (their
** death signal).  The pool breaks; each worker is waited for through its
** pidfd before its task fails, so that no live worker finishes it later. */
static void proc_server_died (Supervisor *s) {
  queue_break_why(s->q, "the pool's fork server died");
  for (int i = 0; i < s->n; i++) {
    ProcWorker *w = &s->w[i];
    if (w->pid == -1) {
      w->pid = 0;
      queue_worker_gone(s->q);
    }
    else if (w->pid > 0) {
      if (w->pidfd >= 0) {
#ifdef SYS_pidfd_send_signal
        syscall(SYS_pidfd_send_signal, w->pidfd, SIGKILL, NULL, 0);
#endif
        struct pollfd pfd = { w->pidfd, POLLIN, 0 };
        while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
          ;
      }
      else {
        /* no pidfd (an old kernel): the orphan is reaped by init soon */
        for (int k = 0; k < 500 && kill(w->pid, 0) == 0; k++) {
          struct timespec ts = { 0, 10000000 };
          nanosleep(&ts, NULL);
        }
      }
      proc_reaped(s, i, SIGKILL);   /* the status of a SIGKILL death */
    }
  }
}

static void *supervisor_main (void *arg) {
  Supervisor *s = arg;
  for (int i = 0; i < s->n; i++) {
    s->w[i].pid = -1;
    fs_send(s->sock, FS_SPAWN, i, 0);
  }
  for (;;) {
    int live = 0;
    for (int i = 0; i < s->n; i++)
      live += s->w[i].pid != 0;
    if (live == 0)
      break;
    FsMsg m;
    ssize_t r = recv(s->sock, &m, sizeof m, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r != (ssize_t)sizeof m) {
      proc_server_died(s);
      break;
    }
    int i = m.index;
    if (i < 0 || i >= s->n)
      continue;
    if (m.what == FS_SPAWNED && s->w[i].pid == -1) {
      s->w[i].pid = m.value;
      s->w[i].pidfd = open_pidfd(m.value);   /* not reaped before EXITED */
    }
    else if (m.what == FS_FAILED && s->w[i].pid == -1)
      proc_spawn_failed(s, i, m.value);
    else if (m.what == FS_EXITED && s->w[i].pid > 0)
      proc_reaped(s, i, m.value);
  }
  fs_send(s->sock, FS_QUIT, 0, 0);
  close(s->sock);
  while (waitpid(s->server, NULL, 0) < 0 && errno == EINTR)
    ;
  lua_close(s->L);
  loomi_obj_release(&s->q->obj);
  free(s);
  return NULL;
}

/* Forks the fork server of n worker processes and starts its supervisor;
** 0 or an errno. */
static int start_processes (TaskQueue *q, int n, int close_fds,
                            const int *keep, size_t nkeep) {
  q->claimed = loomi_heap_calloc((size_t)n * sizeof(Future *));
  Supervisor *s = calloc(1, sizeof(Supervisor) + (size_t)n * sizeof(ProcWorker));
  lua_State *L = luaL_newstate();
  int sv[2] = { -1, -1 };
  if (q->claimed == NULL || s == NULL || L == NULL ||
      socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    int err = q->claimed == NULL || s == NULL || L == NULL ? ENOMEM : errno;
    free(s);
    if (L != NULL)
      lua_close(L);
    return err;
  }
  Forker fk = { q, n, sv[1], sv[0], getpid(), "", close_fds, keep, nkeep,
                -1, 0 };
  snprintf(fk.parent_name, sizeof fk.parent_name, "%s", loomi_process_name());
  int err = fork_server(&fk);
  close(sv[1]);
  if (err != 0) {
    close(sv[0]);
    free(s);
    lua_close(L);
    return err;
  }
  s->q = q;
  s->n = n;
  s->sock = sv[0];
  s->server = fk.pid;
  s->L = L;
  for (int i = 0; i < n; i++)
    s->w[i].pidfd = -1;
  loomi_obj_retain(&q->obj);
  loomi_mutex_lock(&q->mu);
  q->nalive += n;
  loomi_mutex_unlock(&q->mu);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t tid;
  err = pthread_create(&tid, &attr, supervisor_main, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    for (int i = 0; i < n; i++)
      queue_worker_gone(q);
    close(sv[0]);            /* the server sees the end and leaves */
    while (waitpid(fk.pid, NULL, 0) < 0 && errno == EINTR)
      ;
    lua_close(L);
    free(s);
    loomi_obj_release(&q->obj);
  }
  return err;
}

/* ---- pools ---- */

/* The last handle gone without shutdown: the queued work still runs, on
** workers that leave when it is done; nothing waits for them. */
static void pool_destroy (LoomObj *o) {
  Pool *p = (Pool *)o;
  if (p->q != NULL) {
    queue_shutdown(p->q, 0);
    loomi_obj_release(&p->q->obj);
  }
}

/* ---- waiters ---- */

static void waiter_destroy (LoomObj *o) {
  Waiter *w = (Waiter *)o;
  pthread_mutex_destroy(&w->mu);
}

static Waiter *waiter_create (uint32_t n) {
  size_t size = sizeof(Waiter) + (size_t)n * (sizeof(WaitLink) +
                                              sizeof(uint32_t));
  Waiter *w = (Waiter *)loomi_obj_new(size, LOOM_WAITER, waiter_destroy);
  if (w == NULL)
    return NULL;
  if (loomi_mutex_init(&w->mu) != 0) {
    w->obj.destroy = NULL;
    loomi_obj_release(&w->obj);
    return NULL;
  }
  w->n = n;
  w->links = (WaitLink *)(w + 1);
  w->ready = (uint32_t *)(w->links + n);
  return w;
}

/* Links w into every future; those already finished are ready at once, in
** the order given. */
static void waiter_register (Waiter *w, Future **fs) {
  for (uint32_t i = 0; i < w->n; i++) {
    Future *f = fs[i];
    WaitLink *l = &w->links[i];
    l->w = w;
    l->index = i;
    loomi_mutex_lock(&f->mu);
    int state = atomic_load(&f->state);
    if (finished(state)) {
      loomi_mutex_lock(&w->mu);
      w->ready[w->nready++] = i;
      if (state == F_FAILED)
        w->nfailed++;
      loomi_mutex_unlock(&w->mu);
    }
    else {
      l->next = f->links;
      f->links = l;
      l->linked = 1;
    }
    loomi_mutex_unlock(&f->mu);
  }
}

static void waiter_unregister (Waiter *w, Future **fs) {
  for (uint32_t i = 0; i < w->n; i++) {
    WaitLink *l = &w->links[i];
    Future *f = fs[i];
    /* linked is cleared by a notifier under f->mu (and w->mu): read it
    ** under f->mu too */
    loomi_mutex_lock(&f->mu);
    if (l->linked) {
      for (WaitLink **p = &f->links; *p != NULL; p = &(*p)->next)
        if (*p == l) {
          *p = l->next;
          break;
        }
      l->linked = 0;
    }
    loomi_mutex_unlock(&f->mu);
  }
}

enum { WAIT_ALL, WAIT_ANY, WAIT_FIRST_ERROR };

/* w->mu held. */
static int waiter_satisfied (const Waiter *w, int mode, uint32_t count) {
  switch (mode) {
    case WAIT_ANY: return w->nready >= 1 || w->n == 0;
    case WAIT_FIRST_ERROR: return w->nfailed > 0 || w->nready == w->n;
    default: return w->nready >= count;
  }
}

/* Sleeps until the mode is satisfied (count: how many ready futures "all"
** needs); 0, ETIMEDOUT, ECANCELED or EINTR. */
static int waiter_wait (Waiter *w, int mode, uint32_t count,
                        const LoomDeadline *dl) {
  int rc = 0;
  loomi_mutex_lock(&w->mu);
  while (!waiter_satisfied(w, mode, count) && rc == 0)
    rc = loomi_wait(&w->q, &w->mu, &w->obj, dl);
  if (waiter_satisfied(w, mode, count))
    rc = 0;
  loomi_mutex_unlock(&w->mu);
  return rc;
}

void loomi_future_watch (LoomObj *o, LoomNotifyLink *l, int attach) {
  Future *f = (Future *)o;
  loomi_mutex_lock(&f->mu);
  if (attach)
    loomi_notify_attach(&f->nlinks, l, finished(atomic_load(&f->state)));
  else
    loomi_notify_detach(&f->nlinks, l);
  loomi_mutex_unlock(&f->mu);
}

/* ---- Lua bindings: futures ---- */

static Future *checkfuture (lua_State *L, int arg) {
  return (Future *)loomi_checkobj(L, arg, LOOM_FUTURE);
}

/* self of a Future method: upvalue 1 is the Future metatable
** (loomi_fast_methods), which saves a registry lookup per call. */
static Future *checkself (lua_State *L) {
  LoomObj *o = loomi_fastself(L);
  return o != NULL ? (Future *)o : checkfuture(L, 1);
}

static int future_settled (const void *arg) {
  return finished(atomic_load_explicit(&((const Future *)arg)->state,
                                       memory_order_acquire));
}

/* Waits for f to finish; 0, ETIMEDOUT, EINTR, or raises when the caller
** is cancelled.  No mutex: the state is read after the sequence (see
** loomi_wait_prepare), and a worker that died after finishing f but
** before waking anyone costs a slice of the wait layer, never a hang. */
static int future_await (lua_State *L, Future *f, const LoomDeadline *dl) {
  if (future_settled(f))
    return 0;
  int rc = 0;
  loomi_block_begin(L);
  if (dl->forever || !loomi_deadline_passed(dl))
    loomi_spin(future_settled, f);
  while (rc == 0) {
    unsigned seq = loomi_wait_prepare(&f->q);
    if (future_settled(f)) {
      loomi_wait_finish(&f->q);
      break;
    }
    rc = loomi_wait_seq(&f->q, seq, NULL, &f->obj, dl);
    loomi_wait_finish(&f->q);
  }
  if (future_settled(f))
    rc = 0;
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  return rc;
}

/* ---- done callbacks ----
** A callback is a function of the interpreter that added it, so it runs
** there and nowhere else: the registry of that state keeps
** { pid = <owner>, n = <count>, [future] = { own handle, caller's
** handle, fn1, fn2, ... } },
** and dispatch() runs the callbacks of every future found done, on
** whichever thread runs the state, each time the state calls a Future
** method, loom.wait or an as_completed step.  A forked child drops the
** copy it inherits: the parent runs those callbacks. */
static const char CALLBACKS_KEY = 'b';

/* Pushes this state's callback table, made (or remade, in a fork) when
** create is set; else pushes nil when there is none for this process. */
static void push_callbacks (lua_State *L, int create) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CALLBACKS_KEY) == LUA_TTABLE) {
    lua_getfield(L, -1, "pid");
    int mine = lua_tointeger(L, -1) == (lua_Integer)loomi_self_pid();
    lua_pop(L, 1);
    if (mine)
      return;
  }
  lua_pop(L, 1);
  if (!create) {
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CALLBACKS_KEY);
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)loomi_self_pid());
  lua_setfield(L, -2, "pid");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "n");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CALLBACKS_KEY);
}

/* Message handler of a callback: its error with a traceback, as text. */
static int callback_msgh (lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL)
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs fn(future) (at -1 and -2); an error goes to stderr, never further:
** a callback that fails must not break the call that happened to run it,
** nor the other callbacks.  A cancellation of the calling thread is not
** reported: the thread's hook raises it again at once. */
static void callback_run (lua_State *L) {
  lua_pushcfunction(L, callback_msgh);
  lua_insert(L, -3);
  if (lua_pcall(L, 1, 0, -3) != LUA_OK) {
    if (!loomi_cancel_requested()) {
      fprintf(stderr, "loom: exception in a future's done callback: %s\n",
              lua_tostring(L, -1));
      fflush(stderr);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Runs the callbacks of every future of this state that is done, each
** once, in the order added; leaves the stack as it was. */
static void future_dispatch (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CALLBACKS_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  luaL_checkstack(L, 8, NULL);
  push_callbacks(L, 0);                        /* t */
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, "n");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (n <= 0) {
    lua_pop(L, 1);
    return;
  }
  int t = lua_gettop(L);
  lua_newtable(L);                             /* ready: key, entry, ... */
  lua_Integer nready = 0;
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    if (lua_type(L, -2) == LUA_TLIGHTUSERDATA &&
        finished(atomic_load(&((Future *)lua_touserdata(L, -2))->state))) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, t + 1, 2 * nready + 1);
      lua_rawseti(L, t + 1, 2 * nready + 2);
      nready++;
    }
    else
      lua_pop(L, 1);
  }
  if (nready == 0) {
    lua_pop(L, 2);
    return;
  }
  for (lua_Integer i = 0; i < nready; i++) {   /* taken out before any runs */
    lua_rawgeti(L, t + 1, 2 * i + 1);
    lua_pushnil(L);
    lua_rawset(L, t);
  }
  lua_pushinteger(L, n - nready);
  lua_setfield(L, t, "n");
  for (lua_Integer i = 0; i < nready; i++) {
    lua_rawgeti(L, t + 1, 2 * i + 2);          /* entry */
    int e = lua_gettop(L);
    lua_rawgeti(L, e, 2);                      /* the caller's handle, */
    if (*(LoomObj **)lua_touserdata(L, -1) == NULL) {
      lua_pop(L, 1);                           /* or ours if it was closed */
      lua_rawgeti(L, e, 1);
    }
    lua_Integer k = (lua_Integer)lua_rawlen(L, e);
    for (lua_Integer j = 3; j <= k; j++) {
      lua_rawgeti(L, e, j);
      lua_pushvalue(L, e + 1);
      callback_run(L);
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
}

/* add_done_callback(fn): fn(future) once the future is done, in this
** interpreter (see future_dispatch); at once when it is done already. */
static int future_add_done_callback (lua_State *L) {
  Future *f = checkself(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  push_callbacks(L, 1);                        /* 3 */
  lua_pushlightuserdata(L, f);
  if (lua_rawget(L, 3) != LUA_TTABLE) {        /* 4: the entry */
    lua_pop(L, 1);
    lua_createtable(L, 3, 0);
    /* a handle of our own keeps the future alive (the key is its
    ** address) even if the caller closes theirs */
    loomi_proxy_push(L, &f->obj);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 2);
    lua_pushlightuserdata(L, f);
    lua_pushvalue(L, -2);
    lua_rawset(L, 3);
    lua_getfield(L, 3, "n");
    lua_pushinteger(L, lua_tointeger(L, -1) + 1);
    lua_setfield(L, 3, "n");
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, 4, (lua_Integer)lua_rawlen(L, 4) + 1);
  lua_settop(L, 0);
  future_dispatch(L);
  return 0;
}

/* ---- Lua bindings: promises ---- */

/* future() -> a pending Future that Lua code settles. */
static int future_new (lua_State *L) {
  LoomObj **slot = loomi_proxy_new(L, LOOM_FUTURE);
  Future *f = future_create();
  if (f == NULL)
    return luaL_error(L, "cannot create future: shared heap exhausted");
  *slot = &f->obj;
  f->promise = 1;
  return 1;
}

static Future *checkpromise (lua_State *L) {
  Future *f = checkself(L);
  if (!f->promise)
    luaL_error(L, "cannot settle the future of a pool task");
  return f;
}

/* The InvalidStateError of a second settling. */
static int settled_error (lua_State *L, Future *f) {
  int state = atomic_load(&f->state);
  if (!finished(state))      /* another settler is half-way */
    return luaL_error(L, "future already settled");
  return luaL_error(L, "future already %s", future_states[state]);
}

/* set_result(...): the future finishes with these values (copied, as a
** task's results are).  Raises when it was settled or cancelled before. */
static int future_set_result (lua_State *L) {
  Future *f = checkpromise(L);
  if (atomic_load(&f->settled) || finished(atomic_load(&f->state)))
    return settled_error(L, f);
  LoomMsg *m = loomi_xfer_encode(L, 2, lua_gettop(L) - 1, "results");
  if (future_settle(f, F_DONE, m) != 0) {
    loomi_msg_free(m);
    return settled_error(L, f);
  }
  lua_settop(L, 0);
  future_dispatch(L);
  return 0;
}

/* set_error(err): the future fails with err (result() raises it as it is,
** error() returns it).  Raises when it was settled or cancelled before. */
static int future_set_error (lua_State *L) {
  Future *f = checkpromise(L);
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "error value must not be nil");
  if (atomic_load(&f->settled) || finished(atomic_load(&f->state)))
    return settled_error(L, f);
  lua_settop(L, 2);
  lua_pushnil(L);            /* no remote traceback */
  LoomMsg *m = loomi_error_encode(L, 2);
  if (m == NULL)
    return luaL_error(L, "cannot set error: shared heap exhausted");
  if (future_settle(f, F_FAILED, m) != 0) {
    loomi_msg_free(m);
    return settled_error(L, f);
  }
  lua_settop(L, 0);
  future_dispatch(L);
  return 0;
}

/* set_running_or_notify_cancel() -> true once running; false when it was
** cancelled (its waiters were told then).  Raises for any other state. */
static int future_set_running (lua_State *L) {
  Future *f = checkpromise(L);
  int s = F_PENDING;
  if (atomic_compare_exchange_strong(&f->state, &s, F_RUNNING)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s == F_CANCELLED) {
    future_dispatch(L);
    lua_pushboolean(L, 0);
    return 1;
  }
  return luaL_error(L, "future already %s", future_states[s]);
}

/* Pushes (error, traceback) of a failed future. */
static void push_error (lua_State *L, Future *f) {
  if (f->error != NULL) {
    int n = loomi_xfer_decode(L, f->error);
    if (n < 2)
      lua_settop(L, lua_gettop(L) - n + 2);
  }
  else {
    lua_pushliteral(L, "pool initializer failed: cannot create a worker state");
    lua_pushnil(L);
  }
}

/* result([timeout]) -> the task's results; raises its error with the remote
** traceback; fail, "timeout" / fail, "cancelled". */
static int future_result (lua_State *L) {
  Future *f = checkself(L);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  int rc = future_await(L, f, &dl);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_settop(L, 1);
  future_dispatch(L);
  f = checkself(L);          /* a callback may have closed this handle */
  if (rc == ETIMEDOUT) {
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_TIMEOUT);
    return 2;
  }
  switch (atomic_load(&f->state)) {
    case F_DONE:
      return loomi_xfer_decode(L, f->results);
    case F_CANCELLED:
      luaL_pushfail(L);
      lua_pushliteral(L, LOOM_CANCELLED);
      return 2;
    default:
      push_error(L, f);
      if (f->worker > 0) {
        char name[64];
        worker_name(name, sizeof name, f->prefix, f->pool_id, f->worker);
        lua_pushfstring(L, "%s %s", f->by_process ? "process" : "thread",
                        name);
      }
      else if (f->promise)
        lua_pushliteral(L, "future");
      else
        lua_pushfstring(L, "pool %d", f->pool_id);
      return loomi_raise_remote(L, 2, lua_tostring(L, -1));
  }
}

/* error([timeout]) -> waits like result(), then nil when the future
** succeeded, the error value and the remote traceback when it failed,
** "cancelled" when it was cancelled; fail, "timeout".  Never raises the
** future's error. */
static int future_error (lua_State *L) {
  Future *f = checkself(L);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  int rc = future_await(L, f, &dl);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_settop(L, 1);
  future_dispatch(L);
  f = checkself(L);          /* a callback may have closed this handle */
  if (rc == ETIMEDOUT) {
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_TIMEOUT);
    return 2;
  }
  switch (atomic_load(&f->state)) {
    case F_FAILED:
      push_error(L, f);
      return 2;
    case F_CANCELLED:
      lua_pushliteral(L, LOOM_CANCELLED);
      return 1;
    default:
      lua_pushnil(L);
      return 1;
  }
}

static int future_done (lua_State *L) {
  future_dispatch(L);
  Future *f = checkself(L);
  lua_pushboolean(L, finished(atomic_load(&f->state)));
  return 1;
}

static int future_running (lua_State *L) {
  future_dispatch(L);
  Future *f = checkself(L);
  lua_pushboolean(L, atomic_load(&f->state) == F_RUNNING);
  return 1;
}

static int future_cancelled (lua_State *L) {
  future_dispatch(L);
  Future *f = checkself(L);
  lua_pushboolean(L, atomic_load(&f->state) == F_CANCELLED);
  return 1;
}

static int future_cancel_l (lua_State *L) {
  Future *f = checkself(L);
  int ok = future_cancel(f);
  future_dispatch(L);
  lua_pushboolean(L, ok);
  return 1;
}

static int future_tostring (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_FUTURE);
  if (*slot == NULL) {
    lua_pushliteral(L, "loom.Future (closed)");
    return 1;
  }
  Future *f = (Future *)*slot;
  lua_pushfstring(L, "loom.Future (%p, %s)", (void *)f,
                  future_states[atomic_load(&f->state)]);
  return 1;
}

/* ---- Lua bindings: wait and as_completed ---- */

/* Reads the futures table at arg into a GC-owned array of distinct
** futures (pushed), and a table of their proxies by position (pushed
** above it).  Returns the array; *n receives the count. */
static Future **collect_futures (lua_State *L, int arg, uint32_t *n) {
  luaL_checktype(L, arg, LUA_TTABLE);
  /* raw: a __len could claim any count */
  lua_Unsigned len = lua_rawlen(L, arg);
  luaL_argcheck(L, len < INT32_MAX, arg, "too many futures");
  Future **fs = lua_newuserdatauv(L, (size_t)(len > 0 ? len : 1) *
                                     sizeof(Future *), 0);
  lua_createtable(L, (int)len, 0);       /* proxies by position */
  lua_createtable(L, 0, (int)len);       /* seen: object -> true */
  uint32_t count = 0;
  for (lua_Integer i = 1; i <= (lua_Integer)len; i++) {
    lua_rawgeti(L, arg, i);
    LoomObj **slot = loomi_testslot(L, -1, LOOM_FUTURE);
    if (slot == NULL || *slot == NULL)
      luaL_argerror(L, arg, lua_pushfstring(L,
                    "loom.Future expected at index %d, got %s", (int)i,
                    slot != NULL ? "a closed loom.Future"
                                 : luaL_typename(L, -1)));
    LoomObj *o = *slot;
    lua_pushlightuserdata(L, o);
    if (lua_rawget(L, -3) != LUA_TNIL) {
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, o);
    lua_pushboolean(L, 1);
    lua_rawset(L, -4);
    lua_rawseti(L, -3, (lua_Integer)count + 1);
    fs[count++] = (Future *)o;
  }
  lua_pop(L, 1);
  *n = count;
  return fs;
}

static const char *const wait_modes[] = { "all", "any", "first_error", NULL };

/* wait(futures, [timeout], [mode]) -> done, not_done: two lists of the
** distinct futures, in the order given; returns at the timeout too.  The
** mode may come second when there is no timeout. */
static int pool_wait (lua_State *L) {
  LoomDeadline dl;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_type(L, 2) == LUA_TSTRING && lua_isnone(L, 3)) {
    lua_pushnil(L);
    lua_insert(L, 2);
  }
  loomi_opttimeout(L, 2, &dl);
  int mode = luaL_checkoption(L, 3, "all", wait_modes);
  lua_settop(L, 1);
  uint32_t n;
  Future **fs = collect_futures(L, 1, &n);   /* 2: array, 3: proxies */
  Waiter *w = waiter_create(n);
  if (w == NULL)
    return luaL_error(L, "cannot wait: shared heap exhausted");
  waiter_register(w, fs);
  loomi_block_begin(L);
  int rc = waiter_wait(w, mode, n, &dl);
  loomi_block_end(L);
  waiter_unregister(w, fs);
  loomi_obj_release(&w->obj);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_createtable(L, (int)n, 0);
  lua_createtable(L, 0, 0);
  lua_Integer nd = 0, nn = 0;
  for (uint32_t i = 0; i < n; i++) {
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    if (finished(atomic_load(&fs[i]->state)))
      lua_rawseti(L, 4, ++nd);
    else
      lua_rawseti(L, 5, ++nn);
  }
  future_dispatch(L);        /* last: a callback may close the handles */
  return 2;
}

/* The state of an as_completed loop: its own waiter, the futures it holds
** references to, and the position reached.  Closed by the generic for's
** closing value (break, error, end) or by the collector. */
typedef struct AsCompleted {
  LoomRef w;                 /* the Waiter; whose owner also owns fs's refs */
  Future **fs;               /* the waiter's n entries, each retained (malloc) */
  uint32_t next;
  LoomDeadline dl;
} AsCompleted;

/* The loop's state at arg; its size too is checked, so that a foreign
** userdata given its metatable through the debug library is refused. */
static AsCompleted *checkascompleted (lua_State *L, int arg) {
  AsCompleted *a = luaL_checkudata(L, arg, LOOM_ASCOMPLETED);
  luaL_argexpected(L, lua_rawlen(L, arg) == sizeof(AsCompleted), arg,
                   LOOM_ASCOMPLETED);
  return a;
}

/* Only the process that made the loop unlinks its waiter and gives back
** its references: a forked child that drops an inherited loop forgets
** them, or it would release the parent's. */
static int ascompleted_close (lua_State *L) {
  AsCompleted *a = checkascompleted(L, 1);
  if (loomi_ref_mine(&a->w)) {
    Waiter *w = (Waiter *)a->w.o;
    waiter_unregister(w, a->fs);
    for (uint32_t i = 0; i < w->n; i++)
      loomi_obj_release(&a->fs[i]->obj);
  }
  loomi_ref_drop(&a->w);
  free(a->fs);
  a->fs = NULL;
  return 0;
}

static int ascompleted_next (lua_State *L) {
  AsCompleted *a = checkascompleted(L, 1);
  if (a->w.o != NULL && !loomi_ref_mine(&a->w))
    return luaL_error(L, "as_completed loop used in another process");
  Waiter *w = (Waiter *)a->w.o;
  if (w == NULL || a->next >= w->n)
    return 0;
  loomi_obj_retain(&w->obj);   /* a's finalizer may run while this waits */
  loomi_block_begin(L);
  int rc = waiter_wait(w, WAIT_ALL, a->next + 1, &a->dl);
  loomi_block_end(L);
  loomi_obj_release(&w->obj);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  future_dispatch(L);
  if (rc == ETIMEDOUT) {
    lua_pushliteral(L, LOOM_TIMEOUT);
    return lua_error(L);
  }
  loomi_mutex_lock(&w->mu);
  uint32_t index = w->ready[a->next++];
  loomi_mutex_unlock(&w->mu);
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, (lua_Integer)index + 1);
  return 1;
}

/* as_completed(futures, [timeout]) -> iterator, state, nil, closing value:
** yields each distinct future once, finished ones first, then as they
** finish; raises "timeout" when the deadline passes first. */
static int pool_as_completed (lua_State *L) {
  LoomDeadline dl;
  luaL_checktype(L, 1, LUA_TTABLE);
  loomi_opttimeout(L, 2, &dl);
  lua_settop(L, 1);
  uint32_t n;
  Future **fs = collect_futures(L, 1, &n);   /* 2: array, 3: proxies */
  AsCompleted *a = lua_newuserdatauv(L, sizeof(AsCompleted), 1);
  memset(a, 0, sizeof *a);
  loomi_ref_set(&a->w, NULL);
  a->dl = dl;
  luaL_setmetatable(L, LOOM_ASCOMPLETED);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, 1);
  a->fs = malloc((size_t)(n > 0 ? n : 1) * sizeof(Future *));
  if (a->fs == NULL)
    return luaL_error(L, "not enough memory");
  Waiter *w = waiter_create(n);
  if (w == NULL)
    return luaL_error(L, "cannot wait: shared heap exhausted");
  for (uint32_t i = 0; i < n; i++) {
    a->fs[i] = fs[i];
    loomi_obj_retain(&fs[i]->obj);
  }
  waiter_register(w, a->fs);
  loomi_ref_set(&a->w, &w->obj);
  lua_pushcfunction(L, ascompleted_next);
  lua_pushvalue(L, 4);
  lua_pushnil(L);
  lua_pushvalue(L, 4);
  return 4;
}

/* ---- Lua bindings: pools ---- */

/* A pool's workers are threads, or a supervisor thread, of the process
** that made it: in any other (a fork) its methods would run tasks in, or
** shut down, the parent's pool, so they refuse. */
static Pool *ownpool (lua_State *L, Pool *p) {
  if (p->owner != loomi_self_pid())
    luaL_error(L, "loom.Pool used in a process other than the one that made it");
  return p;
}

static Pool *checkpool (lua_State *L, int arg) {
  return ownpool(L, (Pool *)loomi_checkobj(L, arg, LOOM_POOL));
}

static char *heap_strdup_field (lua_State *L, const char *field) {
  char *s = NULL;
  lua_getglobal(L, "package");
  if (lua_istable(L, -1) && lua_getfield(L, -1, field) == LUA_TSTRING) {
    size_t n;
    const char *v = lua_tolstring(L, -1, &n);
    s = loomi_heap_alloc(n + 1);
    if (s != NULL)
      memcpy(s, v, n + 1);
    lua_pop(L, 1);
  }
  else if (lua_istable(L, -1))
    lua_pop(L, 1);
  lua_pop(L, 1);
  return s;
}

static const char *const pool_kinds[] = { "thread", "process", NULL };

/* pool([n]) or pool{workers=, init=, initargs=, kind=} -> Pool, or fail,
** "cannot start pool worker: <strerror>", errno. */
static int pool_new (lua_State *L) {
  lua_Integer n = 0;
  int ninit = 0, process = 0;
  lua_settop(L, 1);
  if (lua_istable(L, 1)) {
    if (lua_getfield(L, 1, "workers") != LUA_TNIL) {
      luaL_argcheck(L, lua_isinteger(L, -1), 1,
                    "workers must be a positive integer");
      n = lua_tointeger(L, -1);
      luaL_argcheck(L, n >= 1, 1, "workers must be a positive integer");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "kind") != LUA_TNIL) {
      int ok = 0;
      for (int i = 0; pool_kinds[i] != NULL; i++)
        if (lua_type(L, -1) == LUA_TSTRING &&   /* "thread\0x" is not one */
            lua_rawlen(L, -1) == strlen(pool_kinds[i]) &&
            strcmp(lua_tostring(L, -1), pool_kinds[i]) == 0) {
          ok = 1;
          process = i == 1;
        }
      if (!ok)
        return luaL_argerror(L, 1, lua_pushfstring(L, "invalid kind '%s'",
                                                   luaL_tolstring(L, -1, NULL)));
    }
    lua_pop(L, 1);
    int t = lua_getfield(L, 1, "init");          /* 2 */
    luaL_argcheck(L, t == LUA_TNIL || t == LUA_TFUNCTION, 1,
                  "init must be a function");
    t = lua_getfield(L, 1, "initargs");          /* 3 */
    luaL_argcheck(L, t == LUA_TNIL || t == LUA_TTABLE, 1,
                  "initargs must be a table");
    luaL_argcheck(L, t == LUA_TNIL || lua_isfunction(L, 2), 1,
                  "initargs given without init");
    if (lua_isfunction(L, 2)) {
      lua_Integer k = 0;
      if (t == LUA_TTABLE) {
        int nt = lua_getfield(L, 3, "n"), isint = 1;
        if (nt != LUA_TNIL) {
          k = lua_tointegerx(L, -1, &isint);
          luaL_argcheck(L, nt == LUA_TNUMBER && isint && k >= 0, 1,
                        "initargs.n must be a non-negative integer");
        }
        else
          k = (lua_Integer)lua_rawlen(L, 3);
        lua_pop(L, 1);
      }
      luaL_argcheck(L, k < 250, 1, "too many initargs (at most 249)");
      luaL_checkstack(L, (int)k + 8, "too many initargs");
      lua_pushvalue(L, 2);
      for (lua_Integer i = 1; i <= k; i++)
        lua_rawgeti(L, 3, i);
      ninit = (int)k + 1;
    }
  }
  else if (!lua_isnoneornil(L, 1)) {
    luaL_argexpected(L, lua_isinteger(L, 1), 1, "integer or table");
    n = lua_tointeger(L, 1);
    luaL_argcheck(L, n >= 1, 1, "workers must be a positive integer");
  }
  if (n == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n = cpus > 0 ? cpus : 1;
  }
  luaL_argcheck(L, n <= POOL_MAXWORKERS, 1, "too many workers");
  int base = lua_gettop(L) - ninit + 1;
  /* process pools: the fork server keeps 0, 1, 2 and pass_fds only,
  ** unless close_fds is false (pushes the pass_fds array) */
  int close_fds = 1;
  size_t nkeep = 0;
  const int *keep = NULL;
  const char *prefix = "";
  lua_Integer max_tasks = 0;
  if (lua_istable(L, 1)) {
    int t = lua_getfield(L, 1, "close_fds");
    luaL_argcheck(L, t == LUA_TNIL || t == LUA_TBOOLEAN, 1,
                  "close_fds must be a boolean");
    close_fds = t == LUA_TNIL || lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "pass_fds") != LUA_TNIL) {
      keep = loomi_check_fds(L, -1, 1, &nkeep);
      luaL_argcheck(L, close_fds || nkeep == 0, 1,
                    "pass_fds given with close_fds false");
    }
    else
      lua_pop(L, 1);
    t = lua_getfield(L, 1, "thread_name_prefix");
    if (t != LUA_TNIL) {
      luaL_argcheck(L, t == LUA_TSTRING, 1, "thread_name_prefix must be a string");
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      luaL_argcheck(L, strlen(s) == len, 1,
                    "thread_name_prefix must not contain a NUL byte");
      luaL_argcheck(L, len <= LOOM_PREFIX_MAX, 1,
                    "thread_name_prefix too long (at most 40 bytes)");
      prefix = s;            /* the options table keeps it alive */
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "max_tasks_per_child") != LUA_TNIL) {
      luaL_argcheck(L, lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1, 1,
                    "max_tasks_per_child must be a positive integer");
      luaL_argcheck(L, process, 1,
                    "max_tasks_per_child is for process pools only");
      max_tasks = lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
  }
  LoomObj **slot = loomi_proxy_new(L, LOOM_POOL);
  Pool *p = (Pool *)loomi_obj_new(sizeof(Pool), LOOM_POOL, pool_destroy);
  if (p == NULL)
    return luaL_error(L, "cannot create pool: shared heap exhausted");
  *slot = &p->obj;
  p->owner = loomi_self_pid();
  p->nworkers = (int)n;
  p->process = process;
  TaskQueue *q = queue_create();
  if (q == NULL)
    return luaL_error(L, "cannot create pool: shared heap exhausted");
  p->q = q;
  snprintf(q->prefix, sizeof q->prefix, "%s", prefix);
  q->max_tasks = max_tasks;
  if (ninit > 0)
    q->init = loomi_xfer_encode_call(L, base, ninit);
  q->path = heap_strdup_field(L, "path");
  q->cpath = heap_strdup_field(L, "cpath");
  if (process && loomi_sigchld_ignored()) {
    queue_shutdown(q, 1);
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_SIGCHLD_IGNORED);
    lua_pushinteger(L, ECHILD);
    return 3;
  }
  int err = process ? start_processes(q, (int)n, close_fds, keep, nkeep)
                    : start_threads(q, (int)n);
  if (err != 0) {
    queue_shutdown(q, 1);
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot start pool worker: %s", strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  return 1;
}

/* submit(fn, ...) -> Future.  Upvalues: the Pool and Future metatables,
** the state's table of proxies (loomi_pool_open). */
static int pool_submit (lua_State *L) {
  LoomObj *self = loomi_fastself(L);
  Pool *p = self != NULL ? ownpool(L, (Pool *)self) : checkpool(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  TaskQueue *q = p->q;
  int top = lua_gettop(L);
  LoomObj **slot = loomi_proxy_new_at(L, lua_upvalueindex(2),
                                      lua_upvalueindex(3), 0);
  Future *f = future_create();
  if (f == NULL)
    return luaL_error(L, "cannot submit: shared heap exhausted");
  *slot = &f->obj;
  f->pool_id = q->id;
  f->call = loomi_xfer_encode_call(L, 2, top - 1);
  int err = queue_push(q, f);
  if (err == EPIPE)
    return luaL_error(L, "cannot submit to a pool after shutdown");
  if (err == EIO && q->broken_errno != 0)
    return luaL_error(L, "cannot submit to a broken pool (cannot start a worker process: %s)",
                      strerror(q->broken_errno));
  if (err == EIO && q->broken_why[0] != '\0')
    return luaL_error(L, "cannot submit to a broken pool (worker could not start: %s)",
                      q->broken_why);
  if (err == EIO)
    return luaL_error(L, "cannot submit to a broken pool (initializer failed)");
  return 1;
}

/* shutdown([wait=true], [cancel_pending=false], [timeout]) -> bool */
static int pool_shutdown (lua_State *L) {
  Pool *p = checkpool(L, 1);
  int wait = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  int cancel = lua_toboolean(L, 3);
  LoomDeadline dl;
  loomi_opttimeout(L, 4, &dl);
  queue_shutdown(p->q, cancel);
  if (wait) {
    if (self_queue == p->q)
      return luaL_error(L, "cannot wait for a pool from one of its own workers");
    loomi_block_begin(L);
    int rc = queue_join(p->q, &dl);
    loomi_block_end(L);
    if (rc == ECANCELED)
      return loomi_raise_cancelled(L);
    if (rc == EINTR)
      return loomi_push_interrupted(L);
    if (rc != 0) {           /* the workers are still finishing */
      lua_pushboolean(L, 0);
      return 1;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* __close: shutdown(true); the handle stays usable for queries. */
static int pool_close (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_POOL);
  if (*slot == NULL || ((Pool *)*slot)->owner != loomi_self_pid())
    return 0;                /* a fork leaving a scope: not its pool */
  lua_settop(L, 1);
  return pool_shutdown(L);
}

/* The methods written in Lua (lua/loom/pool.lua): the class installs
** them itself, in whichever state first asks for one, so a pool has the
** same methods in every interpreter whether or not it required loom. */
static const char *const lua_methods[] = { "map", "imap", NULL };

static void install_lua_methods (lua_State *L, int methods) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "loom.pool") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    if (lua_getfield(L, -1, "require") != LUA_TFUNCTION)
      luaL_error(L, "cannot load loom.pool: no require");
    lua_remove(L, -2);
    lua_pushliteral(L, "loom.pool");
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
      luaL_error(L, "cannot load loom.pool: not a module table");
  }
  for (int i = 0; lua_methods[i] != NULL; i++) {
    if (lua_getfield(L, -1, lua_methods[i]) == LUA_TFUNCTION)
      lua_setfield(L, methods, lua_methods[i]);
    else
      lua_pop(L, 1);
  }
  lua_pop(L, 2);
}

/* Methods first (upvalue 1: the methods table), then the fields. */
static int pool_index (lua_State *L) {
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1;
  Pool *p = (Pool *)loomi_checkobj(L, 1, LOOM_POOL);
  const char *key = lua_tostring(L, 2);
  for (int i = 0; key != NULL && lua_methods[i] != NULL; i++)
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(key, lua_methods[i]) == 0) {
      install_lua_methods(L, lua_upvalueindex(1));
      lua_pushvalue(L, 2);
      lua_rawget(L, lua_upvalueindex(1));
      return 1;
    }
  if (key != NULL && strcmp(key, "workers") == 0)
    lua_pushinteger(L, p->nworkers);
  else if (key != NULL && strcmp(key, "kind") == 0)
    lua_pushstring(L, p->process ? "process" : "thread");
  else
    lua_pushnil(L);
  return 1;
}

static int pool_tostring (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_POOL);
  if (*slot == NULL) {
    lua_pushliteral(L, "loom.Pool (closed)");
    return 1;
  }
  Pool *p = (Pool *)*slot;
  loomi_mutex_lock(&p->q->mu);
  int shut = p->q->shutdown, broken = p->q->broken;
  size_t queued = atomic_load(&p->q->nqueued);
  loomi_mutex_unlock(&p->q->mu);
  lua_pushfstring(L, "loom.Pool (%p, %d workers, %d queued%s)", (void *)p,
                  p->nworkers, (int)queued,
                  broken ? ", broken" : shut ? ", shut down" : "");
  return 1;
}

static const luaL_Reg future_meta[] = {
  {"__tostring", future_tostring},
  {NULL, NULL}
};

static const luaL_Reg future_methods[] = {
  {"result", future_result},
  {"error", future_error},
  {"done", future_done},
  {"running", future_running},
  {"cancel", future_cancel_l},
  {"cancelled", future_cancelled},
  {"add_done_callback", future_add_done_callback},
  {"set_result", future_set_result},
  {"set_error", future_set_error},
  {"set_running_or_notify_cancel", future_set_running},
  {NULL, NULL}
};

static const luaL_Reg pool_meta[] = {
  {"__close", pool_close},
  {"__tostring", pool_tostring},
  {NULL, NULL}
};

static const luaL_Reg pool_methods[] = {
  {"submit", pool_submit},
  {"shutdown", pool_shutdown},
  {NULL, NULL}
};

static const luaL_Reg pool_funcs[] = {
  {"pool", pool_new},
  {"future", future_new},
  {"wait", pool_wait},
  {"as_completed", pool_as_completed},
  {NULL, NULL}
};

void loomi_pool_open (lua_State *L) {
  loomi_newclass(L, LOOM_FUTURE, future_meta, future_methods);
  loomi_fast_methods(L, LOOM_FUTURE, future_methods);
  loomi_newclass(L, LOOM_POOL, pool_meta, NULL);
  luaL_getmetatable(L, LOOM_POOL);
  lua_newtable(L);
  lua_pushvalue(L, -2);                  /* upvalues: Pool mt, Future mt, */
  luaL_getmetatable(L, LOOM_FUTURE);     /* the proxies */
  loomi_proxy_table(L);
  luaL_setfuncs(L, pool_methods, 3);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");
  lua_pushcclosure(L, pool_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  if (luaL_newmetatable(L, LOOM_ASCOMPLETED)) {
    lua_pushcfunction(L, ascompleted_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ascompleted_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, pool_funcs, 0);
}
