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
#define QUEUE_SPIN    128    /* polls before a get or put goes to sleep */

/* One item: a small one lives in the slot itself, so the common case costs
** no heap allocation; a larger one (or one holding loom objects) is a
** message block the slot owns. */
typedef struct Slot {
  LoomMsg *msg;              /* NULL: the payload is inline */
  int32_t pid;               /* the encoding process, for inline payloads */
  uint32_t len;
  unsigned char data[QUEUE_INLINE];
} Slot;

typedef struct LoomQueue {
  LoomObj obj;
  pthread_mutex_t mu;        /* guards every field below but maxsize */
  pthread_cond_t not_empty;  /* getters wait here */
  pthread_cond_t not_full;   /* putters wait here */
  size_t maxsize;            /* 0: unbounded */
  Slot *ring;                /* cap slots, count items from head */
  size_t cap, head, count;
  atomic_size_t avail;       /* count, written under mu, polled without it */
  int closed;
  int getters, putters;      /* threads waiting, so a signal is only sent
                                when someone listens */
} LoomQueue;

/* ---- C core ---- */

static void queue_destroy (LoomObj *o) {
  LoomQueue *q = (LoomQueue *)o;
  for (size_t i = 0; i < q->count; i++)
    loomi_msg_free(q->ring[(q->head + i) % q->cap].msg);
  loomi_heap_free(q->ring);
  pthread_mutex_destroy(&q->mu);
  loomi_cond_destroy(&q->not_empty);
  loomi_cond_destroy(&q->not_full);
}

static LoomQueue *queue_create (size_t maxsize) {
  LoomQueue *q = (LoomQueue *)loomi_obj_new(sizeof(LoomQueue), LOOM_QUEUE,
                                            queue_destroy);
  if (q == NULL)
    return NULL;
  if (loomi_mutex_init(&q->mu) != 0 || loomi_cond_init(&q->not_empty) != 0 ||
      loomi_cond_init(&q->not_full) != 0) {
    q->obj.destroy = NULL;
    loomi_obj_release(&q->obj);
    return NULL;
  }
  q->maxsize = maxsize;
  atomic_init(&q->avail, 0);
  return q;
}

/* Makes room for one more item; 0 or ENOMEM.  q->mu held. */
static int queue_reserve (LoomQueue *q) {
  if (q->count < q->cap)
    return 0;
  size_t cap = q->cap ? q->cap * 2 : QUEUE_MINCAP;
  if (q->maxsize != 0 && cap > q->maxsize)
    cap = q->maxsize > q->count ? q->maxsize : q->count + 1;
  Slot *ring = loomi_heap_alloc(cap * sizeof *ring);
  if (ring == NULL)
    return ENOMEM;
  for (size_t i = 0; i < q->count; i++)
    ring[i] = q->ring[(q->head + i) % q->cap];
  loomi_heap_free(q->ring);
  q->ring = ring;
  q->cap = cap;
  q->head = 0;
  return 0;
}

/* Appends the item in `it`, waiting for room when `wait` is set.  Returns 0
** (the queue owns it->msg), EAGAIN (full and not waiting), ETIMEDOUT,
** ECANCELED, EPIPE (closed) or ENOMEM; it->msg stays the caller's on any
** error. */
static int queue_push (LoomQueue *q, const Slot *it, const LoomDeadline *dl,
                       int wait) {
  int rc = 0;
  loomi_mutex_lock(&q->mu);
  for (;;) {
    if (q->closed) {
      rc = EPIPE;
      break;
    }
    if (q->maxsize == 0 || q->count < q->maxsize) {
      rc = queue_reserve(q);
      if (rc == 0) {
        Slot *s = &q->ring[(q->head + q->count) % q->cap];
        s->msg = it->msg;
        s->pid = it->pid;
        s->len = it->len;
        if (it->msg == NULL)
          memcpy(s->data, it->data, it->len);
        q->count++;
        atomic_store_explicit(&q->avail, q->count, memory_order_relaxed);
        if (q->getters > 0)
          pthread_cond_signal(&q->not_empty);
      }
      break;
    }
    if (!wait) {
      rc = EAGAIN;
      break;
    }
    q->putters++;
    rc = loomi_wait(&q->not_full, &q->mu, &q->obj, dl);
    q->putters--;
    if (rc != 0) {
      /* a putter that gives up may have swallowed a signal meant for
      ** another */
      if (q->count < q->maxsize && q->putters > 0)
        pthread_cond_signal(&q->not_full);
      break;
    }
  }
  loomi_mutex_unlock(&q->mu);
  return rc;
}

/* Takes the oldest item into *it, waiting for one when `wait` is set.
** Returns 0, EAGAIN (empty and not waiting), ETIMEDOUT, ECANCELED or
** EPIPE (closed and drained). */
static int queue_pop (LoomQueue *q, Slot *it, const LoomDeadline *dl,
                      int wait) {
  int rc = 0;
  loomi_mutex_lock(&q->mu);
  for (;;) {
    if (q->count > 0) {
      Slot *s = &q->ring[q->head];
      it->msg = s->msg;
      it->pid = s->pid;
      it->len = s->len;
      if (s->msg == NULL)
        memcpy(it->data, s->data, s->len);
      s->msg = NULL;
      q->head = (q->head + 1) % q->cap;
      q->count--;
      atomic_store_explicit(&q->avail, q->count, memory_order_relaxed);
      if (q->putters > 0)
        pthread_cond_signal(&q->not_full);
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
    q->getters++;
    rc = loomi_wait(&q->not_empty, &q->mu, &q->obj, dl);
    q->getters--;
    if (rc != 0)
      break;
  }
  /* a getter that gives up may have swallowed a signal meant for another */
  if (rc != 0 && rc != EAGAIN && q->count > 0 && q->getters > 0)
    pthread_cond_signal(&q->not_empty);
  loomi_mutex_unlock(&q->mu);
  return rc;
}

static void cpu_relax (void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Before sleeping, polls briefly for the state a get (want_items) or put
** waits for: with a producer and a consumer on two cores the other side
** usually gets there within a microsecond, and a sleep plus wake-up costs
** far more.  True when it is worth trying again. */
static int queue_spin (LoomQueue *q, int want_items, const LoomDeadline *dl) {
  if (dl != NULL && !dl->forever && loomi_deadline_passed(dl))
    return 0;
  for (int i = 0; i < QUEUE_SPIN; i++) {
    size_t n = atomic_load_explicit(&q->avail, memory_order_relaxed);
    if (want_items ? n > 0 : (q->maxsize == 0 || n < q->maxsize))
      return 1;
    cpu_relax();
  }
  return 0;
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

/* Messages being decoded by this state.  A decode that raises leaves its
** message here; the enclosing get, or the state's end, frees it. */
typedef struct Pending {
  LoomMsg **list;
  size_t n, cap;
  pid_t owner;               /* a forked child frees none of its parent's */
} Pending;

static const char PENDING_KEY = 'p';
#define LOOM_PENDING "loom.Pending"

static int pending_gc (lua_State *L) {
  Pending *p = luaL_checkudata(L, 1, LOOM_PENDING);
  for (size_t i = 0; i < p->n && p->owner == loomi_self_pid(); i++)
    loomi_msg_free(p->list[i]);
  free(p->list);
  p->list = NULL;
  p->n = p->cap = 0;
  return 0;
}

/* Pushes the item and frees its message, even when decoding raises. */
static int decode_item (lua_State *L, const Slot *it) {
  if (it->msg == NULL)
    return loomi_xfer_decode_inline(L, it->data, it->len, it->pid);
  LoomMsg *m = it->msg;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_KEY);
  Pending *p = lua_touserdata(L, -1);
  lua_pop(L, 1);   /* the registry keeps it */
  if (p->owner != loomi_self_pid()) {   /* inherited: the parent's list */
    /* the array is this process's copy, to free; the messages it names
    ** are the parent's, to leave alone */
    free(p->list);
    p->list = NULL;
    p->n = p->cap = 0;
    p->owner = loomi_self_pid();
  }
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 4;
    LoomMsg **list = realloc(p->list, cap * sizeof *list);
    if (list == NULL) {
      loomi_msg_free(m);
      return luaL_error(L, "not enough memory");
    }
    p->list = list;
    p->cap = cap;
  }
  size_t mark = p->n;
  p->list[p->n++] = m;
  int n = loomi_xfer_decode(L, m);
  while (p->n > mark)
    loomi_msg_free(p->list[--p->n]);
  return n;
}

static int pop_failed (lua_State *L, int rc) {
  switch (rc) {
    case ECANCELED: return loomi_raise_cancelled(L);
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
  if (q->getters > 0)
    pthread_cond_broadcast(&q->not_empty);
  if (q->putters > 0)
    pthread_cond_broadcast(&q->not_full);
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
  size_t n = q->count;
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

static const luaL_Reg queue_meta[] = {
  {"__index", queue_index},
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
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_KEY) == LUA_TNIL) {
    Pending *p = lua_newuserdatauv(L, sizeof(Pending), 0);
    memset(p, 0, sizeof *p);
    p->owner = loomi_self_pid();
    if (luaL_newmetatable(L, LOOM_PENDING)) {
      lua_pushcfunction(L, pending_gc);
      lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDING_KEY);
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, queue_funcs, 0);
}
