#!/usr/bin/env bash
# Runs specs and stress scripts under one checker: tsan | asan | valgrind.
# usage: spec/sanitize.sh KIND HOST "SPECS" "STRESS SCRIPTS"
set -u
kind=$1 host=$2 specs=$3 stress=$4
export LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;"
# die_after_fork=0: a process child may start threads of its own, which
# TSan supports only with this switch.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 die_after_fork=0 suppressions=${TSAN_SUPP-$PWD/spec/tsan.supp}"
export ASAN_OPTIONS="detect_leaks=0 abort_on_error=0 exitcode=66"
export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1"
fail=0
run() {
  echo "[$kind] $*"
  if ! "$@"; then
    echo "[$kind] FAILED: $*"
    fail=1
  fi
}
# The machine's own factor (see spec/helpers.lua), measured once here by
# the plain interpreter: measured under the checker it would time the
# checker too, which LOOM_SPEC_SLOWDOWN already counts.
if [ -z "${LOOM_SPEC_MACHINE-}" ]; then
  LOOM_SPEC_MACHINE=$(lua5.4 -e 'package.path = "spec/?.lua;" .. package.path
    package.cpath = "./?.so;" .. package.cpath
    io.write(require("helpers").machine)') || LOOM_SPEC_MACHINE=1
fi
export LOOM_SPEC_MACHINE
echo "[$kind] machine factor $LOOM_SPEC_MACHINE"
case $kind in
  tsan) export LOOM_SPEC_SLOWDOWN=5 ;;
  asan) export LOOM_SPEC_SLOWDOWN=2 ;;
  valgrind) export LOOM_SPEC_SLOWDOWN=20 ;;
esac
case $kind in
  tsan|asan)
    # specs that start a subprocess (helpers.run) run it on the same host
    export LUA="$PWD/$host"
    # A fork while other threads of the parent allocate can leave the
    # child deadlocked inside the sanitizer runtime, on an allocator or
    # internal lock another thread held at the fork (seen with gcc 12's
    # ASan and TSan): those specs run in `make test` only.
    run "$host" /usr/bin/busted --run=default --exclude-tags=stress,fork_while_threads $specs
    for s in $stress; do run "$host" "$s"; done
    ;;
  valgrind)
    vg="valgrind -q --error-exitcode=66 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite"
    # A forked child's copy of the heap holds the interpreters of the
    # parent's other threads, which memcheck cannot reach from the child's
    # only thread: it would call them lost.  TSan and ASan run those specs.
    run $vg lua5.4 /usr/bin/busted --run=default --exclude-tags=stress,fork $specs
    for s in $stress; do run $vg lua5.4 "$s"; done
    # The embedding host opening, running and closing its state 100 times
    # while threads, pool tasks and processes still run; a small heap keeps
    # valgrind's bookkeeping of the shared mapping short.
    run env LOOM_HEAP_SIZE=64M $vg --child-silent-after-fork=yes \
      build/host --cycles 100 spec/stress/host_cycles.lua
    ;;
esac
[ $fail = 0 ] && echo "[$kind] clean" || exit 1
