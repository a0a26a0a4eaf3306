/* array.c: loom.Array, a fixed-size typed array in the shared heap.
** Lua: loom.array(type, n | table | string, [lock]) -> Array;  a[i] (plain,
**      racy, 1-based), #a, a:get_lock(), totable([i, j]), fill(x),
**      add(i, n), sub(i, n), cas(i, old, new), exchange(i, x);  a.type;
**      slice([i, [j]]) -> table, set_slice(i, t) (under the lock, if any);
**      get_obj() -> the array itself (Python's raw access).
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <string.h>

typedef struct LoomArray {
  LoomObj obj;
  LoomObj *lock;             /* a Lock or RLock, or NULL (lock = false) */
  int type;
  size_t n;
  _Alignas(8) unsigned char data[];
} LoomArray;

/* ---- C core ---- */

static void array_destroy (LoomObj *o) {
  LoomArray *a = (LoomArray *)o;
  loomi_obj_release(a->lock);
}

static LoomArray *array_create (int type, size_t n) {
  size_t size = loomi_elemtypes[type].size;
  LoomArray *a = (LoomArray *)loomi_obj_new(sizeof(LoomArray) + n * size,
                                            LOOM_ARRAY, array_destroy);
  if (a == NULL)
    return NULL;
  a->type = type;
  a->n = n;
  return a;
}

static void *array_elem (LoomArray *a, size_t i) {
  return a->data + i * loomi_elemtypes[a->type].size;
}

/* ---- Lua bindings ---- */

static LoomArray *checkarray (lua_State *L, int arg) {
  return (LoomArray *)loomi_fastcheck(L, arg, LOOM_ARRAY);
}

/* The 0-based element index named by the 1-based argument at arg. */
static size_t checkindex (lua_State *L, LoomArray *a, int arg) {
  lua_Integer i = luaL_checkinteger(L, arg);
  luaL_argcheck(L, i >= 1 && (lua_Unsigned)i <= a->n, arg,
                "index out of range");
  return (size_t)(i - 1);
}

/* array(type, n | table | string, [lock]): a table gives the size and the
** initial elements (1..#t); a string initializes a char array. */
static int array_new (lua_State *L) {
  int type = loomi_elem_check(L, 1);
  int size = loomi_elemtypes[type].size;
  int init = lua_type(L, 2);
  lua_Integer n;
  if (init == LUA_TNUMBER) {
    int isint;
    n = lua_tointegerx(L, 2, &isint);
    if (!isint)
      return luaL_argerror(L, 2, "number has no integer representation");
  }
  else if (init == LUA_TTABLE)   /* raw: a __len could claim any size */
    n = (lua_Integer)lua_rawlen(L, 2);
  else if (init == LUA_TSTRING && loomi_elemtypes[type].kind == LOOM_EK_CHAR)
    n = (lua_Integer)lua_rawlen(L, 2);
  else
    return luaL_typeerror(L, 2, loomi_elemtypes[type].kind == LOOM_EK_CHAR
                                ? "number, table or string" : "number or table");
  /* every branch: n * size must fit in the heap, so neither it nor the
  ** header added to it can overflow */
  luaL_argcheck(L, n >= 0 && (lua_Unsigned)n <= loomi_heap_size() / size, 2,
                "size out of range");
  int lockkind = loomi_checklockarg(L, 3);
  LoomObj **slot = loomi_proxy_new(L, LOOM_ARRAY);
  LoomArray *a = array_create(type, (size_t)n);
  if (a == NULL)
    return luaL_error(L, "cannot create array: shared heap exhausted");
  *slot = &a->obj;
  a->lock = loomi_lockarg(L, 3, lockkind);
  if (init == LUA_TTABLE) {
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, 2, i);
      uint64_t bits = loomi_elem_tobits(L, -1, type, 2);
      loomi_elem_store(array_elem(a, (size_t)(i - 1)), size, bits,
                       memory_order_relaxed);
      lua_pop(L, 1);
    }
  }
  else if (init == LUA_TSTRING)
    memcpy(a->data, lua_tostring(L, 2), (size_t)n);
  return 1;
}

/* a[i]: an element; a[#a + 1] is nil, the end mark ipairs stops at; any
** other index outside 1..#a raises.  String keys: type, then methods. */
static int array_index (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (!isint)
      return luaL_error(L, "array index must be an integer");
    if (i >= 1 && (lua_Unsigned)i <= a->n) {
      loomi_elem_push(L, a->type,
                      loomi_elem_load(array_elem(a, (size_t)(i - 1)),
                                      loomi_elemtypes[a->type].size,
                                      memory_order_relaxed));
      return 1;
    }
    if (i >= 1 && (lua_Unsigned)i == a->n + 1) {
      lua_pushnil(L);
      return 1;
    }
    return luaL_error(L, "index out of range");
  }
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "type") == 0) {
    lua_pushstring(L, loomi_elemtypes[a->type].name);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int array_newindex (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING)
    return loomi_field_error(L, 2, LOOM_ARRAY);
  if (lua_type(L, 2) != LUA_TNUMBER)
    return luaL_error(L, "array index must be an integer, got %s",
                      luaL_typename(L, 2));
  int isint;
  lua_Integer i = lua_tointegerx(L, 2, &isint);
  if (!isint)
    return luaL_error(L, "array index must be an integer");
  if (i < 1 || (lua_Unsigned)i > a->n)
    return luaL_error(L, "index out of range");
  uint64_t bits = loomi_elem_tobits(L, 3, a->type, 0);
  loomi_elem_store(array_elem(a, (size_t)(i - 1)),
                   loomi_elemtypes[a->type].size, bits, memory_order_relaxed);
  return 0;
}

static int array_len (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  lua_pushinteger(L, (lua_Integer)a->n);
  return 1;
}

static int array_get_lock (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  if (a->lock == NULL)
    return luaL_error(L, "loom.Array has no lock");
  loomi_proxy_push(L, a->lock);
  return 1;
}

/* totable([i, [j]]) -> a new table with elements i..j (default 1..#a). */
static int array_totable (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  lua_Integer i = luaL_optinteger(L, 2, 1);
  lua_Integer j = luaL_optinteger(L, 3, (lua_Integer)a->n);
  if (i <= j) {
    luaL_argcheck(L, i >= 1 && (lua_Unsigned)i <= a->n, 2, "index out of range");
    luaL_argcheck(L, (lua_Unsigned)j <= a->n, 3, "index out of range");
  }
  int size = loomi_elemtypes[a->type].size;
  lua_Integer count = i <= j ? j - i + 1 : 0;
  luaL_argcheck(L, count < INT32_MAX, 3, "too many elements");
  lua_createtable(L, (int)count, 0);
  for (lua_Integer k = 0; k < count; k++) {
    loomi_elem_push(L, a->type,
                    loomi_elem_load(array_elem(a, (size_t)(i - 1 + k)), size,
                                    memory_order_relaxed));
    lua_rawseti(L, -2, k + 1);
  }
  return 1;
}

/* A position given to slice or set_slice, 1-based, a negative one counting
** from the end as string.sub does (-1 is the last element); it must then
** lie within lo..hi. */
static lua_Integer checkpos (lua_State *L, LoomArray *a, int arg,
                             lua_Integer dflt, lua_Integer lo, lua_Integer hi) {
  lua_Integer i = luaL_optinteger(L, arg, dflt);
  if (i < 0)
    i += (lua_Integer)a->n + 1;   /* n is below the heap size: no overflow */
  luaL_argcheck(L, i >= lo && i <= hi, arg, "index out of range");
  return i;
}

/* Takes (release = 0) or gives back the array's lock through its Lua
** methods, so a thread that holds an RLock already may slice; returns 0,
** or pushes acquire's fail (Ctrl-C) and returns 2.  No-op without a lock. */
static int array_lock (lua_State *L, LoomArray *a, int release) {
  if (a->lock == NULL)
    return 0;
  loomi_proxy_push(L, a->lock);
  lua_getfield(L, -1, release ? "release" : "acquire");
  lua_insert(L, -2);
  lua_call(L, 1, 2);
  if (release || lua_toboolean(L, -2)) {
    lua_pop(L, 2);
    return 0;
  }
  return 2;
}

/* slice([i, [j]]) -> a new table with elements i..j, as string.sub counts
** them (default 1..-1); i > j gives {}.  Copied out under the lock into a
** buffer first: nothing that can raise runs while the lock is held. */
static int array_slice (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  lua_Integer n = (lua_Integer)a->n;
  lua_Integer i = checkpos(L, a, 2, 1, 1, n + 1);
  lua_Integer j = checkpos(L, a, 3, -1, 0, n);
  lua_Integer count = i <= j ? j - i + 1 : 0;
  luaL_argcheck(L, count < INT32_MAX, 3, "too many elements");
  int size = loomi_elemtypes[a->type].size;
  lua_settop(L, 3);
  unsigned char *buf = lua_newuserdatauv(L, (size_t)count * size, 0);
  lua_createtable(L, (int)count, 0);
  int rc = array_lock(L, a, 0);
  if (rc != 0)
    return rc;
  for (lua_Integer k = 0; k < count; k++)
    loomi_elem_store(buf + k * size, size,
                     loomi_elem_load(array_elem(a, (size_t)(i - 1 + k)), size,
                                     memory_order_relaxed),
                     memory_order_relaxed);
  array_lock(L, a, 1);
  for (lua_Integer k = 0; k < count; k++) {
    loomi_elem_push(L, a->type,
                    loomi_elem_load(buf + k * size, size, memory_order_relaxed));
    lua_rawseti(L, -2, k + 1);
  }
  return 1;
}

/* set_slice(i, t) -> the array: stores t[1..rawlen(t)] at i, i+1, ...,
** every element converted before the lock is taken, so a bad one changes
** nothing. */
static int array_set_slice (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  lua_Integer n = (lua_Integer)a->n;
  luaL_checkany(L, 2);
  lua_Integer i = checkpos(L, a, 2, 1, 1, n + 1);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer count = (lua_Integer)lua_rawlen(L, 3);
  luaL_argcheck(L, count <= n - i + 1, 3, "slice does not fit in the array");
  int size = loomi_elemtypes[a->type].size;
  lua_settop(L, 3);
  unsigned char *buf = lua_newuserdatauv(L, (size_t)count * size, 0);
  for (lua_Integer k = 0; k < count; k++) {
    lua_rawgeti(L, 3, k + 1);
    loomi_elem_store(buf + k * size, size,
                     loomi_elem_tobits(L, -1, a->type, 3),
                     memory_order_relaxed);
    lua_pop(L, 1);
  }
  int rc = array_lock(L, a, 0);
  if (rc != 0)
    return rc;
  for (lua_Integer k = 0; k < count; k++)
    loomi_elem_store(array_elem(a, (size_t)(i - 1 + k)), size,
                     loomi_elem_load(buf + k * size, size,
                                     memory_order_relaxed),
                     memory_order_relaxed);
  array_lock(L, a, 1);
  lua_settop(L, 1);
  return 1;
}

/* get_obj() -> the array: its elements are already reached without the
** lock, so the "raw" object Python's get_obj gives is the array itself. */
static int array_get_obj (lua_State *L) {
  checkarray(L, 1);
  lua_settop(L, 1);
  return 1;
}

/* fill(x) -> the array itself */
static int array_fill (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  uint64_t bits = loomi_elem_tobits(L, 2, a->type, 2);
  int size = loomi_elemtypes[a->type].size;
  for (size_t k = 0; k < a->n; k++)
    loomi_elem_store(array_elem(a, k), size, bits, memory_order_relaxed);
  lua_settop(L, 1);
  return 1;
}

static int array_add (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  size_t i = checkindex(L, a, 2);
  return loomi_elem_op_add(L, array_elem(a, i), a->type, 3, 0);
}

static int array_sub (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  size_t i = checkindex(L, a, 2);
  return loomi_elem_op_add(L, array_elem(a, i), a->type, 3, 1);
}

static int array_cas (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  size_t i = checkindex(L, a, 2);
  return loomi_elem_op_cas(L, array_elem(a, i), a->type, 3);
}

static int array_exchange (lua_State *L) {
  LoomArray *a = checkarray(L, 1);
  size_t i = checkindex(L, a, 2);
  return loomi_elem_op_exchange(L, array_elem(a, i), a->type, 3);
}

static int array_tostring (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_ARRAY);
  if (*slot == NULL)
    lua_pushliteral(L, "loom.Array (closed)");
  else {
    LoomArray *a = (LoomArray *)*slot;
    lua_pushfstring(L, "loom.Array (%s[%I])", loomi_elemtypes[a->type].name,
                    (lua_Integer)a->n);
  }
  return 1;
}

static const luaL_Reg array_meta[] = {
  {"__index", array_index},
  {"__newindex", array_newindex},
  {"__len", array_len},
  {"__tostring", array_tostring},
  {NULL, NULL}
};

static const luaL_Reg array_methods[] = {
  {"get_lock", array_get_lock},
  {"totable", array_totable},
  {"slice", array_slice},
  {"set_slice", array_set_slice},
  {"get_obj", array_get_obj},
  {"fill", array_fill},
  {"add", array_add},
  {"sub", array_sub},
  {"cas", array_cas},
  {"exchange", array_exchange},
  {NULL, NULL}
};

static const luaL_Reg array_funcs[] = {
  {"array", array_new},
  {NULL, NULL}
};

void loomi_array_open (lua_State *L) {
  loomi_fastclass(L, LOOM_ARRAY, array_meta, array_methods);
  luaL_setfuncs(L, array_funcs, 0);
}
