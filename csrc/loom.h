/* loom.h: the public C API of loom, for hosts that embed Lua.
** Link loom.core statically (or load it as a module) and call these from the
** host.  SPDX-License-Identifier: MIT */
#ifndef LOOM_H
#define LOOM_H

#include <stddef.h>

#include "lua.h"

#ifndef LOOM_API
#define LOOM_API __attribute__((visibility("default")))
#endif

/* The release this header belongs to; loom._VERSION and loom.version in Lua
** say the same.  LOOM_VERSION_NUM is major * 10000 + minor * 100 + patch,
** for #if comparisons. */
#define LOOM_VERSION_MAJOR 0
#define LOOM_VERSION_MINOR 2
#define LOOM_VERSION_PATCH 0
#define LOOM_VERSION       "0.2.0"
#define LOOM_VERSION_NUM   (LOOM_VERSION_MAJOR * 10000 + \
                            LOOM_VERSION_MINOR * 100 + LOOM_VERSION_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* The module opener.  A host that links loom statically registers it with
** luaL_requiref(L, "loom.core", luaopen_loom_core, 0) or in package.preload,
** then scripts `require "loom"` as usual. */
LOOM_API int luaopen_loom_core (lua_State *L);

/* Called on every lua_State that loom creates (thread and worker states),
** after the standard libraries are open and before any user code runs, on
** the OS thread that will run the state.  A host uses it to register its
** own C functions and preload its modules.  Return 0 on success; any other
** value makes the thread fail to start with that error code (and with the
** message the hook left on top of the stack, if it left a string there);
** the hook may also raise a Lua error, whose message is kept the same way.  A thread's
** state is kept for later threads, put back as it was after the hook ran
** (docs/api.md, "What a thread's interpreter holds"): the hook runs once per
** state, not once per thread. */
typedef int (*loom_StateHook) (lua_State *L, void *ud);

/* Installs the hook (NULL removes it).  Call it before starting threads:
** states created earlier are not revisited.  Safe from any thread. */
LOOM_API void loom_set_state_hook (loom_StateHook hook, void *ud);

/* Sets the size in bytes of the shared heap.  Only before the first loom
** object exists in this process; returns 0, EBUSY after that, EINVAL for
** a size under 1 MiB or over 64 TiB, or the errno of a mapping refused. */
LOOM_API int loom_configure_heap (size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
