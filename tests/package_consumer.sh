#!/bin/sh
# The installed package as a runtime consumes it (CTest package_consumer): installs the
# build tree into a scratch prefix, checks the exported package holds no absolute library
# path and forces no CL_TARGET_OPENCL_VERSION, then builds tests/consumer/main.c against
# it three ways and runs each binary:
#   cmake-shared  find_package(skv CONFIG REQUIRED), target_link_libraries(... skv::skv)
#   cmake-static  find_package(skv CONFIG REQUIRED COMPONENTS static), skv::skv_static
#   pkg-config    cc $(pkg-config --cflags --libs skv), PKG_CONFIG_PATH into the prefix
# usage: package_consumer.sh BUILD_DIR CONSUMER_SRC WORK_DIR LIBDIR [CMAKE [CC]]
# Exits 0, 77 when the consumer finds no device ($SKV_TEST_DEVICE, default cpu), else 1.
set -eu

build="$1"
consumer="$2"
work="$3"
libdir="$4"
cmake="${5:-cmake}"
cc="${6:-cc}"

fail() {
    echo "package_consumer: $*" >&2
    exit 1
}

rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"

echo "== cmake --install $build --prefix $prefix"
"$cmake" --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 || {
    cat "$work/install.log" >&2
    fail "install failed"
}
for f in include/skv/skv.h include/skv/skv_cl.h include/skv/skv_version.h "$libdir/pkgconfig/skv.pc" \
    "$libdir/cmake/skv/skvConfig.cmake" "$libdir/cmake/skv/skvTargets.cmake" \
    "$libdir/cmake/skv/skvStaticTargets.cmake" "$libdir/cmake/skv/FindxxHash.cmake" \
    "$libdir/cmake/skv/FindCLBlast.cmake" "$libdir/cmake/skv/FindcJSON.cmake"; do
    [ -f "$prefix/$f" ] || fail "not installed: $f"
done

echo "== the exported package: no absolute library paths, no forced OpenCL version"
if grep -rnE -e "/usr/lib" -e '(^|[":;<[:space:]])/[^":;>[:space:]]*\.(so|a)([.":;>[:space:]]|$)' \
    "$prefix/$libdir/cmake/skv/"; then
    fail "absolute paths in $prefix/$libdir/cmake/skv (dependencies must be imported targets)"
fi
if grep -rn "CL_TARGET_OPENCL_VERSION=" "$prefix/$libdir/cmake/skv/" "$prefix/$libdir/pkgconfig/skv.pc"; then
    fail "the package sets CL_TARGET_OPENCL_VERSION for its consumers"
fi

status=0
run() { # run NAME BINARY [env...]: runs a consumer; 77 (no device) is remembered
    name="$1"
    bin="$2"
    shift 2
    echo "== run $name"
    rc=0
    env "$@" "$bin" || rc=$?
    case "$rc" in
        0) ;;
        77) status=77 ;;
        *) fail "$name consumer exited $rc" ;;
    esac
}

for kind in shared static; do
    echo "== cmake-$kind: configure and build tests/consumer"
    static=OFF
    [ "$kind" = static ] && static=ON
    bdir="$work/cmake-$kind"
    if ! { "$cmake" -S "$consumer" -B "$bdir" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_C_COMPILER="$cc" -DSKV_CONSUMER_STATIC=$static &&
        "$cmake" --build "$bdir"; } >"$bdir.log" 2>&1; then
        cat "$bdir.log" >&2
        fail "cmake-$kind consumer did not build"
    fi
    grep "skv .* from" "$bdir.log" || true
    run "cmake-$kind" "$bdir/consumer"
done

echo "== pkg-config: build tests/consumer/main.c"
command -v pkg-config >/dev/null 2>&1 || fail "pkg-config is not installed"
PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
flags="$(pkg-config --cflags --libs skv)" || fail "pkg-config --cflags --libs skv failed"
echo "pkg-config --cflags --libs skv: $flags"
# shellcheck disable=SC2086 # the flags are words
"$cc" -std=c11 -Wall -Wextra -Werror -o "$work/consumer-pkg-config" "$consumer/main.c" $flags -lm ||
    fail "pkg-config consumer did not build"
run pkg-config "$work/consumer-pkg-config" LD_LIBRARY_PATH="$prefix/$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

exit "$status"
