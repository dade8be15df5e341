"""`facelite <command>`: one command family over every entry point (issue 12 item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facelite import cli

REPO = Path(__file__).resolve().parents[1]


def facelite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facelite.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_help_lists_every_command_of_the_family() -> None:
    out = facelite("--help").stdout
    for name in (*cli.FAMILY, "enroll", "gallery", "eval"):
        assert name in out, name


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("convert", "usage: facelite-convert"),
        ("deploy", "usage: python -m facelite.deploy"),
        ("bench-arm", "usage: python -m facelite.tools.bench.arm"),
        ("eval-lfw", "usage: python -m facelite.tools.bench.lfw"),
        ("bench", "usage: python -m facelite.tools.bench"),
        ("agent", "usage: facelite-agent"),
    ],
)
def test_each_command_runs_its_entry_point_with_the_rest_of_the_line(command: str, usage: str) -> None:
    proc = facelite(command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(usage), (proc.stdout[:200], proc.stderr[-400:])


def test_the_agents_own_errors_come_through_unchanged() -> None:
    proc = facelite("agent", "--check-config")
    assert proc.returncode == 2 and "--config is required" in proc.stderr


def test_host_commands_on_a_device_bundle_say_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device bundle ships agent/ only: `facelite convert` there must say where it runs, not raise."""
    monkeypatch.setitem(cli.FAMILY, "convert", ("facelite.converter.not_in_this_bundle", "main", "convert"))
    monkeypatch.setitem(cli.FAMILY, "bench", ("facelite.converter.not_in_this_bundle", "", "bench"))
    for command in ("convert", "bench"):
        assert cli.main([command, "--models", "x"]) != 0
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: ") and "runs on the host" in err, err


@pytest.mark.parametrize(
    "module",
    [
        "facelite.cli",
        "facelite",
        "facelite.converter.cli",
        "facelite.deploy",
        "facelite.tools.bench",
        "facelite.tools.bench.arm",
        "facelite.tools.bench.lfw",
    ],
)
def test_every_entry_point_takes_the_same_logging_flags(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    ).stdout
    assert "--log-level {DEBUG,INFO,WARNING,ERROR}" in out and "-v, --verbose" in out, out[-600:]


def test_logging_flags_and_the_one_line_format() -> None:
    import argparse
    import logging

    from facelite.logsetup import DEVICE_FORMAT, HOST_FORMAT, add_logging_flags, level_of

    ap = argparse.ArgumentParser()
    add_logging_flags(ap, default="WARNING")
    assert level_of(ap.parse_args([])) == "WARNING"
    assert level_of(ap.parse_args(["--log-level", "info"])) == "INFO"
    assert level_of(ap.parse_args(["-v", "--log-level", "ERROR"])) == "DEBUG"
    with pytest.raises(SystemExit):
        ap.parse_args(["--log-level", "LOUD"])
    record = logging.LogRecord("facelite.service.app", logging.INFO, __file__, 1, "gallery changed", None, None)
    assert logging.Formatter(DEVICE_FORMAT).format(record) == "INFO facelite.service.app: gallery changed"
    assert (
        logging.Formatter(HOST_FORMAT, "%H:%M:%S")
        .format(record)
        .endswith(" INFO facelite.service.app: gallery changed")
    )
    none = argparse.ArgumentParser()
    add_logging_flags(none, default=None)  # the agent: the config file's log_level when no flag is given
    assert level_of(none.parse_args([]), "ERROR") == "ERROR"


def test_eval_on_a_device_bundle_says_it_runs_on_the_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A device bundle ships no agent/tools (deploy/bundle.py): `facelite eval` there is one line, not a traceback."""
    for name in [m for m in sys.modules if m.startswith("facelite.tools")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "facelite.tools", None)  # what a missing package looks like to import
    assert cli.main(["eval", str(tmp_path), "--detector", "d", "--embedder", "e", "--gallery", "g"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "`facelite eval` runs on the host" in err, err
