#!/usr/bin/env bash
# Installs the Linux tools the tests drive (ip, ping, curl, wrk, setpriv for the network
# tests; gdb for the gdb stub's) and what the Linux-personality tests need (qemu-i386, a
# 32-bit static glibc toolchain, Debian's busybox-static for i386, downloaded into a cache
# and never committed) when they are missing. Idempotent and quiet; needs root (apt-get)
# only when something is missing.
set -euo pipefail
# A mirror caught mid-sync makes `apt-get update` fail for one index while the rest is
# fresh; go on with what it fetched (an install that truly needs the missing index still
# fails, and says which package).
refresh() { apt-get update -qq || echo "install-test-deps: apt-get update failed; using the package lists it fetched" >&2; }
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v make >/dev/null 2>&1 || need+=(make)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v gdb >/dev/null 2>&1 || need+=(gdb)
command -v qemu-i386 >/dev/null 2>&1 || need+=(qemu-user)
[ -e /usr/lib32/libc.a ] || [ -e /usr/lib/i386-linux-gnu/libc.a ] || need+=(gcc-multilib libc6-dev-i386)
updated=0
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    refresh
    updated=1
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's busybox-static for i386: the unmodified Linux program the personality is
# checked against (tests/linux/). Cache: $DENALI_TEST_CACHE or ~/.cache/denali-test.
cache="${DENALI_TEST_CACHE:-$HOME/.cache/denali-test}"
if [ ! -x "$cache/busybox-i386/bin/busybox" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! dpkg --print-foreign-architectures | grep -qx i386; then
        dpkg --add-architecture i386
        updated=0
    fi
    [ "$updated" = 1 ] || refresh
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq busybox-static:i386 >/dev/null 2>&1)
    mkdir -p "$cache/busybox-i386"
    dpkg-deb -x "$tmp"/busybox-static_*_i386.deb "$cache/busybox-i386"
    rm -rf "$tmp"
fi
