/* queue.c: loom.Queue, a FIFO (or LIFO, or priority) queue of transferable
** values in the shared heap, usable between threads and forked processes.
** Lua: loom.queue([maxsize]), lifo_queue([maxsize]), priority_queue([maxsize])
**      -> Queue;  put(v, [t]) -> true | nil,"timeout";
**      get([t]) -> v | nil,"timeout" | nil,"closed";  try_put(v), try_get(),
**      poll([t]) -> whether get would not wait,
**      close(), shutdown([immediate]), closed(), task_done(), join([t]),
**      size(), #q, empty(), full();  q.maxsize (settable), q.kind.
** Each item is encoded once by put and decoded once by get: a small one
** inline in its ring slot, a larger one as a message block (LoomMsg) the
** queue owns until a get takes it.  Lock order: the queue's mutex, then
** the heap's.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdlib.h>
#include <string.h>

#define QUEUE_MINCAP  16
#define QUEUE_INLINE  48     /* payload bytes an item may keep in its slot */

enum { QUEUE_FIFO, QUEUE_LIFO, QUEUE_PRIORITY };

/* One item: a small one lives in the slot itself, so the common case costs
** no heap allocation; a larger one (or one holding loom objects) is a
** message block the slot owns. */
typedef struct Slot {
  LoomMsg *msg;              /* NULL: the payload is inline */
  int32_t pid;               /* the encoding process, for inline payloads */
  uint32_t len;
  double key;                /* priority queues: the item's priority */
  uint64_t seq;              /* priority queues: put order, to break ties */
  unsigned char data[QUEUE_INLINE];
} Slot;

/* A priority queue keeps a binary heap in slots[0..count-1], and moving
** items in it takes more than one store.  Each step writes what it will do
** here first (valid set last); a holder killed in the middle leaves it
** valid, and the next holder of mu does it again: the writes are the same
** whether they were done, half done or not at all. */
typedef struct Journal {
  atomic_int valid;
  size_t i, j;               /* slots to write (SIZE_MAX: none) */
  size_t tail;               /* the tail to publish after (SIZE_MAX: none) */
  Slot si, sj;
} Journal;

/* A ring carries its own size, so that growing it is published by one
** store of the ring pointer. */
typedef struct Ring {
  size_t cap;
  Slot slots[];
} Ring;

/* head and tail count gets and puts from the start and never wrap back
** (2^64 of them would take centuries); item i sits in slots[i % cap].
** A LIFO queue takes from the tail and a priority queue keeps a heap, so
** their head stays 0.
** Every change a put, a get or a growth makes is published by a single
** release store (tail, head, ring) after the data it covers is written,
** so a process killed while it holds mu leaves the queue as it was before
** or after its operation, never in between: the next holder, told
** EOWNERDEAD, finds it consistent.  An item a killed getter had taken is
** gone with it; a killed grower's old ring is leaked, never freed twice. */
typedef struct LoomQueue {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards every field below */
  LoomWaitq not_empty;       /* getters wait here */
  LoomWaitq not_full;        /* putters wait here */
  LoomWaitq all_done;        /* join() waits here */
  int kind;                  /* QUEUE_*; immutable */
  atomic_size_t maxsize;     /* 0: unbounded; polled without mu */
  _Atomic(Ring *) ring;      /* NULL until the first put */
  _Atomic size_t head, tail;
  atomic_size_t avail;       /* tail - head, polled without mu */
  int closed;
  size_t unfinished;         /* items put and not yet task_done */
  uint64_t seq;              /* the next put's sequence (priority) */
  int sifting;               /* priority: the heap's order may be broken */
  LoomNotifyLink *nlinks;    /* notifiers watching */
  Journal jn[];              /* priority queues only: the move in progress */
} LoomQueue;

static size_t qmax (LoomQueue *q) {
  return atomic_load_explicit(&q->maxsize, memory_order_relaxed);
}

/* ---- C core ---- */

static size_t qcount (LoomQueue *q) {
  return atomic_load_explicit(&q->tail, memory_order_relaxed) -
         atomic_load_explicit(&q->head, memory_order_relaxed);
}

static void queue_destroy (LoomObj *o) {
  LoomQueue *q = (LoomQueue *)o;
  Ring *r = atomic_load(&q->ring);
  for (size_t i = atomic_load(&q->head); i != atomic_load(&q->tail); i++)
    loomi_msg_free(r->slots[i % r->cap].msg);
  loomi_heap_free(r);
  pthread_mutex_destroy(&q->mu);
}

static LoomQueue *queue_create (size_t maxsize, int kind) {
  size_t size = sizeof(LoomQueue) +
                (kind == QUEUE_PRIORITY ? sizeof(Journal) : 0);
  LoomQueue *q = (LoomQueue *)loomi_obj_new(size, LOOM_QUEUE, queue_destroy);
  if (q == NULL)
    return NULL;
  if (loomi_mutex_init(&q->mu) != 0) {
    q->obj.destroy = NULL;
    loomi_obj_release(&q->obj);
    return NULL;
  }
  q->kind = kind;
  atomic_init(&q->maxsize, maxsize);
  atomic_init(&q->ring, NULL);
  atomic_init(&q->head, 0);
  atomic_init(&q->tail, 0);
  atomic_init(&q->avail, 0);
  loomi_waitq_init(&q->not_empty);
  loomi_waitq_init(&q->not_full);
  loomi_waitq_init(&q->all_done);
  return q;
}

/* ---- the priority heap; every function here runs with q->mu held ---- */

static int slot_before (const Slot *a, const Slot *b) {
  return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

static void journal_apply (LoomQueue *q) {
  Journal *jn = q->jn;
  Ring *r = atomic_load_explicit(&q->ring, memory_order_relaxed);
  if (jn->i != SIZE_MAX)
    r->slots[jn->i] = jn->si;
  if (jn->j != SIZE_MAX)
    r->slots[jn->j] = jn->sj;
  if (jn->tail != SIZE_MAX)
    atomic_store_explicit(&q->tail, jn->tail, memory_order_release);
  atomic_store_explicit(&jn->valid, 0, memory_order_release);
}

/* Writes slots[i] = si, slots[j] = sj, then tail, through the journal. */
static void journal_do (LoomQueue *q, size_t i, const Slot *si, size_t j,
                        const Slot *sj, size_t tail) {
  Journal *jn = q->jn;
  jn->i = i;
  jn->j = j;
  jn->tail = tail;
  if (si != NULL)
    jn->si = *si;
  if (sj != NULL)
    jn->sj = *sj;
  atomic_store_explicit(&jn->valid, 1, memory_order_release);
  journal_apply(q);
}

static void heap_swap (LoomQueue *q, Slot *s, size_t a, size_t b) {
  Slot sa = s[a], sb = s[b];
  journal_do(q, a, &sb, b, &sa, SIZE_MAX);
}

static void heap_up (LoomQueue *q, size_t i) {
  Slot *s = atomic_load_explicit(&q->ring, memory_order_relaxed)->slots;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!slot_before(&s[i], &s[p]))
      break;
    heap_swap(q, s, i, p);
    i = p;
  }
}

static void heap_down (LoomQueue *q, size_t i, size_t n) {
  Slot *s = atomic_load_explicit(&q->ring, memory_order_relaxed)->slots;
  for (;;) {
    size_t m = 2 * i + 1;
    if (m >= n)
      break;
    if (m + 1 < n && slot_before(&s[m + 1], &s[m]))
      m++;
    if (!slot_before(&s[m], &s[i]))
      break;
    heap_swap(q, s, i, m);
    i = m;
  }
}

/* What a holder killed in a heap operation left: its last move is done
** again, and an order it was still restoring is rebuilt. */
static void heap_repair (LoomQueue *q) {
  if (atomic_load_explicit(&q->jn->valid, memory_order_acquire))
    journal_apply(q);
  if (q->sifting) {
    size_t n = qcount(q);
    for (size_t i = n / 2; i-- > 0;)
      heap_down(q, i, n);
    q->sifting = 0;
  }
}

/* Makes room for one more item; 0 or ENOMEM.  q->mu held.  The new ring
** is filled, then published, then the old one freed. */
static int queue_reserve (LoomQueue *q) {
  Ring *old = atomic_load_explicit(&q->ring, memory_order_relaxed);
  size_t count = qcount(q), oldcap = old != NULL ? old->cap : 0;
  if (count < oldcap)
    return 0;
  size_t cap = oldcap ? oldcap * 2 : QUEUE_MINCAP;
  size_t max = qmax(q);
  if (max != 0 && cap > max)
    cap = max > count ? max : count + 1;
  Ring *r = loomi_heap_alloc(sizeof(Ring) + cap * sizeof(Slot));
  if (r == NULL)
    return ENOMEM;
  r->cap = cap;
  size_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
  for (size_t i = head; i != head + count; i++)
    r->slots[i % cap] = old->slots[i % oldcap];
  atomic_store_explicit(&q->ring, r, memory_order_release);
  loomi_heap_free(old);
  return 0;
}

/* Appends the item in `it`, waiting for room when `wait` is set.  Returns 0
** (the queue owns it->msg), EAGAIN (full and not waiting), ETIMEDOUT,
** ECANCELED, EINTR, EPIPE (closed) or ENOMEM; it->msg stays the caller's
** on any error. */
static int queue_push (LoomQueue *q, const Slot *it, const LoomDeadline *dl,
                       int wait) {
  int rc = 0, woke = 0;
  loomi_mutex_lock(&q->mu);
  for (;;) {
    if (q->kind == QUEUE_PRIORITY)
      heap_repair(q);   /* mu may have come back from a holder that died */
    if (q->closed) {
      rc = EPIPE;
      break;
    }
    size_t count = qcount(q), max = qmax(q);
    if (max == 0 || count < max) {
      rc = queue_reserve(q);
      if (rc == 0) {
        Ring *r = atomic_load_explicit(&q->ring, memory_order_relaxed);
        size_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        Slot *s = &r->slots[tail % r->cap];
        s->msg = it->msg;
        s->pid = it->pid;
        s->len = it->len;
        s->key = it->key;
        s->seq = q->seq++;
        if (it->msg == NULL)
          memcpy(s->data, it->data, it->len);
        q->unfinished++;
        if (q->kind == QUEUE_PRIORITY)
          q->sifting = 1;   /* before the item counts: see heap_repair */
        atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
        if (q->kind == QUEUE_PRIORITY) {
          heap_up(q, tail);
          q->sifting = 0;
        }
        atomic_store_explicit(&q->avail, count + 1, memory_order_relaxed);
        woke = 1;
        if (q->nlinks != NULL)
          loomi_notify_fire(&q->nlinks);
      }
      break;
    }
    if (!wait) {
      rc = EAGAIN;
      break;
    }
    rc = loomi_wait(&q->not_full, &q->mu, &q->obj, dl);
    if (rc != 0) {
      /* a putter that gives up may have swallowed a wakeup meant for
      ** another */
      if (qcount(q) < qmax(q) || qmax(q) == 0)
        loomi_wake(&q->not_full, 1);
      break;
    }
  }
  loomi_mutex_unlock(&q->mu);
  if (woke)
    loomi_wake(&q->not_empty, 1);
  return rc;
}

/* Takes the oldest item into *it, waiting for one when `wait` is set.
** Returns 0, EAGAIN (empty and not waiting), ETIMEDOUT, ECANCELED, EINTR
** or EPIPE (closed and drained). */
static int queue_pop (LoomQueue *q, Slot *it, const LoomDeadline *dl,
                      int wait) {
  int rc = 0, woke = 0;
  loomi_mutex_lock(&q->mu);
  for (;;) {
    if (q->kind == QUEUE_PRIORITY)
      heap_repair(q);   /* mu may have come back from a holder that died */
    size_t count = qcount(q);
    if (count > 0) {
      Ring *r = atomic_load_explicit(&q->ring, memory_order_relaxed);
      size_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
      size_t tail = head + count;
      size_t at = q->kind == QUEUE_FIFO ? head
                : q->kind == QUEUE_LIFO ? tail - 1 : 0;
      const Slot *s = &r->slots[at % r->cap];
      it->msg = s->msg;
      it->pid = s->pid;
      it->len = s->len;
      if (s->msg == NULL)
        memcpy(it->data, s->data, s->len);
      if (q->kind == QUEUE_FIFO)
        atomic_store_explicit(&q->head, head + 1, memory_order_release);
      else if (q->kind == QUEUE_LIFO || count == 1)
        atomic_store_explicit(&q->tail, tail - 1, memory_order_release);
      else {   /* the last item to the root, then down to its place */
        q->sifting = 1;
        journal_do(q, 0, &r->slots[tail - 1], SIZE_MAX, NULL, tail - 1);
        heap_down(q, 0, count - 1);
        q->sifting = 0;
      }
      atomic_store_explicit(&q->avail, count - 1, memory_order_relaxed);
      woke = 1;
      break;
    }
    if (q->closed) {
      rc = EPIPE;
      break;
    }
    if (!wait) {
      rc = EAGAIN;
      break;
    }
    rc = loomi_wait(&q->not_empty, &q->mu, &q->obj, dl);
    if (rc != 0)
      break;
  }
  /* a getter that gives up may have swallowed a wakeup meant for another */
  if (rc != 0 && rc != EAGAIN && qcount(q) > 0)
    loomi_wake(&q->not_empty, 1);
  loomi_mutex_unlock(&q->mu);
  if (woke)
    loomi_wake(&q->not_full, 1);
  return rc;
}

/* Waits until a get would not wait (an item, or closed), taking nothing:
** 0, ETIMEDOUT, ECANCELED or EINTR.  A waiter woken for an item it does
** not take passes the wake-up on to the next getter. */
static int queue_wait_ready (LoomQueue *q, const LoomDeadline *dl) {
  int rc = 0, waited = 0;
  loomi_mutex_lock(&q->mu);
  while (qcount(q) == 0 && !q->closed && rc == 0) {
    rc = loomi_wait(&q->not_empty, &q->mu, &q->obj, dl);
    waited = 1;
  }
  if (waited && qcount(q) > 0)
    loomi_wake(&q->not_empty, 1);
  if (rc != 0 && (qcount(q) > 0 || q->closed))
    rc = 0;
  loomi_mutex_unlock(&q->mu);
  return rc;
}

/* A watch tells its notifier once an item is there or the queue closed. */
void loomi_queue_watch (LoomObj *o, LoomNotifyLink *l, int attach) {
  LoomQueue *q = (LoomQueue *)o;
  loomi_mutex_lock(&q->mu);
  if (attach)
    loomi_notify_attach(&q->nlinks, l, qcount(q) > 0 || q->closed);
  else
    loomi_notify_detach(&q->nlinks, l);
  loomi_mutex_unlock(&q->mu);
}

typedef struct Ready { LoomQueue *q; int want_items; } Ready;

static int queue_ready (const void *arg) {
  const Ready *r = arg;
  size_t n = atomic_load_explicit(&r->q->avail, memory_order_relaxed);
  size_t max = qmax(r->q);
  return r->want_items ? n > 0 : (max == 0 || n < max);
}

/* Before sleeping, polls briefly (the wait layer's policy) for the state a
** get (want_items) or put waits for: with a producer and a consumer on two
** cores the other side usually gets there within a microsecond, and a
** sleep plus wake-up costs far more.  True when it is worth trying again. */
static int queue_spin (LoomQueue *q, int want_items, const LoomDeadline *dl) {
  if (dl != NULL && !dl->forever && loomi_deadline_passed(dl))
    return 0;
  Ready r = { q, want_items };
  return loomi_spin(queue_ready, &r);
}

/* ---- Lua bindings ---- */

static LoomQueue *checkqueue (lua_State *L, int arg) {
  return (LoomQueue *)loomi_fastcheck(L, arg, LOOM_QUEUE);
}

/* queue([maxsize]): 0 or nil means unbounded, as in Python. */
static int queue_make (lua_State *L, int kind) {
  lua_Integer maxsize = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, maxsize >= 0, 1, "maxsize must be non-negative");
  LoomObj **slot = loomi_proxy_new(L, LOOM_QUEUE);
  LoomQueue *q = queue_create((size_t)maxsize, kind);
  if (q == NULL)
    return luaL_error(L, "cannot create queue: shared heap exhausted");
  *slot = &q->obj;
  return 1;
}

static int queue_new (lua_State *L) {
  return queue_make(L, QUEUE_FIFO);
}

static int queue_new_lifo (lua_State *L) {
  return queue_make(L, QUEUE_LIFO);
}

static int queue_new_priority (lua_State *L) {
  return queue_make(L, QUEUE_PRIORITY);
}

/* The priority of the item at stack index 2: the item itself when it is a
** number, else its first element (raw), which must be one. */
static double item_priority (lua_State *L) {
  int isnum;
  lua_Number key;
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_rawgeti(L, 2, 1);
    key = lua_tonumberx(L, -1, &isnum);
    isnum = isnum && lua_type(L, -1) == LUA_TNUMBER;
    lua_pop(L, 1);
  }
  else {
    key = lua_tonumberx(L, 2, &isnum);
    isnum = isnum && lua_type(L, 2) == LUA_TNUMBER;
  }
  luaL_argcheck(L, isnum, 2, "priority must be a number, or a table whose "
                "first element is a number");
  luaL_argcheck(L, key == key, 2, "priority is NaN");
  return (double)key;
}

/* Encodes the item at stack index 2 into `it`, inline when small; a
** message it holds is the caller's. */
static void encode_item (lua_State *L, LoomQueue *q, Slot *it) {
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "nil cannot be put in a queue");
  it->key = q->kind == QUEUE_PRIORITY ? item_priority(L) : 0;
  size_t len = QUEUE_INLINE;
  it->msg = loomi_xfer_encode_inline(L, 2, 1, "item", it->data, &len);
  it->pid = (int32_t)loomi_self_pid();
  it->len = (uint32_t)len;
}

/* Raises or returns for a failed push; frees m. */
static int push_failed (lua_State *L, LoomMsg *m, int rc) {
  loomi_msg_free(m);
  switch (rc) {
    case EPIPE: return luaL_error(L, "put to a closed queue");
    case ECANCELED: return loomi_raise_cancelled(L);
    case EINTR: return loomi_push_interrupted(L);
    case ENOMEM: return luaL_error(L, "cannot put: shared heap exhausted");
    case EAGAIN:
      lua_pushboolean(L, 0);
      return 1;
    default:
      luaL_pushfail(L);
      lua_pushliteral(L, LOOM_TIMEOUT);
      return 2;
  }
}

/* put(v, [timeout]) -> true | nil, "timeout"; raises once closed. */
static int queue_put (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  LoomDeadline dl;
  loomi_opttimeout(L, 3, &dl);
  Slot it;
  encode_item(L, q, &it);
  int rc = queue_push(q, &it, &dl, 0);
  if (rc == EAGAIN && queue_spin(q, 0, &dl))
    rc = queue_push(q, &it, &dl, 0);
  if (rc == EAGAIN) {
    loomi_block_begin(L);
    rc = queue_push(q, &it, &dl, 1);
    loomi_block_end(L);
  }
  if (rc != 0)
    return push_failed(L, it.msg, rc == EAGAIN ? ETIMEDOUT : rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* try_put(v) -> true | false (full); raises once closed. */
static int queue_try_put (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  lua_settop(L, 2);
  Slot it;
  encode_item(L, q, &it);
  int rc = queue_push(q, &it, NULL, 0);
  if (rc != 0)
    return push_failed(L, it.msg, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* Protected: pushes the item at the slot pointer. */
static int decode_slot (lua_State *L) {
  const Slot *it = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (it->msg == NULL)
    return loomi_xfer_decode_inline(L, it->data, it->len, it->pid);
  return loomi_xfer_decode(L, it->msg);
}

/* Pushes the item taken from the queue, and frees its message.  An item
** this state cannot rebuild (a module or a C function only the putter
** had) is gone from the queue by then: the error says so, and why. */
static int decode_item (lua_State *L, const Slot *it) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, decode_slot);
  lua_pushlightuserdata(L, (void *)(uintptr_t)it);
  int rc = lua_pcall(L, 1, LUA_MULTRET, 0);
  loomi_msg_free(it->msg);
  if (rc != LUA_OK) {
    const char *why = lua_tostring(L, -1);
    if (why != NULL && strcmp(why, LOOM_CANCELLED) == 0)
      return lua_error(L);   /* the getter was cancelled meanwhile */
    return luaL_error(L, "queue item removed: it cannot be decoded here (%s)",
                      why != NULL ? why : luaL_typename(L, -1));
  }
  return lua_gettop(L) - top;
}

static int pop_failed (lua_State *L, int rc) {
  switch (rc) {
    case ECANCELED: return loomi_raise_cancelled(L);
    case EINTR: return loomi_push_interrupted(L);
    case EAGAIN:
      luaL_pushfail(L);
      return 1;
    case EPIPE:
      luaL_pushfail(L);
      lua_pushliteral(L, LOOM_CLOSED);
      return 2;
    default:
      luaL_pushfail(L);
      lua_pushliteral(L, LOOM_TIMEOUT);
      return 2;
  }
}

/* get([timeout]) -> item | nil, "timeout" | nil, "closed" (closed and
** drained).  Items are never nil, so a nil first result always fails. */
static int queue_get (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  Slot it;
  int rc = queue_pop(q, &it, &dl, 0);
  if (rc == EAGAIN && queue_spin(q, 1, &dl))
    rc = queue_pop(q, &it, &dl, 0);
  if (rc == EAGAIN) {
    loomi_block_begin(L);
    rc = queue_pop(q, &it, &dl, 1);
    loomi_block_end(L);
  }
  if (rc != 0)
    return pop_failed(L, rc == EAGAIN ? ETIMEDOUT : rc);
  return decode_item(L, &it);
}

/* try_get() -> item | nil (empty) | nil, "closed" */
static int queue_try_get (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  Slot it;
  int rc = queue_pop(q, &it, NULL, 0);
  if (rc != 0)
    return pop_failed(L, rc);
  return decode_item(L, &it);
}

/* poll([timeout]) -> true when get would not wait (an item is there, or
** the queue is closed) | false when the timeout passes first. */
static int queue_poll (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  if (atomic_load_explicit(&q->avail, memory_order_relaxed) > 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  loomi_block_begin(L);
  int rc = queue_wait_ready(q, &dl);
  loomi_block_end(L);
  if (rc == ECANCELED)
    return loomi_raise_cancelled(L);
  if (rc == EINTR)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* close(): later puts raise; gets drain what is left, then fail "closed";
** every waiter wakes.  Idempotent. */
static int queue_close (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  loomi_mutex_lock(&q->mu);
  q->closed = 1;
  loomi_wake_all(&q->not_empty);
  loomi_wake_all(&q->not_full);
  if (q->nlinks != NULL)
    loomi_notify_fire(&q->nlinks);
  loomi_mutex_unlock(&q->mu);
  return 0;
}

/* shutdown([immediate]): close(); immediate also drops every item, and
** counts each as done for join(), as Python 3.13 does.  The dropped items
** are unreachable once tail is back at head, and nothing writes their
** slots after the close: they are freed after mu is let go, so that the
** objects they held are released under no lock. */
static int queue_shutdown (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  if (!lua_isnoneornil(L, 2))
    luaL_checktype(L, 2, LUA_TBOOLEAN);
  int immediate = lua_toboolean(L, 2);
  Ring *r;
  size_t from, to;
  loomi_mutex_lock(&q->mu);
  if (q->kind == QUEUE_PRIORITY)
    heap_repair(q);
  q->closed = 1;
  r = atomic_load_explicit(&q->ring, memory_order_relaxed);
  from = to = atomic_load_explicit(&q->head, memory_order_relaxed);
  if (immediate) {
    to = atomic_load_explicit(&q->tail, memory_order_relaxed);
    atomic_store_explicit(&q->tail, from, memory_order_release);
    atomic_store_explicit(&q->avail, 0, memory_order_relaxed);
    q->unfinished -= to - from < q->unfinished ? to - from : q->unfinished;
    if (q->unfinished == 0)
      loomi_wake_all(&q->all_done);
  }
  loomi_wake_all(&q->not_empty);
  loomi_wake_all(&q->not_full);
  loomi_mutex_unlock(&q->mu);
  for (size_t i = from; i != to; i++)
    loomi_msg_free(r->slots[i % r->cap].msg);
  return 0;
}

/* task_done(): one item put earlier is done with; raises when every one
** already is. */
static int queue_task_done (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  loomi_mutex_lock(&q->mu);
  int ok = q->unfinished > 0;
  if (ok && --q->unfinished == 0)
    loomi_wake_all(&q->all_done);
  loomi_mutex_unlock(&q->mu);
  if (!ok)
    return luaL_error(L, "task_done() called too many times");
  return 0;
}

/* join([timeout]) -> true | nil, "timeout": waits until every item put
** has been task_done. */
static int queue_join (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  int rc = 0;
  loomi_block_begin(L);
  loomi_mutex_lock(&q->mu);
  while (q->unfinished > 0 && rc == 0)
    rc = loomi_wait(&q->all_done, &q->mu, &q->obj, &dl);
  if (q->unfinished == 0)
    rc = 0;
  loomi_mutex_unlock(&q->mu);
  loomi_block_end(L);
  if (rc != 0)
    return pop_failed(L, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int queue_closed (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  loomi_mutex_lock(&q->mu);
  int closed = q->closed;
  loomi_mutex_unlock(&q->mu);
  lua_pushboolean(L, closed);
  return 1;
}

static size_t queue_count (LoomQueue *q) {
  loomi_mutex_lock(&q->mu);
  size_t n = qcount(q);
  loomi_mutex_unlock(&q->mu);
  return n;
}

static int queue_size (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  lua_pushinteger(L, (lua_Integer)queue_count(q));
  return 1;
}

static int queue_empty (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  lua_pushboolean(L, queue_count(q) == 0);
  return 1;
}

static int queue_full (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  size_t max = qmax(q);
  lua_pushboolean(L, max != 0 && queue_count(q) >= max);
  return 1;
}

static int queue_index (lua_State *L) {
  static const char *const kinds[] = { "fifo", "lifo", "priority" };
  LoomQueue *q = checkqueue(L, 1);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL ||   /* methods first */
      lua_type(L, 2) != LUA_TSTRING)
    return 1;
  const char *key = lua_tostring(L, 2);
  if (strcmp(key, "maxsize") == 0)
    lua_pushinteger(L, (lua_Integer)qmax(q));
  else if (strcmp(key, "kind") == 0)
    lua_pushstring(L, kinds[q->kind]);
  else if (strcmp(key, "is_shutdown") == 0) {
    loomi_mutex_lock(&q->mu);
    int closed = q->closed;
    loomi_mutex_unlock(&q->mu);
    lua_pushboolean(L, closed);
  }
  return 1;
}

/* q.maxsize = n: a larger bound lets waiting putters in; a smaller one
** than the items held drops none, it only stops puts until enough are
** taken. */
static int queue_newindex (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "maxsize") != 0)
    return loomi_field_error(L, 2, LOOM_QUEUE);
  int isint;
  lua_Integer n = lua_tointegerx(L, 3, &isint);
  if (!isint || lua_type(L, 3) != LUA_TNUMBER)
    return luaL_error(L, "maxsize must be an integer, got %s",
                      lua_type(L, 3) == LUA_TNUMBER ? "a float"
                                                    : luaL_typename(L, 3));
  if (n < 0)
    return luaL_error(L, "maxsize must be non-negative");
  loomi_mutex_lock(&q->mu);
  atomic_store_explicit(&q->maxsize, (size_t)n, memory_order_relaxed);
  loomi_wake_all(&q->not_full);
  loomi_mutex_unlock(&q->mu);
  return 0;
}

static const luaL_Reg queue_meta[] = {
  {"__index", queue_index},
  {"__newindex", queue_newindex},
  {"__len", queue_size},
  {NULL, NULL}
};

static const luaL_Reg queue_methods[] = {
  {"put", queue_put},
  {"try_put", queue_try_put},
  {"get", queue_get},
  {"try_get", queue_try_get},
  {"poll", queue_poll},
  {"close", queue_close},
  {"shutdown", queue_shutdown},
  {"task_done", queue_task_done},
  {"join", queue_join},
  {"closed", queue_closed},
  {"size", queue_size},
  {"empty", queue_empty},
  {"full", queue_full},
  {NULL, NULL}
};

static const luaL_Reg queue_funcs[] = {
  {"queue", queue_new},
  {"lifo_queue", queue_new_lifo},
  {"priority_queue", queue_new_priority},
  {NULL, NULL}
};

void loomi_queue_open (lua_State *L) {
  loomi_fastclass(L, LOOM_QUEUE, queue_meta, queue_methods);
  luaL_setfuncs(L, queue_funcs, 0);
}
