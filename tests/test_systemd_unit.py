"""systemd/facelite-agent.service: `systemd-analyze verify` passes and the hardening holds (security exposure).

verify needs ExecStart's binary to exist, so the test checks a copy whose ExecStart points at a script it
creates; it also checks the unit as the device installer renders it for a profile that moves every path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from facelite.deploy.remote import UNIT_NAME, Layout, SystemdService

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / UNIT_NAME
AGENT = "/opt/facelite/current/venv/bin/facelite-agent"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _directives(text: str) -> list[tuple[str, str]]:
    return [
        (k.strip(), v.strip())
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith(("#", ";", "["))
        for k, v in [line.split("=", 1)]
    ]


def _verify(text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on ``text`` with ExecStart's binary replaced by an existing script."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / "facelite-agent"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    exec_start = next(v for k, v in _directives(text) if k == "ExecStart").split()[0]
    unit = folder / UNIT_NAME
    unit.write_text(text.replace(exec_start, str(fake)))
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, cwd=folder)


def test_unit_verifies(tmp_path: Path) -> None:
    proc = _verify(UNIT.read_text(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert UNIT_NAME not in proc.stderr, proc.stderr  # no warning about our unit (others' units may be noisy)


def test_unit_has_the_required_supervision_and_sandbox() -> None:
    d = _directives(UNIT.read_text())
    one = {k: v for k, v in d}
    assert one["Type"] == "notify" and int(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure" and int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert one["ExecStart"] == f"{AGENT} --config /etc/facelite/agent.toml"
    assert one["User"] == "facelite" and "video" in one["SupplementaryGroups"].split()
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["NoNewPrivileges"] == "yes"
    assert [v for k, v in d if k == "ReadWritePaths"] == ["/var/lib/facelite"]
    assert [v for k, v in d if k == "CapabilityBoundingSet"] == [""]
    assert re.fullmatch(r"\d+[KMG]", one["MemoryMax"])
    assert one["LoadCredential"] == "mqtt_password:/etc/facelite/credentials/mqtt_password"


def test_security_exposure_is_low(tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    record_property("systemd_security_exposure", exposure)
    print(f"systemd-analyze security exposure: {exposure} {match.group(2)}")
    assert exposure <= 2.0, proc.stdout  # "OK" band; the default for an unhardened service is 9.6 UNSAFE


def test_unit_rendered_for_moved_paths_still_verifies(tmp_path: Path) -> None:
    release = tmp_path / "release"
    (release / "service").mkdir(parents=True)
    shutil.copy2(UNIT, release / "service" / UNIT_NAME)
    paths = {"prefix": "/srv/fl", "state_dir": "/srv/fl-state", "config_dir": "/srv/fl-etc"}
    info = {"paths": paths, "service": {"manager": "systemd", "user": "camsvc"}}
    layout = Layout(Path(paths["prefix"]), Path(paths["state_dir"]), Path(paths["config_dir"]))
    text = SystemdService(layout, info)._render_unit(release)
    d = _directives(text)
    assert ("ExecStart", "/srv/fl/current/venv/bin/facelite-agent --config /srv/fl-etc/agent.toml") in d
    assert ("ReadWritePaths", "/srv/fl-state") in d and ("User", "camsvc") in d and ("Group", "camsvc") in d
    assert ("LoadCredential", "mqtt_password:/srv/fl-etc/credentials/mqtt_password") in d
    assert not any("/opt/facelite" in v or "/var/lib/facelite" in v or "/etc/facelite" in v for _, v in d)
    proc = _verify(text, tmp_path / "verify")
    assert proc.returncode == 0, proc.stderr
