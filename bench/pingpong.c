/* pingpong.c: the baseline of B2 (bench/pool_bench.lua): two threads hand a
** turn back and forth through one mutex and two condition variables; one
** round trip is two wake-ups, as a pool round trip is.
** Build and run: cc -O2 -pthread bench/pingpong.c -o build/pingpong && build/pingpong
** SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c1 = PTHREAD_COND_INITIALIZER, c2 = PTHREAD_COND_INITIALIZER;
static int turn = 0; static int N = 20000;
static void *other(void *a) { (void)a;
  for (int i = 0; i < N; i++) { pthread_mutex_lock(&mu); while (turn != 1) pthread_cond_wait(&c1, &mu); turn = 0; pthread_cond_signal(&c2); pthread_mutex_unlock(&mu); }
  return NULL; }
int main(void) { double best = 1e9;
  for (int r = 0; r < 5; r++) { pthread_t t; turn = 0; pthread_create(&t, NULL, other, NULL);
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < N; i++) { pthread_mutex_lock(&mu); turn = 1; pthread_cond_signal(&c1); while (turn != 0) pthread_cond_wait(&c2, &mu); pthread_mutex_unlock(&mu); }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double us = ((b.tv_sec-a.tv_sec)*1e9 + (b.tv_nsec-a.tv_nsec))/N/1000.0; if (us < best) best = us;
  pthread_join(t, NULL); }
  printf("condvar ping-pong        %8.2f us (best of 5)\n", best); }
