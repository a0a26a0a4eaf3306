/* limits.c: what this machine's primitives cost without loom, the reference
** column of `make bench`.  Each figure is the median of 5 repetitions; one
** line per figure: `limit <key> <median> <min> <max> <unit>`.
** Usage: build/limits [key ...]   (no key: all of them)
** SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "heap_pair.h"

#define REPS 5

static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- pthread create + join ---- */

static void *empty_thread (void *arg) {
  return arg;
}

static double thread_spawn (void) {
  enum { N = 2000 };
  double t0 = now();
  for (int i = 0; i < N; i++) {
    pthread_t tid;
    if (pthread_create(&tid, NULL, empty_thread, NULL) != 0)
      abort();
    pthread_join(tid, NULL);
  }
  return (now() - t0) / N * 1e6;
}

/* ---- a new Lua state with its standard libraries ---- */

static void *state_thread (void *arg) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_close(L);
  return arg;
}

static double lua_state (void) {
  enum { N = 2000 };
  double t0 = now();
  for (int i = 0; i < N; i++)
    state_thread(NULL);
  return (now() - t0) / N * 1e6;
}

/* Both together, the floor of a thread that runs its own interpreter. */
static double thread_state (void) {
  enum { N = 2000 };
  double t0 = now();
  for (int i = 0; i < N; i++) {
    pthread_t tid;
    if (pthread_create(&tid, NULL, state_thread, NULL) != 0)
      abort();
    pthread_join(tid, NULL);
  }
  return (now() - t0) / N * 1e6;
}

/* ---- fork + waitpid ---- */

static double fork_wait (void) {
  enum { N = 500 };
  double t0 = now();
  for (int i = 0; i < N; i++) {
    pid_t pid = fork();
    if (pid < 0)
      abort();
    if (pid == 0)
      _exit(0);
    int status;
    waitpid(pid, &status, 0);
  }
  return (now() - t0) / N * 1e6;
}

/* ---- condition-variable ping-pong between two threads ---- */

typedef struct PingPong {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  long turn;           /* odd: the partner's turn */
  long rounds;
} PingPong;

static void *pong (void *arg) {
  PingPong *p = arg;
  pthread_mutex_lock(&p->mu);
  for (long i = 0; i < p->rounds; i++) {
    while (p->turn % 2 == 0)
      pthread_cond_wait(&p->cv, &p->mu);
    p->turn++;
    pthread_cond_signal(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static double cond_pingpong (void) {
  PingPong p;
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.cv, NULL);
  p.turn = 0;
  p.rounds = 20000;
  pthread_t tid;
  pthread_create(&tid, NULL, pong, &p);
  double t0 = now();
  pthread_mutex_lock(&p.mu);
  for (long i = 0; i < p.rounds; i++) {
    p.turn++;
    pthread_cond_signal(&p.cv);
    while (p.turn % 2 == 1)
      pthread_cond_wait(&p.cv, &p.mu);
  }
  pthread_mutex_unlock(&p.mu);
  double dt = now() - t0;
  pthread_join(tid, NULL);
  pthread_cond_destroy(&p.cv);
  pthread_mutex_destroy(&p.mu);
  return dt / (double)p.rounds * 1e6;
}

/* ---- uncontended mutex lock + unlock ---- */

static double mutex_pair_with (pthread_mutexattr_t *attr) {
  enum { N = 10000000 };
  pthread_mutex_t mu;
  pthread_mutex_init(&mu, attr);
  double t0 = now();
  for (int i = 0; i < N; i++) {
    pthread_mutex_lock(&mu);
    pthread_mutex_unlock(&mu);
  }
  double dt = now() - t0;
  pthread_mutex_destroy(&mu);
  return dt / N * 1e9;
}

static double mutex_pair (void) {
  return mutex_pair_with(NULL);
}

/* The kind loom uses: process-shared and robust. */
static double mutex_pair_robust (void) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  double r = mutex_pair_with(&attr);
  pthread_mutexattr_destroy(&attr);
  return r;
}

/* ---- contended atomic add: 2 threads x 500000 ---- */

static atomic_long counter;

static void *adder (void *arg) {
  for (int i = 0; i < 500000; i++)
    atomic_fetch_add(&counter, 1);
  return arg;
}

static double atomic_add (void) {
  atomic_store(&counter, 0);
  pthread_t a, b;
  double t0 = now();
  pthread_create(&a, NULL, adder, NULL);
  pthread_create(&b, NULL, adder, NULL);
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  double dt = now() - t0;
  if (atomic_load(&counter) != 1000000)
    abort();
  return dt / 1e6 * 1e9;
}

/* ---- 1000 threads started at once, each sleeping 0.2 s: wall - 0.2 s ---- */

static void *sleeper (void *arg) {
  struct timespec ts = { 0, 200000000 };
  nanosleep(&ts, NULL);
  return arg;
}

static double sleep_fanout (void) {
  enum { N = 1000 };
  static pthread_t tids[N];
  double t0 = now();
  for (int i = 0; i < N; i++)
    if (pthread_create(&tids[i], NULL, sleeper, NULL) != 0)
      abort();
  for (int i = 0; i < N; i++)
    pthread_join(tids[i], NULL);
  return (now() - t0 - 0.2) * 1e3;
}

/* ---- a bounded queue (capacity 1024, mutex + two conditions), one
** producer thread to one consumer, 1e6 integers: messages/s ---- */

typedef struct Ring {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full;
  long items[1024];
  size_t head, count;
  long n;
} Ring;

static void *ring_producer (void *arg) {
  Ring *q = arg;
  for (long i = 1; i <= q->n + 1; i++) {
    long v = i <= q->n ? i : -1;
    pthread_mutex_lock(&q->mu);
    while (q->count == 1024)
      pthread_cond_wait(&q->not_full, &q->mu);
    q->items[(q->head + q->count) % 1024] = v;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
  }
  return NULL;
}

static double queue_1024 (void) {
  static Ring q;
  pthread_mutex_init(&q.mu, NULL);
  pthread_cond_init(&q.not_empty, NULL);
  pthread_cond_init(&q.not_full, NULL);
  q.head = q.count = 0;
  q.n = 1000000;
  pthread_t tid;
  double t0 = now();
  pthread_create(&tid, NULL, ring_producer, &q);
  long got = 0;
  for (;;) {
    pthread_mutex_lock(&q.mu);
    while (q.count == 0)
      pthread_cond_wait(&q.not_empty, &q.mu);
    long v = q.items[q.head];
    q.head = (q.head + 1) % 1024;
    q.count--;
    pthread_cond_signal(&q.not_full);
    pthread_mutex_unlock(&q.mu);
    if (v < 0)
      break;
    got++;
  }
  double dt = now() - t0;
  pthread_join(tid, NULL);
  if (got != q.n)
    abort();
  return (double)q.n / dt;
}

/* ---- an empty C method pair called from Lua ----
** `o:acquire(); o:release()` on a userdata whose methods are empty C
** functions: the same dispatch a loom lock pays (method lookup through the
** metatable's __index, a C call each), with nothing behind it. */

static int empty_cfunc (lua_State *L) {
  (void)L;
  return 0;
}

static double empty_cpair (void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newuserdatauv(L, 16, 0);
  lua_createtable(L, 0, 1);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, empty_cfunc);
  lua_setfield(L, -2, "acquire");
  lua_pushcfunction(L, empty_cfunc);
  lua_setfield(L, -2, "release");
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_setglobal(L, "o");
  if (luaL_loadstring(L, "local o = o\n"
                         "for _ = 1, 1000000 do o:acquire(); o:release() end") != LUA_OK)
    abort();
  double t0 = now();
  if (lua_pcall(L, 0, 0, 0) != LUA_OK)
    abort();
  double dt = now() - t0;
  lua_close(L);
  return dt / 1e6 * 1e9;
}

/* ---- memcpy of a 100000-double payload ---- */

static double memcpy_bw (void) {
  enum { N = 100000, ROUNDS = 2000 };
  double *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
  for (int i = 0; i < N; i++)
    a[i] = i;
  double t0 = now();
  for (int r = 0; r < ROUNDS; r++) {
    a[r % N] = r;
    memcpy(b, a, N * sizeof *a);
    __asm__ volatile("" : : "r"(b) : "memory");
  }
  double dt = now() - t0;
  free(a);
  free(b);
  return (double)ROUNDS * N * sizeof(double) / dt / 1e6;
}

/* ---- glibc malloc + free, the heap rows' reference ---- */

static void *plain_malloc (size_t n) {
  return malloc(n);
}

static double malloc_64 (void) {
  return pair_time(plain_malloc, free, 64, 1);
}

static double malloc_64_2t (void) {
  return pair_time(plain_malloc, free, 64, 2);
}

static double malloc_64k (void) {
  return pair_time(plain_malloc, free, 64 << 10, 1);
}

static double malloc_64k_2t (void) {
  return pair_time(plain_malloc, free, 64 << 10, 2);
}

/* ---- driver ---- */

static const struct {
  const char *key;
  double (*run) (void);
  const char *unit;
} limits[] = {
  {"thread_spawn", thread_spawn, "us"},
  {"lua_state", lua_state, "us"},
  {"thread_state", thread_state, "us"},
  {"fork_wait", fork_wait, "us"},
  {"cond_pingpong", cond_pingpong, "us"},
  {"mutex_pair", mutex_pair, "ns"},
  {"mutex_pair_robust", mutex_pair_robust, "ns"},
  {"atomic_add", atomic_add, "ns"},
  {"sleep_fanout", sleep_fanout, "ms"},
  {"queue_1024", queue_1024, "msgs/s"},
  {"empty_cpair", empty_cpair, "ns"},
  {"memcpy", memcpy_bw, "MB/s"},
  {"malloc_64", malloc_64, "ns"},
  {"malloc_64_2t", malloc_64_2t, "ns"},
  {"malloc_64k", malloc_64k, "ns"},
  {"malloc_64k_2t", malloc_64k_2t, "ns"},
};

static int cmp_double (const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int wanted (int argc, char **argv, const char *key) {
  if (argc < 2)
    return 1;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], key) == 0)
      return 1;
  return 0;
}

int main (int argc, char **argv) {
  for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
    if (!wanted(argc, argv, limits[k].key))
      continue;
    double v[REPS];
    for (int r = 0; r < REPS; r++)
      v[r] = limits[k].run();
    qsort(v, REPS, sizeof v[0], cmp_double);
    printf("limit %s %.6g %.6g %.6g %s\n", limits[k].key, v[REPS / 2], v[0],
           v[REPS - 1], limits[k].unit);
    fflush(stdout);
  }
  return 0;
}
