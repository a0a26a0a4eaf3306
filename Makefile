# loom: build, test and the rest.  `make` builds loom/core.so.
LUA ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
BUSTED ?= /usr/bin/busted
CC ?= cc
CFLAGS ?= -O2 -g
LIBFLAG ?= -shared
WARN = -Wall -Wextra -Werror -pedantic -Wshadow -Wmissing-prototypes \
       -Wstrict-prototypes -Wcast-qual
BASEFLAGS = -std=c11 -pthread -fPIC -fvisibility=hidden -I$(LUA_INCDIR) -Icsrc
# nodelete: a thread may still be leaving loom's code when the last state
# closes; the library must stay mapped.
LDFLAGS_SO = -pthread -Wl,-z,nodelete

SRC := $(sort $(wildcard csrc/*.c))
OBJ := $(SRC:csrc/%.c=build/%.o)
VERSION := $(shell sed -n 's/^#define LOOM_VERSION  *"\(.*\)"/\1/p' csrc/loom.h)
# What each command needs installed, and no more: building and the
# experiments need Lua and its headers; the tests also busted and luarocks.
RUN_DEPS := lua5.4 liblua5.4-dev
# lua-luv and lua-cqueues: the event loops loom.luv and loom.cqueues are
# tested against (their specs are pending without them).
TEST_DEPS := $(RUN_DEPS) lua-busted luarocks openmpi-bin libopenmpi-dev \
  lua-luv lua-cqueues

# One short line per compiled file; `make V=1` shows the commands.
ifeq ($(V),1)
Q :=
say := @true
else
Q := @
say := @printf '  %-6s %s\n'
endif

.PHONY: all test experiments bench sanitize tsan asan valgrind host fuzz soak clean deps \
  deps-run lint install dist FORCE

all: loom/core.so

build/%.o: csrc/%.c
	@mkdir -p build
	$(say) CC $<
	$(Q)$(CC) $(BASEFLAGS) $(WARN) $(CFLAGS) -MMD -MP -c $< -o $@

build/core.so: $(OBJ)
	$(say) LINK loom/core.so
	$(Q)$(CC) $(LIBFLAG) $(LDFLAGS_SO) -o $@ $(OBJ) -lm

# The module Lua loads is a copy of build/core.so, checked on every make:
# `luarocks make` writes its own loom/core.so over it, which make would
# otherwise take for up to date.
loom/core.so: build/core.so FORCE
	@mkdir -p loom
	@cmp -s build/core.so $@ || cp build/core.so $@

FORCE:

# What `luarocks make` runs (rockspec/, build type "make").
INST_LIBDIR ?= /usr/local/lib/lua/5.4
INST_LUADIR ?= /usr/local/share/lua/5.4
install: all
	mkdir -p $(INST_LIBDIR)/loom $(INST_LUADIR)/loom
	cp loom/core.so $(INST_LIBDIR)/loom/
	cp lua/loom/*.lua $(INST_LUADIR)/loom/

# A source rock of this version that installs offline anywhere:
# build/dist/loom-$(VERSION)-1.src.rock.
dist: deps
	@rm -rf build/dist && mkdir -p build/dist
	git archive --prefix=loom-$(VERSION)/ -o build/dist/loom-$(VERSION).tar.gz HEAD
	sed -e 's/^version = "scm-1"/version = "$(VERSION)-1"/' \
	  -e 's|^  url = .*|  url = "file://$(CURDIR)/build/dist/loom-$(VERSION).tar.gz", dir = "loom-$(VERSION)",|' \
	  rockspec/loom-scm-1.rockspec > build/dist/loom-$(VERSION)-1.rockspec
	cd build/dist && luarocks --lua-version=5.4 pack loom-$(VERSION)-1.rockspec

-include $(OBJ:.o=.d)

# Installs the Debian packages loom needs when one is missing (as root), or
# says exactly what to run.
# deps: what the tests need; deps-run: what building and running need.
INSTALL_MISSING = \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "loom needs:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
CHECK_RUN_DEPS = \
	command -v $(LUA) >/dev/null 2>&1 || missing="$$missing lua5.4"; \
	[ -f $(LUA_INCDIR)/lua.h ] || missing="$$missing liblua5.4-dev";

deps-run:
	@missing=""; $(CHECK_RUN_DEPS) $(INSTALL_MISSING)

deps:
	@missing=""; $(CHECK_RUN_DEPS) \
	[ -f $(BUSTED) ] || missing="$$missing lua-busted"; \
	command -v luarocks >/dev/null 2>&1 || missing="$$missing luarocks"; \
	command -v mpiexec >/dev/null 2>&1 || missing="$$missing openmpi-bin"; \
	command -v mpicc >/dev/null 2>&1 || missing="$$missing libopenmpi-dev"; \
	$(LUA) -e 'require "luv"' >/dev/null 2>&1 || missing="$$missing lua-luv"; \
	$(LUA) -e 'require "cqueues"' >/dev/null 2>&1 || missing="$$missing lua-cqueues"; \
	$(INSTALL_MISSING)

# luacheck over the Lua sources (.luacheckrc).
lint:
	@missing=""; command -v luacheck >/dev/null 2>&1 || missing=" lua-check"; $(INSTALL_MISSING)
	@luacheck --formatter plain lua spec experiments bench && echo "lint: no warnings"

# The machine's speed factor for the specs' time bounds (spec/helpers.lua),
# measured once here and passed down, so that every interpreter of the run
# (threads, subprocesses) scales by the same figure.
SPEC_MACHINE = $(LUA) -e 'package.path = "spec/?.lua;" .. package.path \
  package.cpath = "./?.so;" .. package.cpath io.write(require("helpers").machine)'

test: deps
	@$(MAKE) -s --no-print-directory all mpi-if-present
	@LOOM_SPEC_MACHINE=$${LOOM_SPEC_MACHINE:-$$($(SPEC_MACHINE))} $(LUA) $(BUSTED) --run=default

experiments: deps-run
	@$(MAKE) -s --no-print-directory all
	@$(LUA) experiments/run.lua $(ARGS)

# The machine's raw limits, the reference column of the bench table.
build/limits: bench/limits.c bench/heap_pair.h
	@mkdir -p build
	$(CC) -std=c11 -pthread -I$(LUA_INCDIR) $(WARN) -O2 -o $@ $< -llua5.4 -lm

# The heap rows' loom side: the shared heap's own functions, linked in.
build/heap_bench: bench/heap_bench.c bench/heap_pair.h $(SRC) csrc/loomint.h
	@mkdir -p build
	$(CC) $(HOST_FLAGS) -O2 -o $@ bench/heap_bench.c $(SRC) -llua5.4 -lm -ldl

bench: deps-run
	@$(MAKE) -s --no-print-directory all build/limits build/heap_bench
	@$(LUA) bench/run.lua $(ARGS)

clean:
	rm -rf build loom/core.so loom/mpi build-*

# loom.mpi.core: MPI pools (csrc/mpi/, lua/loom/mpi/), built with mpicc and
# only on request (`make mpi`, and by `make test` when mpicc is found), so
# loom's own build and rock never need MPI; rockspec/loom-mpi-scm-1.rockspec
# builds it with `make mpi` and installs it with `make install-mpi`.
MPICC ?= mpicc
.PHONY: mpi mpi-if-present install-mpi
mpi: loom/mpi/core.so

mpi-if-present:
	@if command -v $(MPICC) >/dev/null 2>&1; then $(MAKE) -s --no-print-directory mpi; fi

build/mpi/core.so: csrc/mpi/core.c
	@mkdir -p build/mpi
	$(say) MPICC $<
	$(Q)$(MPICC) $(BASEFLAGS) $(WARN) $(CFLAGS) $(LIBFLAG) -o $@ $<

loom/mpi/core.so: build/mpi/core.so FORCE
	@mkdir -p loom/mpi
	@cmp -s build/mpi/core.so $@ || cp build/mpi/core.so $@

install-mpi: mpi
	mkdir -p $(INST_LIBDIR)/loom/mpi $(INST_LUADIR)/loom/mpi
	cp loom/mpi/core.so $(INST_LIBDIR)/loom/mpi/
	cp lua/loom/mpi/*.lua $(INST_LUADIR)/loom/mpi/

# The embedding host: Lua and loom linked statically.  -E exports the Lua
# API so C modules the scripts load (busted's) resolve against it.
LUA_LIB ?= /usr/lib/x86_64-linux-gnu/liblua5.4.a
HOST_FLAGS = -std=c11 -pthread -I$(LUA_INCDIR) -Icsrc $(WARN)

build/host: examples/host.c $(SRC) csrc/loomint.h csrc/loom.h
	@mkdir -p build
	$(CC) $(HOST_FLAGS) -O2 -g -o $@ examples/host.c $(SRC) $(LUA_LIB) -lm -ldl -Wl,-E

host: build/host

# Sanitizers: the host and every source built with TSan, then ASan+UBSan,
# running the thread specs and the stress scripts; then valgrind memcheck
# over the specs with the ordinary build.  Lua itself (Debian's static
# library) is not instrumented: races inside one lua_State cannot happen
# by design, and loom's own code is; shared threads are the exception
# (LUA_SRC below), checked without suppressions.
SANITIZE_SPECS ?= spec/thread_spec.lua spec/xfer_spec.lua spec/value_spec.lua \
  spec/array_spec.lua spec/queue_spec.lua spec/lock_spec.lua spec/sem_spec.lua \
  spec/cond_spec.lua spec/event_spec.lua spec/barrier_spec.lua \
  spec/pool_spec.lua spec/future_spec.lua spec/gil_spec.lua \
  spec/future_api_spec.lua spec/thread_api_spec.lua
# Specs that fork: TSan and ASan only (see spec/sanitize.sh for valgrind).
FORK_SPECS ?= spec/process_spec.lua spec/dead_spec.lua \
  spec/array_slice_spec.lua spec/barrier_action_spec.lua \
  spec/queue_api_spec.lua spec/pipe_spec.lua \
  spec/forkserver_spec.lua spec/close_fds_spec.lua \
  spec/process_identity_spec.lua spec/pool_options_spec.lua
STRESS ?= $(sort $(wildcard spec/stress/*.lua))
SAN_RUN = ./spec/sanitize.sh

# Shared-interpreter threads (gil.c) run one lua_State from several OS
# threads, so TSan must see inside Lua too: their specs run on a host linked
# with a Lua built from source with -fsanitize=thread.  LUA_SRC names the
# src/ folder of that source; by default spec/lua-src.sh fetches Debian's
# lua5.4 source package (the same Lua and patches as the system's).
# The other specs stay on the Debian library: an instrumented Lua makes
# them too slow for their timeouts and its deep recursion overflows TSan's
# stack depot.
LUA_SRC ?= build-tsan/lua-src/src
GIL_SPECS ?= spec/gil_spec.lua

$(LUA_SRC)/lua.h:
	@./spec/lua-src.sh $(patsubst %/src,%,$(LUA_SRC))

build-tsan/liblua.a: $(LUA_SRC)/lua.h
	@mkdir -p build-tsan/lua
	@for f in $(filter-out %/lua.c %/luac.c,$(wildcard $(LUA_SRC)/*.c)); do \
	  $(CC) -std=gnu99 -O1 -g -fsanitize=thread -DLUA_COMPAT_5_3 -DLUA_USE_LINUX \
	    -c $$f -o build-tsan/lua/$$(basename $$f .c).o || exit 1; done
	ar rcs $@ build-tsan/lua/*.o

build-tsan/host-lua: examples/host.c $(SRC) csrc/loomint.h csrc/loom.h build-tsan/liblua.a
	$(CC) -I$(LUA_SRC) $(HOST_FLAGS) -O1 -g -fsanitize=thread -o $@ examples/host.c $(SRC) build-tsan/liblua.a -lm -ldl -Wl,-E

build-tsan/host: examples/host.c $(SRC) csrc/loomint.h csrc/loom.h
	@mkdir -p build-tsan
	$(CC) $(HOST_FLAGS) -O1 -g -fsanitize=thread -o $@ examples/host.c $(SRC) $(LUA_LIB) -lm -ldl -Wl,-E

build-asan/host: examples/host.c $(SRC) csrc/loomint.h csrc/loom.h
	@mkdir -p build-asan
	$(CC) $(HOST_FLAGS) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -fno-sanitize-recover=undefined -o $@ examples/host.c $(SRC) $(LUA_LIB) -lm -ldl -Wl,-E

tsan: deps build-tsan/host build-tsan/host-lua
	@$(SAN_RUN) tsan build-tsan/host "$(filter-out $(GIL_SPECS),$(SANITIZE_SPECS)) $(FORK_SPECS)" "$(STRESS)"
	@TSAN_SUPP=/dev/null $(SAN_RUN) tsan build-tsan/host-lua "$(GIL_SPECS)" ""

asan: deps build-asan/host
	@$(SAN_RUN) asan build-asan/host "$(SANITIZE_SPECS) $(FORK_SPECS)" "$(STRESS)"

valgrind: deps all build/host
	@$(SAN_RUN) valgrind "" "$(SANITIZE_SPECS)" "$(STRESS)"

sanitize: tsan asan valgrind

# libFuzzer over the codec's decoder (clang).  FUZZ_RUNS executions from the
# seed corpus in fuzz/corpus; new inputs found go to build-fuzz/corpus.
FUZZ_RUNS ?= 10000000
build-fuzz/decode_fuzz: fuzz/decode_fuzz.c $(SRC) csrc/loomint.h csrc/loom.h
	@command -v clang >/dev/null 2>&1 || { echo "run: apt-get install -y clang"; exit 1; }
	@mkdir -p build-fuzz/corpus
	clang -std=c11 -pthread -I$(LUA_INCDIR) -Icsrc -O1 -g -fsanitize=fuzzer,address,undefined \
	  -o $@ fuzz/decode_fuzz.c $(SRC) $(LUA_LIB) -lm -ldl

fuzz: build-fuzz/decode_fuzz
	build-fuzz/decode_fuzz -runs=$(FUZZ_RUNS) -max_len=4096 build-fuzz/corpus fuzz/corpus

# Long runs: memory must stay flat, nothing may hang.
soak: deps all
	@$(LUA) bench/soak.lua $(ARGS)
