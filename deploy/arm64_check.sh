#!/usr/bin/env bash
# make test-arm64: does the Raspberry Pi bundle install and pass its self-test on aarch64? (functional, not timing)
#
#   1. build the pi bundle (python -m facelite.deploy --device pi --bundle-only): aarch64 wheels for Python 3.11 / glibc 2.36
#   2. a Debian bookworm arm64 rootfs (deploy/arm64_rootfs.sh: debootstrap --foreign --variant=minbase; cached)
#   3. under qemu-aarch64-static -L ROOTFS, with the rootfs's own python3.11 (the Pi OS interpreter):
#      the device installer's checks (platform, every file against SHA256SUMS) on the real bundle
#   4. the bundle's aarch64 wheels installed offline (pip --target, --no-index, from the bundle only)
#   5. facelite-agent --check-config and --self-test IMAGE --expect-faces N, run by the aarch64 interpreter
#
# binfmt_misc is not needed (nor touched): every aarch64 program is started through qemu-aarch64-static explicitly,
# which is also why step 4 uses `pip install --target` on the host instead of a venv inside the rootfs.
# Needs root (debootstrap), qemu-user-static, debootstrap and a Debian mirror (or an existing ROOTFS).
# Emulation is 50-400x slower than native: expect minutes. Env: ROOTFS, WORK, MIRROR, MODELS, DATA_DIR, PY.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
ROOTFS="${ROOTFS:-$REPO/build/arm64-rootfs}"
WORK="${WORK:-$REPO/build/arm64-check}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MODELS="${MODELS:-${FACELITE_MODELS_DIR:-$REPO/build/models}}"
DATA_DIR="${DATA_DIR:-${FACELITE_DATA_DIR:-}}"
QEMU="$(command -v qemu-aarch64-static || echo /usr/bin/qemu-aarch64-static)"

die() { echo "error: $*" >&2; exit 1; }
step() { printf '%s arm64: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[ -x "$QEMU" ] || die "qemu-aarch64-static not found: apt-get install qemu-user-static"
[ -x "$PY" ] || die "no host python at $PY: run make setup"
started=$SECONDS

# 1. the bundle, exactly as `make deploy DEVICE=pi` would upload it
step "building the pi bundle"
data_args=()
[ -n "$DATA_DIR" ] && data_args=(--data-dir "$DATA_DIR")
line="$(cd "$REPO" && "$PY" -m facelite.deploy --device pi --bundle-only --models-dir "$MODELS" "${data_args[@]}" \
        --out "$WORK/out" | grep '^bundle pi ')" || die "building the pi bundle failed (see above)"
read -r _ _ version archive <<<"$line"
step "bundle $version ($(du -h "$archive" | cut -f1))"

# 2. the rootfs (deploy/arm64_rootfs.sh: debootstrap once, cached), its /proc/cpuinfo a Pi 4's
step "arm64 rootfs $ROOTFS"
mkdir -p "$(dirname "$WORK")"
ROOTFS="$ROOTFS" MIRROR="$MIRROR" LOG="$WORK.debootstrap.log" "$REPO/deploy/arm64_rootfs.sh"
arm() { "$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" "$@"; }
interp="$(arm -c 'import platform, sys; print(platform.machine(), sys.version.split()[0], *platform.libc_ver())')" \
    || die "the aarch64 python3.11 does not run under $QEMU"
step "device interpreter: $interp"

# 3. the installer's own checks, by the aarch64 interpreter, on the real archive
rm -rf "$WORK/release" "$WORK/site" "$WORK/state"
mkdir -p "$WORK/release" "$WORK/state"
tar -xf "$archive" -C "$WORK/release" --strip-components=1
step "platform + SHA256SUMS check (device installer code under qemu)"
arm - "$archive" "$WORK/release" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import remote
version, info, sums, _ = remote.read_bundle(Path(sys.argv[1]))
remote.check_platform(info)
print(f"verified {remote.verify_tree(Path(sys.argv[2]), sums)} files of {version} for {info['platform']}")
EOF

# 4. offline install of the bundle's wheels for aarch64 (nothing from an index, nothing from a cache)
step "pip install --no-index from the bundle's wheels (aarch64, cp311)"
platforms=(--platform manylinux_2_27_aarch64 --platform manylinux_2_34_aarch64 --platform manylinux2014_aarch64)
for m in $(seq 17 36); do platforms+=(--platform "manylinux_2_${m}_aarch64"); done
extra="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["platform"]["extra"])' "$WORK/release/BUNDLE.json")"
agent_version="${version%-*}"
PIP_CONFIG_FILE=/dev/null "$PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts --no-cache-dir --no-index \
    --find-links "$WORK/release/wheels" --target "$WORK/site" --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 "${platforms[@]}" "facelite[$extra]==$agent_version"
file "$WORK"/site/ai_edge_litert/*.so 2>/dev/null | grep -q aarch64 || die "installed ai_edge_litert is not aarch64"

# 5. the release's config with this work dir as release and state folder; then the agent itself
sed -e "s#@RELEASE@#$WORK/release#g" -e "s#/var/lib/facelite#$WORK/state#g" \
    "$WORK/release/config/agent.toml.in" >"$WORK/release/config/agent.toml"
image="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["selftest"]["image"])' "$WORK/release/BUNDLE.json")"
expect="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["selftest"]["expect_faces"])' "$WORK/release/BUNDLE.json")"
# -P: the agent comes from the installed wheels, never from a source tree in the current directory.
agent() { PYTHONPATH="$WORK/site" arm -P -c 'import sys; from facelite.cli import agent_main; sys.exit(agent_main(sys.argv[1:]))' "$@"; }
step "facelite-agent --check-config"
agent --config "$WORK/release/config/agent.toml" --check-config
step "facelite-agent --self-test $(basename "$image") --expect-faces $expect (emulated: slow)"
t0=$SECONDS
agent --config "$WORK/release/config/agent.toml" --self-test "$WORK/release/$image" --expect-faces "$expect"
step "self-test passed in $((SECONDS - t0)) s under qemu; whole check $((SECONDS - started)) s"
echo "arm64 ok: bundle $version installs offline and passes its self-test on aarch64 (Python 3.11, bookworm)"
