/* loomint.h: the one internal header of loom.core.
** Shared heap, refcounted objects and their proxies, deadlines, cancellable
** waits, the transfer codec and the per-primitive open functions.
** SPDX-License-Identifier: MIT */
#ifndef LOOMINT_H
#define LOOMINT_H

/* ---- Ownership and lifetimes ----
** Shared objects.  Every primitive is a LoomObj in the shared heap with an
** atomic count.  References are held by: a proxy (one each, in a LoomRef);
** a transfer message (one per object it carries, given back by whoever
** frees the message: its decoder, or the queue, pool or thread that drops
** it undecoded); the object that contains another (an Array or Value its
** lock, a Pool its task queue, a shared thread the thread object it
** borrows); and whatever runs on an object's behalf (a running thread
** holds its own object, a pool worker its queue, an as_completed loop its
** waiter and futures).  The last release runs the destroy hook, in
** whichever thread or process that is.
** Processes.  A reference belongs to the process that took it.  Every
** userdata that holds one holds it in a LoomRef (loomi_ref_*), which only
** releases in that process: a forked child inherits the memory of its
** parent's holders, never their references, and drops them by forgetting.
** loom's own fork takes in the parent a reference for the child on every
** object a proxy of the forking state holds (LoomHeld), given back when the
** child is reaped (or by the child, orphaned).  Per-state lists (the
** threads and processes a state started, the messages it is decoding)
** record their process and are forgotten in a child.  What runs in threads
** belongs to its process alone: a Pool refuses its methods elsewhere, a
** child has no idle workers, and an inherited as_completed loop refuses.
** Threads.  A lua_State is touched by one OS thread at a time: a loom
** thread's state by its worker, an interpreter with shared threads by the
** holder of its GIL.  An RLock is owned by a loom thread (pid and a number
** each loom thread draws), never by the OS thread under it.
** Lua values.  A proxy's Lua companions sit in its user values; a shared
** thread's coroutine, which its results live in, is anchored in its
** interpreter's registry until no handle can read it.  The library of
** loom.core and of every C function that crosses states is pinned for the
** process's life (dlopen RTLD_NODELETE), in every process that has it.
** Lock order, for the whole library (a lock is never taken while holding
** one listed after it):
**   1. hook_mu (core.c), gils_mu (gil.c), idle_mu (thread.c): alone.
**   2. One object's mutex: a Lock/RLock/Semaphore/Event/Barrier/Condition/
**      Queue/Future/Process/thread's mu.  Two only as: a Future's mu then
**      a waiter's (pool.c); a SharedThread's mu then its GIL's (gil.c).  A
**      Condition never holds its own mu and its lock's together.
**   3. A loom thread's reg_mu, taken under one of (2) while its wait
**      registers (thread.c); a canceller takes the thread's mu, lets it
**      go, then takes reg_mu alone and only wakes the wait queue under it
**      (a futex needs no mutex).
**   4. The heap's locks (heap.c), last: anything may allocate or free
**      under the locks above; the heap takes nothing else.
** No Lua API call that can raise or allocate is made under any of them. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "loom.h"

/* loom's thread-locals sit in the static TLS block every thread gets when it
 * is created.  In a dlopen'ed module the default model allocates them on a
 * thread's first access instead, and glibc aborts the whole process when
 * that allocation fails under memory pressure. */
#define LOOM_THREAD_LOCAL _Thread_local __attribute__((tls_model("initial-exec")))

/* Type names double as metatable names and __name. */
#define LOOM_THREAD     "loom.Thread"
#define LOOM_LOCK       "loom.Lock"
#define LOOM_RLOCK      "loom.RLock"
#define LOOM_SEMAPHORE  "loom.Semaphore"
#define LOOM_BSEMAPHORE "loom.BoundedSemaphore"
#define LOOM_CONDITION  "loom.Condition"
#define LOOM_EVENT      "loom.Event"
#define LOOM_BARRIER    "loom.Barrier"
#define LOOM_VALUE      "loom.Value"
#define LOOM_ARRAY      "loom.Array"
#define LOOM_QUEUE      "loom.Queue"
#define LOOM_FUTURE     "loom.Future"
#define LOOM_POOL       "loom.Pool"
#define LOOM_PROCESS    "loom.Process"
#define LOOM_NOTIFIER   "loom.Notifier"

/* The fixed fail tokens (STYLE.md section 5). */
#define LOOM_TIMEOUT    "timeout"
#define LOOM_CLOSED     "closed"
#define LOOM_CANCELLED  "cancelled"
/* What a main-thread wait cut short by Ctrl-C returns, should the hook
** lua.c sets not raise at once. */
#define LOOM_INTERRUPTED "interrupted"

#pragma GCC visibility push(hidden)

/* ---- heap.c: the shared arena ----
** One MAP_SHARED|MAP_ANONYMOUS mapping made when loom.core is first opened
** in a process, so it sits at the same address in every fork.  Every
** LoomObj and every transfer message lives in it. */
int    loomi_heap_init (void);               /* 0 | errno; idempotent */
void  *loomi_heap_alloc (size_t n);          /* NULL when exhausted */
void  *loomi_heap_calloc (size_t n);         /* zeroed; NULL when exhausted */
void   loomi_heap_free (void *p);            /* NULL is a no-op */
int    loomi_heap_configure (size_t size);   /* 0 | EBUSY once used | EINVAL */
/* LOOM_HEAP_SIZE: 1 and *size when set and valid, 0 unset, -1 malformed */
int    loomi_heap_env (size_t *size);
size_t loomi_heap_size (void);
size_t loomi_heap_used (void);               /* bytes handed out, for specs */
/* A snapshot of the arena: used and free count whole blocks, headers
** included; largest_free is the largest request that would succeed;
** recovered counts repairs after a process died holding the heap's lock. */
typedef struct LoomHeapStats {
  size_t size, used, free, largest_free, free_blocks, recovered;
} LoomHeapStats;
void   loomi_heap_stats (LoomHeapStats *st);
/* Gives the calling thread's cached blocks back: before a process leaves
** by _exit, which runs no thread-exit destructors. */
void   loomi_heap_flush (void);

/* ---- obj.c: refcounted shared objects and their proxies ---- */
typedef struct LoomObj LoomObj;
typedef void (*LoomDestroy) (LoomObj *o);

/* The first member of every shared primitive.  The destroy hook and the
** type name are addresses inside this library, valid in every fork. */
struct LoomObj {
  atomic_int refs;
  const char *tname;       /* LOOM_LOCK, ... */
  LoomDestroy destroy;     /* releases what the object owns; not the memory */
};

/* Allocates a zeroed object of `size` bytes with one reference; NULL when
** the heap is exhausted. */
LoomObj *loomi_obj_new (size_t size, const char *tname, LoomDestroy destroy);
void loomi_obj_retain (LoomObj *o);
void loomi_obj_release (LoomObj *o);         /* the last one destroys + frees */

/* The owner-aware reference holder.  Every userdata that holds a
** reference to a shared object holds it in a LoomRef, which remembers the
** process that took it: a forked child inherits the holder's memory but not
** the reference (the count lives in the shared heap and the parent's holder
** still owns it), so only the owner process may ever release it.  ref_set
** takes over a reference the calling process made (o may be NULL); ref_mine
** is true while it holds one of this process; ref_take clears the holder
** and returns the object when the reference is this process's to release,
** else NULL; ref_drop releases it in the owner and only forgets it
** elsewhere.  All are idempotent. */
typedef struct LoomRef {
  LoomObj *o;              /* first: a proxy is read as LoomObj** */
  pid_t owner;
} LoomRef;
void     loomi_ref_set (LoomRef *r, LoomObj *o);
int      loomi_ref_mine (const LoomRef *r);
LoomObj *loomi_ref_take (LoomRef *r);
void     loomi_ref_drop (LoomRef *r);

/* A proxy's block.  The size and the mark refuse a foreign userdata given a
** loom metatable (debug.setmetatable), whose bytes Lua code cannot make
** into a proxy's; its metatable's identity is the caller's to check. */
typedef struct LoomProxy {
  LoomRef ref;             /* first: code elsewhere reads a proxy as LoomObj** */
  uint32_t magic;          /* LOOM_PROXY_MAGIC */
} LoomProxy;
#define LOOM_PROXY_MAGIC 0x6c6f6f6du   /* "loom" */

/* The proxy block at idx, or NULL for anything else.  Inline, and one
** index lookup beyond lua_touserdata's (a light userdata's raw length is
** 0): every method call of a lock or a queue pays it. */
static inline LoomProxy *loomi_proxy_shaped (lua_State *L, int idx) {
  LoomProxy *p = (LoomProxy *)lua_touserdata(L, idx);
  return p != NULL && lua_rawlen(L, idx) == sizeof(LoomProxy) &&
         p->magic == LOOM_PROXY_MAGIC ? p : NULL;
}

/* A proxy is a full userdata holding one reference (in a LoomRef).  proxy_new pushes a
** proxy with a NULL object (create it before acquiring OS resources) and the
** metatable `tname`; set *slot once the object exists. */
LoomObj **loomi_proxy_new (lua_State *L, const char *tname);
/* The same with the metatable at index mt and the state's table of proxies
** (loomi_proxy_table pushes it) at tbl, both typically upvalues, and nuv
** user values (proxy_new gives one): for constructors on a hot path, which
** then skip two registry lookups. */
LoomObj **loomi_proxy_new_at (lua_State *L, int mt, int tbl, int nuv);
void loomi_proxy_table (lua_State *L);
/* Pushes a new proxy for an existing object, taking a new reference. */
void loomi_proxy_push (lua_State *L, LoomObj *o);
/* The slot of a proxy of class tname at arg, closed or not: recognised by
** its metatable's identity and its shape, never by a field Lua can set.
** test returns NULL for anything else, check raises "tname expected".
** Every metamethod checks its self with these. */
LoomObj **loomi_testslot (lua_State *L, int arg, const char *tname);
LoomObj **loomi_checkslot (lua_State *L, int arg, const char *tname);
/* Pushes the private table whose keys are the metatables of every loom
** class made in this state (a new empty table when there are none). */
void loomi_class_table (lua_State *L);
/* Type check + closed check; raises "attempt to use a closed loom.X". */
LoomObj *loomi_checkobj (lua_State *L, int arg, const char *tname);
/* The object behind a loom proxy of any type, or NULL (never a userdata
** whose metatable merely looks like a loom one). */
LoomObj *loomi_toobj (lua_State *L, int idx);
/* Builds the metatable of a primitive: __name, the metamethods (a default
** __gc/__close/__tostring/__eq is added where `meta` has none) and
** __index = methods.  Leaves the stack unchanged. */
void loomi_newclass (lua_State *L, const char *tname,
                     const luaL_Reg *meta, const luaL_Reg *methods);
int  loomi_proxy_gc (lua_State *L);          /* idempotent release */
const char *loomi_checkname (lua_State *L, int idx, size_t cap);
int  loomi_field_error (lua_State *L, int key, const char *tname);
/* Fork support.  A child inherits its states' proxies but not the
** references they stand for (the counts live in the shared heap): a proxy
** releases only in the process that made it.  Before loom forks, the parent
** takes a reference on the object of every proxy of the forking state
** (proxy_hold: a block in the shared heap, NULL when it is exhausted) and
** gives them back with held_release once the child is gone.  A child
** leaving releases what its own proxies hold (proxy_release_own). */
typedef struct LoomHeld {
  size_t n;
  LoomObj *objs[];
} LoomHeld;
LoomHeld *loomi_proxy_hold (lua_State *L);
void loomi_held_release (LoomHeld *h);       /* NULL is a no-op */
void loomi_proxy_release_own (lua_State *L);

/* Process-shared and robust. */
int  loomi_mutex_init (pthread_mutex_t *mu);       /* 0 | errno */
/* Locks; a previous owner that died is repaired and reported by returning
** EOWNERDEAD (the mutex is held and consistent again), otherwise 0. */
int  loomi_mutex_lock (pthread_mutex_t *mu);
void loomi_mutex_unlock (pthread_mutex_t *mu);

/* ---- clock.c: deadlines ---- */
typedef struct LoomDeadline {
  struct timespec at;      /* CLOCK_MONOTONIC */
  int forever;
} LoomDeadline;

double loomi_now (void);                     /* monotonic seconds */
void   loomi_deadline_in (LoomDeadline *dl, double seconds); /* <0: forever */
int    loomi_deadline_passed (const LoomDeadline *dl);
double loomi_deadline_left (const LoomDeadline *dl);  /* -1 when forever */
/* Reads an optional timeout argument: nil or none means forever; a negative
** number raises "timeout must be non-negative". */
void   loomi_opttimeout (lua_State *L, int arg, LoomDeadline *dl);
/* loom.TIMEOUT_MAX: a longer timeout (math.huge too) waits forever. */
#define LOOM_TIMEOUT_MAX 1e9

/* ---- wait.c: the wait layer ----
** Every loom wait sleeps on a LoomWaitq: a futex word in the shared heap
** that wakers bump, and counts of waiters and sleepers so that a waker
** with nobody to wake makes no system call.  No state is kept per waiter,
** so a waiter that dies (kill -9) leaves nothing a survivor must clean up:
** at worst the counts stay too high, which costs needless wake-up calls.  Waits
** sleep in slices and every wait loops on its predicate, so a wake-up
** given to a waiter that died is late, never lost. */
typedef struct LoomWaitq {
  atomic_uint seq;         /* the futex word */
  atomic_uint waiters;     /* between wait_prepare and wait_finish */
  atomic_uint sleepers;    /* of those, the ones past spinning */
} LoomWaitq;

void loomi_waitq_init (LoomWaitq *q);        /* or zeroed memory */
/* Wakes n (or all) sleepers; callable with or without the mutex that
** guards the predicate, as long as the predicate changed before. */
void loomi_wake (LoomWaitq *q, int n);
void loomi_wake_all (LoomWaitq *q);
/* Call with `mu` held; it is held again on return (a holder that died is
** repaired, see loomi_mutex_lock).  `obj` is the object that owns q (a
** canceller takes a reference while it wakes the waiter; GIL threads pin
** it).  Spins briefly, then sleeps.  Returns 0 (woken or a slice passed:
** re-check the predicate), ETIMEDOUT, ECANCELED (the calling loom thread
** was cancelled) or EINTR (Ctrl-C on the main thread: return to Lua,
** leaving the object consistent, see loomi_push_interrupted). */
int loomi_wait (LoomWaitq *q, pthread_mutex_t *mu, LoomObj *obj,
                const LoomDeadline *dl);
/* The same in parts, for predicates read without a mutex: prepare counts
** the caller as a waiter and returns the sequence to sleep on; read the
** predicate after it; wait_seq sleeps (mu may be NULL); finish uncounts. */
unsigned loomi_wait_prepare (LoomWaitq *q);
int  loomi_wait_seq (LoomWaitq *q, unsigned seq, pthread_mutex_t *mu,
                     LoomObj *obj, const LoomDeadline *dl);
void loomi_wait_finish (LoomWaitq *q);
/* wait_seq without a mutex that neither cancel() nor Ctrl-C cuts short,
** for taking back a lock on the way out of a wait that was. */
int  loomi_wait_plain (LoomWaitq *q, unsigned seq, const LoomDeadline *dl);
/* Sleeps until dl passes: 0, ECANCELED or EINTR. */
int  loomi_sleep_until (LoomWaitq *q, LoomObj *obj, const LoomDeadline *dl);
/* The one spin policy: polls ready(arg) for a few microseconds, less on a
** machine where polling keeps failing; 1 when it became true. */
int  loomi_spin (int (*ready) (const void *arg), const void *arg);
/* Ctrl-C: block_begin records the hook of the state about to block and
** block_end forgets it; interrupted is true once a new hook is on it.  A binding
** whose wait returned EINTR returns push_interrupted's fail, "interrupted"
** (lua.c's hook raises "interrupted!" before the caller sees it). */
void loomi_intr_begin (lua_State *L);
void loomi_intr_end (void);
int  loomi_intr_watched (void);             /* on the main thread, in one */
int  loomi_interrupted (void);
int  loomi_push_interrupted (lua_State *L);

/* ---- thread.c: what the wait layer needs of loom threads ----
** wait_enter registers the calling loom thread's wait on q for cancel()
** and returns ECANCELED when it is already cancelled (nothing registered);
** wait_leave unregisters and returns nonzero when it was cancelled. */
int loomi_thread_wait_enter (LoomWaitq *q, LoomObj *obj);
int loomi_thread_wait_leave (void);
/* True when the calling OS thread is a loom thread that was cancelled. */
int loomi_cancel_requested (void);
/* True when the calling OS thread runs a loom thread, which cancel() can
** reach; no other thread's wait ever needs to wake for one. */
int loomi_cancellable (void);
/* Raises the cancellation error (never returns). */
int loomi_raise_cancelled (lua_State *L);
/* Around any wait that may block, a binding calls block_begin before and
** block_end after (shared-interpreter threads release their lock there).
** No Lua API call may happen in between. */
void loomi_block_begin (lua_State *L);
void loomi_block_end (lua_State *L);
/* In a forked child, on the thread that forked (process.c): the threads L
** started run in the parent, so the child forgets them without touching
** their references, and stops being a loom thread.  Returns 1 when the fork
** came from a loom thread. */
int  loomi_thread_forked (lua_State *L);
/* What closing L does to the threads it started: cancel the daemons, wait
** for the rest.  A forked child calls it before it leaves. */
void loomi_thread_shutdown (lua_State *L);
/* At the exit of a process that never closed its states (core.c's atexit
** handler): its threads' and children's end, as closing would do it. */
void loomi_thread_atexit (void);
void loomi_process_atexit (void);
int  loomi_on_loom_thread (void);   /* the caller runs a loom thread */

/* A shared-interpreter thread (gil.c) borrows a thread object: made with
** one reference; entered on its OS thread (self, ids) and left when done;
** cancel() flags it and wakes its wait. */
LoomObj *loomi_thread_borrowed (const char *name, int daemon);
void loomi_thread_enter (LoomObj *o);
void loomi_thread_leave (LoomObj *o);
/* Lists a thread as running in this process (enumerate), or unlists it. */
void loomi_thread_live (LoomObj *o, int on);
void loomi_thread_set_ident (LoomObj *o, int64_t ident);
/* The stack size of threads made now (loom.stack_size). */
size_t loomi_stack_size (void);
void loomi_thread_cancel (LoomObj *o);
/* SIGCHLD ignored (SIG_IGN or SA_NOCLDWAIT): children are reaped by the
** kernel and their statuses lost, so loom forks none (process.c). */
int  loomi_sigchld_ignored (void);
#define LOOM_SIGCHLD_IGNORED "cannot start process: SIGCHLD is ignored " \
  "(SIG_IGN), so the child's exit status would be lost; restore its " \
  "default action (SIG_DFL) first"
/* In a forked child: every descriptor from 3 up but the nkeep in keep is
** closed, or with to_null made a copy of /dev/null (so that a stdio stream
** or a Lua file still naming the number never reaches a file opened
** later; closed when /dev/null cannot be opened) (process.c). */
void loomi_close_fds (const int *keep, size_t nkeep, int to_null);
/* A pool worker process, before it runs Lua: its name for
** current_process(), and the pool maker's pid and name for
** parent_process(); leave gives both handles back before _exit; name is
** the calling process's (process.c). */
void loomi_process_adopted (const char *name, pid_t parent,
                            const char *parent_name);
void loomi_process_leave (void);
const char *loomi_process_name (void);
/* The sequence of descriptors at idx (a pass_fds option), checked, then
** pushed as a userdata of *n ints, which it returns; raises naming
** argument arg of function fname. */
int *loomi_check_fds (lua_State *L, int idx, int arg, size_t *n);
/* Names the calling OS thread for current() when loom did not start it as
** a loom thread: a pool worker (thread.c). */
void loomi_thread_name_os (const char *name);
int  loomi_thread_cancelled (LoomObj *o);
int  loomi_thread_is_self (LoomObj *o);

/* ---- gil.c: the global interpreter lock of shared threads ----
** block_begin/end release and retake it around a blocking call (no-ops on
** OS threads that hold no GIL); loomi_wait pins the object it waits on
** until block_end, so a frozen interpreter never frees it under a waiter. */
void loomi_gil_block_begin (lua_State *L);
void loomi_gil_block_end (lua_State *L);
void loomi_gil_pin (LoomObj *o);
void loomi_gil_peek_hook (lua_State *L, lua_Hook *hook, int *mask);

/* ---- preload.c: host modules offered to every state loom makes ---- */
void loomi_preload_install (lua_State *L);   /* the searcher, in a new state */
void loomi_preload_open (lua_State *L);      /* loom.core.preload */

/* ---- xfer.c: the transfer codec ----
** A message is one block in the shared heap holding the encoded values and
** a reference to every loom object among them, so it can cross threads and
** forked processes, and be dropped undecoded without leaking.  Errors name
** the values root[1], root[2], ... when there are several, or when root ends
** in "[]" ("results[]"); a single value is just root ("item"). */
typedef struct LoomMsg LoomMsg;

/* Encodes the n values at stack[first..first+n-1]; `root` names them in
** error messages ("args" gives "args[2].conn").  Raises on an untransferable
** value or an exhausted heap.  The caller owns the message. */
LoomMsg *loomi_xfer_encode (lua_State *L, int first, int n, const char *root);
/* The same for a call: stack[first] is the function, named "target" in
** errors, and the n-1 values after it are "args[1]", "args[2]", ... */
LoomMsg *loomi_xfer_encode_call (lua_State *L, int first, int n);
/* Pushes the values and returns how many.  Raises on a corrupt message or a
** value the receiving state cannot rebuild; the message stays owned by the
** caller either way. */
int  loomi_xfer_decode (lua_State *L, const LoomMsg *m);
/* For small items kept inline (a queue's ring): like encode, but when the
** values hold no loom object and their payload fits in *len bytes, copies
** it to `out`, sets *len to its size and returns NULL.  Decode such a
** payload with decode_inline, giving the pid of the encoding process. */
LoomMsg *loomi_xfer_encode_inline (lua_State *L, int first, int n,
                                   const char *root, void *out, size_t *len);
int  loomi_xfer_decode_inline (lua_State *L, const void *p, size_t len,
                               int32_t pid);
void loomi_msg_free (LoomMsg *m);            /* NULL is a no-op */
/* For the fuzzer: decodes a bare payload (no objects, bytecode refused), or
** a whole message image of len bytes (header checked, checksum verified
** before anything is decoded).  Both raise on bad input. */
int  loomi_xfer_decode_raw (lua_State *L, const void *payload, size_t len);
int  loomi_xfer_decode_checked (lua_State *L, const void *msg, size_t len);
size_t loomi_msg_size (const LoomMsg *m);    /* payload bytes */
/* For loom.encode (portable.c): encodes the n values with no address in
** the payload (C functions by module and field, loom objects and light
** userdata refused with the path named) and pushes one string: headlen
** bytes that fill writes once the payload is known, then the payload.
** decode_portable pushes the values of such a payload; nocode refuses
** bytecode, for input that no checksum vouches for. */
typedef void (*LoomHeadFill) (unsigned char *head, const unsigned char *payload,
                              size_t len);
void loomi_xfer_encode_portable (lua_State *L, int first, int n,
                                 size_t headlen, LoomHeadFill fill);
int  loomi_xfer_decode_portable (lua_State *L, const void *payload, size_t len,
                                 int nocode);
uint64_t loomi_xfer_checksum (const void *p, size_t n);
/* portable.c, for the fuzzer: a loom.encode string's header checked but
** not its checksum, then its payload decoded with bytecode refused. */
int  loomi_portable_decode_unchecked (lua_State *L, const void *s, size_t n);

/* ---- thread.c: errors that cross states ----
** loomi_msgh is the message handler of every
** protected call whose error travels: it keeps the error value and saves
** the traceback, which loomi_push_traceback then pushes (and forgets).
** loomi_error_encode encodes (error, traceback) at errbase, errbase+1 into
** a message, falling back to the error's text when the value cannot
** travel; NULL when memory is exhausted; never raises.  loomi_raise_remote
** re-raises such an error in the receiving state: "msg\n[where] traceback"
** when both are strings, else the error value unchanged. */
int  loomi_msgh (lua_State *L);
void loomi_push_traceback (lua_State *L);
LoomMsg *loomi_error_encode (lua_State *L, int errbase);
int  loomi_raise_remote (lua_State *L, int errbase, const char *where);

/* ---- core.c ---- */
/* The number of values of an argument table at t (the n field, else its
** raw length), range-checked before any conversion to int; raises when it
** is not an integer from 0 to LOOM_MAXARGS. */
#define LOOM_MAXARGS 100000
int loomi_argcount (lua_State *L, int t);
/* In a forked child: restores the signal mask the process had when loom
** was first opened, whatever thread (a loom thread or pool worker, which
** block every signal) forked it. */
void loomi_child_sigmask (void);
/* Creates a state for a loom thread or worker, on the OS thread that will
** run it: standard libraries, the given package paths (either may be NULL),
** loom.core in package.preload (opened by the first require, or when a loom
** object arrives), then the host's state hook.  Returns NULL with a message
** in err on failure. */
lua_State *loomi_newstate (const char *path, const char *cpath,
                           char *err, size_t errlen);

/* ---- lock.c: for primitives that carry a lock (Value.get_lock) ---- */
/* A new loom.RLock object with one reference, or NULL (heap exhausted). */
LoomObj *loomi_rlock_create (void);
/* The lock core a Condition drives.  islock: a loom.Lock or loom.RLock.
** owned: held by the calling thread (RLock) or by anyone (Lock), Python's
** _is_owned.  release_all frees a lock the caller owns and returns the
** recursion depth to give restore, which takes it back, waiting as long
** as it takes and ignoring cancellation (the caller raises afterwards);
** restore returns 1 when it took the lock from a dead holder, else 0. */
int  loomi_islock (const LoomObj *o);
int  loomi_lock_owned (LoomObj *lk);
int  loomi_lock_release_all (LoomObj *lk);
int  loomi_lock_restore (LoomObj *lk, int count);
/* acquire([blocking], [timeout]) and release() on lk with the Lua
** arguments from index 2 on: the methods of Lock and RLock, shared. */
/* The calling OS thread starts a new loom thread: RLocks it takes from now
** on are owned by that loom thread, not by the one it ran before. */
void loomi_lock_new_owner (void);
int  loomi_lock_lacquire (lua_State *L, LoomObj *lk);
int  loomi_lock_lrelease (lua_State *L, LoomObj *lk);
/* The hold([timeout]) method of anything with acquire/release: pushes a
** guard whose __close calls release, or fail, "timeout". */
int  loomi_hold (lua_State *L);
/* Methods that find their class's metatable in upvalue 1: fast_methods
** reinstalls `methods` (already in the class's __index) that way, and
** fastself returns the object at index 1 when it is an open proxy of that
** class, else NULL (then check it the usual way, for the error message). */
void loomi_fast_methods (lua_State *L, const char *tname,
                         const luaL_Reg *methods);
LoomObj *loomi_fastself (lua_State *L);
/* The guard's __close; a cancelled thread's hook lets it run. */
int  loomi_guard_close (lua_State *L);
/* For a hook on a loom thread's state (thread.c): whether a cancellation is
** to be raised at this event; 0 while a __close handler of its unwinding
** runs. */
int  loomi_cancel_hook_due (lua_State *L, lua_Debug *ar);
/* This process's pid, cached and refreshed in forks. */
pid_t loomi_self_pid (void);
/* True when process pid no longer exists; with zombies, also when it is
** a zombie nobody has reaped yet (that check reads /proc). */
int  loomi_pid_gone (pid_t pid, int zombies);

/* ---- shared.c: element types of loom.Value and loom.Array ---- */
enum { LOOM_EK_INT, LOOM_EK_UINT, LOOM_EK_FLOAT, LOOM_EK_BOOL, LOOM_EK_CHAR };

typedef struct LoomElemType {
  const char *name;        /* canonical: "int8", ..., "double", "bool", "char" */
  unsigned char kind;      /* LOOM_EK_* */
  unsigned char size;      /* bytes: 1, 2, 4 or 8 */
} LoomElemType;

extern const LoomElemType loomi_elemtypes[];   /* ends with a NULL name */

/* The element type named at arg (a name or a Python typecode), as an index
** into loomi_elemtypes; raises "invalid element type 'x'". */
int loomi_elem_check (lua_State *L, int arg);
/* Converts the Lua value at idx to the bits of one element, raising on a
** wrong type or range: as an argument error when arg > 0, plainly when 0. */
uint64_t loomi_elem_tobits (lua_State *L, int idx, int type, int arg);
void loomi_elem_push (lua_State *L, int type, uint64_t bits);
/* Atomic access to one naturally aligned element of `size` bytes. */
uint64_t loomi_elem_load (void *p, int size, memory_order mo);
void loomi_elem_store (void *p, int size, uint64_t bits, memory_order mo);
/* The atomic methods, operands from stack index arg on; they push their
** results and return how many. */
int loomi_elem_op_add (lua_State *L, void *p, int type, int arg, int sub);
int loomi_elem_op_cas (lua_State *L, void *p, int type, int arg);
int loomi_elem_op_exchange (lua_State *L, void *p, int type, int arg);
/* The `lock` argument of value() and array(): checklockarg validates it
** (0 none, 1 a new RLock, 2 the given Lock/RLock) before the object exists;
** lockarg then returns a new reference to the lock, or NULL for none. */
int loomi_checklockarg (lua_State *L, int arg);
LoomObj *loomi_lockarg (lua_State *L, int arg, int kind);
/* A class whose methods and metamethods are all closures over (methods
** table, metatable), so that fastcheck, called from them, checks the type
** with a pointer compare.  Builds what loomi_newclass builds otherwise. */
void loomi_fastclass (lua_State *L, const char *tname, const luaL_Reg *meta,
                      const luaL_Reg *methods);
LoomObj *loomi_fastcheck (lua_State *L, int arg, const char *tname);

/* ---- notify.c: watches a loom.Notifier keeps on objects ----
** An object one can watch keeps a list of links, under its own mu, and
** calls fire whenever it completes (a cheap NULL test while nobody
** watches).  fire tells every link's notifier; one-shot links leave the
** list.  attach links l in (telling it at once when `now`: the object has
** completed already), detach takes it out if it is still in; both with the
** object's mu held, like fire.  Each kind of object offers one
** loomi_<kind>_watch(o, l, attach) that takes its mu and calls these. */
typedef struct LoomNotifyLink LoomNotifyLink;
void loomi_notify_fire (LoomNotifyLink **head);
void loomi_notify_attach (LoomNotifyLink **head, LoomNotifyLink *l, int now);
void loomi_notify_detach (LoomNotifyLink **head, LoomNotifyLink *l);
void loomi_future_watch (LoomObj *o, LoomNotifyLink *l, int attach);
void loomi_event_watch (LoomObj *o, LoomNotifyLink *l, int attach);
void loomi_queue_watch (LoomObj *o, LoomNotifyLink *l, int attach);
/* Processes cannot tell anyone they ended (kill -9): a notifier's own
** thread asks while it watches any (process.c). */
int  loomi_process_ended (LoomObj *o);

/* ---- one open function per primitive (core.c walks them) ----
** Each adds its functions to the module table on top of the stack and
** builds its metatables (loomi_newclass). */
void loomi_thread_open (lua_State *L);
void loomi_gil_open (lua_State *L);
void loomi_lock_open (lua_State *L);
void loomi_sem_open (lua_State *L);
void loomi_cond_open (lua_State *L);
void loomi_event_open (lua_State *L);
void loomi_barrier_open (lua_State *L);
void loomi_value_open (lua_State *L);
void loomi_array_open (lua_State *L);
void loomi_queue_open (lua_State *L);
void loomi_process_open (lua_State *L);
void loomi_pool_open (lua_State *L);
void loomi_portable_open (lua_State *L);
void loomi_notify_open (lua_State *L);

#pragma GCC visibility pop

#endif
