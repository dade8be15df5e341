#!/usr/bin/env bash
# make bench-arm, step 1: everything the emulated runs need, each cached; prints KEY=VALUE lines on stdout.
#
#   agent/tools/bench/arm_setup.sh LITERT_REQ... -- TFLITE_REQ...     (the requirements of the two aarch64 sites)
#
#   1. qemu-aarch64 from Debian's qemu-user (the -static build cannot load plugins)
#   2. the plugins, built against the plugin header of the installed qemu's own source package (apt-get source,
#      needs a deb-src line for bookworm main, added if missing): qemu's tests/plugin/insn.c (libinsn.so, the
#      reference count) and agent/tools/bench/arm_mix.c (libfacelite_mix.so: the same count, by instruction class
#      and at marks the guest asks for)
#   3. the bookworm arm64 rootfs of `make test-arm64` (deploy/arm64_rootfs.sh) and one view of it per CPU model,
#      each with that CPU's /proc/cpuinfo
#   4. the aarch64 wheels of each runtime, installed with pip --target into their own site dir (cp311, glibc 2.36)
#
# Env: CACHE (default ~/.cache/facelite or $FACELITE_CACHE), ROOTFS (default build/arm64-rootfs), OUT (build/bench-arm),
# PY (host python with pip), CPUS. Needs root the first time (apt-get, debootstrap).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../../.." && pwd)"  # agent/tools/bench -> the repository
CACHE="${CACHE:-${FACELITE_CACHE:-$HOME/.cache/facelite}}"
ROOTFS="${ROOTFS:-$REPO/build/arm64-rootfs}"
OUT="${OUT:-$REPO/build/bench-arm}"
PY="${PY:-$REPO/.venv/bin/python}"
CPUS="${CPUS:-cortex-a53 cortex-a72 cortex-a76}"

die() { echo "error: $*" >&2; exit 1; }
step() { printf '%s bench-arm setup: %s (%s s)\n' "$(date +%H:%M:%S)" "$1" "$((SECONDS - ${2:-$SECONDS}))" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then env DEBIAN_FRONTEND=noninteractive "$@"; else sudo env DEBIAN_FRONTEND=noninteractive "$@"; fi; }

litert=() tflite=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do litert+=("$1"); shift; done
[ $# -gt 0 ] && shift
tflite=("$@")
[ ${#litert[@]} -gt 0 ] && [ ${#tflite[@]} -gt 0 ] || die "usage: $0 LITERT_REQ... -- TFLITE_REQ..."

# 1. qemu-user
t=$SECONDS
if ! command -v qemu-aarch64 >/dev/null; then
    step "installing qemu-user libglib2.0-dev dpkg-dev"
    as_root apt-get update -qq && as_root apt-get install -y -qq qemu-user libglib2.0-dev dpkg-dev >/dev/null
fi
QEMU="$(command -v qemu-aarch64)" || die "qemu-aarch64 not found: apt-get install qemu-user"
pkg-config --exists glib-2.0 || as_root apt-get install -y -qq libglib2.0-dev >/dev/null
qemu_version="$(dpkg-query -W -f='${source:Version}' qemu-user)"
step "qemu-aarch64 $qemu_version" "$t"

# 2. the plugins, against the header of this very qemu (the plugin API version must match)
t=$SECONDS
src="$CACHE/qemu-src/${qemu_version//:/_}"
plugins="$CACHE/qemu-plugins/${qemu_version//:/_}"
header="$(find "$src" -path '*/include/qemu/qemu-plugin.h' 2>/dev/null | head -1 || true)"
if [ -z "$header" ]; then
    if ! apt-get source --print-uris qemu="$qemu_version" >/dev/null 2>&1; then
        echo "adding deb-src for bookworm main (/etc/apt/sources.list.d/facelite-deb-src.sources)" >&2
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
            /usr/share/keyrings/debian-archive-keyring.gpg | as_root tee /etc/apt/sources.list.d/facelite-deb-src.sources >/dev/null
        as_root apt-get update -qq
    fi
    mkdir -p "$src"
    (cd "$src" && apt-get source --download-only qemu="$qemu_version" >/dev/null 2>&1) \
        || die "apt-get source qemu=$qemu_version failed (deb-src line for bookworm main?)"
    # only the two files the plugins need, from the upstream tarball (Debian's patches do not touch them)
    tar -xJf "$src"/qemu_*.orig.tar.xz -C "$src" --wildcards '*/tests/plugin/insn.c' '*/include/qemu/qemu-plugin.h'
    header="$(find "$src" -path '*/include/qemu/qemu-plugin.h' | head -1)"
fi
mkdir -p "$plugins"
cflags=(-shared -fPIC -O2 -Wall -I"$(dirname "$header")" $(pkg-config --cflags glib-2.0))
insn_c="$(dirname "$(dirname "$(dirname "$header")")")/tests/plugin/insn.c"
[ "$plugins/libinsn.so" -nt "$insn_c" ] || gcc "${cflags[@]}" -o "$plugins/libinsn.so" "$insn_c"
[ "$plugins/libfacelite_mix.so" -nt "$REPO/agent/tools/bench/arm_mix.c" ] \
    || gcc "${cflags[@]}" -o "$plugins/libfacelite_mix.so" "$REPO/agent/tools/bench/arm_mix.c"
step "plugins in $plugins" "$t"

# 3. the rootfs (shared with make test-arm64) and a view per CPU
t=$SECONDS
ROOTFS="$ROOTFS" "$REPO/deploy/arm64_rootfs.sh"
for cpu in $CPUS; do ROOTFS="$ROOTFS" "$REPO/deploy/arm64_rootfs.sh" view "$cpu" "$OUT/views/$cpu"; done
step "rootfs $ROOTFS, views for $CPUS" "$t"

# 4. one site dir per runtime, reinstalled only when its requirements change
platforms=(--platform manylinux2014_aarch64)
for m in $(seq 17 36); do platforms+=(--platform "manylinux_2_${m}_aarch64"); done
site() {
    local dir="$1"; shift
    local want="$*"
    if [ "$(cat "$dir/.requirements" 2>/dev/null)" != "$want" ]; then
        rm -rf "$dir"
        PIP_CONFIG_FILE=/dev/null "$PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts --no-cache-dir \
            --target "$dir" --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
            "${platforms[@]}" "$@" >&2
        echo "$want" >"$dir/.requirements"
    fi
}
t=$SECONDS
site "$CACHE/bench-arm/site-ai-edge-litert" "${litert[@]}"
site "$CACHE/bench-arm/site-tflite-runtime" "${tflite[@]}"
step "aarch64 sites: ${litert[*]} | ${tflite[*]}" "$t"

echo "QEMU=$QEMU"
echo "QEMU_VERSION=$qemu_version"
echo "PLUGIN=$plugins/libfacelite_mix.so"
echo "INSN_PLUGIN=$plugins/libinsn.so"
echo "ROOTFS=$ROOTFS"
for cpu in $CPUS; do echo "VIEW $cpu=$OUT/views/$cpu"; done
echo "SITE ai-edge-litert=$CACHE/bench-arm/site-ai-edge-litert"
echo "SITE tflite-runtime=$CACHE/bench-arm/site-tflite-runtime"
