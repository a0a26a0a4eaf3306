/* notify.c: loom.Notifier, readiness an event loop can poll.  An eventfd
** that becomes readable when something watched completes: a future
** finishes, an event is set, an item (or close) reaches a queue, a
** process ends.
** Lua: loom.core.notifier() -> Notifier; n:fd(); n:watch(obj, [tag]) -> id;
**      (obj: a Future, Event, Queue or Process)
**      n:unwatch(obj | id) -> count; n:drain() -> {tag...}; n:close().
** A process's exit is looked for by the notifier's own thread, every
** PROC_SLICE seconds while it watches any (a child killed by a signal
** tells nobody).
** Whoever completes the object may be another process (a process-pool
** worker forked before the notifier existed, which has no such descriptor):
** it only links the watch into the notifier's ready list in the shared
** heap and wakes the notifier's futex; a watcher thread in the owner's
** process sleeps on it and writes the eventfd.  Nothing exists, and
** nothing is paid on any completion path, while no notifier watches.
** Lock order: the watched object's mu, then the notifier's (the object's
** mu is never taken while holding the notifier's).
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* How often the watcher looks at the processes it watches. */
#define PROC_SLICE 0.01

/* The notifier's half in the shared heap: what completers touch. */
typedef struct Notifier {
  LoomObj obj;
  pthread_mutex_t mu;
  LoomWaitq q;               /* the watcher sleeps here */
  atomic_uint fires;         /* links made ready, ever */
  atomic_int closing;        /* the watcher leaves */
  LoomNotifyLink *ready;     /* made ready, not yet drained; mu held */
  LoomNotifyLink *all;       /* every live link; mu held */
  LoomNotifyLink *procs;     /* process watches not yet listed; mu held */
  atomic_int nprocs;         /* their count, read by the watcher */
} Notifier;

/* One watch of one object.  It lives in the shared heap, allocated and
** freed by the owner; it holds a reference to the object. */
struct LoomNotifyLink {
  Notifier *n;
  LoomObj *src;
  uint32_t id;               /* the tag's key in the proxy's tag table */
  unsigned char persistent;  /* stays attached after it fires */
  unsigned char attached;    /* on src's list; src's mu held */
  unsigned char isready;     /* on n's ready list; n->mu held */
  LoomNotifyLink *next;      /* src's list; src's mu held */
  LoomNotifyLink *rnext;     /* n's ready list; n->mu held */
  LoomNotifyLink *anext, **aprev;   /* n's list of all; n->mu held */
};

/* The proxy: only in the state and process that made it. */
typedef struct NotifierBox {
  Notifier *n;               /* NULL once closed */
  pid_t owner;
  int fd;
  uint32_t next_id;
  pthread_t watcher;
} NotifierBox;

/* ---- C core ---- */

/* Puts l on its notifier's ready list unless it is there already, and
** wakes the watcher.  The last touch of l: a one-shot link may be freed
** by a drain as soon as n->mu is let go. */
static void make_ready (Notifier *n, LoomNotifyLink *l) {
  if (!l->isready) {
    l->isready = 1;
    l->rnext = n->ready;
    n->ready = l;
    atomic_fetch_add(&n->fires, 1);
    loomi_wake(&n->q, 1);
  }
}

static void notify_one (LoomNotifyLink *l) {
  Notifier *n = l->n;
  loomi_mutex_lock(&n->mu);
  make_ready(n, l);
  loomi_mutex_unlock(&n->mu);
}

void loomi_notify_fire (LoomNotifyLink **head) {
  LoomNotifyLink **p = head;
  while (*p != NULL) {
    LoomNotifyLink *l = *p;
    if (l->persistent) {
      notify_one(l);
      p = &l->next;
    }
    else {
      *p = l->next;
      l->attached = 0;
      l->next = NULL;
      notify_one(l);
    }
  }
}

void loomi_notify_attach (LoomNotifyLink **head, LoomNotifyLink *l, int now) {
  if (now)
    notify_one(l);
  if (now && !l->persistent)
    return;
  l->next = *head;
  *head = l;
  l->attached = 1;
}

void loomi_notify_detach (LoomNotifyLink **head, LoomNotifyLink *l) {
  if (!l->attached)
    return;
  for (LoomNotifyLink **p = head; *p != NULL; p = &(*p)->next)
    if (*p == l) {
      *p = l->next;
      break;
    }
  l->attached = 0;
  l->next = NULL;
}

/* A process watch sits on the notifier's own list, which its watcher
** walks; a process that ended already is listed at once. */
static void process_watch (LoomObj *o, LoomNotifyLink *l, int attach) {
  Notifier *n = l->n;
  if (attach && loomi_process_ended(o) == 1) {
    notify_one(l);
    return;
  }
  loomi_mutex_lock(&n->mu);
  if (attach) {
    l->next = n->procs;
    n->procs = l;
    l->attached = 1;
    atomic_fetch_add(&n->nprocs, 1);
    loomi_wake(&n->q, 1);    /* the watcher starts looking */
  }
  else if (l->attached) {
    loomi_notify_detach(&n->procs, l);
    atomic_fetch_sub(&n->nprocs, 1);
  }
  loomi_mutex_unlock(&n->mu);
}

/* The objects one can watch, and how each attaches. */
static const struct {
  const char *tname;
  void (*watch) (LoomObj *o, LoomNotifyLink *l, int attach);
  int persistent;
} sources[] = {
  {LOOM_FUTURE, loomi_future_watch, 0},
  {LOOM_EVENT, loomi_event_watch, 1},
  {LOOM_QUEUE, loomi_queue_watch, 1},
  {LOOM_PROCESS, process_watch, 0},
};
#define NSOURCES (sizeof sources / sizeof sources[0])

static int source_of (const LoomObj *o) {
  for (int i = 0; i < (int)NSOURCES; i++)
    if (strcmp(o->tname, sources[i].tname) == 0)
      return i;
  return -1;
}

/* Takes l out of its object (no lock held) and out of n's lists, then
** frees it and gives back its reference. */
static void link_free (LoomNotifyLink *l) {
  Notifier *n = l->n;
  sources[source_of(l->src)].watch(l->src, l, 0);
  loomi_mutex_lock(&n->mu);
  if (l->isready)
    for (LoomNotifyLink **p = &n->ready; *p != NULL; p = &(*p)->rnext)
      if (*p == l) {
        *p = l->rnext;
        break;
      }
  *l->aprev = l->anext;
  if (l->anext != NULL)
    l->anext->aprev = l->aprev;
  loomi_mutex_unlock(&n->mu);
  LoomObj *src = l->src;
  loomi_heap_free(l);
  loomi_obj_release(src);
}

typedef struct WatcherArg { Notifier *n; int fd; } WatcherArg;

#define PROC_BATCH 32

/* One look at the watched processes.  The links are found again by id
** after the look, which takes the process's mu (never under n->mu); the
** reference taken meanwhile keeps each process alive should its watch
** end. */
static void watch_processes (Notifier *n) {
  uint32_t ids[PROC_BATCH];
  LoomObj *objs[PROC_BATCH];
  int k = 0;
  loomi_mutex_lock(&n->mu);
  for (LoomNotifyLink *l = n->procs; l != NULL && k < PROC_BATCH; l = l->next) {
    ids[k] = l->id;
    objs[k] = l->src;
    loomi_obj_retain(objs[k++]);
  }
  loomi_mutex_unlock(&n->mu);
  for (int i = 0; i < k; i++) {
    if (loomi_process_ended(objs[i]) != 0) {
      loomi_mutex_lock(&n->mu);
      for (LoomNotifyLink *l = n->procs; l != NULL; l = l->next)
        if (l->id == ids[i]) {
          loomi_notify_detach(&n->procs, l);
          atomic_fetch_sub(&n->nprocs, 1);
          make_ready(n, l);
          break;
        }
      loomi_mutex_unlock(&n->mu);
    }
    loomi_obj_release(objs[i]);
  }
}

/* Writes the eventfd each time links were made ready since it last
** looked; while processes are watched, looks at them every PROC_SLICE;
** leaves once closing is set. */
static void *watcher_run (void *arg) {
  WatcherArg a = *(WatcherArg *)arg;
  free(arg);
  Notifier *n = a.n;
  unsigned seen = 0;
  for (;;) {
    unsigned seq = loomi_wait_prepare(&n->q);
    if (atomic_load(&n->closing)) {
      loomi_wait_finish(&n->q);
      break;
    }
    unsigned fires = atomic_load(&n->fires);
    if (fires != seen) {
      loomi_wait_finish(&n->q);
      seen = fires;
      uint64_t one = 1;
      ssize_t w;
      do
        w = write(a.fd, &one, sizeof one);
      while (w < 0 && errno == EINTR);
      continue;              /* EAGAIN: the counter is full, still readable */
    }
    if (atomic_load(&n->nprocs) > 0) {
      LoomDeadline dl;
      loomi_deadline_in(&dl, PROC_SLICE);
      loomi_wait_plain(&n->q, seq, &dl);
      loomi_wait_finish(&n->q);
      watch_processes(n);
    }
    else {
      loomi_wait_plain(&n->q, seq, NULL);
      loomi_wait_finish(&n->q);
    }
  }
  return NULL;
}

static void notifier_destroy (LoomObj *o) {
  pthread_mutex_destroy(&((Notifier *)o)->mu);
}

/* Makes the shared half, the eventfd and the watcher; 0 or an errno, with
** nothing left behind on failure. */
static int notifier_start (NotifierBox *b) {
  Notifier *n = (Notifier *)loomi_obj_new(sizeof(Notifier), LOOM_NOTIFIER,
                                          notifier_destroy);
  if (n == NULL)
    return ENOMEM;
  int err = loomi_mutex_init(&n->mu);
  if (err != 0) {
    n->obj.destroy = NULL;
    loomi_obj_release(&n->obj);
    return err;
  }
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  WatcherArg *a = malloc(sizeof *a);
  if (fd < 0 || a == NULL) {
    err = fd < 0 ? errno : ENOMEM;
    if (fd >= 0)
      close(fd);
    free(a);
    loomi_obj_release(&n->obj);
    return err;
  }
  a->n = n;
  a->fd = fd;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, (size_t)256 << 10);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  err = pthread_create(&b->watcher, &attr, watcher_run, a);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    free(a);
    close(fd);
    loomi_obj_release(&n->obj);
    return err;
  }
  b->n = n;
  b->fd = fd;
  b->owner = loomi_self_pid();
  return 0;
}

/* Detaches every watch, stops the watcher and frees it all.  Bounded: the
** watcher only ever sleeps on the futex the wake below moves. */
static void notifier_stop (NotifierBox *b) {
  Notifier *n = b->n;
  b->n = NULL;
  for (;;) {
    loomi_mutex_lock(&n->mu);
    LoomNotifyLink *l = n->all;
    loomi_mutex_unlock(&n->mu);
    if (l == NULL)
      break;
    link_free(l);
  }
  atomic_store(&n->closing, 1);
  loomi_wake_all(&n->q);
  pthread_join(b->watcher, NULL);
  close(b->fd);
  b->fd = -1;
  loomi_obj_release(&n->obj);
}

/* ---- Lua bindings ---- */

static NotifierBox *checkbox (lua_State *L) {
  NotifierBox *b = luaL_checkudata(L, 1, LOOM_NOTIFIER);
  if (b->n == NULL)
    luaL_error(L, "attempt to use a closed " LOOM_NOTIFIER);
  if (b->owner != loomi_self_pid())
    luaL_error(L, LOOM_NOTIFIER " used in a process other than the one "
               "that made it");
  return b;
}

static int notifier_new (lua_State *L) {
  NotifierBox *b = lua_newuserdatauv(L, sizeof(NotifierBox), 1);
  memset(b, 0, sizeof *b);
  b->fd = -1;
  lua_newtable(L);                       /* id -> tag */
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, LOOM_NOTIFIER);
  int err = notifier_start(b);
  if (err != 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot create notifier: %s", strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  return 1;
}

static int notifier_fd (lua_State *L) {
  lua_pushinteger(L, checkbox(L)->fd);
  return 1;
}

/* The watched object at arg 2 and its row in sources[]. */
static LoomObj *checkwatched (lua_State *L, int *src) {
  LoomObj *o = loomi_toobj(L, 2);
  *src = o != NULL ? source_of(o) : -1;
  if (*src < 0) {
    for (int i = 0; i < (int)NSOURCES; i++)
      if (loomi_testslot(L, 2, sources[i].tname))
        luaL_argerror(L, 2, "closed object");
    luaL_typeerror(L, 2, "loom.Future, loom.Event, loom.Queue or loom.Process");
  }
  return o;
}

/* watch(obj, [tag]) -> id: drain() will list tag (obj itself by default)
** once obj completes: a future finishes or a process ends (once; the watch
** ends there), an event is set or an item or close() reaches a queue
** (every time, until unwatch).  Already complete: listed at the next
** drain. */
static int notifier_watch (lua_State *L) {
  NotifierBox *b = checkbox(L);
  int src;
  LoomObj *o = checkwatched(L, &src);
  if (strcmp(o->tname, LOOM_PROCESS) == 0 && loomi_process_ended(o) < 0)
    luaL_argerror(L, 2, "can only watch a started child process");
  lua_settop(L, 3);
  if (b->next_id == UINT32_MAX)
    return luaL_error(L, "too many watches on this notifier");
  uint32_t id = ++b->next_id;
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, lua_isnoneornil(L, 3) ? 2 : 3);
  lua_rawseti(L, -2, id);                /* may raise: nothing made yet */
  LoomNotifyLink *l = loomi_heap_calloc(sizeof *l);
  if (l == NULL) {
    lua_pushnil(L);
    lua_rawseti(L, -2, id);
    return luaL_error(L, "cannot watch: shared heap exhausted");
  }
  Notifier *n = b->n;
  l->n = n;
  l->src = o;
  l->id = id;
  l->persistent = (unsigned char)sources[src].persistent;
  loomi_obj_retain(o);
  loomi_mutex_lock(&n->mu);
  l->anext = n->all;
  if (n->all != NULL)
    n->all->aprev = &l->anext;
  l->aprev = &n->all;
  n->all = l;
  loomi_mutex_unlock(&n->mu);
  sources[src].watch(o, l, 1);
  lua_pushinteger(L, id);
  return 1;
}

/* unwatch(obj | id) -> how many watches ended: every watch of obj, or the
** one watch() returned id for (0 once it was listed, for a future). */
static int notifier_unwatch (lua_State *L) {
  NotifierBox *b = checkbox(L);
  int src;
  LoomObj *o = NULL;
  lua_Integer wid = 0;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    wid = luaL_checkinteger(L, 2);
    luaL_argcheck(L, wid > 0 && wid <= UINT32_MAX, 2, "no such watch");
  }
  else
    o = checkwatched(L, &src);
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, 1);
  Notifier *n = b->n;
  int count = 0;
  for (;;) {
    LoomNotifyLink *l;
    loomi_mutex_lock(&n->mu);
    for (l = n->all; l != NULL; l = l->anext)
      if (o != NULL ? l->src == o : l->id == (uint32_t)wid)
        break;
    uint32_t id = l != NULL ? l->id : 0;
    loomi_mutex_unlock(&n->mu);
    if (l == NULL)
      break;
    link_free(l);            /* only this thread frees links */
    lua_pushnil(L);
    lua_rawseti(L, -2, id);
    count++;
  }
  lua_pushinteger(L, count);
  return 1;
}

#define DRAIN_BATCH 64

/* drain() -> {tag...}: what completed since the last drain, oldest first
** within a batch; resets the descriptor's readiness.  Never blocks. */
static int notifier_drain (lua_State *L) {
  NotifierBox *b = checkbox(L);
  Notifier *n = b->n;
  uint64_t count;
  /* first: whatever fires after this read writes the descriptor again */
  while (read(b->fd, &count, sizeof count) < 0 && errno == EINTR)
    ;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);            /* tags */
  lua_newtable(L);                       /* result */
  lua_Integer k = 0;
  for (;;) {
    uint32_t ids[DRAIN_BATCH];
    unsigned char once[DRAIN_BATCH];
    LoomNotifyLink *done[DRAIN_BATCH];  /* one-shot: to free */
    int nid = 0, ndone = 0;
    loomi_mutex_lock(&n->mu);
    while (n->ready != NULL && nid < DRAIN_BATCH) {
      LoomNotifyLink *l = n->ready;
      n->ready = l->rnext;
      l->rnext = NULL;
      l->isready = 0;
      once[nid] = !l->persistent;
      ids[nid++] = l->id;
      if (!l->persistent)
        done[ndone++] = l;
    }
    loomi_mutex_unlock(&n->mu);
    /* freed before any call that can raise, so that none can leak them */
    for (int i = 0; i < ndone; i++)
      link_free(done[i]);
    /* the ready list is a stack: newest first */
    for (int i = nid - 1; i >= 0; i--) {
      lua_rawgeti(L, 2, ids[i]);
      if (once[i]) {
        lua_pushnil(L);                  /* an existing key: no allocation */
        lua_rawseti(L, 2, ids[i]);
      }
      lua_rawseti(L, 3, ++k);
    }
    if (nid < DRAIN_BATCH)
      break;
  }
  return 1;
}

/* __gc, __close and close(): idempotent.  In a forked child the
** descriptor is the child's own copy, and the rest is the parent's. */
static int notifier_close (lua_State *L) {
  NotifierBox *b = luaL_checkudata(L, 1, LOOM_NOTIFIER);
  if (b->n == NULL)
    return 0;
  if (b->owner != loomi_self_pid()) {
    close(b->fd);
    b->fd = -1;
    b->n = NULL;
    return 0;
  }
  notifier_stop(b);
  lua_getiuservalue(L, 1, 1);
  lua_newtable(L);
  lua_setiuservalue(L, 1, 1);
  return 0;
}

static int notifier_tostring (lua_State *L) {
  NotifierBox *b = luaL_checkudata(L, 1, LOOM_NOTIFIER);
  if (b->n == NULL)
    lua_pushfstring(L, LOOM_NOTIFIER " (%p, closed)", (void *)b);
  else
    lua_pushfstring(L, LOOM_NOTIFIER " (%p, fd %d)", (void *)b, b->fd);
  return 1;
}

static int notifier_closed (lua_State *L) {
  NotifierBox *b = luaL_checkudata(L, 1, LOOM_NOTIFIER);
  lua_pushboolean(L, b->n == NULL);
  return 1;
}

static const luaL_Reg notifier_meta[] = {
  {"__gc", notifier_close},
  {"__close", notifier_close},
  {"__tostring", notifier_tostring},
  {NULL, NULL}
};

static const luaL_Reg notifier_methods[] = {
  {"fd", notifier_fd},
  {"watch", notifier_watch},
  {"unwatch", notifier_unwatch},
  {"drain", notifier_drain},
  {"close", notifier_close},
  {"closed", notifier_closed},
  {NULL, NULL}
};

static const luaL_Reg notifier_funcs[] = {
  {"notifier", notifier_new},
  {NULL, NULL}
};

void loomi_notify_open (lua_State *L) {
  if (luaL_newmetatable(L, LOOM_NOTIFIER)) {
    luaL_setfuncs(L, notifier_meta, 0);
    luaL_newlib(L, notifier_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, notifier_funcs, 0);
}
