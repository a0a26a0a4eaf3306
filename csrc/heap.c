/* heap.c: the shared arena every loom object and message lives in.
** One MAP_SHARED|MAP_ANONYMOUS mapping, made when loom.core is first opened
** in a process, so forks see it at the same address.  Blocks are segregated
** by size class, powers of two and the sizes halfway between (32, 48, 64,
** 96, ...); each class has a free list and a robust, process-shared mutex;
** fresh space comes from an atomic bump pointer.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HEAP_MAGIC      0x6c6f6f6d68656170ULL    /* "loomheap" */
#define BLOCK_MAGIC     0x6c6f6f6du
#define HEAP_MINSHIFT   5                        /* 32-byte smallest block */
#define HEAP_NCLASS     80
#define HEAP_DEFAULT    ((size_t)1 << 30)        /* reserved, not committed */
#define HEAP_MINSIZE    ((size_t)1 << 20)
#define HEAP_MAXSIZE    ((size_t)1 << 46)        /* beyond any user space */
#define HEAP_RELEASE    ((size_t)64 << 10)       /* give pages back above */
#define HEAP_KEEP       ((size_t)8 << 20)        /* ...but one may stay up to */

typedef struct BlockHeader {
  uint32_t magic;
  uint32_t cls;
  struct BlockHeader *next;   /* free-list link, only while free */
} BlockHeader;

typedef struct HeapHeader {
  uint64_t magic;
  size_t size;
  atomic_size_t bump;         /* offset of the first never-used byte */
  atomic_size_t used;
  pthread_mutex_t mu[HEAP_NCLASS];
  BlockHeader *free[HEAP_NCLASS];   /* mu[i] held */
  /* A free block of class i (large, up to HEAP_KEEP) whose pages were
  ** kept, taken before free[i]; off the list; mu[i] held.  A message of a
  ** given size tends to be followed by another of that size (a worker fed
  ** the same table, a queue of like items): its block is then already
  ** resident instead of faulted in page by page. */
  BlockHeader *spare[HEAP_NCLASS];
} HeapHeader;

#define BLOCK_HDR  ((sizeof(BlockHeader) + 15) & ~(size_t)15)

/* The one mapping of this process (and of its forks, which inherit it).
** Written once under heap_mu before the first object exists. */
static HeapHeader *heap = NULL;
static size_t heap_request = 0;      /* configured size, 0 = default */
static atomic_int heap_touched = 0;  /* an object was allocated */
static pthread_mutex_t heap_mu = PTHREAD_MUTEX_INITIALIZER;

/* heap_mu is private to the process: a fork while another thread held it
** would leave the child's copy locked for good, so fork waits for it.  The
** class mutexes need no such care: they and the free lists they guard are
** shared with the child, so an operation a parent thread is in the middle
** of completes for both processes. */
static pthread_once_t heap_once = PTHREAD_ONCE_INIT;

static void heap_prefork (void) {
  pthread_mutex_lock(&heap_mu);
}

static void heap_postfork (void) {
  pthread_mutex_unlock(&heap_mu);
}

static void heap_register_fork (void) {
  pthread_atfork(heap_prefork, heap_postfork, heap_postfork);
}

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
  HeapHeader *h = p;
  h->magic = HEAP_MAGIC;
  h->size = size;
  atomic_init(&h->bump, (sizeof(HeapHeader) + 63) & ~(size_t)63);
  atomic_init(&h->used, 0);
  for (int i = 0; i < HEAP_NCLASS; i++) {
    if (loomi_mutex_init(&h->mu[i]) != 0) {
      munmap(p, size);
      return NULL;
    }
    h->free[i] = NULL;
    h->spare[i] = NULL;
  }
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

size_t loomi_heap_used (void) {
  return heap ? atomic_load(&heap->used) : 0;
}

/* Even classes are powers of two, odd ones 1.5 times the one below: a
** block wastes at most a third of itself instead of a half, which for the
** many small objects of a busy pool means fewer fresh pages to fault in. */
static size_t class_size (int cls) {
  return (size_t)((cls & 1) ? 3 : 2) << (cls / 2 + HEAP_MINSHIFT - 1);
}

static int size_class (size_t n) {
  size_t total = n + BLOCK_HDR;
  if (total < n)
    return -1;
  int cls = 0;
  while (class_size(cls) < total) {
    if (++cls >= HEAP_NCLASS)
      return -1;
  }
  return cls;
}

void *loomi_heap_alloc (size_t n) {
  if (heap == NULL && loomi_heap_init() != 0)
    return NULL;
  int cls = size_class(n);
  if (cls < 0)
    return NULL;
  size_t bsize = class_size(cls);
  atomic_store_explicit(&heap_touched, 1, memory_order_relaxed);
  BlockHeader *b;
  loomi_mutex_lock(&heap->mu[cls]);
  b = heap->spare[cls];
  if (b != NULL)
    heap->spare[cls] = NULL;
  else if ((b = heap->free[cls]) != NULL)
    heap->free[cls] = b->next;
  loomi_mutex_unlock(&heap->mu[cls]);
  if (b == NULL) {
    /* Blocks align to the largest power of two dividing their size, up to
    ** 64 bytes; from a page up, to a page so a freed block can return
    ** whole pages. */
    size_t align = bsize & -bsize;
    align = bsize >= 4096 ? 4096 : (align < 64 ? align : 64);
    size_t off = atomic_load(&heap->bump), start;
    do {
      start = (off + align - 1) & ~(align - 1);
      if (start + bsize > heap->size || start + bsize < start)
        return NULL;
    } while (!atomic_compare_exchange_weak(&heap->bump, &off, start + bsize));
    b = (BlockHeader *)((char *)heap + start);
  }
  b->magic = BLOCK_MAGIC;
  b->cls = (uint32_t)cls;
  b->next = NULL;
  atomic_fetch_add_explicit(&heap->used, bsize, memory_order_relaxed);
  return (char *)b + BLOCK_HDR;
}

void *loomi_heap_calloc (size_t n) {
  void *p = loomi_heap_alloc(n);
  if (p != NULL)
    memset(p, 0, n);
  return p;
}

void loomi_heap_free (void *p) {
  if (p == NULL)
    return;
  BlockHeader *b = (BlockHeader *)((char *)p - BLOCK_HDR);
  if (b->magic != BLOCK_MAGIC || b->cls >= HEAP_NCLASS)
    abort();   /* a wild or double free: the heap can no longer be trusted */
  int cls = (int)b->cls;
  size_t bsize = class_size(cls);
  b->magic = 0;
  atomic_fetch_sub_explicit(&heap->used, bsize, memory_order_relaxed);
  if (bsize < HEAP_RELEASE) {
    loomi_mutex_lock(&heap->mu[cls]);
    b->next = heap->free[cls];
    heap->free[cls] = b;
    loomi_mutex_unlock(&heap->mu[cls]);
    return;
  }
  /* Large blocks on the free list have handed their body's pages back (the
  ** header page keeps the link), so that a burst of large messages does
  ** not stay resident; only the last one freed of each class up to
  ** HEAP_KEEP is kept whole, as the spare.  The pages go while the block
  ** is owned here, off the list, where nobody can be writing to it. */
  BlockHeader *drop = b;
  if (bsize <= HEAP_KEEP) {
    loomi_mutex_lock(&heap->mu[cls]);
    drop = heap->spare[cls];
    heap->spare[cls] = b;
    loomi_mutex_unlock(&heap->mu[cls]);
    if (drop == NULL)
      return;
  }
  long page = sysconf(_SC_PAGESIZE);
  madvise((char *)drop + page, bsize - (size_t)page, MADV_REMOVE);
  loomi_mutex_lock(&heap->mu[cls]);
  drop->next = heap->free[cls];
  heap->free[cls] = drop;
  loomi_mutex_unlock(&heap->mu[cls]);
}

LOOM_API int loom_configure_heap (size_t bytes) {
  return loomi_heap_configure(bytes);
}
