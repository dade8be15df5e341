"""One namespace (issue 12): the installed wheel holds ``facelite`` and nothing else at the top level.

setup.py maps the fixed folders onto it (agent/ -> facelite, converter/ -> facelite.converter, deploy/ ->
facelite.deploy); this builds the host wheel from a clean copy, installs it into an empty folder and imports it
from there with no site-packages (so neither the repo nor the venv's editable install can answer the imports).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "agent", "converter", "deploy")


def build_wheel(tmp_path: Path) -> Path:
    stage = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=ignore)
        else:
            stage.mkdir(exist_ok=True)
            shutil.copy2(src, stage / name)
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(stage)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=stage)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = sorted(out.glob("facelite-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_installed_wheel_is_one_facelite_namespace(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"facelite", dist_info}
    assert top_level == ["facelite"]
    # The folders land where the namespace says, package data included.
    for name in (
        "facelite/cli.py",
        "facelite/recognition/gallery.py",
        "facelite/converter/api.py",
        "facelite/converter/data/lfw_sources.csv",
        "facelite/deploy/bundle.py",
        "facelite/deploy/devices/pi.toml",
        "facelite/tools/bench/cli.py",
    ):
        assert name in names, name
    for script in ("facelite = facelite.cli:main", "facelite-agent = facelite.cli:agent_main"):
        assert script in entry_points, entry_points

    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    installed = sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert installed == ["facelite"], installed  # pip would list no top-level agent, converter or deploy

    # -S: no site-packages, so only the folder the wheel went into can answer (the three __init__s need no numpy).
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import facelite, facelite.converter, facelite.deploy\n"
        "print(facelite.__version__)\n"
        "for m in (facelite, facelite.converter, facelite.deploy): print(m.__file__)\n"
        "for name in ('agent', 'converter', 'deploy'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print('no', name)\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, *rest = proc.stdout.split("\n")
    files, missing = rest[:3], [line for line in rest[3:] if line]
    assert version == "0.1.0"
    assert files == [
        str(site / "facelite" / "__init__.py"),
        str(site / "facelite" / "converter" / "__init__.py"),
        str(site / "facelite" / "deploy" / "__init__.py"),
    ]
    assert missing == ["no agent", "no converter", "no deploy"]
