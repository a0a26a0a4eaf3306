/* wait.c: the one wait layer every blocking primitive sleeps through.
** Futexes on 32-bit sequence words in the shared heap, so that a waiter
** that dies leaves nothing behind a survivor must undo; the single
** spin-then-sleep policy; cancellation of loom threads; and Ctrl-C on the
** process's main thread.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

/* An untimed sleep still wakes this often, so that a wake-up given to a
** waiter that died before it could pass it on is only ever late, never
** lost: every wait loops on its predicate. */
#define WAIT_SLICE    0.2
/* The main thread's sleeps are cut this short, so that a SIGINT (whose
** handler only sets a hook, and whose SA_RESTART restarts the futex call)
** reaches Lua well within 0.1 s. */
#define INTR_SLICE    0.02
/* How long a wait polls before it sleeps. */
#define SPIN_SECONDS  20e-6

/* ---- futexes ---- */

/* Sleeps while *word == val, until woken or the absolute CLOCK_MONOTONIC
** time at: 0, ETIMEDOUT, EAGAIN (the word had changed) or EINTR.  Not
** FUTEX_PRIVATE_FLAG: the word may be shared with other processes. */
static int futex_wait (atomic_uint *word, unsigned val,
                       const struct timespec *at) {
  long r = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, val, at,
                   NULL, FUTEX_BITSET_MATCH_ANY);
  return r == 0 ? 0 : errno;
}

static void futex_wake (atomic_uint *word, int n) {
  syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

void loomi_waitq_init (LoomWaitq *q) {
  atomic_init(&q->seq, 0);
  atomic_init(&q->waiters, 0);
  atomic_init(&q->sleepers, 0);
}

/* The waker changed the predicate before it reads waiters, and a waiter
** counts itself (wait_prepare) before it reads seq and then the predicate,
** all sequentially consistent: when the waker sees no waiter, a later one
** sees the change; when it sees one, that one either sees the change or
** read seq before the bump, and then the futex call returns at once.
** The same pairing between the bump and `sleepers` (counted before the
** futex call reads seq) spares the system call while every waiter is still
** spinning: a spinner sees the bump by itself.  A waiter that died leaves
** the counts too high, which costs a needless bump and system call here
** and nothing else. */
void loomi_wake (LoomWaitq *q, int n) {
  if (atomic_load(&q->waiters) == 0)
    return;
  atomic_fetch_add(&q->seq, 1);
  if (atomic_load(&q->sleepers) != 0)
    futex_wake(&q->seq, n);
}

void loomi_wake_all (LoomWaitq *q) {
  loomi_wake(q, INT_MAX);
}

/* ---- the spin policy ----
** Before a wait sleeps, it polls: a thread that ends that soon, a lock
** released that soon, an item or a task's result that comes that soon
** costs no sleep and no wake-up, several microseconds each.  First a burst
** of SPIN_BURST polls, always (a producer and a consumer on two cores, or a
** lock handed over, usually get there within it); then up to SPIN_SECONDS
** more, yielding the processor now and then so that on a busy machine the
** thread awaited gets it.  Long polls that come to nothing (a busy machine,
** where they take the CPU from the very thread awaited) use up
** spin_credit, and then only a probe now and then polls long.
** Process-global, a hint only: races on it are harmless. */
#define SPIN_BURST 128
static atomic_int spin_credit = 0;
static atomic_uint spin_probe = 0;

static void cpu_relax (void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

int loomi_spin (int (*ready) (const void *arg), const void *arg) {
  for (int i = 0; i < SPIN_BURST; i++) {
    if (ready(arg))
      return 1;
    cpu_relax();
  }
  int credit = atomic_load_explicit(&spin_credit, memory_order_relaxed);
  if (credit <= 0 &&
      (atomic_fetch_add_explicit(&spin_probe, 1, memory_order_relaxed) & 63))
    return 0;
  double until = loomi_now() + SPIN_SECONDS;
  for (unsigned i = 1;; i++) {
    if (ready(arg)) {
      if (credit < 64)
        atomic_fetch_add_explicit(&spin_credit, 1, memory_order_relaxed);
      return 1;
    }
    if ((i & 63) == 0) {
      if (loomi_now() >= until)
        break;
      sched_yield();
    }
    cpu_relax();
  }
  if (credit > -64)
    atomic_fetch_sub_explicit(&spin_credit, 4, memory_order_relaxed);
  return 0;
}

typedef struct SeqArg { atomic_uint *word; unsigned val; } SeqArg;

static int seq_moved (const void *arg) {
  const SeqArg *s = arg;
  return atomic_load_explicit(s->word, memory_order_acquire) != s->val;
}

/* ---- Ctrl-C ----
** lua.c's SIGINT handler only sets a hook on its main state, and installs
** itself with SA_RESTART, so a wait in C never sees the signal.  A binding
** about to block records its state's hook (block_begin); on the process's
** main thread the wait sleeps in short slices and gives up with EINTR as
** soon as that hook changed.  The binding then returns to Lua, where the
** new hook runs (lua.c's raises "interrupted!").  Only the main thread:
** every thread loom starts blocks all signals.
** lua.c sets its hook on the main coroutine only, so a wait in another
** coroutine watches the main one's hook too, and when that changed, gives
** the hook to its own coroutine on the way back (loomi_intr_end): the
** interruption is raised where the program is, as Python's is. */
static LOOM_THREAD_LOCAL lua_State *intr_L = NULL;
static LOOM_THREAD_LOCAL lua_Hook intr_hook = NULL;
static LOOM_THREAD_LOCAL int intr_mask = 0;
static LOOM_THREAD_LOCAL lua_State *intr_main = NULL;  /* when not intr_L */
static LOOM_THREAD_LOCAL lua_Hook main_hook = NULL;
static LOOM_THREAD_LOCAL int main_mask = 0;
static LOOM_THREAD_LOCAL lua_Hook main_raw = NULL;      /* as it was, to put back */
static LOOM_THREAD_LOCAL int main_raw_mask = 0, main_raw_count = 0;
static LOOM_THREAD_LOCAL pid_t main_checked = 0;   /* pid main_is was for */
static LOOM_THREAD_LOCAL int main_is = 0;

/* A hook appeared or changed since (hook0, mask0): something (lua.c's
** SIGINT handler) wants Lua to run.  A hook removed does not count, nor
** the switching hook of shared threads, which comes and goes while they
** start and end (gil.c reads it as none). */
static int hook_changed (lua_State *L, lua_Hook hook0, int mask0,
                         lua_Hook *hook, int *mask) {
  loomi_gil_peek_hook(L, hook, mask);
  return *hook != NULL && (*hook != hook0 || *mask != mask0);
}

/* Runs before block_begin releases any GIL. */
void loomi_intr_begin (lua_State *L) {
  intr_L = L;
  intr_main = NULL;
  loomi_gil_peek_hook(L, &intr_hook, &intr_mask);
  if (loomi_intr_watched()) {
    int is_main = lua_pushthread(L);
    lua_pop(L, 1);
    if (!is_main) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
      intr_main = lua_tothread(L, -1);   /* anchored by the registry */
      lua_pop(L, 1);
      loomi_gil_peek_hook(intr_main, &main_hook, &main_mask);
      main_raw = lua_gethook(intr_main);
      main_raw_mask = lua_gethookmask(intr_main);
      main_raw_count = lua_gethookcount(intr_main);
    }
  }
}

/* Runs after block_end took back any GIL.  The hook moves, so that the
** interruption is raised once, as lua.c's would be: its hook takes itself
** off the coroutine it runs in.  SIGINT is held off meanwhile, so that a
** second signal is not lost between the two changes. */
void loomi_intr_end (void) {
  lua_Hook hook;
  int mask;
  if (intr_main != NULL &&
      hook_changed(intr_main, main_hook, main_mask, &hook, &mask) &&
      lua_gethook(intr_L) != hook) {
    sigset_t intr, old;
    sigemptyset(&intr);
    sigaddset(&intr, SIGINT);
    pthread_sigmask(SIG_BLOCK, &intr, &old);
    lua_sethook(intr_L, hook, mask, lua_gethookcount(intr_main));
    lua_sethook(intr_main, main_raw, main_raw_mask, main_raw_count);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  intr_L = NULL;
  intr_main = NULL;
}

/* True when the calling thread is its process's main thread (a fork's
** only thread becomes one) and runs a binding that can be interrupted. */
int loomi_intr_watched (void) {
  if (intr_L == NULL)
    return 0;
  pid_t pid = getpid();
  if (main_checked != pid) {
    main_checked = pid;
    main_is = (pid_t)syscall(SYS_gettid) == pid;
  }
  return main_is;
}

/* A hook appeared or changed on the waiting coroutine or, for a wait in
** another coroutine, on the main one (see hook_changed). */
int loomi_interrupted (void) {
  if (intr_L == NULL)
    return 0;
  lua_Hook hook;
  int mask;
  return hook_changed(intr_L, intr_hook, intr_mask, &hook, &mask) ||
         (intr_main != NULL &&
          hook_changed(intr_main, main_hook, main_mask, &hook, &mask));
}

int loomi_push_interrupted (lua_State *L) {
  luaL_pushfail(L);
  lua_pushliteral(L, LOOM_INTERRUPTED);
  return 2;
}

/* ---- sleeping ---- */

static void ts_min (struct timespec *a, const struct timespec *b) {
  if (b->tv_sec < a->tv_sec ||
      (b->tv_sec == a->tv_sec && b->tv_nsec < a->tv_nsec))
    *a = *b;
}

static int ts_passed (const struct timespec *at) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec > at->tv_sec ||
         (now.tv_sec == at->tv_sec && now.tv_nsec >= at->tv_nsec);
}

static void ts_in (struct timespec *ts, double s) {
  LoomDeadline d;
  loomi_deadline_in(&d, s);
  *ts = d.at;
}

static int futex_sleep (LoomWaitq *q, unsigned seq, const LoomDeadline *dl,
                        int watched, const struct timespec *slice_end);

/* Sleeps while q->seq == seq: 0 (it moved, or a slice passed: re-check),
** ETIMEDOUT, EINTR (Ctrl-C on the main thread, when `interruptible`). */
static int sleep_on (LoomWaitq *q, unsigned seq, const LoomDeadline *dl,
                     int interruptible) {
  SeqArg sa = { &q->seq, seq };
  if (loomi_spin(seq_moved, &sa))
    return 0;
  int watched = interruptible && loomi_intr_watched();
  struct timespec slice_end;
  ts_in(&slice_end, WAIT_SLICE);
  atomic_fetch_add(&q->sleepers, 1);
  int rc = futex_sleep(q, seq, dl, watched, &slice_end);
  atomic_fetch_sub(&q->sleepers, 1);
  return rc;
}

/* sleep_on's futex loop, with sleepers counted. */
static int futex_sleep (LoomWaitq *q, unsigned seq, const LoomDeadline *dl,
                        int watched, const struct timespec *slice_end) {
  for (;;) {
    struct timespec at = *slice_end;
    if (dl != NULL && !dl->forever)
      ts_min(&at, &dl->at);
    if (watched) {
      struct timespec shortly;
      ts_in(&shortly, INTR_SLICE);
      ts_min(&at, &shortly);
    }
    int r = futex_wait(&q->seq, seq, &at);
    if (atomic_load(&q->seq) != seq)
      return 0;
    if (dl != NULL && loomi_deadline_passed(dl))
      return ETIMEDOUT;
    if (watched && loomi_interrupted())
      return EINTR;
    if (r == ETIMEDOUT && ts_passed(slice_end))
      return 0;   /* a whole slice: let the caller look again */
  }
}

unsigned loomi_wait_prepare (LoomWaitq *q) {
  atomic_fetch_add(&q->waiters, 1);
  return atomic_load(&q->seq);
}

void loomi_wait_finish (LoomWaitq *q) {
  atomic_fetch_sub(&q->waiters, 1);
}

int loomi_wait_seq (LoomWaitq *q, unsigned seq, pthread_mutex_t *mu,
                    LoomObj *obj, const LoomDeadline *dl) {
  if (obj != NULL)
    loomi_gil_pin(obj);
  if (loomi_thread_wait_enter(q, obj) != 0)
    return ECANCELED;
  if (mu != NULL)
    loomi_mutex_unlock(mu);
  int rc = sleep_on(q, seq, dl, 1);
  if (mu != NULL)
    loomi_mutex_lock(mu);
  if (loomi_thread_wait_leave() != 0)
    rc = ECANCELED;
  return rc;
}

int loomi_wait (LoomWaitq *q, pthread_mutex_t *mu, LoomObj *obj,
                const LoomDeadline *dl) {
  unsigned seq = loomi_wait_prepare(q);
  int rc = loomi_wait_seq(q, seq, mu, obj, dl);
  loomi_wait_finish(q);
  return rc;
}

int loomi_wait_plain (LoomWaitq *q, unsigned seq, const LoomDeadline *dl) {
  return sleep_on(q, seq, dl, 0);
}

/* Sleeps until dl on a word nobody wakes but a canceller. */
int loomi_sleep_until (LoomWaitq *q, LoomObj *obj, const LoomDeadline *dl) {
  int rc = 0;
  while (rc == 0 && !loomi_deadline_passed(dl)) {
    unsigned seq = loomi_wait_prepare(q);
    rc = loomi_wait_seq(q, seq, NULL, obj, dl);
    loomi_wait_finish(q);
  }
  return rc == ETIMEDOUT ? 0 : rc;
}
