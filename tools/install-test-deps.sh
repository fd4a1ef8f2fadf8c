#!/usr/bin/env bash
# Installs the Linux tools the tests drive (ip, ping, curl, wrk, setpriv for the network
# tests; gdb for the gdb stub's) when they are missing. Idempotent and quiet; needs
# root (apt-get) only when something is missing.
set -euo pipefail
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
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
