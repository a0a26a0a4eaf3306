/* clock.c: monotonic time and absolute deadlines for every timed wait.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <math.h>

double loomi_now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void loomi_deadline_in (LoomDeadline *dl, double seconds) {
  if (seconds < 0 || isnan(seconds) || seconds > LOOM_TIMEOUT_MAX) {
    dl->forever = 1;
    dl->at.tv_sec = 0;
    dl->at.tv_nsec = 0;
    return;
  }
  dl->forever = 0;
  clock_gettime(CLOCK_MONOTONIC, &dl->at);
  double whole = floor(seconds);
  dl->at.tv_sec += (time_t)whole;
  dl->at.tv_nsec += (long)((seconds - whole) * 1e9);
  if (dl->at.tv_nsec >= 1000000000L) {
    dl->at.tv_sec += 1;
    dl->at.tv_nsec -= 1000000000L;
  }
}

int loomi_deadline_passed (const LoomDeadline *dl) {
  if (dl->forever)
    return 0;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec > dl->at.tv_sec ||
         (now.tv_sec == dl->at.tv_sec && now.tv_nsec >= dl->at.tv_nsec);
}

double loomi_deadline_left (const LoomDeadline *dl) {
  if (dl->forever)
    return -1;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double left = (double)(dl->at.tv_sec - now.tv_sec) +
                (double)(dl->at.tv_nsec - now.tv_nsec) * 1e-9;
  return left > 0 ? left : 0;
}

void loomi_opttimeout (lua_State *L, int arg, LoomDeadline *dl) {
  if (lua_isnoneornil(L, arg)) {
    loomi_deadline_in(dl, -1);
    return;
  }
  lua_Number t = luaL_checknumber(L, arg);
  luaL_argcheck(L, !isnan(t), arg, "timeout must be a number");
  luaL_argcheck(L, t >= 0, arg, "timeout must be non-negative");
  loomi_deadline_in(dl, (double)t);
}
