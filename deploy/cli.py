"""python -m facelite.deploy --device pi [--dry-run]: bundle, plan, deploy (a group in parallel), result table.

    python -m facelite.deploy --device pi --dry-run          # build the bundle, print what would change, touch nothing
    python -m facelite.deploy --device pi                    # deploy, health-check over MQTT, roll back on failure
    python -m facelite.deploy --device home                  # a group from deploy/devices/groups.toml, in parallel
    python -m facelite.deploy --device pi --set ssh.host=10.0.0.7 --set agent.camera=1
    python -m facelite.deploy --device pi --rollback         # back to the previous release
    python -m facelite.deploy --device pi --bundle-only      # just build it (offline install, deploy/arm64_check.sh)

Exit status: 0 when every device is deployed, unchanged or planned; 1 when any failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from facelite.deploy.bundle import REPO, BundleInputs, build_agent_wheel, build_bundle, default_cache
from facelite.deploy.deployer import Deployer, DeviceResult, result_table
from facelite.deploy.profile import DEVICES_DIR, DeviceProfile, load_profile, resolve_targets
from facelite.errors import FaceliteError
from facelite.logsetup import add_logging_flags, level_of, setup_logging

log = logging.getLogger("deploy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m facelite.deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", required=True, help="profile name, comma list, or group (deploy/devices/groups.toml)")
    ap.add_argument("--dry-run", action="store_true", help="build the bundle and print the plan; change nothing")
    ap.add_argument("--rollback", action="store_true", help="switch the device back to its previous release")
    ap.add_argument(
        "--bundle-only", action="store_true", help="only build the bundle(s) and print their paths; no device contact"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile value, e.g. ssh.host=10.0.0.7 (checked like the file)")  # fmt: skip
    ap.add_argument("--devices-dir", type=Path, default=DEVICES_DIR, help="where the profiles are")
    ap.add_argument(
        "--models-dir", type=Path, default=Path(os.environ.get("FACELITE_MODELS_DIR", REPO / "build/models"))
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="data folder (default FACELITE_DATA_DIR)")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "deploy", help="where bundles are built")
    ap.add_argument("--repo", type=Path, default=REPO, help="source tree of the agent wheel")
    ap.add_argument("--wheel-cache", type=Path, default=None, help="dependency wheel cache (default ~/.cache/facelite)")
    ap.add_argument("--jobs", type=int, default=4, help="devices deployed at once")
    add_logging_flags(ap)
    return ap.parse_args(argv)


def _data_dir(arg: Path | None) -> Path:
    from facelite.tools.dataset import data_dir

    return data_dir(str(arg) if arg else os.environ.get("FACELITE_DATA_DIR"))


def run(args: argparse.Namespace) -> int:
    names = resolve_targets(args.device, args.devices_dir)
    profiles: list[DeviceProfile] = [load_profile(n, args.devices_dir, args.overrides) for n in names]
    lock = threading.Lock()

    def emit(text: str) -> None:
        with lock:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="facelite-deploy-") as tmp:
        if args.rollback:
            inputs = BundleInputs(args.repo, args.models_dir, Path(tmp), args.out, Path(tmp), Path(tmp))
        else:
            inputs = BundleInputs(
                repo=args.repo.resolve(),
                models_dir=args.models_dir.resolve(),
                data_dir=_data_dir(args.data_dir),
                out_dir=args.out.resolve(),
                wheel_cache=(args.wheel_cache or default_cache()).resolve(),
                agent_wheel=build_agent_wheel(args.repo.resolve(), Path(tmp)),
            )

        if args.bundle_only:
            for profile in profiles:
                bundle = build_bundle(profile, inputs)
                print(f"bundle {profile.name} {bundle.version} {bundle.archive}")
            return 0

        def one(profile: DeviceProfile) -> DeviceResult:
            deployer = Deployer(profile, inputs, emit=emit)
            return deployer.rollback() if args.rollback else deployer.run(dry_run=args.dry_run)

        with ThreadPoolExecutor(max_workers=max(1, min(args.jobs, len(profiles)))) as pool:
            results = list(pool.map(one, profiles))
    print()
    print(result_table(results))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"error: {r.device}: [{r.check}] {r.message}", file=sys.stderr)
    host, port = profiles[0].health_broker
    print(f"next: mosquitto_sub -h {host} -p {port} -t '{profiles[0].mqtt.base_topic}/#' -v")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(level_of(args))
    try:
        return run(args)
    except FaceliteError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; a device mid-install keeps its previous release until the switch", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
