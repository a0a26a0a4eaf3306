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
DEPS := lua5.4 liblua5.4-dev lua-busted

.PHONY: all test experiments bench sanitize clean deps lint check-rockspec

all: loom/core.so

build/%.o: csrc/%.c
	@mkdir -p build
	$(CC) $(BASEFLAGS) $(WARN) $(CFLAGS) -MMD -MP -c $< -o $@

loom/core.so: $(OBJ)
	@mkdir -p loom
	$(CC) $(LIBFLAG) $(LDFLAGS_SO) -o $@ $(OBJ) -lm

-include $(OBJ:.o=.d)

# Installs the Debian packages loom needs when one is missing (as root), or
# says exactly what to run.
deps:
	@missing=""; \
	command -v $(LUA) >/dev/null 2>&1 || missing="$$missing lua5.4"; \
	[ -f $(LUA_INCDIR)/lua.h ] || missing="$$missing liblua5.4-dev"; \
	[ -f $(BUSTED) ] || missing="$$missing lua-busted"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEPS) >/dev/null || exit 1; \
	  else \
	    echo "loom needs:$$missing"; \
	    echo "run: sudo apt-get install -y $(DEPS)"; exit 1; \
	  fi; \
	fi

test: deps
	@$(MAKE) --no-print-directory all
	@$(LUA) $(BUSTED) --run=default

experiments: deps
	@$(MAKE) --no-print-directory all
	@$(LUA) experiments/run.lua $(ARGS)

# The machine's raw limits, the reference column of the bench table.
build/limits: bench/limits.c
	@mkdir -p build
	$(CC) -std=c11 -pthread -I$(LUA_INCDIR) $(WARN) -O2 -o $@ $< -llua5.4 -lm

bench: deps
	@$(MAKE) --no-print-directory all build/limits
	@$(LUA) bench/run.lua $(ARGS)

clean:
	rm -rf build loom/core.so build-*
