/* failfork.c: an LD_PRELOAD shim for the fault specs.  The fork() calls
** listed in LOOM_FAIL_FORKS (1-based, comma-separated; "all" for every
** one) fail with EAGAIN, as when the process limit is reached; the others
** are the C library's.  RLIMIT_NPROC cannot do this for root.
** SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

pid_t fork (void);

static int listed (const char *list, long call) {
  if (strcmp(list, "all") == 0)
    return 1;
  for (const char *p = list; *p != '\0';) {
    char *end;
    long n = strtol(p, &end, 10);
    if (end == p)
      return 0;
    if (n == call)
      return 1;
    p = *end == ',' ? end + 1 : end;
  }
  return 0;
}

pid_t fork (void) {
  static atomic_long calls;
  long call = atomic_fetch_add(&calls, 1) + 1;
  const char *list = getenv("LOOM_FAIL_FORKS");
  if (list != NULL && listed(list, call)) {
    errno = EAGAIN;
    return -1;
  }
  pid_t (*real_fork)(void) = (pid_t (*)(void))dlsym(RTLD_NEXT, "fork");
  return real_fork();
}
