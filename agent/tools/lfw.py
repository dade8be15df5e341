"""LFW View 2 (``faces/lfw``): the standard 10-fold protocol, and the split of its people into roles.

View 2 has 10 folds of 600 pairs whose people never appear in two folds. facelite gives the folds roles,
so that no figure is reported on the people it was fitted on:

- **calibration** (folds 1-5): every different-person comparison among their photos (about 7 million)
  sets the threshold-versus-false-accept curve stored in each embedder's manifest, and the defaults
  are chosen on these people;
- **evaluation** (folds 6-10): open-set galleries, strangers, true-accept rates and the quantisation
  loss are measured on these people only.

The standard 10-fold accuracy uses all folds, as published figures do: its threshold is fitted on nine
folds and applied to the tenth, and nothing of facelite's is chosen by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from facelite.errors import FaceliteError
from facelite.vision.imageio import list_images

CALIBRATION_FOLDS = (1, 2, 3, 4, 5)
EVALUATION_FOLDS = (6, 7, 8, 9, 10)
# People of LFW who are also in faces/people (the fast-test photos, the demo): kept out of calibration,
# so the thresholds the tests and the demo use were not fitted on the people they check.
SHARED_WITH_SAMPLE_PHOTOS = frozenset({"Anthony_Hopkins", "Eric_Clapton", "Joseph_Biden"})


@dataclass(frozen=True)
class LfwPair:
    a: Path
    b: Path
    same: bool
    fold: int  # 1..10


@dataclass(frozen=True)
class LfwView2:
    """The pairs of ``pairs.txt`` and the photos of ``people/``."""

    root: Path  # faces/lfw
    pairs: tuple[LfwPair, ...]
    folds: int

    @property
    def people_dir(self) -> Path:
        return self.root / "people"

    def fold_people(self, folds: Iterable[int]) -> list[str]:
        wanted = set(folds)
        names = {p.a.parent.name for p in self.pairs if p.fold in wanted}
        names |= {p.b.parent.name for p in self.pairs if p.fold in wanted}
        return sorted(names)

    def photos(self, folds: Iterable[int], exclude: frozenset[str] = frozenset()) -> dict[str, list[Path]]:
        """Every photo of every person of ``folds`` (not only those in pairs), person -> sorted photos."""
        out: dict[str, list[Path]] = {}
        for name in self.fold_people(folds):
            if name in exclude:
                continue
            photos = list_images(self.people_dir / name)
            if photos:
                out[name] = photos
        return out


def _photo(root: Path, name: str, number: str, where: str) -> Path:
    try:
        n = int(number)
    except ValueError:
        raise FaceliteError(f"image number {number!r} is not a whole number", where) from None
    return root / name / f"{name}_{n:04d}.jpg"


def read_view2(lfw_dir: str | Path) -> LfwView2:
    """Parse ``<lfw_dir>/pairs.txt``: a header ``folds pairs-per-half``, then per fold that many same-person
    lines ``name i j`` followed by as many different-person lines ``name1 i name2 j``."""
    root = Path(lfw_dir)
    path = root / "pairs.txt"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FaceliteError(
            "LFW pairs.txt not found", str(path), "run `make data` or point --data-dir at a folder with faces/lfw"
        ) from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise FaceliteError("pairs.txt header must be '<folds> <pairs per half>'", f"{path}:1")
    folds, half = int(header[0]), int(header[1])
    body = [(n, line) for n, line in enumerate(lines[1:], 2) if line.strip()]
    if len(body) != folds * 2 * half:
        raise FaceliteError(f"pairs.txt has {len(body)} pairs; its header promises {folds * 2 * half}", str(path))
    people = root / "people"
    pairs: list[LfwPair] = []
    for i, (n, line) in enumerate(body):
        fold, pos = divmod(i, 2 * half)
        where = f"{path}:{n}"
        parts = line.split()
        same = pos < half
        if same and len(parts) == 3:
            a = _photo(people, parts[0], parts[1], where)
            pairs.append(LfwPair(a, _photo(people, parts[0], parts[2], where), True, fold + 1))
        elif not same and len(parts) == 4:
            a = _photo(people, parts[0], parts[1], where)
            pairs.append(LfwPair(a, _photo(people, parts[2], parts[3], where), False, fold + 1))
        else:
            expected = "name i j" if same else "name1 i name2 j"
            raise FaceliteError(f"expected a {'same' if same else 'different'}-person line '{expected}'", where)
    return LfwView2(root, tuple(pairs), folds)


def lfw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "faces" / "lfw"
