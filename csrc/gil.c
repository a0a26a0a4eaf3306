/* gil.c: shared-interpreter threads: coroutines of the caller's own
** interpreter, each on its own pthread, serialized by one global
** interpreter lock (GIL) per Lua global state, the CPython model.
** Lua: loom.core.shared_thread(fn, args, name, daemon) -> loom.SharedThread
**      (start, join, result, error, is_alive, cancel; name, ident, daemon);
**      setswitchinterval(s), getswitchinterval(); hook-aware replacements
**      of debug.sethook/gethook, coroutine.resume/wrap and os.exit;
**      loom.local(), storage with a value per thread of the interpreter.
** Why this is sound on stock Lua 5.4, and the rules kept here:
** docs/internals.md, "The global interpreter lock of shared threads".
** Lock order: a thread's mutex (SharedThread.mu), then gil->mu.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LOOM_SHARED "loom.SharedThread"

/* Instructions between two looks at the GIL.  With LUA_MASKCOUNT the VM
** traps on every instruction whatever the count, so a larger count only
** makes the hook itself rarer. */
#define GIL_COUNT 1000

/* At most this many interpreters of a process have a GIL at once.  A
** closed one keeps its slot, frozen, until no thread can touch it again:
** then the next interpreter takes it (a host that reloads its state). */
#define GIL_MAX 64

typedef struct GilWaiter {
  pthread_cond_t cv;
  int granted;               /* or the GIL froze: see gil->closing */
  struct GilWaiter *next;
} GilWaiter;

struct SharedThread;

typedef struct Gil {
  pthread_mutex_t mu;        /* guards every field but the atomics */
  lua_State *key;            /* the main lua_State served; NULL once closed */
  int used;
  int held;
  int closing;               /* frozen: the GIL is never handed on again */
  GilWaiter *head, *tail;    /* FIFO of threads waiting for the GIL */
  atomic_int waiting;        /* queue length, read by the hook without mu */
  atomic_int nthreads;       /* shared threads started and not finished */
  atomic_llong since;        /* when the holder took the GIL, ns */
  atomic_int layered;        /* some coroutine has a user hook layer */
  struct SharedThread *running;  /* started, not finished: gil->mu */
  atomic_int users;          /* threads that may still touch this Gil */
} Gil;

/* Static storage: a thread coming back for a GIL may outlive the
** interpreter and even the last reference to this library (docs/internals.md,
** GIL rule 7); it finds the GIL frozen and ends (frozen_exit). */
static Gil gils[GIL_MAX];
static pthread_mutex_t gils_mu = PTHREAD_MUTEX_INITIALIZER;

/* The switch interval, process-wide like CPython's sys.setswitchinterval. */
static atomic_llong switch_ns = 5000000;

/* The GIL the calling OS thread holds, and the one it released around a
** blocking call (with the object that call waits on, kept alive until the
** GIL is back: a frozen interpreter never frees a primitive with waiters). */
static LOOM_THREAD_LOCAL Gil *held_gil = NULL;
static LOOM_THREAD_LOCAL Gil *released_gil = NULL;
static LOOM_THREAD_LOCAL LoomObj *pinned_obj = NULL;

/* The shared thread the calling OS thread runs, NULL for others. */
static LOOM_THREAD_LOCAL struct SharedThread *self_shared = NULL;

enum { SH_NEW, SH_RUNNING, SH_DONE };

typedef struct SharedThread {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards state and the fields below it */
  LoomWaitq done_q;          /* done */
  Gil *gil;
  pid_t pid;                 /* the process whose interpreter runs it */
  lua_State *co;             /* the coroutine; its stack ends with results */
  int ref;                   /* registry anchor while it runs */
  int state;
  int failed;                /* co's stack: error value, traceback */
  int collected;
  int nres;
  int daemon;
  LoomObj *borrowed;         /* thread.c's object: cancel, current() */
  int64_t ident;
  struct SharedThread *next_running, *prev_running;   /* gil->mu */
  char name[64];
} SharedThread;

static atomic_long shared_counter = 0;

/* ---- C core: the lock itself ---- */

static long long now_ns (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static _Noreturn void frozen_exit (Gil *g);

/* Takes the GIL, queueing behind earlier waiters; gil->mu held.  Once the
** interpreter is closing, its Lua is never run again: the calling OS thread
** ends there (frozen_exit) rather than park for ever. */
static void gil_take (Gil *g) {
  if (!g->held && g->head == NULL && !g->closing) {
    g->held = 1;
    atomic_store(&g->since, now_ns());
    return;
  }
  atomic_fetch_add(&g->users, 1);
  if (!g->closing) {
    GilWaiter w;
    pthread_cond_init(&w.cv, NULL);
    w.granted = 0;
    w.next = NULL;
    if (g->tail != NULL)
      g->tail->next = &w;
    else
      g->head = &w;
    g->tail = &w;
    atomic_fetch_add(&g->waiting, 1);
    while (!w.granted)
      pthread_cond_wait(&w.cv, &g->mu);
    pthread_cond_destroy(&w.cv);
  }
  if (g->closing) {
    pthread_mutex_unlock(&g->mu);
    frozen_exit(g);
  }
  atomic_fetch_sub(&g->users, 1);
  atomic_store(&g->since, now_ns());
}

/* Hands the GIL to the oldest waiter, or frees it; gil->mu held by its
** holder.  A closing GIL stays with the thread that froze it. */
static void gil_give (Gil *g) {
  if (g->closing)
    return;
  GilWaiter *w = g->head;
  if (w == NULL) {
    g->held = 0;
    return;
  }
  g->head = w->next;
  if (g->head == NULL)
    g->tail = NULL;
  atomic_fetch_sub(&g->waiting, 1);
  w->granted = 1;
  pthread_cond_signal(&w->cv);
}

static void gil_acquire (Gil *g) {
  pthread_mutex_lock(&g->mu);
  gil_take(g);
  pthread_mutex_unlock(&g->mu);
  held_gil = g;
}

static void gil_release (Gil *g) {
  held_gil = NULL;
  pthread_mutex_lock(&g->mu);
  gil_give(g);
  pthread_mutex_unlock(&g->mu);
}

/* From the hook: passes the GIL on when someone waits and the holder had it
** for the interval, queueing itself in the same critical section. */
static void gil_yield (Gil *g) {
  pthread_mutex_lock(&g->mu);
  if (g->head != NULL && !g->closing &&
      now_ns() - atomic_load(&g->since) >= atomic_load(&switch_ns)) {
    gil_give(g);
    gil_take(g);
  }
  pthread_mutex_unlock(&g->mu);
}

/* Freezes g for good; the caller holds it and keeps it.  The threads
** queued for it are woken to end (gil_take), and the shared threads waiting
** in a loom call are cancelled, so that their wait returns and they end as
** they come back for the GIL: closing an interpreter leaves no OS thread
** behind, whatever its shared threads were doing. */
static void gil_freeze (Gil *g) {
  pthread_mutex_lock(&g->mu);
  g->closing = 1;
  g->key = NULL;
  for (GilWaiter *w = g->head; w != NULL; ) {
    GilWaiter *next = w->next;   /* once granted, w may go at any time */
    w->granted = 1;
    pthread_cond_signal(&w->cv);
    w = next;
  }
  g->head = g->tail = NULL;
  atomic_store(&g->waiting, 0);
  int n = 0;
  for (SharedThread *s = g->running; s != NULL; s = s->next_running)
    n++;
  LoomObj **cancel = n > 0 ? malloc((size_t)n * sizeof *cancel) : NULL;
  if (cancel != NULL) {
    n = 0;
    for (SharedThread *s = g->running; s != NULL; s = s->next_running)
      if (s != self_shared) {
        loomi_obj_retain(s->borrowed);
        cancel[n++] = s->borrowed;
      }
  }
  pthread_mutex_unlock(&g->mu);
  if (held_gil == g)
    held_gil = NULL;
  if (cancel != NULL) {
    for (int i = 0; i < n; i++) {
      loomi_thread_cancel(cancel[i]);
      loomi_obj_release(cancel[i]);
    }
    free(cancel);
  }
}

static void running_add (Gil *g, SharedThread *s) {
  pthread_mutex_lock(&g->mu);
  s->prev_running = NULL;
  s->next_running = g->running;
  if (g->running != NULL)
    g->running->prev_running = s;
  g->running = s;
  pthread_mutex_unlock(&g->mu);
}

static void running_remove (Gil *g, SharedThread *s) {
  pthread_mutex_lock(&g->mu);
  if (s->prev_running != NULL)
    s->prev_running->next_running = s->next_running;
  else
    g->running = s->next_running;
  if (s->next_running != NULL)
    s->next_running->prev_running = s->prev_running;
  s->next_running = s->prev_running = NULL;
  pthread_mutex_unlock(&g->mu);
}

/* The end of an OS thread that came back for a frozen GIL: it lets go of
** what it holds without touching the closed interpreter (its handles were
** collected with it, so no one reads this thread's results), and exits.
** The stack it leaves holds only frames of Lua and loom, which have no
** cleanup to run. */
static _Noreturn void frozen_exit (Gil *g) {
  SharedThread *s = self_shared;
  LoomObj *pinned = pinned_obj;
  pinned_obj = NULL;
  released_gil = NULL;
  held_gil = NULL;
  loomi_obj_release(pinned);
  if (s != NULL) {
    running_remove(g, s);
    atomic_fetch_sub(&g->nthreads, 1);
    self_shared = NULL;
    loomi_thread_leave(s->borrowed);
    loomi_obj_release(&s->obj);
  }
  /* gil_take's count, and a shared thread's own from its start */
  atomic_fetch_sub(&g->users, s != NULL ? 2 : 1);
  pthread_exit(NULL);
}

/* A fork keeps only the calling thread: the others' queue entries and
** counts go, and the mutexes are made usable again. */
static void gil_atfork_prepare (void) {
  pthread_mutex_lock(&gils_mu);
  for (int i = 0; i < GIL_MAX; i++)
    if (gils[i].used)
      pthread_mutex_lock(&gils[i].mu);
}

static void gil_atfork_parent (void) {
  for (int i = GIL_MAX - 1; i >= 0; i--)
    if (gils[i].used)
      pthread_mutex_unlock(&gils[i].mu);
  pthread_mutex_unlock(&gils_mu);
}

static void gil_atfork_child (void) {
  for (int i = 0; i < GIL_MAX; i++) {
    Gil *g = &gils[i];
    if (!g->used)
      continue;
    pthread_mutex_init(&g->mu, NULL);
    g->head = g->tail = NULL;
    atomic_store(&g->waiting, 0);
    atomic_store(&g->nthreads, 0);
    g->held = held_gil == g || released_gil == g;
  }
  pthread_mutex_init(&gils_mu, NULL);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void gil_register_atfork (void) {
  pthread_atfork(gil_atfork_prepare, gil_atfork_parent, gil_atfork_child);
}

/* ---- the blocking-call brackets (loomint.h) ---- */

static lua_State *main_of (lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *m = lua_tothread(L, -1);
  lua_pop(L, 1);
  return m;
}

/* Releases the GIL around a blocking call, except inside a finalizer (the
** collector is stopped there: lua_gc answers -1) and except for a state of
** another interpreter run by the same OS thread. */
void loomi_gil_block_begin (lua_State *L) {
  Gil *g = held_gil;
  if (g == NULL || released_gil != NULL)
    return;
  if (lua_gc(L, LUA_GCISRUNNING) < 0 || main_of(L) != g->key)
    return;
  /* The object a method waits on is its self.  Once the GIL is released
  ** the interpreter may close and finalize every object, reachable or not:
  ** a reference of this thread's own keeps self alive until the GIL is
  ** back, or until the thread ends on a frozen GIL. */
  if (loomi_proxy_shaped(L, 1)) {
    LoomObj *o = *(LoomObj **)lua_touserdata(L, 1);
    if (o != NULL) {
      loomi_obj_retain(o);
      pinned_obj = o;
    }
  }
  released_gil = g;
  gil_release(g);
}

void loomi_gil_block_end (lua_State *L) {
  (void)L;
  Gil *g = released_gil;
  if (g == NULL)
    return;
  gil_acquire(g);
  released_gil = NULL;
  LoomObj *o = pinned_obj;
  pinned_obj = NULL;
  loomi_obj_release(o);
}

/* A wait's object when block_begin found none to pin (it is not the
** method's self): kept from here to the end of the wait. */
void loomi_gil_pin (LoomObj *o) {
  if (released_gil != NULL && pinned_obj == NULL && o != NULL) {
    loomi_obj_retain(o);
    pinned_obj = o;
  }
}

/* ---- the switching hook and the user's hooks beside it ---- */

static void gil_hook (lua_State *L, lua_Debug *ar);

/* For wait.c's Ctrl-C check: the hooks of an interpreter with shared
** threads change under its GIL, so a thread that released the GIL for a
** wait reads its state's hook only after taking the GIL back (briefly: the
** holder hands it over within its switch interval).  Returns the hook, its
** mask and count through the pointers; the switching hook reads as none. */
void loomi_gil_peek_hook (lua_State *L, lua_Hook *hook, int *mask) {
  Gil *g = released_gil;
  if (g != NULL)
    gil_acquire(g);
  *hook = lua_gethook(L);
  *mask = lua_gethookmask(L);
  if (*hook == gil_hook) {
    *hook = NULL;
    *mask = 0;
  }
  if (g != NULL)
    gil_release(g);
}

/* A hook that was on a coroutine before ours (debug.sethook's, or a host's)
** is kept here, per coroutine, and called for the events it asked for. */
typedef struct HookLayer {
  lua_Hook fn;
  int mask;
  int count;
} HookLayer;

static const char LAYERS_KEY = 'l';

static void gil_hook (lua_State *L, lua_Debug *ar);

/* Pushes the layers table (weak keys: coroutines). */
static void push_layers (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &LAYERS_KEY) == LUA_TTABLE)
    return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &LAYERS_KEY);
}

/* The layer of coroutine co (a thread, running in L), or NULL. */
static HookLayer *get_layer (lua_State *L, lua_State *co) {
  push_layers(L);
  if (L == co)
    lua_pushthread(L);
  else {
    lua_pushthread(co);
    lua_xmove(co, L, 1);
  }
  HookLayer *h = lua_rawget(L, -2) == LUA_TUSERDATA ? lua_touserdata(L, -1)
                                                    : NULL;
  lua_pop(L, 2);   /* userdata stays anchored by the table */
  return h;
}

static void set_layer (lua_State *L, lua_State *co, lua_Hook fn, int mask,
                       int count) {
  push_layers(L);
  if (L == co)
    lua_pushthread(L);
  else {
    lua_pushthread(co);
    lua_xmove(co, L, 1);
  }
  if (fn == NULL)
    lua_pushnil(L);
  else {
    if (held_gil != NULL)
      atomic_store(&held_gil->layered, 1);
    HookLayer *h = lua_newuserdatauv(L, sizeof(HookLayer), 0);
    h->fn = fn;
    h->mask = mask;
    h->count = count;
  }
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Puts the switching hook on co, over whatever hook it has (kept as its
** layer).  Runs in L, under the GIL. */
static void install_on (lua_State *L, lua_State *co) {
  lua_Hook cur = lua_gethook(co);
  if (cur == gil_hook)
    return;
  int mask = lua_gethookmask(co), count = lua_gethookcount(co);
  if (cur != NULL) {
    set_layer(L, co, cur, mask, count);
    int c = (mask & LUA_MASKCOUNT) ? count : GIL_COUNT;
    lua_sethook(co, gil_hook, mask | LUA_MASKCOUNT, c);
  }
  else
    lua_sethook(co, gil_hook, LUA_MASKCOUNT, GIL_COUNT);
}

/* Takes the switching hook off co, giving back its layer. */
static void uninstall_on (lua_State *L, lua_State *co) {
  if (lua_gethook(co) != gil_hook)
    return;
  HookLayer *h = get_layer(L, co);
  if (h != NULL) {
    lua_sethook(co, h->fn, h->mask, h->count);
    set_layer(L, co, NULL, 0, 0);
  }
  else
    lua_sethook(co, NULL, 0, 0);
}

static void forward (lua_State *L, lua_Debug *ar) {
  HookLayer *h = get_layer(L, L);
  if (h == NULL)
    return;
  int bit = ar->event == LUA_HOOKTAILCALL ? LUA_MASKCALL : 1 << ar->event;
  if (h->mask & bit)
    h->fn(L, ar);
}

/* Raises "cancelled" in a cancelled shared thread, but not in a __close
** handler its unwinding runs.  Calls are hooked too from then on: they
** tell such a handler from the code that must stop. */
static void cancel_check (lua_State *L, lua_Debug *ar) {
  if (!loomi_cancel_requested())
    return;
  int mask = lua_gethookmask(L);
  if (!(mask & LUA_MASKCALL))
    lua_sethook(L, gil_hook, mask | LUA_MASKCALL, lua_gethookcount(L));
  if (loomi_cancel_hook_due(L, ar))
    loomi_raise_cancelled(L);
}

static void gil_hook (lua_State *L, lua_Debug *ar) {
  Gil *g = held_gil;
  if (lua_gethookmask(L) != LUA_MASKCOUNT ||
      lua_gethookcount(L) != GIL_COUNT ||
      (g != NULL && atomic_load(&g->layered)))
    forward(L, ar);
  if (g == NULL)
    return;
  cancel_check(L, ar);
  if (ar->event != LUA_HOOKCOUNT)
    return;
  if (atomic_load(&g->nthreads) == 0) {   /* the last shared thread ended */
    uninstall_on(L, L);
    return;
  }
  if (atomic_load(&g->waiting) > 0 &&
      now_ns() - atomic_load(&g->since) >= atomic_load(&switch_ns)) {
    gil_yield(g);
    cancel_check(L, ar);
  }
}

/* ---- the per-interpreter GIL ---- */

static const char GIL_KEY = 'g';

/* The GIL of L's interpreter, or NULL when it has none yet. */
static Gil *gil_of (lua_State *L) {
  Gil *g = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &GIL_KEY) == LUA_TUSERDATA)
    g = *(Gil **)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return g;
}

/* The sentinel's __gc runs inside lua_close: from then on nothing but the
** closing thread may run Lua, so the GIL freezes (docs/internals.md, GIL rule 7). */
#define LOOM_SENTINEL "loom.GilSentinel"

static int sentinel_gc (lua_State *L) {
  Gil **slot = luaL_checkudata(L, 1, LOOM_SENTINEL);
  if (*slot != NULL)
    gil_freeze(*slot);
  *slot = NULL;
  return 0;
}

static const char EXIT_KEY = 'x';

/* os.exit, frozen first: os.exit(code, true) from a shared thread runs
** lua_close on this OS thread while the others are parked. */
static int gil_os_exit (lua_State *L) {
  Gil *g = gil_of(L);
  if (g != NULL)
    gil_freeze(g);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &EXIT_KEY);
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Makes L's interpreter's GIL, held by the calling thread (which runs Lua
** in it now), with its sentinel and os.exit wrapper. */
static Gil *gil_make (lua_State *L) {
  Gil *g = gil_of(L);
  if (g != NULL)
    return g;
  pthread_once(&atfork_once, gil_register_atfork);
  Gil **slot = lua_newuserdatauv(L, sizeof(Gil *), 0);
  *slot = NULL;
  if (luaL_newmetatable(L, LOOM_SENTINEL)) {
    lua_pushcfunction(L, sentinel_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  pthread_mutex_lock(&gils_mu);
  for (int i = 0; i < GIL_MAX && g == NULL; i++) {
    Gil *c = &gils[i];
    int reusable = 0;
    if (c->used) {
      pthread_mutex_lock(&c->mu);
      reusable = c->closing && atomic_load(&c->users) == 0;
      pthread_mutex_unlock(&c->mu);
      if (!reusable)
        continue;
    }
    if (reusable) {   /* frozen, and no thread left that could touch it */
      pthread_mutex_destroy(&c->mu);
      c->closing = 0;
      c->head = c->tail = NULL;
      c->running = NULL;
      atomic_store(&c->waiting, 0);
      atomic_store(&c->nthreads, 0);
      atomic_store(&c->layered, 0);
    }
    g = c;
    pthread_mutex_init(&g->mu, NULL);
    g->used = 1;
    g->held = 1;
    g->key = main_of(L);
    atomic_store(&g->since, now_ns());
  }
  pthread_mutex_unlock(&gils_mu);
  if (g == NULL)
    luaL_error(L, "cannot start shared thread: too many interpreters");
  *slot = g;
  held_gil = g;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &GIL_KEY);
  lua_getglobal(L, "os");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "exit");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &EXIT_KEY);
    lua_pushcfunction(L, gil_os_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
  return g;
}

/* ---- the thread body ---- */

static void shared_destroy (LoomObj *o) {
  SharedThread *s = (SharedThread *)o;
  loomi_obj_release(s->borrowed);
  pthread_mutex_destroy(&s->mu);
}

/* Message handler: the traceback goes to the box in upvalue 1. */
static int shared_handler (lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, lua_upvalueindex(1), "tb");
  return 1;
}

/* report_orphan(s, error, traceback): an error no handle will collect. */
static int report_orphan (lua_State *L) {
  SharedThread *s = lua_touserdata(L, 1);
  const char *msg = luaL_tolstring(L, 2, NULL);
  const char *tb = lua_tostring(L, 3);
  fprintf(stderr, "loom: exception in thread %s:\n%s\n%s\n", s->name, msg,
          tb ? tb : "");
  fflush(stderr);
  return 0;
}

static void report (lua_State *L, SharedThread *s, lua_State *co) {
  if (!lua_checkstack(L, 5))
    return;
  lua_pushcfunction(L, report_orphan);
  lua_pushlightuserdata(L, s);
  lua_pushvalue(co, 1);
  lua_pushvalue(co, 2);
  lua_xmove(co, L, 2);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK)
    lua_pop(L, 1);
}

static void *shared_main (void *arg) {
  SharedThread *s = arg;
  Gil *g = s->gil;
  loomi_thread_enter(s->borrowed);
  self_shared = s;
  gil_acquire(g);
  lua_State *co = s->co;
  /* co: box, handler, target, args... */
  int nargs = lua_gettop(co) - 3;
  int rc = lua_pcall(co, nargs, LUA_MULTRET, 2);
  if (rc != LUA_OK) {
    lua_getfield(co, 1, "tb");
    lua_replace(co, 1);
    lua_replace(co, 2);
    lua_insert(co, 1);   /* co: error value, traceback */
    lua_settop(co, 2);
  }
  else {
    lua_remove(co, 1);
    lua_remove(co, 1);
  }
  pthread_mutex_lock(&s->mu);
  s->state = SH_DONE;
  s->failed = rc != LUA_OK;
  s->nres = lua_gettop(co);
  int orphan = s->failed && !loomi_thread_cancelled(s->borrowed) &&
               atomic_load(&s->obj.refs) == 1;
  if (orphan)
    s->collected = 1;
  loomi_wake_all(&s->done_q);
  pthread_mutex_unlock(&s->mu);
  if (orphan && lua_checkstack(co, 6)) {
    lua_State *L = lua_newthread(co);   /* co's stack stays as it is */
    report(L, s, co);
    lua_pop(co, 1);
  }
  /* the coroutine holds the results every handle reads: it stays anchored
  ** while any handle may exist, which is sure only when this thread's is
  ** the last reference (shared_gc lets go otherwise) */
  if (atomic_load(&s->obj.refs) == 1) {
    luaL_unref(co, LUA_REGISTRYINDEX, s->ref);
    s->ref = LUA_NOREF;
  }
  running_remove(g, s);
  atomic_fetch_sub(&g->nthreads, 1);
  self_shared = NULL;
  gil_release(g);
  atomic_fetch_sub(&g->users, 1);   /* the last touch of g */
  loomi_thread_leave(s->borrowed);
  loomi_obj_release(&s->obj);
  return NULL;
}

/* ---- Lua bindings ---- */

static SharedThread *checkshared (lua_State *L, int arg) {
  SharedThread *s = (SharedThread *)loomi_checkobj(L, arg, LOOM_SHARED);
  /* a fork's copy of the interpreter is another one: the thread does not
  ** run there, and its mutex is private to the process that started it */
  if (s->gil != NULL && (s->gil->key != main_of(L) ||
                         s->pid != loomi_self_pid()))
    luaL_error(L, "shared thread used from another interpreter");
  return s;
}

/* shared_thread(target, args, name, daemon): args is a table with n. */
static int shared_new (lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *name = lua_isnoneornil(L, 3) ? NULL
                     : loomi_checkname(L, 3, sizeof ((SharedThread *)0)->name);
  int daemon = lua_toboolean(L, 4);
  LoomObj **slot = loomi_proxy_new(L, LOOM_SHARED);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 2);
  lua_setiuservalue(L, -2, 1);
  SharedThread *s = (SharedThread *)loomi_obj_new(sizeof(SharedThread),
                                                  LOOM_SHARED, shared_destroy);
  if (s == NULL)
    return luaL_error(L, "cannot create thread: shared heap exhausted");
  if (pthread_mutex_init(&s->mu, NULL) != 0) {
    s->obj.destroy = NULL;
    loomi_obj_release(&s->obj);
    return luaL_error(L, "cannot create thread: out of resources");
  }
  *slot = &s->obj;
  s->ref = LUA_NOREF;
  s->daemon = daemon;
  if (name != NULL)
    snprintf(s->name, sizeof s->name, "%s", name);
  else
    snprintf(s->name, sizeof s->name, "SharedThread-%ld",
             atomic_fetch_add(&shared_counter, 1) + 1);
  return 1;
}

static int shared_start (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  lua_settop(L, 1);
  if (s->state != SH_NEW || lua_getiuservalue(L, 1, 1) != LUA_TTABLE)
    return luaL_error(L, "threads can only be started once");
  lua_rawgeti(L, 2, 2);                     /* args */
  if (!lua_istable(L, 3))
    return luaL_error(L, "threads can only be started once");
  int n = loomi_argcount(L, 3);
  if (s->borrowed == NULL) {
    s->borrowed = loomi_thread_borrowed(s->name, s->daemon);
    if (s->borrowed == NULL)
      return luaL_error(L, "cannot create thread: shared heap exhausted");
  }
  Gil *g = gil_make(L);
  lua_State *co = lua_newthread(L);         /* inherits L's hook */
  if (!lua_checkstack(co, n + 8))
    return luaL_error(L, "too many arguments");
  lua_createtable(co, 0, 1);                /* the traceback box */
  lua_pushvalue(co, 1);
  lua_pushcclosure(co, shared_handler, 1);
  lua_rawgeti(L, 2, 1);                     /* target */
  lua_xmove(L, co, 1);
  luaL_checkstack(L, n + 4, "too many arguments");
  for (int i = 1; i <= n; i++)
    lua_rawgeti(L, 3, i);
  lua_xmove(L, co, n);
  /* L: self, call, args, co */
  lua_pushvalue(L, 4);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_setiuservalue(L, 1, 1);               /* co anchors; the call goes */
  lua_State *main = g->key;
  install_on(L, L);
  if (main != L)
    install_on(L, main);
  install_on(L, co);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, loomi_stack_size());
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);   /* the new thread inherits it */
  s->co = co;
  s->ref = ref;
  s->gil = g;
  s->pid = loomi_self_pid();
  s->state = SH_RUNNING;
  loomi_obj_retain(&s->obj);                  /* the running thread's ref */
  atomic_fetch_add(&g->nthreads, 1);
  atomic_fetch_add(&g->users, 1);
  running_add(g, s);
  loomi_thread_live(s->borrowed, 1);
  pthread_t tid;
  int err = pthread_create(&tid, &attr, shared_main, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    loomi_thread_live(s->borrowed, 0);
    running_remove(g, s);
    atomic_fetch_sub(&g->users, 1);
    atomic_fetch_sub(&g->nthreads, 1);
    s->state = SH_NEW;
    s->co = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    loomi_obj_release(&s->obj);
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot start thread: %s", strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  pthread_mutex_lock(&s->mu);
  s->ident = (int64_t)tid;
  pthread_mutex_unlock(&s->mu);
  loomi_thread_set_ident(s->borrowed, (int64_t)tid);
  lua_settop(L, 1);
  return 1;
}

/* 0 when done, ETIMEDOUT, EINTR; raises when cancelled or on misuse. */
static int shared_await (lua_State *L, SharedThread *s, int arg) {
  LoomDeadline dl;
  loomi_opttimeout(L, arg, &dl);
  if (s->state == SH_NEW)
    return luaL_error(L, "cannot join thread before it is started");
  if (s->borrowed != NULL && loomi_thread_is_self(s->borrowed))
    return luaL_error(L, "cannot join current thread");
  int rc = 0;
  loomi_block_begin(L);
  pthread_mutex_lock(&s->mu);
  while (s->state != SH_DONE && rc == 0)
    rc = loomi_wait(&s->done_q, &s->mu, &s->obj, &dl);
  if (s->state == SH_DONE)
    rc = 0;
  pthread_mutex_unlock(&s->mu);
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  return rc;
}

static int shared_join (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  int rc = shared_await(L, s, 2);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

static int was_cancelled (SharedThread *s) {
  return s->failed && s->borrowed != NULL && loomi_thread_cancelled(s->borrowed);
}

/* Copies the first n values of the finished coroutine's stack onto L. */
static void push_co (lua_State *L, SharedThread *s, int n) {
  luaL_checkstack(L, n + 1, "too many results");
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(s->co, i);
    lua_xmove(s->co, L, 1);
  }
}

static int shared_result (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  int rc = shared_await(L, s, 2);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  if (rc == ETIMEDOUT) {
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_TIMEOUT);
    return 2;
  }
  lua_settop(L, 1);
  if (was_cancelled(s)) {
    s->collected = 1;
    luaL_pushfail(L);
    lua_pushliteral(L, LOOM_CANCELLED);
    return 2;
  }
  if (s->failed) {
    s->collected = 1;
    push_co(L, s, 2);
    if (lua_type(L, 2) == LUA_TSTRING && lua_type(L, 3) == LUA_TSTRING) {
      lua_pushfstring(L, "%s\n[thread %s] %s", lua_tostring(L, 2), s->name,
                      lua_tostring(L, 3));
      return lua_error(L);
    }
    lua_settop(L, 2);
    return lua_error(L);
  }
  push_co(L, s, s->nres);
  return s->nres;
}

static int shared_error (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  lua_settop(L, 1);
  if (s->state != SH_DONE || !s->failed) {
    lua_pushnil(L);
    return 1;
  }
  s->collected = 1;
  if (was_cancelled(s)) {
    lua_pushliteral(L, LOOM_CANCELLED);
    return 1;
  }
  push_co(L, s, 2);
  return 2;
}

static int shared_is_alive (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  lua_pushboolean(L, s->state == SH_RUNNING);
  return 1;
}

static int shared_cancel (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  if (s->state != SH_RUNNING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  loomi_thread_cancel(s->borrowed);
  lua_pushboolean(L, 1);
  return 1;
}

static int shared_cancelled (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  lua_pushboolean(L, s->borrowed != NULL && loomi_thread_cancelled(s->borrowed));
  return 1;
}

static int shared_gc (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_SHARED);
  SharedThread *s = (SharedThread *)*slot;
  if (s == NULL)
    return 0;
  /* the state is single-threaded here (finalizers never release the GIL),
  ** so a finished thread's stack can be read */
  if (loomi_ref_mine((LoomRef *)slot) &&
      s->state == SH_DONE && s->failed && !s->collected && !was_cancelled(s) &&
      s->gil != NULL && s->gil->key == main_of(L) &&
      s->pid == loomi_self_pid()) {
    s->collected = 1;
    report(L, s, s->co);
  }
  /* The last reference, held by this handle of the interpreter that ran
  ** the thread (whose GIL the caller holds): nothing can reach the
  ** coroutine after it, so its anchor goes.  A reference that ends
  ** elsewhere (a message dropped, another interpreter) leaves the anchor
  ** to the interpreter's end: a registry slot kept, never a read of a
  ** collected coroutine. */
  if (loomi_ref_mine((LoomRef *)slot) && s->ref != LUA_NOREF &&
      s->state == SH_DONE && s->gil != NULL && s->gil->key == main_of(L) &&
      s->pid == loomi_self_pid() &&
      atomic_load(&s->obj.refs) == 1) {
    luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
    s->ref = LUA_NOREF;
  }
  return loomi_proxy_gc(L);
}

static int shared_index (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0)
    lua_pushstring(L, s->name);
  else if (strcmp(key, "ident") == 0) {
    pthread_mutex_lock(&s->mu);
    int64_t id = s->ident;
    pthread_mutex_unlock(&s->mu);
    if (id != 0)
      lua_pushinteger(L, (lua_Integer)id);
    else
      lua_pushnil(L);
  }
  else if (strcmp(key, "daemon") == 0)
    lua_pushboolean(L, s->daemon);
  else if (strcmp(key, "shared") == 0)
    lua_pushboolean(L, 1);
  else if (strcmp(key, "status") == 0) {
    pthread_mutex_lock(&s->mu);
    const char *st = s->state == SH_NEW ? "pending"
                   : s->state == SH_RUNNING ? "running"
                   : was_cancelled(s) ? "cancelled"
                   : s->failed ? "error" : "done";
    pthread_mutex_unlock(&s->mu);
    lua_pushstring(L, st);
  }
  else {
    luaL_getmetatable(L, LOOM_SHARED);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
  }
  return 1;
}

static int shared_newindex (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "name") == 0) {
    snprintf(s->name, sizeof s->name, "%s", loomi_checkname(L, 3, sizeof s->name));
    return 0;
  }
  if (strcmp(key, "daemon") == 0) {
    if (s->state != SH_NEW)
      return luaL_error(L, "cannot set daemon status of active thread");
    s->daemon = lua_toboolean(L, 3);
    return 0;
  }
  return luaL_error(L, "cannot set field '%s' of a loom.SharedThread", key);
}

static int shared_tostring (lua_State *L) {
  SharedThread *s = checkshared(L, 1);
  static const char *const states[] = { "initial", "started", "stopped" };
  lua_pushfstring(L, "loom.Thread (%s, %s, shared%s)", s->name,
                  states[s->state], s->daemon ? ", daemon" : "");
  return 1;
}

static int gil_setswitchinterval (lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s > 0, 1, "switch interval must be positive");
  /* kept in whole nanoseconds: a smaller one would silently become 1 ns */
  luaL_argcheck(L, s >= 1e-9, 1, "switch interval too small (at least 1e-9 s)");
  luaL_argcheck(L, s < 1e6, 1, "switch interval too large (under 1e6 s)");
  long long ns = (long long)(s * 1e9 + 0.5);
  atomic_store(&switch_ns, ns);
  return 0;
}

static int gil_getswitchinterval (lua_State *L) {
  lua_pushnumber(L, (lua_Number)atomic_load(&switch_ns) / 1e9);
  return 1;
}

/* gil_prepare(co): before co runs, give it the switching hook while shared
** threads exist (a coroutine made before then has none). */
static int gil_prepare (lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  Gil *g = held_gil;
  if (co != NULL && g != NULL && atomic_load(&g->nthreads) > 0 &&
      g->key == main_of(L))
    install_on(L, co);
  return 0;
}

/* sethook(orig, [co,] fn, mask, count): debug.sethook that keeps the
** switching hook on co while shared threads exist, the user's hook becoming
** its layer.  orig is the standard debug.sethook. */
static int gil_sethook (lua_State *L) {
  lua_State *co = lua_type(L, 2) == LUA_TTHREAD ? lua_tothread(L, 2) : L;
  lua_Hook had = co != NULL ? lua_gethook(co) : NULL;
  if (had == gil_hook) {
    /* let the standard function see the coroutine without our hook */
    HookLayer *h = get_layer(L, co);
    if (h != NULL)
      lua_sethook(co, h->fn, h->mask, h->count);
    else
      lua_sethook(co, NULL, 0, 0);
    set_layer(L, co, NULL, 0, 0);
  }
  lua_pushvalue(L, 1);
  lua_insert(L, 2);
  lua_call(L, lua_gettop(L) - 2, 0);
  Gil *g = held_gil;
  if (g != NULL && atomic_load(&g->nthreads) > 0 && g->key == main_of(L))
    install_on(L, co);
  return 0;
}

/* gethook(orig, [co]): debug.gethook answering for the user's layer. */
static int gil_gethook (lua_State *L) {
  lua_State *co = lua_type(L, 2) == LUA_TTHREAD ? lua_tothread(L, 2) : L;
  if (co == NULL || lua_gethook(co) != gil_hook) {
    lua_pushvalue(L, 1);
    lua_insert(L, 2);
    lua_call(L, lua_gettop(L) - 2, LUA_MULTRET);
    return lua_gettop(L) - 1;
  }
  HookLayer *h = get_layer(L, co);
  if (h == NULL) {
    luaL_pushfail(L);
    return 1;
  }
  /* briefly show the standard function the user's hook alone */
  int mask = lua_gethookmask(co), count = lua_gethookcount(co);
  lua_sethook(co, h->fn, h->mask, h->count);
  lua_pushvalue(L, 1);
  lua_insert(L, 2);
  lua_call(L, lua_gettop(L) - 2, LUA_MULTRET);
  lua_sethook(co, gil_hook, mask, count);
  return lua_gettop(L) - 1;
}

/* ---- loom.local(): a userdata whose user value maps each thread of the
** interpreter (weakly, so a finished thread's values go with it) to that
** thread's own table of fields.  A thread is its base coroutine: the
** shared thread's (anchored in the registry while it runs), or the
** state's main thread for any other OS thread running the interpreter. */

#define LOOM_LOCAL "loom.Local"

static void push_thread_key (lua_State *L) {
  SharedThread *s = self_shared;
  if (s != NULL && s->ref != LUA_NOREF && s->gil != NULL &&
      s->gil->key == main_of(L)) {
    if (lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref) == LUA_TTHREAD)
      return;
    lua_pop(L, 1);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
}

/* Pushes the calling thread's table of l (the userdata at 1), made when
** create is set; else nil when it has none. */
static void push_local_fields (lua_State *L, int create) {
  luaL_checkudata(L, 1, LOOM_LOCAL);
  if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE)
    luaL_typeerror(L, 1, LOOM_LOCAL);
  push_thread_key(L);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) != LUA_TNIL || !create) {
    lua_replace(L, -3);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_insert(L, -3);         /* fields, store, key, fields */
  lua_rawset(L, -4);
  lua_replace(L, -2);
}

static int local_new (lua_State *L) {
  lua_newuserdatauv(L, 0, 1);
  lua_createtable(L, 0, 1);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, LOOM_LOCAL);
  return 1;
}

static int local_index (lua_State *L) {
  lua_settop(L, 2);
  push_local_fields(L, 0);
  if (lua_isnil(L, -1))
    return 1;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int local_newindex (lua_State *L) {
  lua_settop(L, 3);
  luaL_argcheck(L, !lua_isnil(L, 2), 2, "index is nil");
  push_local_fields(L, 1);
  lua_insert(L, 2);
  lua_rawset(L, 2);
  return 0;
}

/* pairs(l): this thread's fields. */
static int local_pairs (lua_State *L) {
  lua_settop(L, 1);
  push_local_fields(L, 1);
  lua_getglobal(L, "next");
  if (!lua_isfunction(L, -1))
    return luaL_error(L, "no 'next' function");
  lua_insert(L, -2);
  lua_pushnil(L);
  return 3;
}

static int local_tostring (lua_State *L) {
  luaL_checkudata(L, 1, LOOM_LOCAL);
  lua_pushfstring(L, "loom.Local (%p)", lua_touserdata(L, 1));
  return 1;
}

static const luaL_Reg local_meta[] = {
  {"__index", local_index},
  {"__newindex", local_newindex},
  {"__pairs", local_pairs},
  {"__tostring", local_tostring},
  {NULL, NULL}
};

static const luaL_Reg shared_meta[] = {
  {"__index", shared_index},
  {"__newindex", shared_newindex},
  {"__gc", shared_gc},
  {"__close", shared_gc},
  {"__tostring", shared_tostring},
  {NULL, NULL}
};

static const luaL_Reg shared_methods[] = {
  {"start", shared_start},
  {"join", shared_join},
  {"result", shared_result},
  {"error", shared_error},
  {"is_alive", shared_is_alive},
  {"cancel", shared_cancel},
  {"cancelled", shared_cancelled},
  {NULL, NULL}
};

static const luaL_Reg gil_funcs[] = {
  {"shared_thread", shared_new},
  {"setswitchinterval", gil_setswitchinterval},
  {"getswitchinterval", gil_getswitchinterval},
  {"gil_prepare", gil_prepare},
  {"gil_sethook", gil_sethook},
  {"gil_gethook", gil_gethook},
  {"local", local_new},
  {NULL, NULL}
};

void loomi_gil_open (lua_State *L) {
  loomi_newclass(L, LOOM_SHARED, shared_meta, NULL);
  luaL_getmetatable(L, LOOM_SHARED);
  lua_newtable(L);
  luaL_setfuncs(L, shared_methods, 0);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  if (luaL_newmetatable(L, LOOM_LOCAL))
    luaL_setfuncs(L, local_meta, 0);
  lua_pop(L, 1);
  luaL_setfuncs(L, gil_funcs, 0);
}
