#!/usr/bin/env bash
# The checks to run the day a GPU machine is lent (../shared/GPU.md), as one command of
# under 10 minutes that leaves one log and its JSON results in OUTDIR:
#   1. configure and build a release with tests (build/gpu);
#   2. skv info; the kernel suites on the GPU device (ctest -R _gpu: every kernel against
#      its C reference, pages poisoned);
#   3. skv bench decode, F16 and every ADA tier, 8K..512K tokens (32/8 heads, d = 128),
#      the default variant and the built-in one side by side;
#   4. skv tune --budget-seconds 120 into OUTDIR/tuning.json, then the bench again at
#      128K with the tuned database against the built-in entries.
#
# usage: tools/gpu_check.sh prepare          on your own machine, from the project root:
#                                            puts the packages the GPU machine lacks into
#                                            .gpu/ (git-ignored; carry it along)
#        tools/gpu_check.sh run OUTDIR [SEL] on the GPU machine (SEL: the device selector,
#                                            default gpu); e.g. through the device tool:
#                                            bash tools/gpu_check.sh run $OUT
# GPU_CHECK_TOKENS, GPU_CHECK_TUNE_TOKENS and GPU_CHECK_TUNE_SECONDS change the sizes (a
# dry run on a CPU: GPU_CHECK_TOKENS=2048 GPU_CHECK_TUNE_TOKENS=2048 ... run /tmp/x cpu).
set -uo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# What the GPU machine (Ubuntu, OpenCL loader and headers, gcc, cmake) does not have.
debs=(libcmocka0 libcmocka-dev libclblast1 libclblast-dev libcjson1 libcjson-dev libxxhash0 libxxhash-dev)

case "${1:-}" in
prepare)
    set -e
    grep -qx '/.gpu/' .gitignore 2>/dev/null || echo '/.gpu/' >>.gitignore
    mkdir -p .gpu
    (cd .gpu && apt-get download "${debs[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get download "${debs[@]}"; })
    echo "ready: .gpu/ holds ${#debs[@]} packages; carry it along and run: bash tools/gpu_check.sh run \$OUT"
    exit 0
    ;;
run) ;;
*)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac

out="${2:?usage: tools/gpu_check.sh run OUTDIR [SELECTOR]}"
sel="${3:-gpu}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
start=$(date +%s)
step() { printf '\n==== gpu_check %s (%ds) ====\n' "$*" "$(($(date +%s) - start))"; }
status=0
fail() {
    echo "gpu_check: FAILED: $*"
    status=1
}

# The carried packages, unpacked under /tmp/deps (never into /).
if ls .gpu/*.deb >/dev/null 2>&1; then
    D=/tmp/deps
    if [ ! -d "$D/usr" ]; then
        for f in .gpu/*.deb; do dpkg -x "$f" "$D"; done
        sed -i "s|^prefix=/usr|prefix=$D/usr|" "$D"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
    fi
    export PKG_CONFIG_PATH=$D/usr/lib/x86_64-linux-gnu/pkgconfig
    export CMAKE_PREFIX_PATH=$D/usr
    export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export SKV_CACHE_DIR="$out/kernel-cache" SKV_DEVICE="$sel"
jobs=$(nproc 2>/dev/null || echo 4)
tokens="${GPU_CHECK_TOKENS:-8192,32768,131072,524288}"
tune_tokens="${GPU_CHECK_TUNE_TOKENS:-131072}"
tune_seconds="${GPU_CHECK_TUNE_SECONDS:-120}"

step "build"
cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build/gpu -j"$jobs" >/dev/null ||
    { fail "build"; exit 1; }
skv=build/gpu/tools/skv

step "skv info"
"$skv" info --json >"$out/info.json" || fail "skv info"
"$skv" info || true

step "kernel suites on the GPU device"
ctest --test-dir build/gpu -R '_gpu$' --output-on-failure --timeout 300 || fail "kernel suites on $sel"

step "bench decode $tokens tokens, default and built-in variants"
"$skv" bench decode --device "$sel" --tokens "$tokens" --tiers f16,a4v8,a3v4,a2v2 --runs 20 \
    --variant default,builtin,group/tile=128 --json "$out/bench.json" || fail "bench decode"

step "skv tune ($tune_seconds s, $tune_tokens tokens)"
export SKV_TUNING_DB="$out/tuning.json"
"$skv" tune --device "$sel" --budget-seconds "$tune_seconds" --tokens "$tune_tokens" || fail "skv tune"
"$skv" bench decode --device "$sel" --tokens "$tune_tokens" --tiers f16,a4v8,a3v4,a2v2 --runs 20 \
    --variant default,builtin --json "$out/bench_tuned.json" || fail "bench after tune"

step "done: $([ $status -eq 0 ] && echo all passed || echo with failures)"
ls -l "$out"
exit $status
