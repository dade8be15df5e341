"""facelite.api: the README's Python example as written, each misuse error, VIDEO voting and LIVE_STREAM delivery.

Real models (FACELITE_MODELS_DIR) and real photos (FACELITE_DATA_DIR), through the models_dir fixture (slow).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facelite.api import FaceRecognizer, RecognitionResult, RecognizerOptions, RunningMode, VisitEvent
from facelite.vision.imageio import read_image

REPO = Path(__file__).resolve().parents[1]
PERSON = "deepface_id00"


def readme_snippet() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Python API") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "README: no ```python block under ### Python API"
    return found.group(1)


def photos(faces_dir: Path, person: str = PERSON) -> list[Path]:
    return sorted((faces_dir / "people" / person).glob("*.jpg"))


@pytest.fixture
def image_recognizer(models_dir: Path, faces_dir: Path) -> Iterator[FaceRecognizer]:
    with FaceRecognizer.create_from_options(RecognizerOptions(models=models_dir)) as r:
        r.enroll(PERSON, photos(faces_dir)[:-1])
        yield r


def test_readme_example_runs_and_prints_the_person(
    models_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = readme_snippet()
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 12, snippet
    monkeypatch.setenv("FACELITE_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("FACELITE_DATA_DIR", str(data_dir))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md:python-api", "exec"), {"__name__": "__readme__"})
    words = out.getvalue().split()
    assert words[:2] == [PERSON, "known"], out.getvalue()


def test_image_mode_knows_the_person_and_not_a_stranger(image_recognizer: FaceRecognizer, faces_dir: Path) -> None:
    result = image_recognizer.recognize(read_image(photos(faces_dir)[-1]))
    assert isinstance(result, RecognitionResult) and len(result.faces) == 1
    face = result.faces[0]
    assert (face.person, face.decision, face.track_id) == (PERSON, "known", None)
    assert face.similarity >= image_recognizer.threshold
    x1, y1, x2, y2 = face.bbox
    assert x2 > x1 and y2 > y1 and face.landmarks and 0 < face.score <= 1
    stranger = image_recognizer.recognize(read_image(photos(faces_dir, "deepface_id01")[0])).faces[0]
    assert (stranger.person, stranger.decision) == (None, "unknown")


def test_onet_landmarks_option_places_five_points_and_knows_the_person(
    models_dir: Path, faces_dir: Path, tmp_path: Path
) -> None:
    options = RecognizerOptions(models=models_dir, landmarks="mtcnn")
    with FaceRecognizer.create_from_options(options) as r:
        r.enroll(PERSON, photos(faces_dir)[:-1])
        (face,) = r.recognize(read_image(photos(faces_dir)[-1])).faces
        assert set(face.landmarks) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
        assert (face.person, face.decision) == (PERSON, "known")
    # A models folder without MTCNN is refused before anything loads, naming the fix.
    index = json.loads((models_dir / "index.json").read_text())
    del index["models"]["mtcnn"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"holds no converted mtcnn: run `make convert` or drop landmarks="):
        RecognizerOptions(models=tmp_path, landmarks="mtcnn").landmarks_dir()


def test_misuse_fails_early_naming_the_fix(
    image_recognizer: FaceRecognizer, models_dir: Path, faces_dir: Path, tmp_path: Path
) -> None:
    frame = read_image(photos(faces_dir)[-1])
    with pytest.raises(ValueError, match=r"RunningMode\.VIDEO.*call recognize\(image\)"):
        image_recognizer.recognize_for_video(frame, 0)
    with pytest.raises(ValueError, match=r"RunningMode\.LIVE_STREAM"):
        image_recognizer.recognize_async(frame, 0)
    with pytest.raises(ValueError, match=r"HxWx3 uint8"):
        image_recognizer.recognize(frame.astype(np.float32))
    with pytest.raises(ValueError, match=r"HxWx3 uint8"):
        image_recognizer.recognize(frame[:, :, 0])
    with pytest.raises(ValueError, match=r"HxWx3 uint8"):
        image_recognizer.recognize(str(photos(faces_dir)[-1]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"list of photos"):
        image_recognizer.enroll("x", str(photos(faces_dir)[0]))  # type: ignore[arg-type]

    with pytest.raises(ValueError, match=r"models=.*detector= and embedder="):
        FaceRecognizer.create_from_options(RecognizerOptions())
    with pytest.raises(ValueError, match=r"models=.*detector= and embedder="):
        FaceRecognizer.create_from_options(RecognizerOptions(detector=models_dir / "blazeface" / "fp32"))
    with pytest.raises(ValueError, match=r"make convert"):
        FaceRecognizer.create_from_options(RecognizerOptions(models=tmp_path))
    with pytest.raises(ValueError, match=r"needs result_callback"):
        FaceRecognizer.create_from_options(RecognizerOptions(models=models_dir, running_mode=RunningMode.LIVE_STREAM))
    with pytest.raises(ValueError, match=r"only for RunningMode\.LIVE_STREAM"):
        FaceRecognizer.create_from_options(RecognizerOptions(models=models_dir, result_callback=lambda r, e: None))

    with FaceRecognizer.create_from_options(
        RecognizerOptions(models=models_dir, running_mode=RunningMode.VIDEO)
    ) as video:
        with pytest.raises(ValueError, match=r"RunningMode\.IMAGE.*call recognize_for_video"):
            video.recognize(frame)
        video.recognize_for_video(frame, 100)
        with pytest.raises(ValueError, match=r"timestamp_ms must increase: got 100 after 100"):
            video.recognize_for_video(frame, 100)
        with pytest.raises(ValueError, match=r"timestamp_ms must increase: got 50 after 100"):
            video.recognize_for_video(frame, 50)
        with pytest.raises(ValueError, match=r"timestamp_ms must be an int"):
            video.recognize_for_video(frame, 200.5)  # type: ignore[arg-type]

    image_recognizer.close()
    image_recognizer.close()  # twice is harmless
    with pytest.raises(ValueError, match=r"closed.*create_from_options"):
        image_recognizer.recognize(frame)
    with pytest.raises(ValueError, match=r"closed"):
        image_recognizer.enroll("x", [frame])


def test_video_mode_votes_over_frames(models_dir: Path, faces_dir: Path) -> None:
    """The same photo as a still video: pending until the tracker has its votes, then known, on one track."""
    options = RecognizerOptions(models=models_dir, running_mode=RunningMode.VIDEO, min_votes=3)
    with FaceRecognizer.create_from_options(options) as video:
        video.enroll(PERSON, photos(faces_dir)[:-1])
        frame = read_image(photos(faces_dir)[-1])
        results = [video.recognize_for_video(frame, i * 40) for i in range(6)]
    decisions = [[f.decision for f in r.faces] for r in results]
    assert decisions[0] == ["pending"], decisions
    assert decisions[-1] == ["known"], decisions
    first_known = next(i for i, d in enumerate(decisions) if d == ["known"])
    assert first_known >= 2, decisions  # three votes: not before the third frame
    assert all(d == ["pending"] for d in decisions[:first_known])
    assert {f.track_id for r in results for f in r.faces} == {1}
    assert results[-1].faces[0].person == PERSON and results[-1].timestamp_ms == 200


def test_live_stream_delivers_results_and_visit_events(models_dir: Path, faces_dir: Path) -> None:
    got: list[tuple[RecognitionResult, list[VisitEvent]]] = []
    options = RecognizerOptions(
        models=models_dir, running_mode=RunningMode.LIVE_STREAM, result_callback=lambda r, e: got.append((r, e))
    )
    with FaceRecognizer.create_from_options(options) as live:
        live.enroll(PERSON, photos(faces_dir)[:-1])
        frame = read_image(photos(faces_dir)[-1])
        empty = np.zeros_like(frame)
        for i in range(5):
            assert live.recognize_async(frame, i * 100) is None
        # The person walks away: the track ends after max_missed_frames (10) and max_missed_seconds (2 s).
        for i in range(5, 40):
            live.recognize_async(empty, i * 100)
    assert [r.timestamp_ms for r, _ in got] == [i * 100 for i in range(40)]
    events = [e for _, evs in got for e in evs]
    assert [(e.type, e.person, e.decision) for e in events] == [
        ("recognized", PERSON, "known"),
        ("left", PERSON, "known"),
    ], events
    assert events[0].track_id == events[1].track_id == got[0][0].faces[0].track_id
    assert not got[-1][0].faces


def test_a_gallery_file_persists_and_an_in_memory_one_leaves_nothing(
    models_dir: Path, faces_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "gallery.sqlite"
    with FaceRecognizer.create_from_options(RecognizerOptions(models=models_dir, gallery=path)) as r:
        assert r.enroll(PERSON, photos(faces_dir)[:-1]) > 0
    with FaceRecognizer.create_from_options(RecognizerOptions(models=models_dir, gallery=path)) as r:
        assert r.recognize(read_image(photos(faces_dir)[-1])).faces[0].person == PERSON
    memory = FaceRecognizer.create_from_options(RecognizerOptions(models=models_dir))
    temp_dir = memory._temp_dir
    assert temp_dir is not None and temp_dir.is_dir()
    memory.close()
    assert not temp_dir.exists()
