/* heap.c: the shared arena every loom object and message lives in.
** One MAP_SHARED|MAP_ANONYMOUS mapping, made when loom.core is first opened
** in a process, so forks see it at the same address.  A two-level
** segregated-fit allocator (TLSF) under one robust, process-shared mutex:
** freed blocks merge with free physical neighbours at once, and a request
** takes a free block from the smallest class that fits, in constant time.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HEAP_DEFAULT    ((size_t)1 << 30)        /* reserved, not committed */
#define HEAP_MINSIZE    ((size_t)1 << 20)
#define HEAP_MAXSIZE    ((size_t)1 << 46)        /* beyond any user space */
#define HEAP_ALIGN      ((size_t)16)
#define HEAP_SL_LOG     5                        /* 32 lists per power of two */
#define HEAP_SL_COUNT   (1 << HEAP_SL_LOG)
#define HEAP_FL_COUNT   56
#define HEAP_SMALL      (HEAP_SL_COUNT * HEAP_ALIGN)   /* 16-byte steps below */
/* Freed memory keeps its pages until this much has been freed, over a
** span at least as large, in blocks too small to give back one by one;
** then the free blocks of at least HEAP_TRIM_MIN return the pages in that
** span (heap_trim).  A block this large or larger returns its pages when
** it is freed, before the heap is locked. */
#define HEAP_DIRTY_MAX  ((size_t)16 << 20)
#define HEAP_TRIM_MIN   ((size_t)1 << 20)
/* Requests this large are cut from the top of the free block they take,
** smaller ones from its bottom: the small objects that live long (locks,
** queues, thread handles) gather low, the large messages that come and go
** high, and a large message freed merges back into one large free run
** instead of leaving a hole walled in by a small object made meanwhile. */
#define HEAP_HIGH       ((size_t)256 << 10)

/* A block: its header, then the caller's bytes.  A linear walk from the
** first block, by `size`, always lands on headers: every change to the
** block layout is one store of a `size` word, made after the headers it
** exposes are written, so a process killed at any instruction leaves a
** walkable heap behind (heap_recover). */
typedef struct Block {
  size_t prev_size;           /* size of the physical predecessor, 0 first */
  size_t size;                /* whole block, header included; | BLOCK_FREE */
  struct Block *next_free;    /* free-list links, only while free */
  struct Block *prev_free;
} Block;

#define BLOCK_FREE  ((size_t)1)
#define BLOCK_HDR   ((size_t)16)                 /* prev_size + size */
#define BLOCK_MIN   ((size_t)32)                 /* room for the links */

/* Freed blocks of a middle size (CACHE_MAX < size <= SLOT_MAX) wait in a
** slot for the next request of about their size, so that a thread that
** frees and allocates one again and again (a message of 64 KB sent in a
** loop) never takes the arena's lock, and two such threads do not meet on
** it.  Each thread draws a slot; a slot holds one block, taken and put by
** atomic exchange, and lives in the shared header, so any thread of any
** process can empty every slot: an allocation that finds no free block
** does so under the lock before it fails, as do loom.heap() and
** heap_used(), so the slots hold nothing the guarantee has to allow for.
** A block in a slot stays used in the layout and in `used`, like a small
** cached one; one a killed process had just taken out of a slot stays
** used, as any block it held.  A slot per cache line. */
#define HEAP_SLOTS      16
#define SLOT_MAX        ((size_t)256 << 10)

typedef struct HeapSlot {
  _Alignas(64) _Atomic(struct Block *) b;
} HeapSlot;

typedef struct HeapHeader {
  size_t size;                /* the mapping */
  size_t page;
  Block *first, *end;         /* end: a used, header-only sentinel */
  atomic_size_t used;         /* bytes in used blocks, headers included */
  pthread_mutex_t mu;         /* guards everything below and every block */
  size_t dirty;               /* bytes freed in small blocks since a trim */
  uintptr_t dirty_lo, dirty_hi;   /* ...and the span they lie in */
  size_t recovered;           /* repairs after a holder of mu died */
  uint64_t fl_map;            /* bit f: some list of class f is not empty */
  uint32_t sl_map[HEAP_FL_COUNT];
  Block *lists[HEAP_FL_COUNT][HEAP_SL_COUNT];
  atomic_uint slot_next;      /* the slot the next thread draws */
  HeapSlot slots[HEAP_SLOTS]; /* no lock: see HeapSlot */
} HeapHeader;

/* The one mapping of this process (and of its forks, which inherit it).
** Written once under heap_mu before the first object exists. */
static HeapHeader *heap = NULL;
static size_t heap_request = 0;      /* configured size, 0 = default */
static atomic_int heap_touched = 0;  /* an object was allocated */
static pthread_mutex_t heap_mu = PTHREAD_MUTEX_INITIALIZER;

/* Each thread keeps a few small freed blocks to hand out again without
** the arena's lock (a robust lock and unlock cost more than glibc's whole
** malloc + free).  A cached block stays used, in the arena's layout and
** in `used`, so a walk or a repair sees nothing new and the counters
** always agree with the blocks.  Bounded per thread by CACHE_BYTES; given
** back when the thread ends (cache_key's destructor), when loom's child
** processes leave (loomi_heap_flush), and forgotten by a forked child,
** whose copy of the forking thread's cache still belongs to the parent.
** What a killed process had cached stays used, as everything it held. */
#define CACHE_MAX       ((size_t)256)            /* largest cached block */
#define CACHE_CLASSES   (CACHE_MAX / 16 + 1)
#define CACHE_DEPTH     8                        /* blocks per size */
#define CACHE_BYTES     ((size_t)4 << 10)        /* all sizes together */

typedef struct ThreadCache {
  size_t bytes;               /* in the blocks below */
  int registered;             /* cache_key set: flushed at thread exit */
  unsigned char count[CACHE_CLASSES];
  Block *top[CACHE_CLASSES];  /* linked by next_free */
} ThreadCache;

static _Thread_local ThreadCache tcache;
static _Thread_local HeapSlot *tslot = NULL;   /* drawn on first use */
static pthread_key_t cache_key;
static int cache_key_ok = 0;    /* written once under heap_once */

static void cache_flush (ThreadCache *c);

static void cache_destroy (void *arg) {
  cache_flush(arg);
}

/* heap_mu is private to the process: a fork while another thread held it
** would leave the child's copy locked for good, so fork waits for it.  The
** arena mutex needs no such care: it and the lists it guards are shared
** with the child, so an operation a parent thread is in the middle of
** completes for both processes. */
static pthread_once_t heap_once = PTHREAD_ONCE_INIT;

static void heap_prefork (void) {
  pthread_mutex_lock(&heap_mu);
}

static void heap_postfork (void) {
  pthread_mutex_unlock(&heap_mu);
}

static void heap_postfork_child (void) {
  memset(&tcache, 0, sizeof tcache);   /* the parent's thread's blocks */
  tslot = NULL;                        /* draw a slot of its own */
  pthread_mutex_unlock(&heap_mu);
}

static void heap_register_fork (void) {
  pthread_atfork(heap_prefork, heap_postfork, heap_postfork_child);
  cache_key_ok = pthread_key_create(&cache_key, cache_destroy) == 0;
}

/* ---- blocks and the two-level index ---- */

static inline size_t bsize (const Block *b) {
  return b->size & ~BLOCK_FREE;
}

static inline int bfree (const Block *b) {
  return (int)(b->size & BLOCK_FREE);
}

static inline Block *bnext (Block *b) {
  return (Block *)((char *)b + bsize(b));
}

static inline int msb (size_t x) {
  return 63 - __builtin_clzll((unsigned long long)x);
}

/* The list a free block of `size` bytes belongs on: below HEAP_SMALL one
** list per 16 bytes, above it 32 lists per power of two. */
static void mapping (size_t size, int *fl, int *sl) {
  if (size < HEAP_SMALL) {
    *fl = 0;
    *sl = (int)(size / HEAP_ALIGN);
  }
  else {
    int m = msb(size);
    *fl = m - msb(HEAP_SMALL) + 1;
    *sl = (int)(size >> (m - HEAP_SL_LOG)) & (HEAP_SL_COUNT - 1);
  }
}

static void list_insert (HeapHeader *h, Block *b) {
  int fl, sl;
  mapping(bsize(b), &fl, &sl);
  Block *head = h->lists[fl][sl];
  b->next_free = head;
  b->prev_free = NULL;
  if (head != NULL)
    head->prev_free = b;
  h->lists[fl][sl] = b;
  h->fl_map |= (uint64_t)1 << fl;
  h->sl_map[fl] |= (uint32_t)1 << sl;
}

static void list_remove (HeapHeader *h, Block *b) {
  int fl, sl;
  mapping(bsize(b), &fl, &sl);
  if (b->next_free != NULL)
    b->next_free->prev_free = b->prev_free;
  if (b->prev_free != NULL)
    b->prev_free->next_free = b->next_free;
  else {
    h->lists[fl][sl] = b->next_free;
    if (b->next_free == NULL) {
      h->sl_map[fl] &= ~((uint32_t)1 << sl);
      if (h->sl_map[fl] == 0)
        h->fl_map &= ~((uint64_t)1 << fl);
    }
  }
}

/* A free block of at least `need` bytes, still on its list, or NULL.
** Rounding the request up to the next list boundary makes any block of
** the first non-empty list at or above it fit; when none does, the
** request's own list may still hold a block large enough, so that an
** allocation fails only when no free block can hold it. */
static Block *find_block (HeapHeader *h, size_t need) {
  int fl, sl;
  size_t up = need;
  if (need >= HEAP_SMALL)
    up = need + ((size_t)1 << (msb(need) - HEAP_SL_LOG)) - 1;
  mapping(up, &fl, &sl);
  if (fl < HEAP_FL_COUNT) {
    uint32_t sm = h->sl_map[fl] & (~(uint32_t)0 << sl);
    if (sm == 0) {
      uint64_t fm = fl + 1 < HEAP_FL_COUNT
                    ? h->fl_map & (~(uint64_t)0 << (fl + 1)) : 0;
      if (fm != 0) {
        fl = __builtin_ctzll(fm);
        sm = h->sl_map[fl];
      }
    }
    if (sm != 0)
      return h->lists[fl][__builtin_ctz(sm)];
  }
  mapping(need, &fl, &sl);
  for (Block *b = h->lists[fl][sl]; b != NULL; b = b->next_free)
    if (bsize(b) >= need)
      return b;
  return NULL;
}

/* A block of the largest non-empty list.  A small request that no small
** free block fits is cut from the bottom of it rather than from a gap
** between large blocks: the largest free run is the one the small objects
** border on (HEAP_HIGH), and a gap up there is kept for large requests. */
static Block *largest_block (HeapHeader *h) {
  int fl = msb(h->fl_map);
  return h->lists[fl][msb(h->sl_map[fl])];
}

/* Gives the pages of a block that lie within [lo, hi) back to the system:
** never its header page nor the one holding the next block's header.
** MADV_REMOVE, because for shared memory MADV_DONTNEED only unmaps, and
** the pages would stay. */
static void release_pages (HeapHeader *h, Block *b, uintptr_t lo, uintptr_t hi) {
  uintptr_t first = (uintptr_t)b + sizeof(Block), last = (uintptr_t)b + bsize(b);
  if (lo < first)
    lo = first;
  if (hi > last)
    hi = last;
  lo = (lo + h->page - 1) & ~(h->page - 1);
  hi &= ~(h->page - 1);
  if (hi > lo)
    madvise((void *)lo, hi - lo, MADV_REMOVE);
}

/* Free blocks of HEAP_TRIM_MIN or more return the pages that blocks freed
** since the last trim dirtied (the window dirty_lo..dirty_hi): a block
** freed and taken again and again in one place dirties no more, so a
** steady loop never pays for faults.  h->mu held: the blocks stay on
** their lists, where nobody writes to them. */
static void heap_trim (HeapHeader *h) {
  int fl, sl;
  mapping(HEAP_TRIM_MIN, &fl, &sl);
  for (; fl < HEAP_FL_COUNT; fl++) {
    if (!(h->fl_map & ((uint64_t)1 << fl)))
      continue;
    for (sl = 0; sl < HEAP_SL_COUNT; sl++)
      for (Block *b = h->lists[fl][sl]; b != NULL; b = b->next_free)
        if (bsize(b) >= HEAP_TRIM_MIN)
          release_pages(h, b, h->dirty_lo, h->dirty_hi);
  }
  h->dirty = 0;
  h->dirty_lo = UINTPTR_MAX;
  h->dirty_hi = 0;
}

/* The previous holder of h->mu died in the middle of an operation: the
** block layout is walkable (see Block), the lists, maps, prev_size words
** and counters may not be.  Rebuilds them all from one walk, merging the
** free neighbours a dead free had not merged yet.  h->mu held. */
static void heap_recover (HeapHeader *h) {
  memset(h->lists, 0, sizeof h->lists);
  memset(h->sl_map, 0, sizeof h->sl_map);
  h->fl_map = 0;
  size_t used = 0, last = 0;
  Block *run = NULL;
  for (Block *b = h->first, *next; b != h->end; b = next) {
    size_t s = bsize(b);
    if (s < BLOCK_MIN || s % HEAP_ALIGN != 0 ||
        s > (size_t)((char *)h->end - (char *)b))
      abort();   /* not a layout any sequence of stores leaves behind */
    next = bnext(b);
    if (bfree(b) && run != NULL) {
      run->size = (bsize(run) + s) | BLOCK_FREE;
      last = bsize(run);
      continue;
    }
    if (run != NULL) {
      list_insert(h, run);
      run = NULL;
    }
    b->prev_size = last;
    last = s;
    if (bfree(b))
      run = b;
    else
      used += s;
  }
  if (run != NULL)
    list_insert(h, run);
  h->end->prev_size = last;
  atomic_store(&h->used, used);
  h->dirty = 0;
  h->dirty_lo = UINTPTR_MAX;
  h->dirty_hi = 0;
  h->recovered++;
}

/* Holders keep the lock for a few dozen instructions: a short spin on
** trylock before sleeping in the kernel spares two threads allocating at
** once a futex round trip each time they meet. */
static void heap_lock (HeapHeader *h) {
  for (int i = 0; i < 100; i++) {
    int rc = pthread_mutex_trylock(&h->mu);
    if (rc == 0)
      return;
    if (rc == EOWNERDEAD) {
      pthread_mutex_consistent(&h->mu);
      heap_recover(h);
      return;
    }
    if (rc != EBUSY)
      abort();
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  if (loomi_mutex_lock(&h->mu) == EOWNERDEAD)
    heap_recover(h);
}

/* ---- the slots ---- */

static void free_locked (HeapHeader *h, Block *b);

static int cache_register (ThreadCache *c);

/* The calling thread's slot, drawn on first use; its block is given back
** when the thread ends (cache_key) or its process leaves. */
static HeapSlot *my_slot (HeapHeader *h) {
  if (tslot == NULL) {
    tslot = &h->slots[atomic_fetch_add_explicit(&h->slot_next, 1,
                                                memory_order_relaxed) %
                      HEAP_SLOTS];
    cache_register(&tcache);
  }
  return tslot;
}

/* Gives every slot's block back to the arena: 1 when there was one.
** h->mu held. */
static int slots_empty (HeapHeader *h) {
  int any = 0;
  for (int i = 0; i < HEAP_SLOTS; i++) {
    if (atomic_load_explicit(&h->slots[i].b, memory_order_relaxed) == NULL)
      continue;   /* not a write: the line stays its thread's */
    Block *b = atomic_exchange_explicit(&h->slots[i].b, NULL,
                                        memory_order_acquire);
    if (b != NULL) {
      free_locked(h, b);
      any = 1;
    }
  }
  return any;
}

/* ---- the mapping ---- */

int loomi_heap_env (size_t *size) {
  const char *env = getenv("LOOM_HEAP_SIZE");
  if (env == NULL || *env == '\0')
    return 0;
  if (*env < '0' || *env > '9')
    return -1;
  char *end;
  errno = 0;
  unsigned long long n = strtoull(env, &end, 10);
  if (errno != 0)
    return -1;
  int shift = 0;
  switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
  }
  if (shift != 0 && (*end == 'i' || *end == 'I') && (end[1] == 'b' || end[1] == 'B'))
    end += 2;              /* 64MiB */
  else if (shift != 0 && (*end == 'b' || *end == 'B'))
    end++;                 /* 64MB, taken as binary like the rest */
  if (*end != '\0' || n > (HEAP_MAXSIZE >> shift))
    return -1;
  n <<= shift;
  if (n < HEAP_MINSIZE)
    return -1;
  *size = (size_t)n;
  return 1;
}

/* The size asked for in LOOM_HEAP_SIZE, or the default; 0 when it is
** malformed (loomi_heap_init refuses it rather than guess). */
static size_t default_size (void) {
  size_t n;
  switch (loomi_heap_env(&n)) {
    case 1: return n;
    case 0: return HEAP_DEFAULT;
    default: return 0;
  }
}

static HeapHeader *heap_map (size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  HeapHeader *h = p;   /* the mapping is zeroed: lists and maps empty */
  h->size = size;
  h->page = (size_t)sysconf(_SC_PAGESIZE);
  if (loomi_mutex_init(&h->mu) != 0) {
    munmap(p, size);
    return NULL;
  }
  h->first = (Block *)((char *)p + ((sizeof(HeapHeader) + 63) & ~(size_t)63));
  h->end = (Block *)((char *)p + ((size - BLOCK_HDR) & ~(HEAP_ALIGN - 1)));
  h->end->size = BLOCK_HDR;
  h->end->prev_size = (size_t)((char *)h->end - (char *)h->first);
  h->first->prev_size = 0;
  h->first->size = h->end->prev_size | BLOCK_FREE;
  list_insert(h, h->first);
  atomic_init(&h->used, 0);
  h->dirty_lo = UINTPTR_MAX;
  return h;
}

int loomi_heap_init (void) {
  int err = 0;
  pthread_once(&heap_once, heap_register_fork);
  pthread_mutex_lock(&heap_mu);
  if (heap == NULL) {
    size_t size = heap_request ? heap_request : default_size();
    if (size == 0)
      err = EINVAL;
    else {
      heap = heap_map(size);
      if (heap == NULL)
        err = errno ? errno : ENOMEM;
    }
  }
  pthread_mutex_unlock(&heap_mu);
  return err;
}

int loomi_heap_configure (size_t size) {
  int err = 0;
  if (size < HEAP_MINSIZE || size > HEAP_MAXSIZE)
    return EINVAL;
  pthread_mutex_lock(&heap_mu);
  if (atomic_load(&heap_touched))
    err = EBUSY;
  else if (heap != NULL && heap->size != size) {
    HeapHeader *fresh = heap_map(size);
    if (fresh == NULL)
      err = errno ? errno : ENOMEM;
    else {
      munmap(heap, heap->size);
      heap = fresh;
    }
  }
  if (err == 0)
    heap_request = size;
  pthread_mutex_unlock(&heap_mu);
  return err;
}

size_t loomi_heap_size (void) {
  size_t n = heap_request ? heap_request : default_size();
  return heap ? heap->size : (n ? n : HEAP_DEFAULT);
}

/* The calling thread's cache is given back first, so that a thread that
** frees and then asks sees its blocks gone. */
size_t loomi_heap_used (void) {
  cache_flush(&tcache);
  if (heap == NULL)
    return 0;
  heap_lock(heap);
  slots_empty(heap);
  loomi_mutex_unlock(&heap->mu);
  return atomic_load(&heap->used);
}

void loomi_heap_stats (LoomHeapStats *st) {
  memset(st, 0, sizeof *st);
  st->size = loomi_heap_size();
  if (heap == NULL)
    return;
  HeapHeader *h = heap;
  size_t largest = 0;
  cache_flush(&tcache);
  heap_lock(h);
  slots_empty(h);
  st->used = atomic_load(&h->used);
  st->recovered = h->recovered;
  for (int fl = 0; fl < HEAP_FL_COUNT; fl++)
    for (int sl = 0; sl < HEAP_SL_COUNT; sl++)
      for (Block *b = h->lists[fl][sl]; b != NULL; b = b->next_free) {
        st->free += bsize(b);
        st->free_blocks++;
        if (bsize(b) > largest)
          largest = bsize(b);
      }
  loomi_mutex_unlock(&h->mu);
  st->largest_free = largest > BLOCK_HDR ? largest - BLOCK_HDR : 0;
}

/* ---- allocation ---- */

static void used_add (HeapHeader *h, long d) {
  if (d >= 0)
    atomic_fetch_add_explicit(&h->used, (size_t)d, memory_order_relaxed);
  else
    atomic_fetch_sub_explicit(&h->used, (size_t)-d, memory_order_relaxed);
}

void *loomi_heap_alloc (size_t n) {
  if (heap == NULL && loomi_heap_init() != 0)
    return NULL;
  HeapHeader *h = heap;
  if (n > h->size)
    return NULL;
  size_t need = ((n + HEAP_ALIGN - 1) & ~(HEAP_ALIGN - 1)) + BLOCK_HDR;
  if (need < BLOCK_MIN)
    need = BLOCK_MIN;
  if (need <= CACHE_MAX) {
    ThreadCache *c = &tcache;
    Block *b = c->top[need / 16];
    if (b != NULL) {
      c->top[need / 16] = b->next_free;
      c->count[need / 16]--;
      c->bytes -= need;
      return (char *)b + BLOCK_HDR;
    }
  }
  Block *stray = NULL;   /* a slot's block too small or too large */
  if (need > CACHE_MAX && need <= SLOT_MAX) {
    Block *b = atomic_exchange_explicit(&my_slot(h)->b, NULL,
                                        memory_order_acquire);
    if (b != NULL && bsize(b) >= need && bsize(b) - need <= need / 4)
      return (char *)b + BLOCK_HDR;
    stray = b;
  }
  atomic_store_explicit(&heap_touched, 1, memory_order_relaxed);
  heap_lock(h);
  if (stray != NULL)
    free_locked(h, stray);
  /* Before a request fails, and before a small one opens up new space at
  ** the bottom of the largest free block, the slots' blocks go back: a
  ** small object made right above a block waiting in a slot would leave
  ** a hole there once the block comes back. */
  Block *b = find_block(h, need);
  if ((b == NULL || (need < HEAP_HIGH && bsize(b) >= HEAP_HIGH)) &&
      slots_empty(h))
    b = find_block(h, need);
  if (b == NULL) {
    loomi_mutex_unlock(&h->mu);
    return NULL;
  }
  if (need < HEAP_HIGH && bsize(b) >= HEAP_HIGH)
    b = largest_block(h);
  list_remove(h, b);
  size_t s = bsize(b);
  if (need >= HEAP_HIGH && s - need >= BLOCK_MIN) {
    /* the top of b: the new header first, then b shrinks (see Block) */
    Block *top = (Block *)((char *)b + (s - need));
    top->prev_size = s - need;
    top->size = need;
    b->size = (s - need) | BLOCK_FREE;
    bnext(top)->prev_size = need;
    list_insert(h, b);
    b = top;
    s = need;
  }
  else if (s - need >= BLOCK_MIN) {
    /* the rest's header first: until b shrinks, a walk steps over it */
    Block *rest = (Block *)((char *)b + need);
    rest->prev_size = need;
    rest->size = (s - need) | BLOCK_FREE;
    bnext(rest)->prev_size = s - need;
    b->size = need;
    list_insert(h, rest);
    s = need;
  }
  else
    b->size = s;
  used_add(h, (long)s);
  loomi_mutex_unlock(&h->mu);
  return (char *)b + BLOCK_HDR;
}

void *loomi_heap_calloc (size_t n) {
  void *p = loomi_heap_alloc(n);
  if (p != NULL)
    memset(p, 0, n);
  return p;
}


/* A wild or double free: the heap can no longer be trusted. */
static void check_used (HeapHeader *h, Block *b) {
  size_t s = b->size;
  if ((char *)b < (char *)h->first || b >= h->end || (s & BLOCK_FREE) ||
      s < BLOCK_MIN || s % HEAP_ALIGN != 0 ||
      s > (size_t)((char *)h->end - (char *)b) || bnext(b)->prev_size != s)
    abort();
}

/* Returns a used block to the arena.  h->mu held. */
static void block_free (HeapHeader *h, Block *b) {
  check_used(h, b);
  size_t s = bsize(b);
  used_add(h, -(long)s);
  /* free first, then merge, one size store at a time (see Block) */
  b->size = s | BLOCK_FREE;
  Block *next = bnext(b);
  if (bfree(next)) {
    list_remove(h, next);
    b->size = (bsize(b) + bsize(next)) | BLOCK_FREE;
  }
  if (b->prev_size != 0) {
    Block *prev = (Block *)((char *)b - b->prev_size);
    if (bfree(prev)) {
      list_remove(h, prev);
      prev->size = (bsize(prev) + bsize(b)) | BLOCK_FREE;
      b = prev;
    }
  }
  bnext(b)->prev_size = bsize(b);
  list_insert(h, b);
}

/* Gives the thread's cached blocks back to the arena, and the block in
** its slot (which may be another thread's, sharing it: a cache all the
** same). */
static void cache_flush (ThreadCache *c) {
  HeapHeader *h = heap;
  if (h == NULL)
    return;
  Block *own = tslot != NULL
               ? atomic_exchange_explicit(&tslot->b, NULL, memory_order_acquire)
               : NULL;
  if (c->bytes == 0 && own == NULL)
    return;
  heap_lock(h);
  if (own != NULL)
    free_locked(h, own);
  for (size_t k = 0; k < CACHE_CLASSES; k++) {
    while (c->top[k] != NULL) {
      Block *b = c->top[k];
      c->top[k] = b->next_free;
      block_free(h, b);
    }
    c->count[k] = 0;
  }
  loomi_mutex_unlock(&h->mu);
  c->bytes = 0;
}

void loomi_heap_flush (void) {
  cache_flush(&tcache);
}

/* Has cache_key's destructor flush c when the thread ends: 0 when it
** cannot (then nothing may stay cached). */
static int cache_register (ThreadCache *c) {
  if (!c->registered) {
    /* the destructor runs only for a non-NULL value */
    if (!cache_key_ok || pthread_setspecific(cache_key, c) != 0)
      return 0;
    c->registered = 1;
  }
  return 1;
}

/* Keeps a small block in the thread's cache; 0 when it has no room. */
static int cache_put (Block *b, size_t s) {
  ThreadCache *c = &tcache;
  size_t k = s / 16;
  if (c->count[k] >= CACHE_DEPTH || c->bytes + s > CACHE_BYTES)
    return 0;
  for (Block *x = c->top[k]; x != NULL; x = x->next_free)
    if (x == b)
      abort();   /* freed twice */
  if (!cache_register(c))
    return 0;
  b->next_free = c->top[k];
  c->top[k] = b;
  c->count[k]++;
  c->bytes += s;
  return 1;
}

/* Returns a used block to the arena and counts the pages it dirtied.
** h->mu held. */
static void free_locked (HeapHeader *h, Block *b) {
  size_t s = bsize(b);
  block_free(h, b);
  if (s < HEAP_DIRTY_MAX) {
    uintptr_t lo = (uintptr_t)b;
    h->dirty += s;
    if (lo < h->dirty_lo)
      h->dirty_lo = lo;
    if (lo + s > h->dirty_hi)
      h->dirty_hi = lo + s;
    if (h->dirty >= HEAP_DIRTY_MAX && h->dirty_hi - h->dirty_lo >= HEAP_DIRTY_MAX)
      heap_trim(h);
  }
}

void loomi_heap_free (void *p) {
  if (p == NULL)
    return;
  HeapHeader *h = heap;
  Block *b = (Block *)((char *)p - BLOCK_HDR);
  size_t s = b->size;
  if (s <= CACHE_MAX && s >= BLOCK_MIN && s % HEAP_ALIGN == 0 &&
      cache_put(b, s))
    return;
  if (s > CACHE_MAX && s <= SLOT_MAX && s % HEAP_ALIGN == 0 &&
      (char *)b >= (char *)h->first && b < h->end) {
    /* the slot's previous block, if any, goes to the arena instead */
    Block *old = atomic_exchange_explicit(&my_slot(h)->b, b,
                                          memory_order_acq_rel);
    if (old == NULL)
      return;
    if (old == b)
      abort();   /* freed twice */
    b = old;
    s = bsize(old);
  }
  /* A block this large gives its pages back now, while it is still the
  ** caller's: nobody else can be writing to it, and the lock is not held
  ** through the system call. */
  if (s >= HEAP_DIRTY_MAX && !(s & BLOCK_FREE) &&
      s <= (size_t)((char *)h->end - (char *)b))
    release_pages(h, b, 0, UINTPTR_MAX);
  heap_lock(h);
  free_locked(h, b);
  loomi_mutex_unlock(&h->mu);
}

LOOM_API int loom_configure_heap (size_t bytes) {
  return loomi_heap_configure(bytes);
}
