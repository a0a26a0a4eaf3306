/* process.c: loom.Process, a forked child running a Lua function in its own
** copy of the interpreter; its results or its error come back through the
** codec, in a message the child leaves in the shared heap.
** Lua: loom.core.process(fn, args, name, daemon) -> Process; Process:start(),
**      join([t]), result([t]), error(), is_alive(), terminate(), kill();
**      fields pid, ident, exitcode, name, daemon.
** Lock order: a process's mu is taken alone.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { PR_NEW, PR_RUNNING, PR_DONE };

/* A child ends with its references left to whoever reaps it, unless its
** parent left first without waiting for it (os.exit without close). */
enum { LEAVE_RUNNING, LEAVE_TO_REAPER, LEAVE_ORPHANED };

typedef struct LoomProcess {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards state, pid, pidfd, waiters, status */
  int state;
  int daemon;
  pid_t pid;                 /* 0 until fork returned */
  pid_t parent;              /* the process that forked it: it alone reaps */
  pid_t creator;             /* the process that made the handle */
  int pidfd;                 /* the parent's descriptor for it, or -1 */
  int waiters;               /* parent threads polling pidfd */
  int status;                /* wait status, once reaped */
  int collected;             /* result() or error() has seen the outcome */
  /* written by the child before it leaves, read once it is reaped */
  int reported;              /* the child chose its exit code */
  int code;
  LoomMsg *results;
  LoomMsg *error;            /* (error value, traceback) */
  /* the references the parent took for the child at fork (obj.c), given
  ** back once it is reaped; or by the child itself when orphaned */
  _Atomic(LoomHeld *) held;
  atomic_int leaving;        /* LEAVE_*: who gives them back */
  char failmsg[1024];        /* the error as text, for reports */
  char name[64];
  char parent_name[64];      /* its starter's name, for parent_process() */
  int role;                  /* ROLE_*: what the handle stands for */
  int sentinel;              /* readable once it has ended, or -1 ... */
  pid_t sentinel_owner;      /* ... a descriptor of this process's */
} LoomProcess;

/* A handle is a child's (made by loom.process), or stands for the calling
** process (current_process() where loom did not fork it) or for the
** process that started it (parent_process()): those are never joined,
** started or signalled. */
enum { ROLE_CHILD, ROLE_SELF, ROLE_PARENT };

/* Who this process is when loom forked it: its own handle, and whether it
** is a daemon (which may not start children).  Written once, on the only
** thread of a new child. */
static LoomProcess *self_process = NULL;
static int self_daemon = 0;

/* Written once per process, on its only thread, by a child loom forked (a
** loom.process or a pool worker): who its parent is (parent_for: the
** process they are true for; a fork loom did not do inherits them).  The
** handles of current_process() (where self_process is NULL) and of
** parent_process() are made on first use, and are true only in the process
** that made them (their creator).  self_name names the calling process:
** the main process, or a pool worker. */
static pid_t parent_pid = 0, parent_for = 0;
static char parent_name[64];
static _Atomic(LoomProcess *) parent_made = NULL;
static _Atomic(LoomProcess *) self_made = NULL;
static char self_name[64] = "MainProcess";

/* Default names count up per process, like Python's; a child's children
** are named after it ("Process-1:1"). */
static atomic_long process_counter = 0;

/* ---- C core ---- */

static int kept (int fd, const int *keep, size_t nkeep) {
  for (size_t i = 0; i < nkeep; i++)
    if (keep[i] == fd)
      return 1;
  return 0;
}

static void drop_fd (int fd, int nullfd) {
  if (nullfd >= 0) {
    while (dup2(nullfd, fd) < 0 && errno == EINTR)
      ;
  }
  else
    close(fd);
}

/* The open descriptors are listed in /proc/self/fd; without /proc every
** number up to the descriptor limit (at most 2^16) is tried.  Without
** /dev/null they are closed: they must not stay. */
void loomi_close_fds (const int *keep, size_t nkeep, int to_null) {
  int nullfd = to_null ? open("/dev/null", O_RDWR | O_CLOEXEC) : -1;
  DIR *d = opendir("/proc/self/fd");
  if (d != NULL) {
    int own = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      char *end;
      long fd = strtol(e->d_name, &end, 10);
      if (*end != '\0' || end == e->d_name || fd < 3 || fd == own ||
          fd == nullfd || kept((int)fd, keep, nkeep))
        continue;
      drop_fd((int)fd, nullfd);
    }
    closedir(d);
  }
  else {
    struct rlimit rl;
    long max = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
      max = (long)rl.rlim_cur;
    if (max > 65536)
      max = 65536;
    for (int fd = 3; fd < max; fd++)
      if (fd != nullfd && !kept(fd, keep, nkeep) && fcntl(fd, F_GETFD) >= 0)
        drop_fd(fd, nullfd);
  }
  if (nullfd >= 0)
    close(nullfd);
}

static void process_destroy (LoomObj *o) {
  LoomProcess *p = (LoomProcess *)o;
  if (p->pidfd >= 0 && p->parent == getpid())
    close(p->pidfd);
  if (p->sentinel >= 0 && p->sentinel_owner == getpid())
    close(p->sentinel);
  loomi_msg_free(p->results);
  loomi_msg_free(p->error);
  loomi_held_release(atomic_exchange(&p->held, NULL));
  pthread_mutex_destroy(&p->mu);
}

/* Gives back the references taken for p's child, once: call it when the
** child is gone, without p->mu (the last of them may destroy objects). */
static void process_release_held (LoomProcess *p) {
  loomi_held_release(atomic_exchange(&p->held, NULL));
}

static LoomProcess *process_create (void) {
  LoomProcess *p = (LoomProcess *)loomi_obj_new(sizeof(LoomProcess),
                                                LOOM_PROCESS, process_destroy);
  if (p == NULL)
    return NULL;
  p->pidfd = -1;
  p->sentinel = -1;
  if (loomi_mutex_init(&p->mu) != 0) {
    p->obj.destroy = NULL;
    loomi_obj_release(&p->obj);
    return NULL;
  }
  p->state = PR_NEW;
  p->creator = getpid();
  return p;
}

static int open_pidfd (pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  return -1;
#endif
}

/* p->mu held and p not reaped, so p->pid is still our child's even when
** there is no pidfd (one is opened only for polling waits). */
static int send_signal (LoomProcess *p, int sig) {
#ifdef SYS_pidfd_send_signal
  if (p->pidfd >= 0 && p->parent == getpid() &&
      syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0) == 0)
    return 0;
#endif
  return kill(p->pid, sig);
}

/* Collects the child's status if it has ended; p->mu held.  Only the
** parent can; a status someone else collected (a host's own waitpid) is
** replaced by the code the child reported, or 255. */
static void process_reap (LoomProcess *p) {
  if (p->state != PR_RUNNING || p->pid <= 0 || p->parent != getpid())
    return;
  int st;
  pid_t r;
  do
    r = waitpid(p->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == p->pid) {
    p->status = st;
    p->state = PR_DONE;
  }
  else if (r < 0 && errno == ECHILD) {
    p->status = ((p->reported ? p->code : 255) & 0xff) << 8;
    p->state = PR_DONE;
  }
  if (p->state == PR_DONE && p->waiters == 0 && p->pidfd >= 0) {
    close(p->pidfd);
    p->pidfd = -1;
  }
}

/* The name of the calling process, as its children's parent_process()
** and default names give it. */
static const char *current_name (void) {
  return self_process != NULL ? self_process->name : self_name;
}

/* A handle of role ROLE_SELF or ROLE_PARENT for a running process (NULL
** when the heap is exhausted).  A parent's sentinel is a pidfd; if the
** parent that forked us has gone already (we were handed to another), its
** pid may be another's: the sentinel is then a pipe already at its end. */
static LoomProcess *process_standin (int role, pid_t pid, const char *name) {
  LoomProcess *p = process_create();
  if (p == NULL)
    return NULL;
  p->role = role;
  p->state = PR_RUNNING;
  p->pid = pid;
  snprintf(p->name, sizeof p->name, "%s", name);
  if (role == ROLE_PARENT) {
    int fd = open_pidfd(pid);
    int gone = fd < 0 ? errno == ESRCH
                      : self_process != NULL && getppid() != pid;
    if (gone) {
      int ends[2];
      if (fd >= 0)
        close(fd);
      fd = -1;
      if (pipe2(ends, O_CLOEXEC) == 0) {
        close(ends[1]);
        fd = ends[0];
      }
    }
    p->sentinel = fd;
    p->sentinel_owner = getpid();
  }
  return p;
}

/* The handle in *cache if this process made it, else a new one kept there
** (the first of two threads racing wins); NULL when the heap is exhausted. */
static LoomProcess *standin_cached (_Atomic(LoomProcess *) *cache, int role,
                                    pid_t pid, const char *name) {
  LoomProcess *p = atomic_load(cache);
  if (p != NULL && p->creator == getpid())
    return p;
  LoomProcess *made = process_standin(role, pid, name);
  if (made == NULL)
    return NULL;
  if (atomic_compare_exchange_strong(cache, &p, made))
    return made;
  loomi_obj_release(&made->obj);
  return p;
}

/* In a process loom forked but not through loom.process (a pool worker):
** its own name, and who its parent is (the pool's maker, not the fork
** server that forked it).  On the only thread, before any Lua runs. */
void loomi_process_adopted (const char *name, pid_t parent,
                            const char *pname) {
  snprintf(self_name, sizeof self_name, "%s", name);
  self_process = NULL;
  parent_pid = parent;
  parent_for = getpid();
  snprintf(parent_name, sizeof parent_name, "%s", pname);
}

const char *loomi_process_name (void) {
  return current_name();
}

/* Gives back the handles a process made for itself, as it leaves. */
void loomi_process_leave (void) {
  LoomProcess *made = atomic_exchange(&self_made, NULL);
  if (made != NULL && made->creator == getpid())
    loomi_obj_release(&made->obj);
  made = atomic_exchange(&parent_made, NULL);
  if (made != NULL && made->creator == getpid())
    loomi_obj_release(&made->obj);
}

static int exitcode_of (int status) {
  if (WIFSIGNALED(status))
    return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

/* Waits until p has ended and is reaped: 0, ETIMEDOUT, or ECANCELED when
** `cancellable` and the calling loom thread was cancelled, or EINTR when
** Ctrl-C reached the main thread meanwhile (see wait.c; a child's end is
** no futex word, so this wait keeps its own sleep, in the wait layer's
** short main-thread slices).  A wait with neither a deadline, a cancel
** nor a Ctrl-C to notice blocks in waitid until the
** child ends, leaving it to be reaped here (WNOWAIT, so other waiters see
** it too); others poll a pidfd, opened on first need, in short slices so a
** cancel is seen; without a pidfd, they back off from 1 to 20 ms.  No
** signal handler is involved. */
static int process_wait_done (LoomProcess *p, const LoomDeadline *dl,
                              int cancellable) {
  int rc = 0;
  long backoff_us = 1000;
  int watched = cancellable && loomi_intr_watched();
  loomi_mutex_lock(&p->mu);
  for (;;) {
    process_reap(p);
    if (p->state == PR_DONE)
      break;
    if (cancellable && loomi_cancel_requested()) {
      rc = ECANCELED;
      break;
    }
    double left = loomi_deadline_left(dl);
    if (left == 0) {
      rc = ETIMEDOUT;
      break;
    }
    long slice_us = watched ? 20000 : 50000;
    if (left > 0 && left * 1e6 < slice_us)
      slice_us = (long)(left * 1e6) + 1;
    int block = left < 0 && !watched &&
                !(cancellable && loomi_cancellable());
    if (!block && p->pidfd < 0)
      p->pidfd = open_pidfd(p->pid);   /* not reaped yet: still our child */
    int fd = p->pidfd;
    pid_t pid = p->pid;
    p->waiters++;
    loomi_mutex_unlock(&p->mu);
    if (block) {
      siginfo_t si;
      if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0 &&
          errno != EINTR) {
        /* not waitable (someone else reaped it): the reap above says so */
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
      }
    }
    else if (fd >= 0) {
      struct pollfd pfd = { fd, POLLIN, 0 };
      poll(&pfd, 1, (int)((slice_us + 999) / 1000));
    }
    else {
      long us = backoff_us < slice_us ? backoff_us : slice_us;
      struct timespec ts = { 0, us * 1000 };
      nanosleep(&ts, NULL);
      if (backoff_us < 20000)
        backoff_us *= 2;
    }
    /* without p->mu: the check may take back a GIL, whose holder may be
    ** about to lock p->mu */
    int intr = watched && loomi_interrupted();
    loomi_mutex_lock(&p->mu);
    p->waiters--;
    if (intr) {
      process_reap(p);
      if (p->state != PR_DONE)
        rc = EINTR;
      break;
    }
  }
  if (p->state == PR_DONE && p->waiters == 0 && p->pidfd >= 0) {
    close(p->pidfd);
    p->pidfd = -1;
  }
  int done = p->state == PR_DONE;
  loomi_mutex_unlock(&p->mu);
  if (done)
    process_release_held(p);
  return rc;
}

/* Signals p unless it has been reaped (its pid may belong to someone else
** by then); 1 when the signal was sent. */
static int process_signal (LoomProcess *p, int sig) {
  int sent = 0;
  loomi_mutex_lock(&p->mu);
  process_reap(p);
  if (p->state == PR_RUNNING && p->pid > 0)
    sent = send_signal(p, sig) == 0;
  int done = p->state == PR_DONE;
  loomi_mutex_unlock(&p->mu);
  if (done)
    process_release_held(p);
  return sent;
}

static int process_done (LoomProcess *p) {
  loomi_mutex_lock(&p->mu);
  process_reap(p);
  int done = p->state == PR_DONE;
  loomi_mutex_unlock(&p->mu);
  if (done)
    process_release_held(p);
  return done;
}

/* For a notifier's watcher thread (notify.c): 1 once p has ended (reaping
** it, as is_alive() does), 0 while it runs, -1 when the calling process
** cannot wait for it (not started, or not its child). */
int loomi_process_ended (LoomObj *o) {
  LoomProcess *p = (LoomProcess *)o;
  loomi_mutex_lock(&p->mu);
  int state = p->state;
  pid_t parent = p->parent;
  loomi_mutex_unlock(&p->mu);
  if (state == PR_NEW || parent != getpid())
    return -1;
  return process_done(p);
}

/* An error nobody collected, on a handle nobody holds any more: reported
** once, the way a thread's is. */
static void process_report_lost (LoomProcess *p) {
  if (p->error == NULL || p->collected || p->parent != getpid() ||
      atomic_load(&p->obj.refs) != 1)
    return;
  p->collected = 1;
  fprintf(stderr, "loom: exception in process %s:\n%s\n", p->name,
          p->failmsg);
  fflush(stderr);
}

/* ---- the per-state list of started processes ----
** Keeps a reference to every child until it is reaped, so none is left a
** zombie; when the state closes, daemons are terminated and everyone is
** waited for (Python's rule). */

typedef struct ProcList {
  LoomProcess **list;
  size_t n, cap;
  pid_t pid;             /* the process whose references the list holds */
  int listed;            /* on exit_lists: a state of the host's threads */
  struct ProcList *next_listed, *prev_listed;
} ProcList;

/* Process-global: the lists of the states that run on threads loom did
** not start (the host's own), for the exit of a process that never closes
** them (loomi_process_atexit).  A loom thread's state does what closing
** would when the thread's function returns, so its list is not here. */
static pthread_mutex_t exit_lists_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ProcList *exit_lists = NULL;

static void exit_lists_prefork (void) { pthread_mutex_lock(&exit_lists_mu); }
static void exit_lists_postfork (void) { pthread_mutex_unlock(&exit_lists_mu); }
static pthread_once_t exit_lists_once = PTHREAD_ONCE_INIT;
static void exit_lists_init (void) {
  pthread_atfork(exit_lists_prefork, exit_lists_postfork, exit_lists_postfork);
}

static void exit_list (ProcList *pl, int on) {
  pthread_once(&exit_lists_once, exit_lists_init);
  pthread_mutex_lock(&exit_lists_mu);
  if (on && !pl->listed) {
    pl->prev_listed = NULL;
    pl->next_listed = exit_lists;
    if (exit_lists != NULL)
      exit_lists->prev_listed = pl;
    exit_lists = pl;
    pl->listed = 1;
  }
  else if (!on && pl->listed) {
    if (pl->prev_listed != NULL)
      pl->prev_listed->next_listed = pl->next_listed;
    else
      exit_lists = pl->next_listed;
    if (pl->next_listed != NULL)
      pl->next_listed->prev_listed = pl->prev_listed;
    pl->listed = 0;
  }
  pthread_mutex_unlock(&exit_lists_mu);
}

static const char PROCLIST_KEY = 'P';

static void proclist_prune (ProcList *pl) {
  size_t keep = 0;
  for (size_t i = 0; i < pl->n; i++) {
    LoomProcess *p = pl->list[i];
    if (process_done(p)) {
      process_report_lost(p);
      loomi_obj_release(&p->obj);
    }
    else
      pl->list[keep++] = p;
  }
  pl->n = keep;
}

static void proclist_shutdown (ProcList *pl) {
  if (pl->pid != getpid())
    pl->n = 0;   /* a copy made by a fork loom did not do: not ours */
  for (size_t i = 0; i < pl->n; i++)
    if (pl->list[i]->daemon)
      process_signal(pl->list[i], SIGTERM);
  for (size_t i = 0; i < pl->n; i++) {
    LoomProcess *p = pl->list[i];
    LoomDeadline dl;
    loomi_deadline_in(&dl, p->daemon ? 2.0 : -1);
    if (process_wait_done(p, &dl, 0) == ETIMEDOUT) {
      process_signal(p, SIGKILL);
      loomi_deadline_in(&dl, -1);
      process_wait_done(p, &dl, 0);
    }
    process_report_lost(p);
    loomi_obj_release(&p->obj);
  }
  free(pl->list);
  pl->list = NULL;
  pl->n = pl->cap = 0;
}

/* Leaving without waiting (os.exit without close): nobody will reap the
** children still running, so each gives back the references taken for it
** when it leaves; one already leaving left them to us. */
static void proclist_orphan (ProcList *pl) {
  if (pl->pid != getpid())
    return;
  for (size_t i = 0; i < pl->n; i++) {
    LoomProcess *c = pl->list[i];
    int running = LEAVE_RUNNING;
    if (!atomic_compare_exchange_strong(&c->leaving, &running,
                                        LEAVE_ORPHANED))
      process_release_held(c);
    else
      process_done(c);       /* one that died unseen: given back now */
  }
}

#define LOOM_PROCLIST "loom.ProcList"

static int proclist_gc (lua_State *L) {
  ProcList *pl = luaL_checkudata(L, 1, LOOM_PROCLIST);
  exit_list(pl, 0);
  proclist_shutdown(pl);
  return 0;
}

/* At exit without lua_close: each host state's children are terminated
** (daemons) or waited for, as closing the state would. */
void loomi_process_atexit (void) {
  pthread_mutex_lock(&exit_lists_mu);
  for (ProcList *pl = exit_lists; pl != NULL; pl = pl->next_listed)
    if (pl->pid == getpid())
      proclist_shutdown(pl);
  pthread_mutex_unlock(&exit_lists_mu);
}

/* The list of L's state, made on first use; NULL with `make` false and no
** list yet. */
static ProcList *proclist_of (lua_State *L, int make) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PROCLIST_KEY) == LUA_TUSERDATA) {
    ProcList *pl = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (pl->pid != getpid()) {   /* a fork loom did not make: the parent's */
      pl->n = 0;
      pl->pid = getpid();
    }
    return pl;
  }
  lua_pop(L, 1);
  if (!make)
    return NULL;
  ProcList *pl = lua_newuserdatauv(L, sizeof(ProcList), 0);
  memset(pl, 0, sizeof *pl);
  pl->pid = getpid();
  if (luaL_newmetatable(L, LOOM_PROCLIST)) {
    lua_pushcfunction(L, proclist_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &PROCLIST_KEY);
  if (!loomi_on_loom_thread())
    exit_list(pl, 1);
  return pl;
}

/* ---- the child ---- */

/* Leaves the child: the threads and processes it started are dealt with
** as a closing state would (unless `quick`), the references its own
** proxies hold are returned (the parent gives back those it took for the
** inherited ones), output is flushed, and _exit skips the cleanup that
** belongs to the parent (atexit handlers, lua_close, stdio of inherited
** read streams). */
static void child_leave (lua_State *L, int code, int quick) {
  if (self_process != NULL) {
    self_process->code = code;
    self_process->reported = 1;
  }
  ProcList *pl = proclist_of(L, 0);
  if (!quick) {
    loomi_thread_shutdown(L);
    if (pl != NULL)
      proclist_shutdown(pl);
  }
  else if (pl != NULL)
    proclist_orphan(pl);
  loomi_proxy_release_own(L);
  loomi_process_leave();
  if (self_process != NULL) {
    int running = LEAVE_RUNNING;
    if (!atomic_compare_exchange_strong(&self_process->leaving, &running,
                                        LEAVE_TO_REAPER))
      process_release_held(self_process);   /* orphaned: nobody reaps us */
  }
  loomi_heap_flush();
  fflush(NULL);
  _exit(code);
}

/* os.exit in a child: the same arguments; `close` waits for the threads
** and processes the child started, as lua_close would. */
static int child_exit (lua_State *L) {
  int code;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  child_leave(L, code, !lua_toboolean(L, 2));
  return 0;
}

/* Protected: stack 1 = {target, args}, 2 = the process.  Runs the target
** in a coroutine, so that a traceback shows the child's own frames and not
** the parent's stack the fork copied.  Leaves the encoded results in the
** process and returns true, or returns false, error value, traceback. */
static int child_main (lua_State *L) {
  LoomProcess *p = lua_touserdata(L, 2);
  lua_settop(L, 1);
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, child_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
  lua_State *co = lua_newthread(L);          /* 2 */
  lua_rawgeti(L, 1, 2);                      /* 3: args */
  int n = loomi_argcount(L, 3);
  luaL_checkstack(L, n + 8, "too many arguments");
  if (!lua_checkstack(co, n + 8))
    return luaL_error(L, "too many arguments");
  lua_rawgeti(L, 1, 1);
  for (int i = 1; i <= n; i++)
    lua_rawgeti(L, 3, i);
  lua_xmove(L, co, n + 1);
  int nres = 0;
  int status = lua_resume(co, L, n, &nres);
  if (status == LUA_OK) {
    luaL_checkstack(L, nres + 8, "too many results");
    lua_settop(L, 0);
    lua_xmove(co, L, nres);
    p->results = loomi_xfer_encode(L, 1, nres, "results");
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  if (status == LUA_YIELD)
    lua_pushliteral(L, "attempt to yield from outside a coroutine");
  else
    lua_xmove(co, L, 1);
  luaL_traceback(L, co, NULL, 0);
  return 3;
}

/* Protected: stack 1 = error value, 2 = traceback, 3 = the process. */
static int child_store_error (lua_State *L) {
  LoomProcess *p = lua_touserdata(L, 3);
  lua_settop(L, 2);
  p->error = loomi_xfer_encode(L, 1, 2, "error");
  return 0;
}

static void child_fail (lua_State *L, LoomProcess *p) {
  /* stack: error value, traceback */
  int base = lua_gettop(L) - 1;
  const char *text = lua_tostring(L, base);
  const char *tb = lua_tostring(L, base + 1);
  snprintf(p->failmsg, sizeof p->failmsg, "%s\n%s",
           text ? text : "(error object is not a string)", tb ? tb : "");
  lua_pushcfunction(L, child_store_error);
  lua_pushvalue(L, base);
  lua_pushvalue(L, base + 1);
  lua_pushlightuserdata(L, p);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    /* the value cannot travel: its text can */
    lua_pop(L, 1);
    lua_pushcfunction(L, child_store_error);
    if (text != NULL)
      lua_pushstring(L, text);
    else
      lua_pushfstring(L, "(error object is a %s value)",
                      luaL_typename(L, base));
    lua_pushvalue(L, base + 1);
    lua_pushlightuserdata(L, p);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK)
      lua_pop(L, 1);
  }
}

/* The child's life, from fork to _exit; stack: proxy, {target, args,
** close_fds, pass_fds}.  close_fds points the descriptors at /dev/null
** rather than closing them: a Lua file or stdio stream of the parent's
** still names the number, and must not reach a file the child opens
** later. */
static void process_child (lua_State *L, LoomProcess *p) {
  loomi_thread_forked(L);
  loomi_child_sigmask();   /* whatever the forking thread blocked */
  lua_rawgeti(L, 2, 3);
  int close_fds = lua_toboolean(L, -1);
  lua_rawgeti(L, 2, 4);
  const int *keep = lua_touserdata(L, -1);
  size_t nkeep = keep != NULL ? lua_rawlen(L, -1) / sizeof(int) : 0;
  if (close_fds)
    loomi_close_fds(keep, nkeep, 1);
  lua_pop(L, 2);
  ProcList *pl = proclist_of(L, 0);
  if (pl != NULL) {
    pl->n = 0;   /* the parent's children, and its references to them */
    pl->pid = getpid();
  }
  self_process = p;
  self_daemon = p->daemon;
  parent_pid = p->parent;
  parent_for = getpid();
  snprintf(parent_name, sizeof parent_name, "%s", p->parent_name);
  atomic_store(&process_counter, 0);
  loomi_mutex_lock(&p->mu);
  p->pid = getpid();
  loomi_mutex_unlock(&p->mu);
  int code = 0;
  lua_pushcfunction(L, child_main);
  lua_pushvalue(L, 2);
  lua_pushlightuserdata(L, p);
  if (lua_pcall(L, 2, 3, 0) != LUA_OK) {
    lua_pushnil(L);    /* the results could not travel: no traceback */
    child_fail(L, p);
    code = 1;
  }
  else if (!lua_toboolean(L, -3)) {
    child_fail(L, p);
    code = 1;
  }
  child_leave(L, code, 0);
}

/* ---- Lua bindings ---- */

static LoomProcess *checkprocess (lua_State *L, int arg) {
  return (LoomProcess *)loomi_checkobj(L, arg, LOOM_PROCESS);
}

/* process(target, args, name, daemon, close_fds, pass_fds): the Lua layer
** has sorted out the two call forms and checked the options; args is a
** sequence table with an n field. */
static int process_new (lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *name = lua_isnoneornil(L, 3) ? NULL
                     : loomi_checkname(L, 3, sizeof ((LoomProcess *)0)->name);
  int daemon = lua_toboolean(L, 4);
  int close_fds = lua_toboolean(L, 5);
  lua_settop(L, 6);
  size_t nkeep = 0;
  if (!lua_isnil(L, 6))
    loomi_check_fds(L, 6, 6, &nkeep);      /* 7 */
  else
    lua_pushnil(L);
  LoomObj **slot = loomi_proxy_new(L, LOOM_PROCESS);
  lua_createtable(L, 4, 0);      /* the call, run by the child */
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 2);
  lua_pushboolean(L, close_fds);
  lua_rawseti(L, -2, 3);
  lua_pushvalue(L, 7);           /* the descriptors close_fds keeps */
  lua_rawseti(L, -2, 4);
  lua_setiuservalue(L, -2, 1);
  LoomProcess *p = process_create();
  if (p == NULL)
    return luaL_error(L, "cannot create process: shared heap exhausted");
  *slot = &p->obj;
  p->daemon = daemon;
  long nth = atomic_fetch_add(&process_counter, 1) + 1;
  if (name != NULL)
    snprintf(p->name, sizeof p->name, "%s", name);
  else if (self_process != NULL)
    snprintf(p->name, sizeof p->name, "%.40s:%ld", self_process->name, nth);
  else
    snprintf(p->name, sizeof p->name, "Process-%ld", nth);
  return 1;
}

int loomi_sigchld_ignored (void) {
  struct sigaction sa;
  if (sigaction(SIGCHLD, NULL, &sa) != 0)
    return 0;
  return sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT) != 0;
}

int *loomi_check_fds (lua_State *L, int idx, int arg, size_t *n) {
  idx = lua_absindex(L, idx);
  luaL_argcheck(L, lua_type(L, idx) == LUA_TTABLE, arg,
                "pass_fds must be a table of descriptors");
  lua_Unsigned len = lua_rawlen(L, idx);
  luaL_argcheck(L, len <= 65536, arg, "pass_fds too long (at most 65536)");
  for (lua_Unsigned i = 1; i <= len; i++) {
    int isint;
    lua_rawgeti(L, idx, (lua_Integer)i);
    lua_Integer fd = lua_tointegerx(L, -1, &isint);
    if (lua_type(L, -1) != LUA_TNUMBER || !isint || fd < 0 || fd > INT_MAX) {
      luaL_argerror(L, arg, lua_pushfstring(L,
        "pass_fds[%d] must be a descriptor (a non-negative integer)", (int)i));
      return NULL;
    }
    lua_pop(L, 1);
  }
  int *fds = lua_newuserdatauv(L, (size_t)len * sizeof(int), 0);
  for (lua_Unsigned i = 1; i <= len; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i);
    fds[i - 1] = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  *n = (size_t)len;
  return fds;
}

static int process_start (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  lua_settop(L, 1);
  if (p->state != PR_NEW)
    return luaL_error(L, "cannot start a process twice");
  if (p->creator != getpid())
    return luaL_error(L, "can only start a process object created by current process");
  if (self_daemon)
    return luaL_error(L, "daemonic processes are not allowed to have children");
  if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE)
    return luaL_error(L, "cannot start a process twice");
  lua_rawgeti(L, 2, 2);
  if (lua_istable(L, 3))
    loomi_argcount(L, 3);        /* in the parent, which can be told */
  lua_settop(L, 2);
  if (loomi_sigchld_ignored()) {
    /* the kernel would reap the child itself: its status would be lost */
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_SIGCHLD_IGNORED);
    lua_pushinteger(L, ECHILD);
    return 3;
  }
  ProcList *pl = proclist_of(L, 1);
  proclist_prune(pl);
  if (pl->n == pl->cap) {
    size_t cap = pl->cap ? pl->cap * 2 : 8;
    LoomProcess **list = realloc(pl->list, cap * sizeof *list);
    if (list == NULL)
      return luaL_error(L, "not enough memory");
    pl->list = list;
    pl->cap = cap;
  }
  LoomHeld *held = loomi_proxy_hold(L);
  if (held == NULL)
    return luaL_error(L, "cannot start process: shared heap exhausted");
  /* what is buffered now belongs to the parent: a child that flushed it
  ** again would print it twice */
  fflush(NULL);
  snprintf(p->parent_name, sizeof p->parent_name, "%s", current_name());
  atomic_store(&p->held, held);
  atomic_store(&p->leaving, LEAVE_RUNNING);
  loomi_obj_retain(&p->obj);     /* the list's reference */
  loomi_mutex_lock(&p->mu);
  p->state = PR_RUNNING;
  p->parent = getpid();
  loomi_mutex_unlock(&p->mu);
  pid_t pid = fork();
  if (pid == 0)
    process_child(L, p);         /* never returns */
  if (pid < 0) {
    int err = errno;
    loomi_mutex_lock(&p->mu);
    p->state = PR_NEW;
    loomi_mutex_unlock(&p->mu);
    process_release_held(p);
    loomi_obj_release(&p->obj);
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot start process: %s", strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  loomi_mutex_lock(&p->mu);
  p->pid = pid;
  loomi_mutex_unlock(&p->mu);
  pl->list[pl->n++] = p;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1);
  lua_settop(L, 1);
  return 1;
}

/* Common prologue of join, result and error(timeout): 0 when ended,
** ETIMEDOUT; raises on misuse or when the caller is cancelled. */
static int process_await (lua_State *L, LoomProcess *p, int arg) {
  LoomDeadline dl;
  loomi_opttimeout(L, arg, &dl);
  loomi_mutex_lock(&p->mu);
  int state = p->state;
  pid_t parent = p->parent;
  loomi_mutex_unlock(&p->mu);
  if (state == PR_NEW)
    return luaL_error(L, "can only join a started process");
  if (parent != getpid())
    return luaL_error(L, "can only join a child process");
  loomi_block_begin(L);
  int rc = process_wait_done(p, &dl, 1);
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  return rc;
}

static int process_join (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  int rc = process_await(L, p, 2);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* Pushes what went wrong with an ended process, and returns how many
** values: 0 when it succeeded, else (error value, traceback) for an
** error, or (message, nil) for an exit code or a signal. */
static int push_failure (lua_State *L, LoomProcess *p) {
  if (p->error != NULL) {
    int n = loomi_xfer_decode(L, p->error);
    if (n < 2)
      lua_settop(L, lua_gettop(L) - n + 2);
    else if (n > 2)
      lua_pop(L, n - 2);
    return 2;
  }
  int code = exitcode_of(p->status);
  if (code == 0)
    return 0;
  if (code > 0)
    lua_pushfstring(L, "process %s exited with code %d", p->name, code);
  else
    lua_pushfstring(L, "process %s was killed by signal %d", p->name, -code);
  lua_pushnil(L);
  return 2;
}

static int process_result (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  int rc = process_await(L, p, 2);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  if (rc == ETIMEDOUT) {
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_TIMEOUT);
    return 2;
  }
  lua_settop(L, 1);
  p->collected = 1;
  if (push_failure(L, p) > 0) {
    if (lua_type(L, 2) == LUA_TSTRING && lua_type(L, 3) == LUA_TSTRING) {
      lua_pushfstring(L, "%s\n[process %s] %s", lua_tostring(L, 2), p->name,
                      lua_tostring(L, 3));
      return lua_error(L);
    }
    lua_settop(L, 2);
    return lua_error(L);
  }
  if (p->results == NULL)
    return 0;
  return loomi_xfer_decode(L, p->results);
}

/* error() -> nil while running or after a success; else the error value
** and the child's traceback, or a message for an exit code or a signal.
** Never raises the child's error. */
static int process_error (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  lua_settop(L, 1);
  if (p->parent != getpid() || !process_done(p)) {
    lua_pushnil(L);
    return 1;
  }
  p->collected = 1;
  int n = push_failure(L, p);
  if (n == 0)
    lua_pushnil(L);
  return n ? n : 1;
}

/* A stand-in's process is alive until its pidfd says otherwise (without
** one, while its pid exists: it may be another's by then). */
static int standin_alive (LoomProcess *p) {
  if (p->role == ROLE_SELF || p->pid == getpid())
    return 1;
  if (p->sentinel >= 0 && p->sentinel_owner == getpid()) {
    struct pollfd pfd = { p->sentinel, POLLIN, 0 };
    return poll(&pfd, 1, 0) == 0;
  }
  return kill(p->pid, 0) == 0 || errno == EPERM;
}

static int process_is_alive (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  if (p->role != ROLE_CHILD || p->pid == getpid()) {
    lua_pushboolean(L, standin_alive(p));
    return 1;
  }
  loomi_mutex_lock(&p->mu);
  int state = p->state;
  pid_t parent = p->parent;
  loomi_mutex_unlock(&p->mu);
  if (state == PR_NEW) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (parent != getpid())
    return luaL_error(L, "can only test a child process");
  lua_pushboolean(L, !process_done(p));
  return 1;
}

static int signal_process (lua_State *L, int sig) {
  LoomProcess *p = checkprocess(L, 1);
  if (p->role != ROLE_CHILD)
    return luaL_error(L, "can only signal a child process");
  loomi_mutex_lock(&p->mu);
  int state = p->state;
  loomi_mutex_unlock(&p->mu);
  if (state == PR_NEW)
    return luaL_error(L, "cannot signal a process before it is started");
  lua_pushboolean(L, process_signal(p, sig));
  return 1;
}

static int process_terminate (lua_State *L) {
  return signal_process(L, SIGTERM);
}

static int process_kill (lua_State *L) {
  return signal_process(L, SIGKILL);
}

static int process_gc (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_PROCESS);
  LoomProcess *p = (LoomProcess *)*slot;
  if (p != NULL && p->state == PR_DONE)
    process_report_lost(p);
  return loomi_proxy_gc(L);
}

/* The descriptor that becomes readable once p has ended, opened on first
** use and kept until p is destroyed; -1 before start, outside the parent,
** for the calling process, or when none can be had.  In the parent of a
** child not yet reaped, a pidfd; of one reaped, a pipe already at its end
** (its pid may be another's by then). */
static int process_sentinel (LoomProcess *p) {
  pid_t me = getpid();
  loomi_mutex_lock(&p->mu);
  int fd = p->sentinel_owner == me ? p->sentinel : -1;
  if (fd < 0 && p->role == ROLE_CHILD && p->parent == me &&
      p->state != PR_NEW) {
    process_reap(p);
    if (p->state == PR_RUNNING)
      fd = open_pidfd(p->pid);
    else {
      int ends[2];
      if (pipe2(ends, O_CLOEXEC) == 0) {
        close(ends[1]);
        fd = ends[0];
      }
    }
    if (fd >= 0) {
      p->sentinel = fd;
      p->sentinel_owner = me;
    }
  }
  loomi_mutex_unlock(&p->mu);
  return fd;
}

static int process_index (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0)
    lua_pushstring(L, p->name);
  else if (strcmp(key, "pid") == 0 || strcmp(key, "ident") == 0) {
    loomi_mutex_lock(&p->mu);
    pid_t pid = p->pid;
    loomi_mutex_unlock(&p->mu);
    if (pid > 0)
      lua_pushinteger(L, pid);
    else
      lua_pushnil(L);
  }
  else if (strcmp(key, "exitcode") == 0) {
    loomi_mutex_lock(&p->mu);
    process_reap(p);
    int done = p->state == PR_DONE;
    int status = p->status;
    loomi_mutex_unlock(&p->mu);
    if (done) {
      process_release_held(p);
      lua_pushinteger(L, exitcode_of(status));
    }
    else
      lua_pushnil(L);
  }
  else if (strcmp(key, "daemon") == 0)
    lua_pushboolean(L, p->daemon);
  else if (strcmp(key, "sentinel") == 0) {
    int fd = process_sentinel(p);
    if (fd >= 0)
      lua_pushinteger(L, fd);
    else
      lua_pushnil(L);
  }
  else if (strcmp(key, "status") == 0) {
    /* a process has no cooperative cancel: killed is "error" */
    loomi_mutex_lock(&p->mu);
    process_reap(p);
    int state = p->state;
    int status = p->status;
    int failed = p->error != NULL;
    loomi_mutex_unlock(&p->mu);
    if (state == PR_DONE)
      process_release_held(p);
    lua_pushstring(L, state == PR_NEW ? "pending"
                    : state == PR_RUNNING ? "running"
                    : failed || exitcode_of(status) != 0 ? "error" : "done");
  }
  else {
    luaL_getmetatable(L, LOOM_PROCESS);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
  }
  return 1;
}

static int process_newindex (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0) {
    snprintf(p->name, sizeof p->name, "%s", loomi_checkname(L, 3, sizeof p->name));
    return 0;
  }
  if (strcmp(key, "daemon") == 0) {
    if (p->state != PR_NEW)
      return luaL_error(L, "cannot set daemon status of a started process");
    p->daemon = lua_toboolean(L, 3);
    return 0;
  }
  return luaL_error(L, "cannot set field '%s' of a loom.Process", key);
}

static int process_tostring (lua_State *L) {
  LoomProcess *p = checkprocess(L, 1);
  loomi_mutex_lock(&p->mu);
  if (p->parent == getpid())
    process_reap(p);
  int state = p->state, status = p->status;
  pid_t pid = p->pid;
  loomi_mutex_unlock(&p->mu);
  const char *d = p->daemon ? ", daemon" : "";
  if (state == PR_NEW)
    lua_pushfstring(L, "loom.Process (%s, initial%s)", p->name, d);
  else if (state == PR_RUNNING)
    lua_pushfstring(L, "loom.Process (%s, started, pid %d%s)", p->name,
                    (int)pid, d);
  else
    lua_pushfstring(L, "loom.Process (%s, stopped, exitcode %d%s)", p->name,
                    exitcode_of(status), d);
  return 1;
}

/* current_process() -> Process: this process's handle: the one its
** parent holds if loom.process forked it, else one made on first use. */
static int process_current (lua_State *L) {
  LoomProcess *p = self_process;
  if (p == NULL)
    p = standin_cached(&self_made, ROLE_SELF, getpid(), self_name);
  if (p == NULL)
    return luaL_error(L, "cannot make a process handle: shared heap exhausted");
  loomi_proxy_push(L, &p->obj);
  return 1;
}

/* parent_process() -> Process, or nil in a process loom did not fork. */
static int process_parent (lua_State *L) {
  if (parent_pid == 0 || parent_for != getpid()) {
    lua_pushnil(L);
    return 1;
  }
  LoomProcess *p = standin_cached(&parent_made, ROLE_PARENT, parent_pid,
                                  parent_name);
  if (p == NULL)
    return luaL_error(L, "cannot make a process handle: shared heap exhausted");
  loomi_proxy_push(L, &p->obj);
  return 1;
}

/* active_children() -> {Process...}: the children this interpreter
** started that have not ended (the ended ones are reaped). */
static int process_active_children (lua_State *L) {
  ProcList *pl = proclist_of(L, 1);
  proclist_prune(pl);
  lua_createtable(L, (int)pl->n, 0);
  for (size_t i = 0; i < pl->n; i++) {
    loomi_proxy_push(L, &pl->list[i]->obj);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static const luaL_Reg process_meta[] = {
  {"__index", process_index},
  {"__newindex", process_newindex},
  {"__gc", process_gc},
  {"__close", process_gc},
  {"__tostring", process_tostring},
  {NULL, NULL}
};

static const luaL_Reg process_methods[] = {
  {"start", process_start},
  {"join", process_join},
  {"result", process_result},
  {"error", process_error},
  {"is_alive", process_is_alive},
  {"terminate", process_terminate},
  {"kill", process_kill},
  {NULL, NULL}
};

static const luaL_Reg process_funcs[] = {
  {"process", process_new},
  {"current_process", process_current},
  {"parent_process", process_parent},
  {"active_children", process_active_children},
  {NULL, NULL}
};

void loomi_process_open (lua_State *L) {
  loomi_newclass(L, LOOM_PROCESS, process_meta, NULL);
  luaL_getmetatable(L, LOOM_PROCESS);
  lua_newtable(L);
  luaL_setfuncs(L, process_methods, 0);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_setfuncs(L, process_funcs, 0);
  proclist_of(L, 1);   /* made now so it is finalized after later objects */
}
