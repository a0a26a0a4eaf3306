/* event.c: loom.Event, a flag threads and forks wait on.
** Lua: loom.core.event() -> Event; set(); clear(); is_set();
**      wait([timeout]) -> true | false.
** SPDX-License-Identifier: MIT */
#include "loomint.h"

typedef struct Event {
  LoomObj obj;
  atomic_int flag;
  unsigned sets;            /* set() calls; mu held */
  pthread_mutex_t mu;
  LoomWaitq q;
  LoomNotifyLink *nlinks;   /* notifiers watching; mu held */
} Event;

/* ---- C core ---- */

static void event_destroy (LoomObj *o) {
  Event *e = (Event *)o;
  pthread_mutex_destroy(&e->mu);
}

static Event *event_create (void) {
  Event *e = (Event *)loomi_obj_new(sizeof(Event), LOOM_EVENT, event_destroy);
  if (e == NULL)
    return NULL;
  if (loomi_mutex_init(&e->mu) != 0) {
    e->obj.destroy = NULL;
    loomi_obj_release(&e->obj);
    return NULL;
  }
  atomic_init(&e->flag, 0);
  return e;
}

/* 1 when the flag is set or a set() happened meanwhile (a set() followed
** at once by clear() still wakes everyone who was waiting, as in Python),
** else 0; ECANCELED or EINTR in *err. */
static int event_wait_flag (Event *e, const LoomDeadline *dl, int *err) {
  int rc = 0;
  loomi_mutex_lock(&e->mu);
  unsigned sets = e->sets;
  while (!atomic_load(&e->flag) && e->sets == sets && rc == 0)
    rc = loomi_wait(&e->q, &e->mu, &e->obj, dl);
  int flag = atomic_load(&e->flag) || e->sets != sets;
  loomi_mutex_unlock(&e->mu);
  *err = rc == ECANCELED || rc == EINTR ? rc : 0;
  return flag;
}

void loomi_event_watch (LoomObj *o, LoomNotifyLink *l, int attach) {
  Event *e = (Event *)o;
  loomi_mutex_lock(&e->mu);
  if (attach)
    loomi_notify_attach(&e->nlinks, l, atomic_load(&e->flag));
  else
    loomi_notify_detach(&e->nlinks, l);
  loomi_mutex_unlock(&e->mu);
}

/* ---- Lua bindings ---- */

static Event *checkevent (lua_State *L, int arg) {
  return (Event *)loomi_checkobj(L, arg, LOOM_EVENT);
}

static int event_new (lua_State *L) {
  LoomObj **slot = loomi_proxy_new(L, LOOM_EVENT);
  Event *e = event_create();
  if (e == NULL)
    return luaL_error(L, "cannot create event: shared heap exhausted");
  *slot = &e->obj;
  return 1;
}

static int event_set (lua_State *L) {
  Event *e = checkevent(L, 1);
  loomi_mutex_lock(&e->mu);
  atomic_store(&e->flag, 1);
  e->sets++;
  loomi_wake_all(&e->q);
  if (e->nlinks != NULL)
    loomi_notify_fire(&e->nlinks);
  loomi_mutex_unlock(&e->mu);
  return 0;
}

static int event_clear (lua_State *L) {
  Event *e = checkevent(L, 1);
  loomi_mutex_lock(&e->mu);
  atomic_store(&e->flag, 0);
  loomi_mutex_unlock(&e->mu);
  return 0;
}

static int event_is_set (lua_State *L) {
  Event *e = checkevent(L, 1);
  lua_pushboolean(L, atomic_load(&e->flag));
  return 1;
}

static int event_wait (lua_State *L) {
  Event *e = checkevent(L, 1);
  LoomDeadline dl;
  loomi_opttimeout(L, 2, &dl);
  if (atomic_load(&e->flag)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  int err;
  loomi_block_begin(L);
  int flag = event_wait_flag(e, &dl, &err);
  loomi_block_end(L);
  if (err == ECANCELED)
    return loomi_raise_cancelled(L);
  if (err == EINTR && !flag)
    return loomi_push_interrupted(L);
  lua_pushboolean(L, flag);
  return 1;
}

static int event_tostring (lua_State *L) {
  LoomObj **slot = loomi_checkslot(L, 1, LOOM_EVENT);
  if (*slot == NULL)
    lua_pushliteral(L, LOOM_EVENT " (closed)");
  else
    lua_pushfstring(L, LOOM_EVENT " (%p, %s)", (void *)*slot,
                    atomic_load(&((Event *)*slot)->flag) ? "set" : "unset");
  return 1;
}

static const luaL_Reg event_meta[] = {
  {"__tostring", event_tostring},
  {NULL, NULL}
};

static const luaL_Reg event_methods[] = {
  {"set", event_set},
  {"clear", event_clear},
  {"is_set", event_is_set},
  {"wait", event_wait},
  {NULL, NULL}
};

static const luaL_Reg event_funcs[] = {
  {"event", event_new},
  {NULL, NULL}
};

void loomi_event_open (lua_State *L) {
  loomi_newclass(L, LOOM_EVENT, event_meta, event_methods);
  luaL_setfuncs(L, event_funcs, 0);
}
