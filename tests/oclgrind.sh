#!/bin/sh
# Runs a workload under oclgrind (data races, API misuse, and out-of-bounds accesses,
# which it always checks); fails on any diagnostic in the log.
# usage: oclgrind.sh OCLGRIND PROGRAM LOG [program args...]
# Kernels build with -cl-opt-disable (oclgrind 21.10 cannot run llvm.ctlz from -O2) and
# -DSKV_NO_PREFETCH (it has no llvm.prefetch, which the CPU schedule's prefetch becomes).
# --uninitialized is not used: oclgrind 21.10 does not carry initialisation through
# clEnqueueCopyBuffer (a kernel-written buffer copied device to device reads back as
# uninitialised), and skv moves pages that way; reads of never-written memory are
# caught instead by the kernel suites, which run on pages and scratch poisoned with
# NaN bytes (SKV_DEBUG_POISON=1, tests/CMakeLists.txt).
set -u
oclgrind="$1" prog="$2" log="$3"
shift 3
rm -f "$log"
"$oclgrind" --data-races --check-api --build-options "-cl-opt-disable -DSKV_NO_PREFETCH" --log "$log" \
    "$prog" "$@"
rc=$?
if [ -s "$log" ]; then
    echo "oclgrind reported:"
    head -c 20000 "$log"
    exit 1
fi
[ $rc -eq 0 ] || { echo "the workload failed under oclgrind (exit $rc)"; exit 1; }
echo "oclgrind: no diagnostics"
