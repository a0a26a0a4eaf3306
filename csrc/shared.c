/* shared.c: loom.Value, one typed number in the shared heap, and the element
** types and atomic element operations loom.Array shares with it.
** Lua: loom.value(type, [init], [lock]) -> Value;  v.value (plain, racy);
**      v:get_lock(), get_obj(), add(n), sub(n), cas(old, new), exchange(x),
**      load(), store(x);  v.type.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

#include <math.h>
#include <string.h>

/* ---- element types ---- */

const LoomElemType loomi_elemtypes[] = {
  {"int8", LOOM_EK_INT, 1},   {"uint8", LOOM_EK_UINT, 1},
  {"int16", LOOM_EK_INT, 2},  {"uint16", LOOM_EK_UINT, 2},
  {"int32", LOOM_EK_INT, 4},  {"uint32", LOOM_EK_UINT, 4},
  {"int64", LOOM_EK_INT, 8},  {"uint64", LOOM_EK_UINT, 8},
  {"float", LOOM_EK_FLOAT, 4}, {"double", LOOM_EK_FLOAT, 8},
  {"bool", LOOM_EK_BOOL, 1},  {"char", LOOM_EK_CHAR, 1},
  {NULL, 0, 0}
};

/* Other spellings: Python's typecodes (as on Linux x86-64, where a C long
** is 64 bits) and a few obvious aliases. */
static const struct { const char *alias, *name; } elem_aliases[] = {
  {"b", "int8"},  {"B", "uint8"},  {"h", "int16"}, {"H", "uint16"},
  {"i", "int32"}, {"I", "uint32"}, {"l", "int64"}, {"L", "uint64"},
  {"q", "int64"}, {"Q", "uint64"}, {"f", "float"}, {"d", "double"},
  {"c", "char"},  {"?", "bool"},   {"float32", "float"},
  {"float64", "double"}, {"boolean", "bool"}, {NULL, NULL}
};

int loomi_elem_check (lua_State *L, int arg) {
  size_t len;
  const char *s = luaL_checklstring(L, arg, &len);
  if (strlen(s) != len)   /* "int8\0" is not int8 */
    return luaL_argerror(L, arg, "invalid element type (contains a NUL byte)");
  for (int a = 0; elem_aliases[a].alias != NULL; a++)
    if (strcmp(s, elem_aliases[a].alias) == 0) {
      s = elem_aliases[a].name;
      break;
    }
  for (int t = 0; loomi_elemtypes[t].name != NULL; t++)
    if (strcmp(s, loomi_elemtypes[t].name) == 0)
      return t;
  return luaL_argerror(L, arg, lua_pushfstring(L, "invalid element type '%s'",
                                               lua_tostring(L, arg)));
}

/* Raises msg (already pushed) as an argument error, or as it is when arg is
** 0 (an assignment such as v.value = x has no argument to blame). */
static int elem_raise (lua_State *L, int arg, const char *msg) {
  if (arg > 0)
    return luaL_argerror(L, arg, msg);
  return luaL_error(L, "%s", msg);
}

static int elem_range_error (lua_State *L, int type, int arg) {
  return elem_raise(L, arg, lua_pushfstring(L, "value out of range for %s",
                                            loomi_elemtypes[type].name));
}

static int elem_type_error (lua_State *L, int idx, int arg, const char *what) {
  return elem_raise(L, arg, lua_pushfstring(L, "%s expected, got %s", what,
                                            luaL_typename(L, idx)));
}

/* Reads an integer in the range of an integer element type: as a signed
** value for LOOM_EK_INT, as unsigned bits for LOOM_EK_UINT. */
static uint64_t elem_tointbits (lua_State *L, int idx, int type, int arg) {
  const LoomElemType *et = &loomi_elemtypes[type];
  if (lua_type(L, idx) != LUA_TNUMBER)
    elem_type_error(L, idx, arg, "number");
  int bits = et->size * 8;
  if (lua_isinteger(L, idx)) {
    int64_t i = (int64_t)lua_tointeger(L, idx);
    if (et->kind == LOOM_EK_INT) {
      if (bits < 64 && (i < -((int64_t)1 << (bits - 1)) ||
                        i >= ((int64_t)1 << (bits - 1))))
        elem_range_error(L, type, arg);
    }
    else if (i < 0 || (bits < 64 && i >= ((int64_t)1 << bits)))
      elem_range_error(L, type, arg);
    return (uint64_t)i;
  }
  lua_Number x = lua_tonumber(L, idx);
  if (!isfinite(x) || x != floor(x))
    elem_raise(L, arg, "number has no integer representation");
  if (et->kind == LOOM_EK_INT) {
    if (x < -ldexp(1, bits - 1) || x >= ldexp(1, bits - 1))
      elem_range_error(L, type, arg);
    return (uint64_t)(int64_t)x;
  }
  if (x < 0 || x >= ldexp(1, bits))
    elem_range_error(L, type, arg);
  return (uint64_t)x;
}

uint64_t loomi_elem_tobits (lua_State *L, int idx, int type, int arg) {
  const LoomElemType *et = &loomi_elemtypes[type];
  switch (et->kind) {
    case LOOM_EK_INT:
    case LOOM_EK_UINT:
      return elem_tointbits(L, idx, type, arg);
    case LOOM_EK_FLOAT: {
      if (lua_type(L, idx) != LUA_TNUMBER)
        elem_type_error(L, idx, arg, "number");
      double d = (double)lua_tonumber(L, idx);
      if (et->size == 4) {
        float f = (float)d;   /* beyond float's range: +-inf, as in C */
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
      }
      uint64_t u;
      memcpy(&u, &d, 8);
      return u;
    }
    case LOOM_EK_BOOL:
      if (lua_type(L, idx) != LUA_TBOOLEAN)
        elem_type_error(L, idx, arg, "boolean");
      return (uint64_t)lua_toboolean(L, idx);
    default: {   /* LOOM_EK_CHAR: a one-byte string or a byte value */
      if (lua_type(L, idx) == LUA_TNUMBER)
        return elem_tointbits(L, idx, type, arg);
      size_t n;
      const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n)
                                                      : NULL;
      if (s == NULL)
        elem_type_error(L, idx, arg, "string");
      if (n != 1)
        elem_raise(L, arg, "string of length 1 expected");
      return (unsigned char)s[0];
    }
  }
}

void loomi_elem_push (lua_State *L, int type, uint64_t bits) {
  const LoomElemType *et = &loomi_elemtypes[type];
  switch (et->kind) {
    case LOOM_EK_INT:
      switch (et->size) {
        case 1: lua_pushinteger(L, (int8_t)bits); break;
        case 2: lua_pushinteger(L, (int16_t)bits); break;
        case 4: lua_pushinteger(L, (int32_t)bits); break;
        default: lua_pushinteger(L, (lua_Integer)(int64_t)bits); break;
      }
      break;
    case LOOM_EK_UINT:
      if (bits > (uint64_t)LUA_MAXINTEGER)   /* only uint64 gets here */
        lua_pushnumber(L, (lua_Number)bits);
      else
        lua_pushinteger(L, (lua_Integer)bits);
      break;
    case LOOM_EK_FLOAT:
      if (et->size == 4) {
        uint32_t u = (uint32_t)bits;
        float f;
        memcpy(&f, &u, 4);
        lua_pushnumber(L, (lua_Number)f);
      }
      else {
        double d;
        memcpy(&d, &bits, 8);
        lua_pushnumber(L, (lua_Number)d);
      }
      break;
    case LOOM_EK_BOOL:
      lua_pushboolean(L, bits != 0);
      break;
    default: {
      char c = (char)(unsigned char)bits;
      lua_pushlstring(L, &c, 1);
      break;
    }
  }
}

/* ---- atomic access to one element of 1, 2, 4 or 8 bytes ----
** Element storage is plain bytes in the shared heap, naturally aligned;
** every access goes through a C11 atomic of the element's width, so racing
** plain loads and stores are well defined (relaxed), and the
** read-modify-write operations are sequentially consistent. */

uint64_t loomi_elem_load (void *p, int size, memory_order mo) {
  switch (size) {
    case 1: return atomic_load_explicit((_Atomic uint8_t *)p, mo);
    case 2: return atomic_load_explicit((_Atomic uint16_t *)p, mo);
    case 4: return atomic_load_explicit((_Atomic uint32_t *)p, mo);
    default: return atomic_load_explicit((_Atomic uint64_t *)p, mo);
  }
}

void loomi_elem_store (void *p, int size, uint64_t bits, memory_order mo) {
  switch (size) {
    case 1: atomic_store_explicit((_Atomic uint8_t *)p, (uint8_t)bits, mo); break;
    case 2: atomic_store_explicit((_Atomic uint16_t *)p, (uint16_t)bits, mo); break;
    case 4: atomic_store_explicit((_Atomic uint32_t *)p, (uint32_t)bits, mo); break;
    default: atomic_store_explicit((_Atomic uint64_t *)p, bits, mo); break;
  }
}

static uint64_t elem_exchange (void *p, int size, uint64_t bits) {
  switch (size) {
    case 1: return atomic_exchange((_Atomic uint8_t *)p, (uint8_t)bits);
    case 2: return atomic_exchange((_Atomic uint16_t *)p, (uint16_t)bits);
    case 4: return atomic_exchange((_Atomic uint32_t *)p, (uint32_t)bits);
    default: return atomic_exchange((_Atomic uint64_t *)p, bits);
  }
}

/* On failure *expected receives the current bits. */
static int elem_cas (void *p, int size, uint64_t *expected, uint64_t bits) {
  int ok;
  switch (size) {
    case 1: {
      uint8_t e = (uint8_t)*expected;
      ok = atomic_compare_exchange_strong((_Atomic uint8_t *)p, &e, (uint8_t)bits);
      *expected = e;
      break;
    }
    case 2: {
      uint16_t e = (uint16_t)*expected;
      ok = atomic_compare_exchange_strong((_Atomic uint16_t *)p, &e, (uint16_t)bits);
      *expected = e;
      break;
    }
    case 4: {
      uint32_t e = (uint32_t)*expected;
      ok = atomic_compare_exchange_strong((_Atomic uint32_t *)p, &e, (uint32_t)bits);
      *expected = e;
      break;
    }
    default:
      ok = atomic_compare_exchange_strong((_Atomic uint64_t *)p, expected, bits);
      break;
  }
  return ok;
}

/* The sum (or difference) of the element `old` and the delta at stack idx,
** as element bits; 0 when the result does not fit the type. */
static int elem_arith (lua_State *L, int type, uint64_t old, int idx,
                       int sub, uint64_t *out) {
  const LoomElemType *et = &loomi_elemtypes[type];
  if (et->kind == LOOM_EK_FLOAT) {
    double x, d = (double)lua_tonumber(L, idx);
    if (et->size == 4) {
      uint32_t u = (uint32_t)old;
      float f;
      memcpy(&f, &u, 4);
      f = (float)(sub ? (double)f - d : (double)f + d);
      memcpy(&u, &f, 4);
      *out = u;
      return 1;
    }
    memcpy(&x, &old, 8);
    x = sub ? x - d : x + d;
    memcpy(out, &x, 8);
    return 1;
  }
  int64_t delta = (int64_t)lua_tointeger(L, idx);
  int bits = et->size * 8;
  if (et->kind == LOOM_EK_INT) {
    int64_t v = bits == 64 ? (int64_t)old
              : (int64_t)(old << (64 - bits)) >> (64 - bits);
    int64_t r;
    if (sub ? __builtin_sub_overflow(v, delta, &r)
            : __builtin_add_overflow(v, delta, &r))
      return 0;
    if (bits < 64 && (r < -((int64_t)1 << (bits - 1)) ||
                      r >= ((int64_t)1 << (bits - 1))))
      return 0;
    *out = (uint64_t)r & (bits == 64 ? ~(uint64_t)0
                                     : (((uint64_t)1 << bits) - 1));
    return 1;
  }
  uint64_t r;
  if (sub ? __builtin_sub_overflow(old, delta, &r)
          : __builtin_add_overflow(old, delta, &r))
    return 0;
  if (bits < 64 && r >= ((uint64_t)1 << bits))
    return 0;
  *out = r;
  return 1;
}

/* ---- element operations shared by Value and Array methods ----
** p is the element, type its index in loomi_elemtypes, arg the stack index
** of the first operand. */

int loomi_elem_op_add (lua_State *L, void *p, int type, int arg, int sub) {
  const LoomElemType *et = &loomi_elemtypes[type];
  const char *name = sub ? "sub" : "add";
  if (et->kind == LOOM_EK_BOOL || et->kind == LOOM_EK_CHAR)
    return luaL_error(L, "cannot %s on a %s element", name, et->name);
  if (lua_type(L, arg) != LUA_TNUMBER)
    return luaL_typeerror(L, arg, "number");
  if (et->kind != LOOM_EK_FLOAT) {
    lua_Integer d;
    if (!lua_isinteger(L, arg)) {
      int ok;
      d = lua_tointegerx(L, arg, &ok);
      if (!ok)
        return luaL_argerror(L, arg, "number has no integer representation");
      lua_pushinteger(L, d);
      lua_replace(L, arg);
    }
  }
  uint64_t old = loomi_elem_load(p, et->size, memory_order_relaxed), sum;
  do {
    if (!elem_arith(L, type, old, arg, sub, &sum))
      return elem_range_error(L, type, 0);
  } while (!elem_cas(p, et->size, &old, sum));
  loomi_elem_push(L, type, sum);
  return 1;
}

int loomi_elem_op_cas (lua_State *L, void *p, int type, int arg) {
  const LoomElemType *et = &loomi_elemtypes[type];
  uint64_t expected = loomi_elem_tobits(L, arg, type, arg);
  uint64_t desired = loomi_elem_tobits(L, arg + 1, type, arg + 1);
  int ok = elem_cas(p, et->size, &expected, desired);
  lua_pushboolean(L, ok);
  loomi_elem_push(L, type, expected);
  return 2;
}

int loomi_elem_op_exchange (lua_State *L, void *p, int type, int arg) {
  const LoomElemType *et = &loomi_elemtypes[type];
  uint64_t bits = loomi_elem_tobits(L, arg, type, arg);
  loomi_elem_push(L, type, elem_exchange(p, et->size, bits));
  return 1;
}

/* ---- classes whose functions find their metatable in an upvalue ----
** luaL_checkudata looks the metatable up in the registry by name on every
** call; these methods are called millions of times, so each carries the
** metatable as upvalue 2 (upvalue 1 is the methods table) and a check is a
** pointer compare.  Anything unusual takes the full check, for its error
** message. */

void loomi_fastclass (lua_State *L, const char *tname, const luaL_Reg *meta,
                      const luaL_Reg *methods) {
  static const luaL_Reg none[] = { {NULL, NULL} };
  loomi_newclass(L, tname, none, NULL);
  int top = lua_gettop(L);
  luaL_getmetatable(L, tname);                      /* mt */
  if (lua_getfield(L, -1, "__index") == LUA_TNIL) {   /* not yet built */
    lua_pop(L, 1);
    lua_newtable(L);                                /* mt methods */
    lua_pushvalue(L, -1);
    lua_pushvalue(L, -3);                           /* mt methods methods mt */
    luaL_setfuncs(L, methods, 2);                   /* mt methods */
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -4);                           /* mt methods mt methods mt */
    luaL_setfuncs(L, meta, 2);                      /* mt methods mt */
    /* also a field, as other classes have it, so that a reused state's
    ** snapshot reaches the methods (upvalues are not walked) */
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "methods");
  }
  lua_settop(L, top);
}

LoomObj *loomi_fastcheck (lua_State *L, int arg, const char *tname) {
  LoomProxy *p = loomi_proxy_shaped(L, arg);
  if (p != NULL && p->ref.o != NULL && lua_getmetatable(L, arg)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(2));
    lua_pop(L, 1);
    if (same)
      return p->ref.o;
  }
  return loomi_checkobj(L, arg, tname);
}

/* ---- loom.Value ---- */

typedef struct LoomValue {
  LoomObj obj;
  LoomObj *lock;             /* a Lock or RLock, or NULL (lock = false) */
  int type;
  _Alignas(8) unsigned char cell[8];
} LoomValue;

static void value_destroy (LoomObj *o) {
  LoomValue *v = (LoomValue *)o;
  loomi_obj_release(v->lock);
}

int loomi_checklockarg (lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg))
    return 1;
  if (lua_type(L, arg) == LUA_TBOOLEAN)
    return lua_toboolean(L, arg) ? 1 : 0;
  LoomObj *o = loomi_toobj(L, arg);
  if (o == NULL || (strcmp(o->tname, LOOM_LOCK) != 0 &&
                    strcmp(o->tname, LOOM_RLOCK) != 0))
    return luaL_typeerror(L, arg, "boolean or loom lock");
  return 2;
}

LoomObj *loomi_lockarg (lua_State *L, int arg, int kind) {
  LoomObj *k = NULL;
  if (kind == 2) {
    k = loomi_toobj(L, arg);
    loomi_obj_retain(k);
  }
  else if (kind == 1 && (k = loomi_rlock_create()) == NULL)
    luaL_error(L, "cannot create lock: shared heap exhausted");
  return k;
}

static LoomValue *checkvalue (lua_State *L, int arg) {
  return (LoomValue *)loomi_fastcheck(L, arg, LOOM_VALUE);
}

/* value(type, [init], [lock]): lock is true or nil (a new RLock, as in
** Python), false (none), or a loom Lock/RLock to share. */
static int value_new (lua_State *L) {
  int type = loomi_elem_check(L, 1);
  uint64_t bits = 0;
  if (!lua_isnoneornil(L, 2))
    bits = loomi_elem_tobits(L, 2, type, 2);
  int lockkind = loomi_checklockarg(L, 3);
  LoomObj **slot = loomi_proxy_new(L, LOOM_VALUE);
  LoomValue *v = (LoomValue *)loomi_obj_new(sizeof(LoomValue), LOOM_VALUE,
                                            value_destroy);
  if (v == NULL)
    return luaL_error(L, "cannot create value: shared heap exhausted");
  *slot = &v->obj;
  v->type = type;
  loomi_elem_store(v->cell, loomi_elemtypes[type].size, bits,
                   memory_order_relaxed);
  v->lock = loomi_lockarg(L, 3, lockkind);
  return 1;
}

static int value_index (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *key = lua_tostring(L, 2);
    if (strcmp(key, "value") == 0) {
      loomi_elem_push(L, v->type, loomi_elem_load(v->cell,
                      loomi_elemtypes[v->type].size, memory_order_relaxed));
      return 1;
    }
    if (strcmp(key, "type") == 0) {
      lua_pushstring(L, loomi_elemtypes[v->type].name);
      return 1;
    }
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int value_newindex (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (key == NULL || strcmp(key, "value") != 0)
    return loomi_field_error(L, 2, LOOM_VALUE);
  uint64_t bits = loomi_elem_tobits(L, 3, v->type, 0);
  loomi_elem_store(v->cell, loomi_elemtypes[v->type].size, bits,
                   memory_order_relaxed);
  return 0;
}

static int value_get_lock (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  if (v->lock == NULL)
    return luaL_error(L, "loom.Value has no lock");
  loomi_proxy_push(L, v->lock);
  return 1;
}

/* get_obj() -> the value: v.value never takes the lock, so the "raw"
** object Python's get_obj gives is the value itself. */
static int value_get_obj (lua_State *L) {
  checkvalue(L, 1);
  lua_settop(L, 1);
  return 1;
}

static int value_add (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  return loomi_elem_op_add(L, v->cell, v->type, 2, 0);
}

static int value_sub (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  return loomi_elem_op_add(L, v->cell, v->type, 2, 1);
}

static int value_cas (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  return loomi_elem_op_cas(L, v->cell, v->type, 2);
}

static int value_exchange (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  return loomi_elem_op_exchange(L, v->cell, v->type, 2);
}

static int value_load (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  loomi_elem_push(L, v->type, loomi_elem_load(v->cell,
                  loomi_elemtypes[v->type].size, memory_order_seq_cst));
  return 1;
}

static int value_store (lua_State *L) {
  LoomValue *v = checkvalue(L, 1);
  uint64_t bits = loomi_elem_tobits(L, 2, v->type, 2);
  loomi_elem_store(v->cell, loomi_elemtypes[v->type].size, bits,
                   memory_order_seq_cst);
  return 0;
}

static int value_tostring (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_VALUE);
  if (*slot == NULL) {
    lua_pushliteral(L, "loom.Value (closed)");
    return 1;
  }
  LoomValue *v = (LoomValue *)*slot;
  loomi_elem_push(L, v->type, loomi_elem_load(v->cell,
                  loomi_elemtypes[v->type].size, memory_order_relaxed));
  lua_pushfstring(L, "loom.Value (%s %s)", loomi_elemtypes[v->type].name,
                  luaL_tolstring(L, -1, NULL));
  return 1;
}

static const luaL_Reg value_meta[] = {
  {"__index", value_index},
  {"__newindex", value_newindex},
  {"__tostring", value_tostring},
  {NULL, NULL}
};

static const luaL_Reg value_methods[] = {
  {"get_lock", value_get_lock},
  {"get_obj", value_get_obj},
  {"add", value_add},
  {"sub", value_sub},
  {"cas", value_cas},
  {"exchange", value_exchange},
  {"load", value_load},
  {"store", value_store},
  {NULL, NULL}
};

static const luaL_Reg value_funcs[] = {
  {"value", value_new},
  {NULL, NULL}
};

void loomi_value_open (lua_State *L) {
  loomi_fastclass(L, LOOM_VALUE, value_meta, value_methods);
  luaL_setfuncs(L, value_funcs, 0);
}
