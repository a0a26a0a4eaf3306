/* xfer.c: the transfer codec.  Every value that crosses between states
** (thread arguments and results, tasks, queue items, process results) is
** encoded here into one message in the shared heap and decoded on the other
** side.  Tables keep cycles, shared references and metatables; Lua functions
** travel as bytecode with their upvalues; C functions as themselves; loom
** objects by reference.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
  T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_TABLE, T_REF, T_LFUNC,
  T_CFUNC, T_OBJ, T_GLOBALS, T_LOADED, T_LIGHTUD, T_UPJOIN,
  T_CNAMED               /* portable only: a C function as module, field */
};

#define XFER_MAXDEPTH  200
#define XFER_MAXPATH   XFER_MAXDEPTH
#define MSG_MAGIC      0x6d73676cu

/* A message: header, the object references, then the payload. */
struct LoomMsg {
  uint32_t magic;
  uint32_t nobjs;
  uint64_t len;          /* payload bytes */
  uint64_t check;        /* checksum of the payload */
  int32_t pid;           /* sender's process: C functions are checked when
                            a message crosses into another process */
  int32_t pad;
  /* LoomObj *objs[nobjs]; unsigned char payload[len]; */
};

static LoomObj **msg_objs (LoomMsg *m) {
  return (LoomObj **)(m + 1);
}

static unsigned char *msg_payload (LoomMsg *m) {
  return (unsigned char *)(msg_objs(m) + m->nobjs);
}

static LoomObj *const *msg_cobjs (const LoomMsg *m) {
  return (LoomObj *const *)(m + 1);
}

static const unsigned char *msg_cpayload (const LoomMsg *m) {
  return (const unsigned char *)(msg_cobjs(m) + m->nobjs);
}

/* Fletcher-style over 64-bit words in four lanes: only additions in the
** loop, which compilers vectorize, so that a megabyte message costs a
** fraction of its copy; the sums are mixed at the end.  It guards against
** a corrupted message (a changed, lost or moved word), not against a
** forger (messages never leave the process tree).  With dst, the bytes
** are also copied there, in the same pass. */
static inline uint64_t checksum_copy (unsigned char *dst,
                                      const unsigned char *p, size_t n) {
  uint64_t a[4] = { 0, 0, 0, 0 }, b[4] = { 0, 0, 0, 0 };
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    memcpy(w, p + i, 32);
    if (dst != NULL)
      memcpy(dst + i, w, 32);
    for (int l = 0; l < 4; l++) {
      a[l] += w[l];
      b[l] += a[l];
    }
  }
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
  for (int l = 0; l < 4; l++) {
    h = (h ^ a[l]) * 0xff51afd7ed558ccdULL;
    h = (h ^ b[l] ^ (h >> 29)) * 0xc4ceb9fe1a85ec53ULL;
  }
  for (; i < n; i++) {
    if (dst != NULL)
      dst[i] = p[i];
    h = (h ^ p[i]) * 0x100000001b3ULL;
  }
  return h ^ (h >> 32);
}

static uint64_t checksum (const unsigned char *p, size_t n) {
  return checksum_copy(NULL, p, n);
}

/* ---- the encoder's buffer: GC-owned, reused by the state ---- */

typedef struct Buf {
  unsigned char *data;
  size_t len, cap;
  LoomObj **objs;
  uint32_t nobjs, capobjs;
  int busy;
} Buf;

static int buf_gc (lua_State *L) {
  Buf *b = lua_touserdata(L, 1);
  free(b->data);
  free(b->objs);
  b->data = NULL;
  b->objs = NULL;
  return 0;
}

static const char BUF_KEY = 'b';
static const char DUMPCACHE_KEY = 'd';
static const char LOADCACHE_KEY = 'l';

/* Pushes a free buffer: the state's cached one, or a fresh one if that is in
** use (a finalizer may encode while an encode is running). */
static Buf *buf_get (lua_State *L) {
  Buf *b = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &BUF_KEY) == LUA_TUSERDATA) {
    b = lua_touserdata(L, -1);
    if (!b->busy) {
      b->busy = 1;
      b->len = 0;
      b->nobjs = 0;
      return b;
    }
  }
  int cache = (b == NULL);
  lua_pop(L, 1);
  b = lua_newuserdatauv(L, sizeof(Buf), 0);
  memset(b, 0, sizeof *b);
  lua_newtable(L);
  lua_pushcfunction(L, buf_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if (cache) {
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &BUF_KEY);
  }
  b->busy = 1;
  return b;
}

/* ---- encoder ---- */

typedef struct PathItem {
  int kind;              /* 0 index, 1 field, 2 key, 3 upvalue, 4 metatable */
  lua_Integer i;
  const char *s;
} PathItem;

typedef struct Enc {
  lua_State *L;
  Buf *b;
  const char *root;
  int seen;              /* stack index: value -> ref index, or 0 */
  int loaded;            /* stack index: module table -> name, or 0 */
  int upvals;            /* stack index: upvalue id -> ref*256+n, or 0 */
  int dumps;             /* stack index: function -> bytecode */
  uint32_t nrefs;
  int depth;
  int call;              /* the values are a call: target, then args */
  const void *globals;   /* the sender's globals table, sent by name */
  int portable;          /* no addresses: for loom.encode (portable.c) */
  int cfuncs;            /* stack index: C function -> "module\0field" */
  PathItem path[XFER_MAXPATH + 1];
} Enc;

static void enc_raise (Enc *e, const char *fmt, const char *what) {
  lua_State *L = e->L;
  luaL_Buffer pb;
  luaL_checkstack(L, 4, NULL);
  luaL_buffinit(L, &pb);
  int d = 0;
  if (e->call && e->depth > 0) {   /* values are (target, args...) */
    char num[32];
    if (e->path[0].i == 1)
      luaL_addstring(&pb, "target");
    else {
      snprintf(num, sizeof num, "args[%lld]", (long long)e->path[0].i - 1);
      luaL_addstring(&pb, num);
    }
    d = 1;
  }
  else {
    size_t rl = strlen(e->root);
    if (rl >= 2 && strcmp(e->root + rl - 2, "[]") == 0)
      rl -= 2;   /* "results[]": the values are always numbered */
    luaL_addlstring(&pb, e->root, rl);
  }
  for (; d < e->depth; d++) {
    const PathItem *p = &e->path[d];
    char num[32];
    if (e->depth > 16 && d == 8) {   /* keep a deep path readable */
      luaL_addstring(&pb, "...");
      d = e->depth - 6;
      p = &e->path[d];
    }
    switch (p->kind) {
      case 0:
        snprintf(num, sizeof num, "[%lld]", (long long)p->i);
        luaL_addstring(&pb, num);
        break;
      case 1: luaL_addchar(&pb, '.'); luaL_addstring(&pb, p->s); break;
      case 2: luaL_addstring(&pb, "[?]"); break;
      case 3:
        luaL_addstring(&pb, "<upvalue ");
        luaL_addstring(&pb, p->s);
        luaL_addchar(&pb, '>');
        break;
      default: luaL_addstring(&pb, "<metatable>"); break;
    }
  }
  luaL_pushresult(&pb);
  e->b->busy = 0;
  if (e->portable && strncmp(fmt, "cannot transfer ", 16) == 0) {
    lua_pushfstring(L, "cannot encode %s", fmt + 16);
    fmt = lua_tostring(L, -1);   /* anchored on the stack until the raise */
    lua_insert(L, -2);
  }
  luaL_error(L, fmt, lua_tostring(L, -1), what);
}

static void enc_grow (Enc *e, size_t need) {
  Buf *b = e->b;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + need) {
    if (cap > SIZE_MAX / 2)
      enc_raise(e, "cannot transfer %s: %s", "message too large");
    cap *= 2;
  }
  unsigned char *d = realloc(b->data, cap);
  if (d == NULL)
    enc_raise(e, "cannot transfer %s: %s", "not enough memory");
  b->data = d;
  b->cap = cap;
}

/* Where the next n bytes go; a table of a million numbers asks a million
** times, so the common case must stay one inlined compare. */
static inline unsigned char *enc_reserve (Enc *e, size_t n) {
  Buf *b = e->b;
  if (b->cap - b->len < n)
    enc_grow(e, n);
  return b->data + b->len;
}

static void put (Enc *e, const void *p, size_t n) {
  memcpy(enc_reserve(e, n), p, n);
  e->b->len += n;
}

static void put_u8 (Enc *e, unsigned v) {
  *enc_reserve(e, 1) = (unsigned char)v;
  e->b->len++;
}

/* A tag and 8 bytes: the shape of every number. */
static inline void put_tagged8 (Enc *e, unsigned tag, const void *p) {
  unsigned char *q = enc_reserve(e, 9);
  q[0] = (unsigned char)tag;
  memcpy(q + 1, p, 8);
  e->b->len += 9;
}

static void put_u32 (Enc *e, uint32_t v) { put(e, &v, 4); }

static void put_str (Enc *e, const char *s, size_t n) {
  if (n > UINT32_MAX)
    enc_raise(e, "cannot transfer %s: %s", "string longer than 4 GiB");
  put_u32(e, (uint32_t)n);
  put(e, s, n);
}

/* The encoder's helper tables sit in stack slots reserved before encoding
** starts (nil until first needed), so making one in the middle of a table
** traversal never disturbs the traversal's stack. */
static int enc_lazy_table (Enc *e, int *slot) {
  lua_State *L = e->L;
  if (lua_isnil(L, *slot)) {
    lua_newtable(L);
    lua_replace(L, *slot);
  }
  return *slot;
}

/* Registers the value at idx under the next ref index (tables and
** functions, in the order the decoder will create them). */
static void enc_register (Enc *e, int idx, int remember) {
  uint32_t ref = e->nrefs++;
  if (remember) {
    lua_State *L = e->L;
    int seen = enc_lazy_table(e, &e->seen);
    lua_pushvalue(L, idx);
    lua_pushinteger(L, ref);
    lua_rawset(L, seen);
  }
}

static int enc_seen (Enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->seen))
    return 0;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
    put_u8(e, T_REF);
    put_u32(e, (uint32_t)lua_tointeger(L, -1));
    lua_pop(L, 1);
    return 1;
  }
  lua_pop(L, 1);
  return 0;
}

/* Names the table at idx if it is a module in package.loaded. */
static const char *enc_module_name (Enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->loaded)) {
    enc_lazy_table(e, &e->loaded);
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        if (lua_type(L, -1) == LUA_TTABLE && lua_type(L, -2) == LUA_TSTRING) {
          lua_pushvalue(L, -1);
          lua_pushvalue(L, -3);
          lua_rawset(L, e->loaded);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->loaded) == LUA_TSTRING) {
    const char *name = lua_tostring(L, -1);  /* anchored in e->loaded */
    lua_pop(L, 1);
    return name;
  }
  lua_pop(L, 1);
  return NULL;
}

static int is_alpha (char c) {
  return c == '_' || (unsigned)((c | 32) - 'a') < 26u;
}

static int is_identifier (const char *s, size_t n) {
  if (n == 0 || n > 40 || !is_alpha(s[0]))
    return 0;
  for (size_t i = 1; i < n; i++)
    if (!is_alpha(s[i]) && (unsigned)(s[i] - '0') >= 10u)
      return 0;
  return 1;
}

static void enc_value (Enc *e, int idx);

static void enc_push_path (Enc *e, int kind, lua_Integer i, const char *s) {
  if (e->depth >= XFER_MAXDEPTH)
    enc_raise(e, "cannot transfer %s: %s", "nesting deeper than 200 levels");
  PathItem *p = &e->path[e->depth++];
  p->kind = kind;
  p->i = i;
  p->s = s;
}

static void enc_key_path (Enc *e, int kidx) {
  lua_State *L = e->L;
  if (lua_isinteger(L, kidx))
    enc_push_path(e, 0, lua_tointeger(L, kidx), NULL);
  else if (lua_type(L, kidx) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, kidx, &n);
    enc_push_path(e, is_identifier(s, n) ? 1 : 2, 0, s);
  }
  else
    enc_push_path(e, 2, 0, NULL);
}

/* Encodes nil, booleans and numbers, which make up most big tables, with
** no stack traffic and no path bookkeeping (they cannot fail); returns 0,
** having written nothing, for any other value. */
static inline int enc_scalar (Enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        int64_t i = (int64_t)lua_tointeger(L, idx);
        put_tagged8(e, T_INT, &i);
      }
      else {
        double x = (double)lua_tonumber(L, idx);
        put_tagged8(e, T_FLT, &x);
      }
      return 1;
    case LUA_TBOOLEAN:
      put_u8(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
      return 1;
    case LUA_TNIL:
      put_u8(e, T_NIL);
      return 1;
    default:
      return 0;
  }
}

/* Element i of the array section, the value at idx. */
static void enc_element (Enc *e, int idx, lua_Integer i) {
  if (!enc_scalar(e, idx)) {
    enc_push_path(e, 0, i, NULL);
    enc_value(e, idx);
    e->depth--;
  }
}

static void enc_pair (Enc *e, int k) {
  enc_push_path(e, 2, 0, NULL);     /* a key is named by its own path */
  enc_value(e, k);
  e->depth--;
  enc_key_path(e, k);
  enc_value(e, k + 1);
  e->depth--;
}

/* The table is sent as its array section, t[1..#t] with nils for holes
** (so the receiver's # finds the same border), then every other key as a
** pair.  One traversal does both: it visits the array part first, in key
** order, so the section is filled straight from it until the first key out
** of that order; the rest of the section is then read with rawgeti, and
** the traversal skips those keys when it reaches them.  This relies on no
** particular order for correctness, only for speed.  Raw access
** throughout: no metamethod runs. */
static void enc_table (Enc *e, int idx) {
  lua_State *L = e->L;
  const char *mod = enc_module_name(e, idx);
  if (mod != NULL) {
    put_u8(e, T_LOADED);
    put_str(e, mod, strlen(mod));
    return;
  }
  enc_register(e, idx, 1);
  lua_Unsigned narr = lua_rawlen(L, idx);
  if (narr > INT32_MAX)
    enc_raise(e, "cannot transfer %s: %s", "table too large");
  uint32_t counts[2] = { (uint32_t)narr, 0 };
  put_u8(e, T_TABLE);
  size_t counts_at = e->b->len;
  put(e, counts, 8);
  lua_Unsigned next = 1;         /* the section's next element; 0: complete */
  lua_Unsigned read = narr + 1;  /* from here on, the section was rawgeti'd */
  int k = lua_gettop(L) + 1;     /* key, then value, while traversing */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int isint = 0;
    lua_Integer ki = 0;
    if (lua_type(L, k) == LUA_TNUMBER)   /* not a numeric string */
      ki = lua_tointegerx(L, k, &isint);
    int insec = isint && ki >= 1 && (lua_Unsigned)ki <= narr;
    if (insec && (lua_Unsigned)ki == next &&
        lua_type(L, k + 1) == LUA_TNUMBER) {
      /* the next element and a number: the bulk of a big table, written
      ** here rather than through enc_element's calls */
      unsigned char *q = enc_reserve(e, 9);
      if (lua_isinteger(L, k + 1)) {
        int64_t v = (int64_t)lua_tointeger(L, k + 1);
        q[0] = T_INT;
        memcpy(q + 1, &v, 8);
      }
      else {
        double x = (double)lua_tonumber(L, k + 1);
        q[0] = T_FLT;
        memcpy(q + 1, &x, 8);
      }
      e->b->len += 9;
      next++;
    }
    else if (insec && next != 0 && (lua_Unsigned)ki >= next) {
      for (; next < (lua_Unsigned)ki; next++)
        put_u8(e, T_NIL);
      enc_element(e, k + 1, ki);
      next++;
    }
    else {
      if (next != 0) {
        read = next;
        for (; next <= narr; next++) {
          lua_rawgeti(L, idx, (lua_Integer)next);
          enc_element(e, k + 2, (lua_Integer)next);
          lua_settop(L, k + 1);
        }
        next = 0;
      }
      /* a key below `read` was sent as a hole: its value follows as a pair */
      if (!insec || (lua_Unsigned)ki < read) {
        enc_pair(e, k);
        if (++counts[1] == 0)
          enc_raise(e, "cannot transfer %s: %s", "table too large");
      }
    }
    lua_settop(L, k);
  }
  for (; next != 0 && next <= narr; next++)   /* never visited: nil */
    put_u8(e, T_NIL);
  memcpy(e->b->data + counts_at + 4, &counts[1], 4);
  if (lua_getmetatable(L, idx)) {
    enc_push_path(e, 4, 0, NULL);
    enc_value(e, lua_gettop(L));
    e->depth--;
    lua_pop(L, 1);
  }
  else
    put_u8(e, T_NIL);
}

typedef struct Dump { luaL_Buffer b; int started; } Dump;

/* The buffer starts on the first write: lua_dump reads the function from
** the top of the stack before that, and the buffer must own the top after. */
static int dump_writer (lua_State *L, const void *p, size_t sz, void *ud) {
  Dump *d = ud;
  if (!d->started) {
    d->started = 1;
    luaL_buffinit(L, &d->b);
  }
  luaL_addlstring(&d->b, p, sz);
  return 0;
}

/* Pushes the bytecode of the Lua function at idx, cached per function. */
static void enc_bytecode (Enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->dumps)) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &DUMPCACHE_KEY) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_createtable(L, 0, 1);
      lua_pushliteral(L, "k");
      lua_setfield(L, -2, "__mode");
      lua_setmetatable(L, -2);
      lua_pushvalue(L, -1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &DUMPCACHE_KEY);
    }
    lua_replace(L, e->dumps);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->dumps) == LUA_TSTRING)
    return;
  lua_pop(L, 1);
  Dump dump;
  dump.started = 0;
  lua_pushvalue(L, idx);
  int err = lua_dump(L, dump_writer, &dump, 0);
  if (dump.started)
    luaL_pushresult(&dump.b);
  else
    lua_pushliteral(L, "");
  lua_remove(L, -2);
  if (err != 0 || !dump.started)
    enc_raise(e, "cannot transfer %s: %s", "function cannot be dumped");
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -2);
  lua_rawset(L, e->dumps);
}

static int is_env_upvalue (lua_State *L, int idx, int n);

static void enc_upvalues (Enc *e, int idx, int nups, uint32_t ref) {
  lua_State *L = e->L;
  int ups = enc_lazy_table(e, &e->upvals);
  for (int n = 1; n <= nups; n++) {
    const char *name = lua_getupvalue(L, idx, n);
    void *id = lua_upvalueid(L, idx, n);
    lua_pushlightuserdata(L, id);
    if (lua_rawget(L, ups) == LUA_TNUMBER) {
      lua_Integer where = lua_tointeger(L, -1);
      put_u8(e, T_UPJOIN);
      put_u32(e, (uint32_t)(where >> 8));
      put_u8(e, (unsigned)(where & 0xff));
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, id);
    lua_pushinteger(L, ((lua_Integer)ref << 8) | n);
    lua_rawset(L, ups);
    if (!lua_iscfunction(L, idx) && is_env_upvalue(L, idx, n)) {
      put_u8(e, T_GLOBALS);
      lua_pop(L, 1);
      continue;
    }
    enc_push_path(e, 3, 0, (name && *name) ? name : "?");
    enc_value(e, lua_gettop(L));
    e->depth--;
    lua_pop(L, 1);
  }
}

static int count_upvalues (lua_State *L, int idx) {
  int n = 0;
  while (lua_getupvalue(L, idx, n + 1) != NULL) {
    lua_pop(L, 1);
    n++;
  }
  return n;
}

/* An upvalue named _ENV is bound to the receiver's globals whatever it
** holds here (a sandbox's environment does not travel); so is any upvalue
** holding the sender's globals. */
static int is_env_upvalue (lua_State *L, int idx, int n) {
  const char *name = lua_getupvalue(L, idx, n);
  if (name == NULL)
    return 0;
  int env = strcmp(name, "_ENV") == 0;
  if (!env) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    env = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return env;
}

/* A function whose upvalues are all environments has no state of its own:
** the receiver may reuse one loaded copy for every message. */
static int only_globals (lua_State *L, int idx, int nups) {
  for (int n = 1; n <= nups; n++)
    if (!is_env_upvalue(L, idx, n))
      return 0;
  return 1;
}

/* A C function that crosses states may be called after the state that
** loaded its library closed and dlclose'd it (an idle worker's state goes
** after a few seconds): its library is pinned for the process's life, as
** loom pins itself, in the encoding process and in any that decodes it.
** The cache of functions already pinned needs no lock (a fork inherits it
** with the pins); a collision only costs another dladdr. */
#define PIN_SLOTS 256
static _Atomic(uintptr_t) pinned[PIN_SLOTS];

static void pin_cfunction (uintptr_t fn) {
  size_t h = (size_t)((fn >> 4) ^ (fn >> 12)) % PIN_SLOTS;
  if (atomic_load_explicit(&pinned[h], memory_order_relaxed) == fn)
    return;
  Dl_info info;
  if (dladdr((void *)fn, &info) != 0 && info.dli_fname != NULL)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  atomic_store_explicit(&pinned[h], fn, memory_order_relaxed);
}

/* Portable form of the C function at idx: the module and field under which
** package.loaded holds it ("" for a module that is itself the function),
** which the decoder looks up in its own process.  Its upvalues are not
** sent: the receiver's copy has its own. */
/* map[f] = "module\0field" for the function at f unless it has a name. */
static void enc_cname_add (lua_State *L, int map, int f, int mod, int field) {
  lua_pushvalue(L, f);
  if (lua_rawget(L, map) != LUA_TNIL) {   /* the first name found wins */
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, f);
  lua_pushvalue(L, mod);
  lua_pushlstring(L, "", 1);
  if (field != 0)
    lua_pushvalue(L, field);
  else
    lua_pushliteral(L, "");
  lua_concat(L, 3);
  lua_rawset(L, map);
}

static void enc_cnamed (Enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->cfuncs)) {
    int map = enc_lazy_table(e, &e->cfuncs);
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) == LUA_TTABLE) {
      int loaded = lua_gettop(L);
      lua_pushnil(L);
      while (lua_next(L, loaded)) {     /* loaded: name, module */
        int name = loaded + 1, mod = loaded + 2;
        if (lua_type(L, name) != LUA_TSTRING)
          ;
        else if (lua_iscfunction(L, mod))
          enc_cname_add(L, map, mod, name, 0);
        else if (lua_istable(L, mod)) {
          lua_pushnil(L);
          while (lua_next(L, mod)) {    /* mod: field, value */
            if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1))
              enc_cname_add(L, map, lua_gettop(L), name, lua_gettop(L) - 1);
            lua_pop(L, 1);
          }
        }
        lua_settop(L, name);
      }
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->cfuncs) != LUA_TSTRING) {
    lua_pop(L, 1);
    enc_raise(e, "cannot transfer %s: %s",
              "C function not reachable from package.loaded");
  }
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  size_t m = strlen(s);
  put_u8(e, T_CNAMED);
  put_str(e, s, m);
  put_str(e, s + m + 1, n - m - 1);
  lua_pop(L, 1);
}

static void enc_function (Enc *e, int idx) {
  lua_State *L = e->L;
  if (e->portable && lua_iscfunction(L, idx)) {
    enc_cnamed(e, idx);
    return;
  }
  int nups = count_upvalues(L, idx);
  if (nups > 255)
    enc_raise(e, "cannot transfer %s: %s", "function with over 255 upvalues");
  if (lua_iscfunction(L, idx)) {
    lua_CFunction f = lua_tocfunction(L, idx);
    uint64_t bits = (uint64_t)(uintptr_t)f;
    pin_cfunction((uintptr_t)f);
    enc_register(e, idx, nups > 0);
    uint32_t ref = e->nrefs - 1;
    put_u8(e, T_CFUNC);
    put(e, &bits, 8);
    put_u8(e, (unsigned)nups);
    enc_upvalues(e, idx, nups, ref);
    return;
  }
  /* a plain function takes no ref index: the decoder shares one copy */
  int plain = only_globals(L, idx, nups);
  uint32_t ref = e->nrefs;
  if (!plain)
    enc_register(e, idx, 1);
  enc_bytecode(e, idx);
  size_t n;
  const char *code = lua_tolstring(L, -1, &n);
  put_u8(e, T_LFUNC);
  put_u8(e, (unsigned)plain);
  put_str(e, code, n);
  lua_pop(L, 1);
  put_u8(e, (unsigned)nups);
  if (plain) {
    for (int i = 0; i < nups; i++)
      put_u8(e, T_GLOBALS);
  }
  else
    enc_upvalues(e, idx, nups, ref);
}

static void enc_object (Enc *e, LoomObj *o) {
  Buf *b = e->b;
  uint32_t i;
  for (i = 0; i < b->nobjs; i++)
    if (b->objs[i] == o)
      break;
  if (i == b->nobjs) {
    if (b->nobjs == b->capobjs) {
      uint32_t cap = b->capobjs ? b->capobjs * 2 : 8;
      LoomObj **objs = realloc(b->objs, cap * sizeof *objs);
      if (objs == NULL)
        enc_raise(e, "cannot transfer %s: %s", "not enough memory");
      b->objs = objs;
      b->capobjs = cap;
    }
    b->objs[b->nobjs++] = o;   /* retained when the message is built */
  }
  put_u8(e, T_OBJ);
  put_u32(e, i);
}

static void enc_userdata (Enc *e, int idx) {
  lua_State *L = e->L;
  LoomObj *o = loomi_toobj(L, idx);
  if (o != NULL && e->portable) {
    char what[96];
    const char *name = "loom object";
    if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING)
      name = lua_tostring(L, -1);
    snprintf(what, sizeof what, "%s lives in this machine's shared heap",
             name);
    enc_raise(e, "cannot transfer %s: %s", what);
  }
  if (o != NULL) {
    enc_object(e, o);
    return;
  }
  if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING) {
    char what[96];
    snprintf(what, sizeof what, "userdata (%s)", lua_tostring(L, -1));
    lua_pop(L, 1);
    enc_raise(e, "cannot transfer %s: %s", what);
  }
  enc_raise(e, "cannot transfer %s: %s", "userdata");
}

static void enc_value (Enc *e, int idx) {
  lua_State *L = e->L;
  if (enc_scalar(e, idx))
    return;
  if (!lua_checkstack(L, 8))   /* what a table or function pushes */
    enc_raise(e, "cannot transfer %s: %s", "stack overflow");
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      put_u8(e, T_STR);
      put_str(e, s, n);
      break;
    }
    case LUA_TTABLE:
      if (lua_topointer(L, idx) == e->globals)
        put_u8(e, T_GLOBALS);
      else if (!enc_seen(e, idx))
        enc_table(e, idx);
      break;
    case LUA_TFUNCTION:
      if (!enc_seen(e, idx))
        enc_function(e, idx);
      break;
    case LUA_TLIGHTUSERDATA: {
      if (e->portable)
        enc_raise(e, "cannot transfer %s: %s",
                  "light userdata is an address in this process");
      uint64_t bits = (uint64_t)(uintptr_t)lua_touserdata(L, idx);
      put_tagged8(e, T_LIGHTUD, &bits);
      break;
    }
    case LUA_TUSERDATA: enc_userdata(e, idx); break;
    default:
      enc_raise(e, "cannot transfer %s: %s", lua_type(L, idx) == LUA_TTHREAD
                ? "coroutine" : luaL_typename(L, idx));
  }
}

/* Encodes the values into the state's buffer, which is left busy. */
static Buf *enc_all (lua_State *L, int first, int n, const char *root,
                     int call, int portable) {
  Enc e;
  e.call = call;
  e.portable = portable;
  first = lua_absindex(L, first);
  int top = lua_gettop(L);
  luaL_checkstack(L, 16, "cannot transfer values");
  e.L = L;
  e.b = buf_get(L);
  e.root = root;
  lua_settop(L, top + 6);   /* the buffer, then the five helper slots */
  e.seen = top + 2;
  e.loaded = top + 3;
  e.upvals = top + 4;
  e.dumps = top + 5;
  e.cfuncs = top + 6;
  e.nrefs = 0;
  e.depth = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e.globals = lua_topointer(L, -1);   /* anchored in the registry */
  lua_pop(L, 1);
  size_t rl = strlen(root);
  if (n > 1 || call || (rl >= 2 && strcmp(root + rl - 2, "[]") == 0)) {
    for (int i = 0; i < n; i++) {
      enc_push_path(&e, 0, i + 1, NULL);
      enc_value(&e, first + i);
      e.depth--;
    }
  }
  else if (n == 1)
    enc_value(&e, first);
  lua_settop(L, top + 1);   /* keeps the buffer's userdata anchored */
  return e.b;
}

/* Releases the buffer enc_all left busy, and the stack slot it took. */
static void enc_done (lua_State *L, Buf *b) {
  if (b->cap > ((size_t)1 << 20)) {   /* do not keep a huge buffer around */
    free(b->data);
    b->data = NULL;
    b->cap = 0;
  }
  b->busy = 0;
  lua_pop(L, 1);
}

static LoomMsg *msg_build (lua_State *L, Buf *b, const char *root) {
  size_t total = sizeof(LoomMsg) + b->nobjs * sizeof(LoomObj *) + b->len;
  LoomMsg *m = loomi_heap_alloc(total);
  if (m == NULL) {
    b->busy = 0;
    luaL_error(L, "cannot transfer %s: shared heap exhausted (%d bytes needed)",
               root, (int)(total > INT32_MAX ? INT32_MAX : total));
  }
  m->magic = MSG_MAGIC;
  m->nobjs = b->nobjs;
  m->len = b->len;
  m->pid = (int32_t)loomi_self_pid();
  m->pad = 0;
  for (uint32_t i = 0; i < b->nobjs; i++) {
    loomi_obj_retain(b->objs[i]);
    msg_objs(m)[i] = b->objs[i];
  }
  m->check = checksum_copy(msg_payload(m), b->data, b->len);
  return m;
}

static LoomMsg *encode (lua_State *L, int first, int n, const char *root,
                        int call) {
  Buf *b = enc_all(L, first, n, root, call, 0);
  LoomMsg *m = msg_build(L, b, root);
  enc_done(L, b);
  return m;
}

LoomMsg *loomi_xfer_encode_inline (lua_State *L, int first, int n,
                                   const char *root, void *out, size_t *len) {
  Buf *b = enc_all(L, first, n, root, 0, 0);
  LoomMsg *m = NULL;
  if (b->nobjs == 0 && b->len <= *len) {
    memcpy(out, b->data, b->len);
    *len = b->len;
  }
  else
    m = msg_build(L, b, root);
  enc_done(L, b);
  return m;
}

LoomMsg *loomi_xfer_encode (lua_State *L, int first, int n, const char *root) {
  return encode(L, first, n, root, 0);
}

LoomMsg *loomi_xfer_encode_call (lua_State *L, int first, int n) {
  return encode(L, first, n, "args", 1);
}

/* The payload goes after a header of headlen bytes that fill writes once
** the payload is known; the result is pushed as one string.  The buffer
** stays busy until then, so a finalizer that encodes meanwhile takes
** another. */
void loomi_xfer_encode_portable (lua_State *L, int first, int n,
                                 size_t headlen, LoomHeadFill fill) {
  Buf *b = enc_all(L, first, n, "values[]", 0, 1);
  luaL_Buffer out;
  char *p = luaL_buffinitsize(L, &out, headlen + b->len);
  memcpy(p + headlen, b->data, b->len);
  fill((unsigned char *)p, b->data, b->len);
  luaL_pushresultsize(&out, headlen + b->len);
  lua_insert(L, -2);
  enc_done(L, b);
}

uint64_t loomi_xfer_checksum (const void *p, size_t n) {
  return checksum(p, n);
}

void loomi_msg_free (LoomMsg *m) {
  if (m == NULL)
    return;
  for (uint32_t i = 0; i < m->nobjs; i++)
    loomi_obj_release(msg_objs(m)[i]);
  m->magic = 0;
  loomi_heap_free(m);
}

size_t loomi_msg_size (const LoomMsg *m) {
  return m ? (size_t)m->len : 0;
}

/* ---- decoder ---- */

typedef struct Dec {
  lua_State *L;
  const unsigned char *p, *end;
  LoomObj *const *objs;
  uint32_t nobjs;
  int refs;              /* stack index: ref index -> value */
  uint32_t nrefs;
  int depth;
  int nocode;            /* refuse bytecode (raw, unchecked input) */
  int base;              /* stack top before decoding */
  int foreign;           /* the message comes from another process */
  int portable;          /* loom.decode: no addresses accepted */
} Dec;

static _Noreturn void dec_corrupt (Dec *d) {
  luaL_error(d->L, "cannot decode message: corrupt data");
  abort();   /* not reached */
}

static void get (Dec *d, void *out, size_t n) {
  if ((size_t)(d->end - d->p) < n)
    dec_corrupt(d);
  memcpy(out, d->p, n);
  d->p += n;
}

static unsigned get_u8 (Dec *d) {
  if (d->p >= d->end)
    dec_corrupt(d);
  return *d->p++;
}

static uint32_t get_u32 (Dec *d) {
  uint32_t v;
  get(d, &v, 4);
  return v;
}

static const char *get_str (Dec *d, size_t *n) {
  *n = get_u32(d);
  if ((size_t)(d->end - d->p) < *n)
    dec_corrupt(d);
  const char *s = (const char *)d->p;
  d->p += *n;
  return s;
}

/* Records the value on top under the next ref index.  The refs table is
** made on first use, below every value decoded so far: only finished
** top-level values sit there, so no frame holds a stale index. */
static void dec_register (Dec *d) {
  lua_State *L = d->L;
  if (d->refs == 0) {
    lua_newtable(L);
    lua_insert(L, d->base + 1);
    d->refs = d->base + 1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, (lua_Integer)d->nrefs++);
}

static void dec_value (Dec *d);

/* Pushes the value if it is a number, a boolean or nil, the bulk of a big
** table, and returns 1; otherwise consumes nothing and returns 0.  The
** caller has room for one more slot. */
static inline int dec_scalar (Dec *d) {
  lua_State *L = d->L;
  if (d->p >= d->end)
    dec_corrupt(d);
  switch (*d->p) {
    case T_FLT: {
      double x;
      if (d->end - d->p < 9)
        dec_corrupt(d);
      memcpy(&x, d->p + 1, 8);
      lua_pushnumber(L, (lua_Number)x);
      d->p += 9;
      return 1;
    }
    case T_INT: {
      int64_t i;
      if (d->end - d->p < 9)
        dec_corrupt(d);
      memcpy(&i, d->p + 1, 8);
      lua_pushinteger(L, (lua_Integer)i);
      d->p += 9;
      return 1;
    }
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    default: return 0;
  }
  d->p++;
  return 1;
}

static void dec_table (Dec *d) {
  lua_State *L = d->L;
  uint32_t narr = get_u32(d), nhash = get_u32(d);
  /* each entry needs at least one byte: refuse sizes the data cannot hold */
  if (narr > (size_t)(d->end - d->p) || nhash > (size_t)(d->end - d->p))
    dec_corrupt(d);
  lua_createtable(L, (int)narr, (int)nhash);   /* dec_value made room */
  dec_register(d);
  int t = lua_gettop(L);
  for (uint32_t i = 1; i <= narr; i++) {
    if (!dec_scalar(d))
      dec_value(d);
    lua_rawseti(L, t, (lua_Integer)i);
  }
  for (uint32_t i = 0; i < nhash; i++) {
    dec_value(d);
    dec_value(d);
    if (lua_isnil(L, -2) || (lua_type(L, -2) == LUA_TNUMBER &&
                             isnan(lua_tonumber(L, -2))))
      dec_corrupt(d);
    lua_rawset(L, t);
  }
  dec_value(d);
  if (lua_istable(L, -1))
    lua_setmetatable(L, t);
  else if (lua_isnil(L, -1))
    lua_pop(L, 1);
  else
    dec_corrupt(d);
}

typedef struct Chunk { const char *s; size_t n; } Chunk;

static const char *chunk_reader (lua_State *L, void *ud, size_t *sz) {
  Chunk *c = ud;
  (void)L;
  *sz = c->n;
  c->n = 0;
  return *sz ? c->s : NULL;
}

static void dec_upvalues (Dec *d, int f, unsigned nups) {
  lua_State *L = d->L;
  for (unsigned n = 1; n <= nups; n++) {
    unsigned tag = d->p < d->end ? *d->p : 0xff;
    if (tag == T_UPJOIN) {
      d->p++;
      uint32_t ref = get_u32(d);
      unsigned other = get_u8(d);
      if (ref >= d->nrefs || d->refs == 0)
        dec_corrupt(d);
      lua_rawgeti(L, d->refs, (lua_Integer)ref);
      int g = lua_gettop(L);
      if (!lua_isfunction(L, g) || lua_iscfunction(L, g) ||
          lua_getupvalue(L, g, (int)other) == NULL)
        dec_corrupt(d);
      lua_pop(L, 1);
      if (lua_iscfunction(L, f) || lua_getupvalue(L, f, (int)n) == NULL)
        dec_corrupt(d);
      lua_pop(L, 1);
      lua_upvaluejoin(L, f, (int)n, g, (int)other);
      lua_pop(L, 1);
      continue;
    }
    dec_value(d);
    if (lua_setupvalue(L, f, (int)n) == NULL)
      dec_corrupt(d);
  }
}

/* Pushes the plain function (no upvalue but globals) for this bytecode,
** loading it once per state. */
static void dec_plain (Dec *d, const char *code, size_t n, unsigned nups) {
  lua_State *L = d->L;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &LOADCACHE_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LOADCACHE_KEY);
  }
  int cache = lua_gettop(L);
  lua_pushlstring(L, code, n);
  if (lua_rawget(L, cache) == LUA_TFUNCTION) {
    lua_remove(L, cache);
    return;
  }
  lua_pop(L, 1);
  Chunk c = { code, n };
  if (n < 4 || memcmp(code, LUA_SIGNATURE, 4) != 0)
    dec_corrupt(d);
  if (lua_load(L, chunk_reader, &c, "=(transferred)", "b") != LUA_OK)
    lua_error(L);
  int f = lua_gettop(L);
  for (unsigned i = 1; i <= nups; i++) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    if (lua_setupvalue(L, f, (int)i) == NULL)
      dec_corrupt(d);
  }
  /* bounded: start over rather than grow without end */
  lua_Integer count = 0;
  if (lua_getfield(L, cache, "#") == LUA_TNUMBER)
    count = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (count >= 512) {
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LOADCACHE_KEY);
    lua_replace(L, cache);
    count = 0;
  }
  lua_pushlstring(L, code, n);
  lua_pushvalue(L, f);
  lua_rawset(L, cache);
  lua_pushinteger(L, count + 1);
  lua_setfield(L, cache, "#");
  lua_remove(L, cache);
}

static void dec_lfunction (Dec *d) {
  lua_State *L = d->L;
  if (d->nocode)
    luaL_error(L, "cannot decode message: bytecode in an unchecked message");
  unsigned plain = get_u8(d);
  size_t n;
  const char *code = get_str(d, &n);
  if (plain) {
    unsigned nups = get_u8(d);
    for (unsigned i = 0; i < nups; i++)
      if (get_u8(d) != T_GLOBALS)
        dec_corrupt(d);
    dec_plain(d, code, n, nups);
    return;
  }
  Chunk c = { code, n };
  if (n < 4 || memcmp(code, LUA_SIGNATURE, 4) != 0)
    dec_corrupt(d);
  if (lua_load(L, chunk_reader, &c, "=(transferred)", "b") != LUA_OK)
    lua_error(L);
  dec_register(d);
  int f = lua_gettop(L);
  unsigned nups = get_u8(d);
  dec_upvalues(d, f, nups);
}

static void dec_cfunction (Dec *d) {
  lua_State *L = d->L;
  uint64_t bits;
  get(d, &bits, 8);
  lua_CFunction fn = (lua_CFunction)(uintptr_t)bits;
  if (d->foreign) {
    Dl_info info;
    if (dladdr((void *)(uintptr_t)bits, &info) == 0)
      luaL_error(L, "cannot decode message: C function %p is not loaded in "
                    "this process", (void *)(uintptr_t)bits);
  }
  unsigned nups = get_u8(d);
  if (fn == NULL)
    dec_corrupt(d);
  pin_cfunction((uintptr_t)fn);
  if (nups == 0) {
    lua_pushcfunction(L, fn);
    dec_register(d);
    return;
  }
  /* the upvalues come first on the stack, then the closure is built; a
  ** self-reference among them cannot be rebuilt, so it is refused */
  uint32_t ref = d->nrefs;
  lua_pushnil(L);
  dec_register(d);
  lua_pop(L, 1);
  luaL_checkstack(L, (int)nups + 4, "cannot decode message");
  for (unsigned i = 0; i < nups; i++) {
    if (d->p < d->end && *d->p == T_UPJOIN)
      dec_corrupt(d);
    dec_value(d);
  }
  lua_pushcclosure(L, fn, (int)nups);
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, (lua_Integer)ref);
}

/* Requires the module if this state has not loaded it, as T_LOADED does. */
static void dec_module (Dec *d, const char *s, size_t n) {
  lua_State *L = d->L;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, s, n);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushlstring(L, s, n);
    lua_call(L, 1, 1);
  }
  lua_remove(L, -2);
}

static void dec_cnamed (Dec *d) {
  lua_State *L = d->L;
  size_t mn, fn;
  const char *mod = get_str(d, &mn);
  const char *field = get_str(d, &fn);
  if (memchr(mod, 0, mn) != NULL || memchr(field, 0, fn) != NULL)
    dec_corrupt(d);
  dec_module(d, mod, mn);
  if (fn > 0) {
    if (!lua_istable(L, -1))
      dec_corrupt(d);
    lua_pushlstring(L, field, fn);
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
  if (!lua_iscfunction(L, -1)) {
    lua_pushlstring(L, mod, mn);
    lua_pushlstring(L, field, fn);
    luaL_error(L, "cannot decode: %s%s%s is not a C function here",
               lua_tostring(L, -2), fn ? "." : "", lua_tostring(L, -1));
  }
}

/* Pushes one value.  Every caller leaves room for it; what nests (a
** table, a function, a module lookup) reserves its own slots. */
static void dec_value (Dec *d) {
  lua_State *L = d->L;
  if (dec_scalar(d))
    return;
  if (++d->depth > XFER_MAXDEPTH * 2 + 8 || !lua_checkstack(L, 8))
    luaL_error(L, "cannot decode message: nesting too deep");
  unsigned tag = get_u8(d);
  switch (tag) {
    case T_STR: {
      size_t n;
      const char *s = get_str(d, &n);
      lua_pushlstring(L, s, n);
      break;
    }
    case T_TABLE: dec_table(d); break;
    case T_REF: {
      uint32_t ref = get_u32(d);
      if (d->refs == 0 || ref >= d->nrefs)
        dec_corrupt(d);
      lua_rawgeti(L, d->refs, (lua_Integer)ref);
      if (lua_isnil(L, -1))
        dec_corrupt(d);
      break;
    }
    case T_LFUNC: dec_lfunction(d); break;
    case T_CFUNC:
      if (d->portable)
        dec_corrupt(d);
      dec_cfunction(d);
      break;
    case T_CNAMED:
      if (!d->portable)
        dec_corrupt(d);
      dec_cnamed(d);
      break;
    case T_OBJ: {
      uint32_t i = get_u32(d);
      if (i >= d->nobjs)
        dec_corrupt(d);
      loomi_proxy_push(L, d->objs[i]);
      break;
    }
    case T_GLOBALS: lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); break;
    case T_LOADED: {
      size_t n;
      const char *s = get_str(d, &n);
      dec_module(d, s, n);
      break;
    }
    case T_LIGHTUD: {
      if (d->portable)
        dec_corrupt(d);
      uint64_t bits;
      get(d, &bits, 8);
      lua_pushlightuserdata(L, (void *)(uintptr_t)bits);
      break;
    }
    default: dec_corrupt(d);
  }
  d->depth--;
}

/* Decodes `len` payload bytes; objs are the message's object references. */
static int decode_payload (lua_State *L, const unsigned char *p, size_t len,
                           LoomObj *const *objs, uint32_t nobjs, int foreign,
                           int nocode, int portable) {
  Dec d;
  int base = lua_gettop(L);
  d.L = L;
  d.p = p;
  d.end = p + len;
  d.objs = objs;
  d.nobjs = nobjs;
  d.refs = 0;
  d.nrefs = 0;
  d.depth = 0;
  d.foreign = foreign;
  d.nocode = nocode;
  d.portable = portable;
  d.base = base;
  luaL_checkstack(L, 16, "cannot decode message");
  int n = 0;
  while (d.p < d.end) {
    if (!lua_checkstack(L, 8))
      luaL_error(L, "cannot decode message: too many values");
    dec_value(&d);
    n++;
  }
  if (d.refs != 0)
    lua_remove(L, d.refs);
  return n;
}

int loomi_xfer_decode_inline (lua_State *L, const void *p, size_t len,
                              int32_t pid) {
  return decode_payload(L, p, len, NULL, 0, pid != (int32_t)loomi_self_pid(),
                        0, 0);
}

int loomi_xfer_decode (lua_State *L, const LoomMsg *m) {
  if (m == NULL || m->magic != MSG_MAGIC)
    return luaL_error(L, "cannot decode message: corrupt header");
  const unsigned char *payload = msg_cpayload(m);
  if (checksum(payload, (size_t)m->len) != m->check)
    return luaL_error(L, "cannot decode message: checksum mismatch");
  return decode_payload(L, payload, (size_t)m->len, msg_cobjs(m), m->nobjs,
                        m->pid != (int32_t)loomi_self_pid(), 0, 0);
}

int loomi_xfer_decode_raw (lua_State *L, const void *payload, size_t len) {
  return decode_payload(L, payload, len, NULL, 0, 1, 1, 0);
}

int loomi_xfer_decode_checked (lua_State *L, const void *msg, size_t len) {
  const LoomMsg *m = msg;
  if (len < sizeof(LoomMsg) || m->magic != MSG_MAGIC || m->nobjs != 0 ||
      m->len != len - sizeof(LoomMsg))
    return luaL_error(L, "cannot decode message: corrupt header");
  return loomi_xfer_decode(L, m);
}

int loomi_xfer_decode_portable (lua_State *L, const void *payload, size_t len,
                                int nocode) {
  return decode_payload(L, payload, len, NULL, 0, 1, nocode, 1);
}
