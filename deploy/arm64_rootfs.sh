#!/usr/bin/env bash
# A Debian bookworm arm64 rootfs with python3.11, for running aarch64 programs under qemu-aarch64 -L ROOTFS.
# Shared by `make test-arm64` (deploy/arm64_check.sh) and `make bench-arm` (agent/tools/bench/arm_setup.sh).
#
#   deploy/arm64_rootfs.sh                 ROOTFS, its /proc/cpuinfo a Raspberry Pi 4's (Cortex-A72)
#   deploy/arm64_rootfs.sh view CPU DIR    DIR: a view of ROOTFS (a symlink per top-level entry) whose own
#                                          /proc/cpuinfo is CPU's: cortex-a53 | cortex-a72 | cortex-a76
#
# Only unpacked (debootstrap --foreign --variant=minbase --include=python3; cached): that is all a python3.11 run
# under qemu -L needs. The first stage extracts only the "required" packages; python3 and its libraries are
# downloaded, so those debs are extracted too. qemu -L serves ROOTFS/proc/cpuinfo to the guest (see write_cpuinfo).
# Needs root and a Debian mirror the first time (or give ROOTFS= an existing arm64 rootfs).
# Env: ROOTFS (default build/arm64-rootfs), MIRROR, LOG (debootstrap log). Prints nothing on stdout.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOTFS="${ROOTFS:-$REPO/build/arm64-rootfs}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
LOG="${LOG:-$ROOTFS.debootstrap.log}"

die() { echo "error: $*" >&2; exit 1; }
step() { printf '%s arm64-rootfs: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# /proc/cpuinfo as the device's kernel writes it. ai_edge_litert reads it (and crashes on an x86 one); the cpuinfo
# library inside XNNPACK and ruy takes the core's microarchitecture from "CPU part" (XNNPACK picks Cortex-A53-tuned
# or out-of-order-tuned GEMM kernels from it), while the ISA features (dotprod, fp16) come from the auxiliary
# vector, which qemu-aarch64 fills from its -cpu model. So the part must match the -cpu model emulated.
write_cpuinfo() {
    local part features model hw
    case "$1" in
        pi4 | cortex-a72) part=0xd08; hw=BCM2835; model="Raspberry Pi 4 Model B Rev 1.4"; features="fp asimd evtstrm crc32 cpuid" ;;
        cortex-a53) part=0xd03; hw=BCM2835; model="Raspberry Pi Zero 2 W Rev 1.0"; features="fp asimd evtstrm crc32 cpuid" ;;
        cortex-a76) part=0xd0b; hw=BCM2712; model="Raspberry Pi 5 Model B Rev 1.0"
                    features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
        *) die "unknown CPU $1 (pi4, cortex-a53, cortex-a72, cortex-a76)" ;;
    esac
    cat <<EOF
processor	: 0
BogoMIPS	: 108.00
Features	: $features
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: $part
CPU revision	: 3

Hardware	: $hw
Model		: $model
EOF
}

if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
    if [ ! -d "$ROOTFS/var/cache/apt/archives" ]; then
        command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || die "debootstrap not found: apt-get install debootstrap"
        [ "$(id -u)" = 0 ] || die "debootstrap needs root (or give ROOTFS= an existing arm64 rootfs)"
        step "debootstrap bookworm arm64 into $ROOTFS (once)"
        rm -rf "$ROOTFS.partial"
        mkdir -p "$(dirname "$ROOTFS")"
        debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm "$ROOTFS.partial" "$MIRROR" \
            >"$LOG" 2>&1 || die "debootstrap failed: see $LOG"
        mv "$ROOTFS.partial" "$ROOTFS"
    fi
    step "unpacking python3.11 and its libraries into the rootfs"
    for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOTFS"; done
fi
[ -x "$ROOTFS/usr/bin/python3.11" ] || die "no python3.11 in $ROOTFS (remove it and run again)"
# debootstrap in a container leaves proc as a symlink to the HOST's /proc: replace the link, never write through it.
[ -L "$ROOTFS/proc" ] && rm "$ROOTFS/proc"
mkdir -p "$ROOTFS/proc"
write_cpuinfo pi4 >"$ROOTFS/proc/cpuinfo"

# A view for one CPU model: every top-level entry of ROOTFS linked, except proc (its own cpuinfo). qemu -L VIEW
# resolves guest paths under VIEW, so the same rootfs serves each emulated CPU its own /proc/cpuinfo.
if [ "${1:-}" = view ]; then
    cpu="${2:?view CPU DIR}"; view="${3:?view CPU DIR}"
    mkdir -p "$view/proc"
    for entry in "$ROOTFS"/*; do
        name="$(basename "$entry")"
        [ "$name" = proc ] || ln -sfn "$(realpath "$entry")" "$view/$name"
    done
    write_cpuinfo "$cpu" >"$view/proc/cpuinfo"
fi
