/* mpi/core.c: loom.mpi.core, the few MPI calls loom.mpi's pool needs.
** Lua: init(), world(), parent(), rank(c), size(c), remote_size(c),
**      send(c, dest, tag, s), probe(c, [timeout]), recv(c, src, tag),
**      spawn(cmd, argv, n), disconnect(c), hostname(), finalize().
** Communicators are Fortran handles (integers), so that a loom thread's
** interpreter can be given one.  Built only where mpicc is found: loom's
** core keeps no MPI dependency.
** SPDX-License-Identifier: MIT */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>

#include <limits.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"

#if defined(__GNUC__)
#define LOOM_MPI_API __attribute__((visibility("default")))
#else
#define LOOM_MPI_API
#endif

LOOM_MPI_API int luaopen_loom_mpi_core (lua_State *L);

/* ---- helpers ---- */

static int mpi_fail (lua_State *L, const char *what, int rc) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
    len = 0;
  msg[len] = '\0';
  return luaL_error(L, "%s: %s", what, len ? msg : "MPI error");
}

static void need_init (lua_State *L) {
  int inited = 0, done = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&done);
  if (!inited)
    luaL_error(L, "MPI is not initialized (call init first)");
  if (done)
    luaL_error(L, "MPI is finalized");
}

static MPI_Comm checkcomm (lua_State *L, int arg) {
  lua_Integer h = luaL_checkinteger(L, arg);
  luaL_argcheck(L, h >= INT_MIN && h <= INT_MAX, arg, "invalid communicator");
  need_init(L);
  MPI_Comm c = MPI_Comm_f2c((MPI_Fint)h);
  luaL_argcheck(L, c != MPI_COMM_NULL, arg, "invalid communicator");
  return c;
}

static int checkrank (lua_State *L, int arg) {
  lua_Integer r = luaL_checkinteger(L, arg);
  luaL_argcheck(L, r >= 0 && r <= INT_MAX, arg, "rank out of range");
  return (int)r;
}

static int checktag (lua_State *L, int arg) {
  lua_Integer t = luaL_checkinteger(L, arg);
  luaL_argcheck(L, t >= 0 && t <= 32767, arg, "tag out of range");
  return (int)t;
}

static void pushcomm (lua_State *L, MPI_Comm c) {
  lua_pushinteger(L, (lua_Integer)MPI_Comm_c2f(c));
}

/* ---- Lua bindings ---- */

/* Initializes MPI once.  A pool's dispatcher thread makes the MPI calls
** while the pool is open, but the script's own thread may still ask for
** its rank or host meanwhile: MPI_THREAD_MULTIPLE is asked for.  Returns
** whether the level provided lets two threads make calls at once, and
** whether it lets a thread other than the main one make them. */
static int mpi_init (lua_State *L) {
  int inited = 0, done = 0, provided = 0;
  MPI_Finalized(&done);
  if (done)
    return luaL_error(L, "MPI is finalized");
  MPI_Initialized(&inited);
  if (!inited) {
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS)
      return mpi_fail(L, "cannot initialize MPI", rc);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  }
  else
    MPI_Query_thread(&provided);
  lua_pushboolean(L, provided >= MPI_THREAD_MULTIPLE);
  lua_pushboolean(L, provided >= MPI_THREAD_SERIALIZED);
  return 2;
}

static int mpi_world (lua_State *L) {
  need_init(L);
  pushcomm(L, MPI_COMM_WORLD);
  return 1;
}

/* The intercommunicator to the process that spawned this one, or nil. */
static int mpi_parent (lua_State *L) {
  need_init(L);
  MPI_Comm p = MPI_COMM_NULL;
  MPI_Comm_get_parent(&p);
  if (p == MPI_COMM_NULL)
    return 0;
  MPI_Comm_set_errhandler(p, MPI_ERRORS_RETURN);
  pushcomm(L, p);
  return 1;
}

static int mpi_rank (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  int r = 0;
  MPI_Comm_rank(c, &r);
  lua_pushinteger(L, r);
  return 1;
}

static int mpi_size (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  int n = 0;
  MPI_Comm_size(c, &n);
  lua_pushinteger(L, n);
  return 1;
}

/* The size of the other group of an intercommunicator, else nil. */
static int mpi_remote_size (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  int inter = 0, n = 0;
  MPI_Comm_test_inter(c, &inter);
  if (!inter)
    return 0;
  MPI_Comm_remote_size(c, &n);
  lua_pushinteger(L, n);
  return 1;
}

static int mpi_send (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  int dest = checkrank(L, 2), tag = checktag(L, 3);
  size_t n;
  const char *s = luaL_checklstring(L, 4, &n);
  luaL_argcheck(L, n <= INT_MAX, 4, "message longer than 2 GiB");
  int rc = MPI_Send(s, (int)n, MPI_BYTE, dest, tag, c);
  if (rc != MPI_SUCCESS)
    return mpi_fail(L, "cannot send", rc);
  return 0;
}

static void nap (long ns) {
  struct timespec ts = { 0, ns };
  nanosleep(&ts, NULL);
}

static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Waits for a message from any source with any tag: source, tag, size; or
** nil when timeout seconds pass first (0: only looks).  MPI's blocking
** receive spins on a core; this polls instead, sleeping from 1 us up to
** 1 ms between looks while nothing comes, as mpi4py.futures does, so an
** idle rank costs next to no CPU and a busy one answers within a poll. */
static int mpi_probe (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  double timeout = luaL_optnumber(L, 2, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || timeout >= 0, 2,
                "timeout must be non-negative");
  double deadline = timeout >= 0 ? now() + timeout : 0;
  long backoff = 1000;
#ifdef __linux__
  /* Linux rounds a sleep up by the thread's timer slack, 50 us by default,
  ** which would be the floor of every reply's latency: this thread only
  ** polls, so it asks for 1 us */
  prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
#endif
  for (;;) {
    int flag = 0;
    MPI_Status st;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, c, &flag, &st);
    if (rc != MPI_SUCCESS)
      return mpi_fail(L, "cannot probe", rc);
    if (flag) {
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      lua_pushinteger(L, st.MPI_SOURCE);
      lua_pushinteger(L, st.MPI_TAG);
      lua_pushinteger(L, count);
      return 3;
    }
    if (timeout >= 0 && now() >= deadline)
      return 0;
    nap(backoff);
    if (backoff < 1000000)
      backoff *= 2;
  }
}

/* Receives the message probe announced, as a string. */
static int mpi_recv (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  int src = checkrank(L, 2), tag = checktag(L, 3);
  MPI_Status st;
  int rc = MPI_Probe(src, tag, c, &st);
  if (rc != MPI_SUCCESS)
    return mpi_fail(L, "cannot receive", rc);
  int count = 0;
  MPI_Get_count(&st, MPI_BYTE, &count);
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)count);
  rc = MPI_Recv(p, count, MPI_BYTE, src, tag, c, MPI_STATUS_IGNORE);
  if (rc != MPI_SUCCESS)
    return mpi_fail(L, "cannot receive", rc);
  luaL_pushresultsize(&b, (size_t)count);
  return 1;
}

/* Starts n processes running cmd with the strings of argv and the MPI_Info
** keys of the optional table info; returns the intercommunicator to them,
** or nil and MPI's reason.  The strings are copied into GC-owned blocks,
** so no raise can leak the MPI_Info. */
static char *dupstring (lua_State *L, int idx) {
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  char *p = lua_newuserdatauv(L, n + 1, 0);
  memcpy(p, s, n + 1);
  lua_replace(L, idx);   /* the copy is anchored where the string was */
  return p;
}

static int mpi_spawn (lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = luaL_checkinteger(L, 3);
  luaL_argcheck(L, n >= 1 && n <= 65536, 3, "worker count out of range");
  if (!lua_isnoneornil(L, 4))
    luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  need_init(L);
  lua_Integer argc = (lua_Integer)lua_rawlen(L, 2);
  luaL_argcheck(L, argc <= 256, 2, "too many arguments");
  char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
  lua_newtable(L);   /* anchors: argv's strings, then info's */
  int anchors = lua_gettop(L);
  luaL_checkstack(L, 8, NULL);
  for (lua_Integer i = 1; i <= argc; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 2, "arguments must be strings");
    argv[i - 1] = dupstring(L, lua_gettop(L));
    lua_rawseti(L, anchors, i);
  }
  argv[argc] = NULL;
  char *cmdcopy = (lua_pushvalue(L, 1), dupstring(L, lua_gettop(L)));
  lua_rawseti(L, anchors, argc + 1);
  /* the info's keys and values, checked and copied before it exists */
  int ninfo = 0;
  if (!lua_isnil(L, 4)) {
    lua_pushnil(L);
    while (lua_next(L, 4)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        return luaL_argerror(L, 4, "info keys and values must be strings");
      dupstring(L, lua_gettop(L));
      lua_rawseti(L, anchors, argc + 2 + 2 * ninfo + 1);
      lua_pushvalue(L, -1);
      dupstring(L, lua_gettop(L));
      lua_rawseti(L, anchors, argc + 2 + 2 * ninfo);
      ninfo++;
    }
  }
  MPI_Info info = MPI_INFO_NULL;
  if (ninfo > 0) {
    MPI_Info_create(&info);
    for (int i = 0; i < ninfo; i++) {
      lua_rawgeti(L, anchors, argc + 2 + 2 * i);
      lua_rawgeti(L, anchors, argc + 2 + 2 * i + 1);
      MPI_Info_set(info, lua_touserdata(L, -2), lua_touserdata(L, -1));
      lua_pop(L, 2);
    }
  }
  MPI_Comm inter = MPI_COMM_NULL;
  int rc = MPI_Comm_spawn(cmdcopy, argc ? argv : MPI_ARGV_NULL, (int)n,
                          info, 0, MPI_COMM_SELF, &inter,
                          MPI_ERRCODES_IGNORE);
  if (info != MPI_INFO_NULL)
    MPI_Info_free(&info);
  if (rc != MPI_SUCCESS || inter == MPI_COMM_NULL) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
      len = 0;
    lua_pushnil(L);
    lua_pushlstring(L, msg, (size_t)len);
    return 2;
  }
  MPI_Comm_set_errhandler(inter, MPI_ERRORS_RETURN);
  pushcomm(L, inter);
  return 1;
}

static int mpi_disconnect (lua_State *L) {
  MPI_Comm c = checkcomm(L, 1);
  luaL_argcheck(L, c != MPI_COMM_WORLD && c != MPI_COMM_SELF, 1,
                "cannot disconnect the world");
  int rc = MPI_Comm_disconnect(&c);
  if (rc != MPI_SUCCESS)
    return mpi_fail(L, "cannot disconnect", rc);
  return 0;
}

static int mpi_hostname (lua_State *L) {
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  need_init(L);
  MPI_Get_processor_name(name, &len);
  lua_pushlstring(L, name, (size_t)len);
  return 1;
}

/* Idempotent; true when this call finalized MPI. */
static int mpi_finalize (lua_State *L) {
  int inited = 0, done = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&done);
  if (!inited || done) {
    lua_pushboolean(L, 0);
    return 1;
  }
  MPI_Finalize();
  lua_pushboolean(L, 1);
  return 1;
}

static int mpi_initialized (lua_State *L) {
  int inited = 0, done = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&done);
  lua_pushboolean(L, inited && !done);
  return 1;
}

/* Ends every process of the job: for a rank that cannot go on. */
static int mpi_abort (lua_State *L) {
  lua_Integer code = luaL_optinteger(L, 1, 1);
  need_init(L);
  MPI_Abort(MPI_COMM_WORLD, (int)(code & 0xff));
  return 0;
}

static const luaL_Reg mpi_funcs[] = {
  {"init", mpi_init},
  {"initialized", mpi_initialized},
  {"world", mpi_world},
  {"parent", mpi_parent},
  {"rank", mpi_rank},
  {"size", mpi_size},
  {"remote_size", mpi_remote_size},
  {"send", mpi_send},
  {"probe", mpi_probe},
  {"recv", mpi_recv},
  {"spawn", mpi_spawn},
  {"disconnect", mpi_disconnect},
  {"hostname", mpi_hostname},
  {"finalize", mpi_finalize},
  {"abort", mpi_abort},
  {NULL, NULL}
};

LOOM_MPI_API int luaopen_loom_mpi_core (lua_State *L) {
  luaL_newlib(L, mpi_funcs);
  int major = 0, minor = 0;
  MPI_Get_version(&major, &minor);
  lua_pushfstring(L, "MPI %d.%d", major, minor);
  lua_setfield(L, -2, "mpi_version");
  return 1;
}
