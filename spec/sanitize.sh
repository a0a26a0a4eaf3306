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
    if [ "$kind" = asan ]; then
      # The embedding host opening, running and closing its state 100
      # times while threads, pool tasks and processes still run, with
      # LeakSanitizer on: what one cycle leaks, a hundred make plain.
      # (Off for the specs: busted's process exits with states open.)
      run env ASAN_OPTIONS="$ASAN_OPTIONS detect_leaks=1" \
        "$host" --cycles 100 spec/stress/host_cycles.lua
    fi
    ;;
  valgrind)
    vg="valgrind -q --error-exitcode=66 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite"
    # valgrind 3.19 does not know pidfd_open (syscall 434) and warns, in
    # five lines, at every call: thousands of lines in a run.  loom then
    # falls back to polling the child, which is what the run checks; that
    # warning alone is dropped from the log, any other stays.
    exec 2> >(awk '
      /^--[0-9]+-- WARNING: unhandled amd64-linux syscall: 434$/ { skip = 4; next }
      skip > 0 && /^--[0-9]+-- / { skip--; next }
      { skip = 0; print; fflush() }' >&2)
    # A forked child's copy of the heap holds the interpreters of the
    # parent's other threads, which memcheck cannot reach from the child's
    # only thread: it would call them lost.  TSan and ASan run those specs.
    # Memcheck runs one thread at a time, so it would time its own
    # scheduler: the #latency assertions run under TSan and ASan only.
    run $vg lua5.4 /usr/bin/busted --run=default --exclude-tags=stress,fork,latency $specs
    # host_cycles.lua forks while pool workers and threads run: the child's
    # copy of their interpreters is reachable only from threads the child
    # does not have, so its leak check would call them lost.  Its children
    # stay silent, as in the host run below; the parent is checked.
    for s in $stress; do
      case $s in
        */host_cycles.lua) run $vg --child-silent-after-fork=yes lua5.4 "$s" ;;
        *) run $vg lua5.4 "$s" ;;
      esac
    done
    # The embedding host opening, running and closing its state while
    # threads, pool tasks and processes still run; a small heap keeps
    # valgrind's bookkeeping of the shared mapping short.  A few cycles:
    # each costs seconds here, and the ASan run does the full hundred with
    # its leak checker.
    run env LOOM_HEAP_SIZE=64M $vg --child-silent-after-fork=yes \
      build/host --cycles "${LOOM_VG_CYCLES-10}" spec/stress/host_cycles.lua
    ;;
esac
[ $fail = 0 ] && echo "[$kind] clean" || exit 1
