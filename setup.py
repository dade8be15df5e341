"""The one `facelite` namespace over the repository's fixed top-level folders (issue 12).

    facelite            <- agent/      the device library and service (what a device bundle ships, minus tools/)
    facelite.converter  <- converter/  host: pretrained models to verified .tflite artifacts
    facelite.deploy     <- deploy/     host: bundles, SSH deploy, rollback

pyproject.toml cannot map folders onto other package names with automatic discovery, so the table lives here.
A folder missing from the source tree is left out: the device bundle builds its wheel from a copy holding agent/ only.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ROOTS = {"facelite": "agent", "facelite.converter": "converter", "facelite.deploy": "deploy"}
DATA = {"facelite.converter": ["data/*.csv"], "facelite.deploy": ["*.sh", "devices/*.toml"]}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in ROOTS.items():
    if not (HERE / folder / "__init__.py").is_file():
        continue
    package_dir[name] = folder
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={name: globs for name, globs in DATA.items() if name in package_dir},
)
