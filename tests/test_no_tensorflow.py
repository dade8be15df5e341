"""The agent never imports TensorFlow, directly or through a helper (it costs ~520 MB RSS on a Pi), and the
service's own imports stay inside its 120 MB budget (no pydantic; no PyYAML unless the config is YAML)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import facelite

REPO = Path(__file__).resolve().parents[1]


def _agent_modules() -> list[str]:
    # An __main__ is an entry point: importing facelite.__main__ runs the agent, the bench's runs the benchmark.
    return sorted(
        m.name for m in pkgutil.walk_packages(facelite.__path__, "facelite.") if not m.name.endswith("__main__")
    )


def test_importing_every_agent_module_loads_no_tensorflow() -> None:
    modules = _agent_modules()
    assert len(modules) > 10, modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules\n"
        "             if k == 'tensorflow' or k.startswith(('tensorflow.', 'keras', 'tf_keras')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"agent modules pulled in: {out.stdout.strip()}"


def test_agent_detects_and_embeds_without_tensorflow(models_dir: Path, faces_dir: Path) -> None:
    """Run detection + embedding on a real photo with import of tensorflow made impossible."""
    photo = next((faces_dir / "people").glob("*/*.jpg"))
    code = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("tensorflow is blocked in the agent")
sys.meta_path.insert(0, _Block())
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder
from facelite.vision.imageio import read_image
image = read_image({str(photo)!r})
det = create_detector({str(models_dir / "blazeface" / "fp32")!r})
faces = det.detect(image)
emb = Embedder.from_model_dir({str(models_dir / "facenet" / "int8")!r})
v = emb.embed(image, faces[0]).vector
print(len(faces), v.shape[0], round(float((v * v).sum()), 3))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    n_faces, dim, norm = out.stdout.split()
    assert int(n_faces) >= 1
    assert int(dim) == 512
    assert float(norm) == 1.0


def test_the_service_with_a_toml_config_loads_no_pydantic_and_no_yaml(tmp_path: Path) -> None:
    # pydantic and its schemas cost ~14 MB of the agent's 120 MB RSS budget; PyYAML ~1 MB: only for .yaml configs.
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "d"\n[[cameras]]\nname = "c"\nsource = 0\n[models]\ndetector = "det"\nembedder = "emb"\n'
    )
    code = (
        "import sys\n"
        "import facelite.service.app, facelite.cli, facelite.service.sinks.mqtt, facelite.service.sinks.stdout\n"
        "from facelite.service.config import load_config\n"
        f"load_config({str(config)!r})\n"
        "print(','.join(sorted(k for k in sys.modules if k.split('.')[0] in ('pydantic', 'pydantic_core', 'yaml'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"the agent service pulled in: {out.stdout.strip()}"
