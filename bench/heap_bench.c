/* heap_bench.c: loom's side of the heap rows of `make bench`: the
** allocate+free pair of the shared heap, called as loom calls it, timed
** by the loop the malloc reference uses (heap_pair.h).
** Usage: build/heap_bench SIZE THREADS; prints `ns_per_pair <median of 5>`.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <stdio.h>
#include <stdlib.h>

#include "heap_pair.h"

static int cmp_double (const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main (int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: heap_bench SIZE THREADS\n");
    return 2;
  }
  size_t size = (size_t)strtoull(argv[1], NULL, 10);
  int threads = atoi(argv[2]);
  if (size == 0 || threads < 1 || threads > 8 || loomi_heap_init() != 0)
    return 2;
  double v[5];
  for (int r = 0; r < 5; r++)
    v[r] = pair_time(loomi_heap_alloc, loomi_heap_free, size, threads);
  qsort(v, 5, sizeof v[0], cmp_double);
  printf("ns_per_pair %.6g\n", v[2]);
  return 0;
}
