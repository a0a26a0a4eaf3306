/* queue.c: loom.Queue, a FIFO of transferable values in the shared heap,
** usable between threads and forked processes alike.
** Lua: loom.queue([maxsize]) -> Queue;  put(v, [t]) -> true | nil,"timeout";
**      get([t]) -> v | nil,"timeout" | nil,"closed";  try_put(v), try_get(),
**      close(), closed(), size(), #q, empty(), full();  q.maxsize.
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

/* One item: a small one lives in the slot itself, so the common case costs
** no heap allocation; a larger one (or one holding loom objects) is a
** message block the slot owns. */
typedef struct Slot {
  LoomMsg *msg;              /* NULL: the payload is inline */
  int32_t pid;               /* the encoding process, for inline payloads */
  uint32_t len;
  unsigned char data[QUEUE_INLINE];
} Slot;

/* A ring carries its own size, so that growing it is published by one
** store of the ring pointer. */
typedef struct Ring {
  size_t cap;
  Slot slots[];
} Ring;

/* head and tail count gets and puts from the start and never wrap back
** (2^64 of them would take centuries); item i sits in slots[i % cap].
** Every change a put, a get or a growth makes is published by a single
** release store (tail, head, ring) after the data it covers is written,
** so a process killed while it holds mu leaves the queue as it was before
** or after its operation, never in between: the next holder, told
** EOWNERDEAD, finds it consistent.  An item a killed getter had taken is
** gone with it; a killed grower's old ring is leaked, never freed twice. */
typedef struct LoomQueue {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards every field below but maxsize */
  LoomWaitq not_empty;       /* getters wait here */
  LoomWaitq not_full;        /* putters wait here */
  size_t maxsize;            /* 0: unbounded */
  _Atomic(Ring *) ring;      /* NULL until the first put */
  _Atomic size_t head, tail;
  atomic_size_t avail;       /* tail - head, polled without mu */
  int closed;
  LoomNotifyLink *nlinks;    /* notifiers watching */
} LoomQueue;

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

static LoomQueue *queue_create (size_t maxsize) {
  LoomQueue *q = (LoomQueue *)loomi_obj_new(sizeof(LoomQueue), LOOM_QUEUE,
                                            queue_destroy);
  if (q == NULL)
    return NULL;
  if (loomi_mutex_init(&q->mu) != 0) {
    q->obj.destroy = NULL;
    loomi_obj_release(&q->obj);
    return NULL;
  }
  q->maxsize = maxsize;
  atomic_init(&q->ring, NULL);
  atomic_init(&q->head, 0);
  atomic_init(&q->tail, 0);
  atomic_init(&q->avail, 0);
  loomi_waitq_init(&q->not_empty);
  loomi_waitq_init(&q->not_full);
  return q;
}

/* Makes room for one more item; 0 or ENOMEM.  q->mu held.  The new ring
** is filled, then published, then the old one freed. */
static int queue_reserve (LoomQueue *q) {
  Ring *old = atomic_load_explicit(&q->ring, memory_order_relaxed);
  size_t count = qcount(q), oldcap = old != NULL ? old->cap : 0;
  if (count < oldcap)
    return 0;
  size_t cap = oldcap ? oldcap * 2 : QUEUE_MINCAP;
  if (q->maxsize != 0 && cap > q->maxsize)
    cap = q->maxsize > count ? q->maxsize : count + 1;
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
    if (q->closed) {
      rc = EPIPE;
      break;
    }
    size_t count = qcount(q);
    if (q->maxsize == 0 || count < q->maxsize) {
      rc = queue_reserve(q);
      if (rc == 0) {
        Ring *r = atomic_load_explicit(&q->ring, memory_order_relaxed);
        size_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        Slot *s = &r->slots[tail % r->cap];
        s->msg = it->msg;
        s->pid = it->pid;
        s->len = it->len;
        if (it->msg == NULL)
          memcpy(s->data, it->data, it->len);
        atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
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
      if (qcount(q) < q->maxsize)
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
    size_t count = qcount(q);
    if (count > 0) {
      Ring *r = atomic_load_explicit(&q->ring, memory_order_relaxed);
      size_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
      const Slot *s = &r->slots[head % r->cap];
      it->msg = s->msg;
      it->pid = s->pid;
      it->len = s->len;
      if (s->msg == NULL)
        memcpy(it->data, s->data, s->len);
      atomic_store_explicit(&q->head, head + 1, memory_order_release);
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
  return r->want_items ? n > 0 : (r->q->maxsize == 0 || n < r->q->maxsize);
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
static int queue_new (lua_State *L) {
  lua_Integer maxsize = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, maxsize >= 0, 1, "maxsize must be non-negative");
  LoomObj **slot = loomi_proxy_new(L, LOOM_QUEUE);
  LoomQueue *q = queue_create((size_t)maxsize);
  if (q == NULL)
    return luaL_error(L, "cannot create queue: shared heap exhausted");
  *slot = &q->obj;
  return 1;
}

/* Encodes the item at stack index 2 into `it`, inline when small; a
** message it holds is the caller's. */
static void encode_item (lua_State *L, Slot *it) {
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "nil cannot be put in a queue");
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
  encode_item(L, &it);
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
  encode_item(L, &it);
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
  lua_pushboolean(L, q->maxsize != 0 && queue_count(q) >= q->maxsize);
  return 1;
}

static int queue_index (lua_State *L) {
  LoomQueue *q = checkqueue(L, 1);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TNIL &&   /* methods first */
      lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "maxsize") == 0)
    lua_pushinteger(L, (lua_Integer)q->maxsize);
  return 1;
}

static int queue_newindex (lua_State *L) {
  checkqueue(L, 1);
  return loomi_field_error(L, 2, LOOM_QUEUE);
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
  {"close", queue_close},
  {"closed", queue_closed},
  {"size", queue_size},
  {"empty", queue_empty},
  {"full", queue_full},
  {NULL, NULL}
};

static const luaL_Reg queue_funcs[] = {
  {"queue", queue_new},
  {NULL, NULL}
};

void loomi_queue_open (lua_State *L) {
  loomi_fastclass(L, LOOM_QUEUE, queue_meta, queue_methods);
  luaL_setfuncs(L, queue_funcs, 0);
}
