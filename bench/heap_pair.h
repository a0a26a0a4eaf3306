/* heap_pair.h: the allocate+free pair loop the heap rows time, shared by
** loom's side (bench/heap_bench.c) and the malloc reference
** (bench/limits.c) so both run the same code around the calls.
** SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stddef.h>
#include <time.h>

typedef struct PairRun {
  void *(*alloc) (size_t n);
  void (*release) (void *p);
  size_t size;
  long n;
} PairRun;

static double pair_now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *pair_loop (void *arg) {
  const PairRun *r = arg;
  for (long i = 0; i < r->n; i++) {
    void *p = r->alloc(r->size);
    *(volatile char *)p = (char)i;   /* the block is used, the pair stays */
    r->release(p);
  }
  return NULL;
}

/* ns per pair, as each of `threads` threads sees it running alongside the
** others (wall time / pairs per thread). */
static double pair_time (void *(*alloc) (size_t), void (*release) (void *),
                         size_t size, int threads) {
  PairRun r = { alloc, release, size, size > 4096 ? 500000 : 2000000 };
  pthread_t t[8];
  pair_loop(&(PairRun){ alloc, release, size, 1000 });   /* warm */
  double t0 = pair_now();
  for (int i = 1; i < threads; i++)
    pthread_create(&t[i], NULL, pair_loop, &r);
  pair_loop(&r);
  for (int i = 1; i < threads; i++)
    pthread_join(t[i], NULL);
  return (pair_now() - t0) / (double)r.n * 1e9;
}
