"""Which source format a model file or folder is, by its content, and loading it as a GraphSource.

Detection reads bytes only (no TensorFlow import, ~4 s): protobuf files are walked at the wire level,
so a text file renamed ``.pb`` or a truncated ``.onnx`` is refused with one line before any loader runs.
"""

from __future__ import annotations

import importlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

from facelite.converter.formats import FormatError
from facelite.converter.recipe import GraphSource

log = logging.getLogger(__name__)

FORMATS = ("frozen_pb", "tf1_checkpoint", "saved_model", "keras", "tfjs", "onnx", "tflite")
# format -> module under facelite.converter.formats exposing load_graph(path, *, inputs, outputs, input_shape)
LOADERS = {
    "frozen_pb": "facelite.converter.formats.frozen_pb",
    "tf1_checkpoint": "facelite.converter.formats.tf1_checkpoint",
    "saved_model": "facelite.converter.formats.saved_model",
    "keras": "facelite.converter.formats.keras_model",
    "tfjs": "facelite.converter.formats.tfjs",
    "onnx": "facelite.converter.formats.onnx",
}
EXPECTED = (
    "a frozen GraphDef .pb, a TF1 checkpoint (.meta), a SavedModel folder (saved_model.pb), "
    "a .keras/.h5 Keras file, a TF.js model.json, an .onnx file or a .tflite file"
)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# -- protobuf wire format ------------------------------------------------------------------------


class _WireError(ValueError):
    pass


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _WireError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint too long")


def wire_fields(data: bytes | memoryview) -> list[tuple[int, int, Any]]:
    """Top-level (field number, wire type, value) of a protobuf message; raises on any malformed byte.

    Length-delimited values are returned as memoryviews so nested messages can be walked too.
    """
    data = memoryview(data)
    fields: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        value: int | memoryview
        if wtype == 0:
            value, pos = _varint(data, pos)
        elif wtype == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wtype == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wtype == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:  # groups (3/4) are not used by TensorFlow or ONNX protos; 6/7 are invalid
            raise _WireError(f"wire type {wtype}")
        if pos > len(data):
            raise _WireError("truncated field")
        fields.append((number, wtype, value))
    return fields


def _is_text(value: Any) -> bool:
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def looks_like_graph_def(data: bytes) -> bool:
    """GraphDef: repeated NodeDef node = 1 (each with a string name = 1 and op = 2), versions = 4, library = 2."""
    try:
        fields = wire_fields(data)
        nodes = [v for n, w, v in fields if n == 1 and w == 2]
        if not nodes or any(n not in (1, 2, 3, 4) for n, _, _ in fields):
            return False
        node = {n: v for n, w, v in wire_fields(nodes[0]) if w == 2}
        return 1 in node and 2 in node and _is_text(node[1]) and _is_text(node[2])
    except _WireError:
        return False


def check_onnx(path: Path, data: bytes) -> None:
    """ModelProto: ir_version = 1 (varint) and a GraphProto graph = 7 whose nodes parse."""
    try:
        fields = wire_fields(data)
    except _WireError as exc:
        raise FormatError(f"corrupt or truncated ONNX file ({exc})", str(path), "expected an ONNX ModelProto") from None
    numbers = {n for n, _, _ in fields}
    if 1 not in numbers or 7 not in numbers:
        raise FormatError("not an ONNX model (no ir_version or graph field)", str(path), "expected an ONNX ModelProto")
    graph = next(v for n, w, v in fields if n == 7 and w == 2)
    try:
        for n, w, v in wire_fields(graph):
            if n == 1 and w == 2:  # NodeProto
                wire_fields(v)
    except _WireError as exc:
        raise FormatError(f"corrupt ONNX graph ({exc})", str(path)) from None


# -- detection -----------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read model file: {exc.strerror}", str(path)) from None


def _is_tfjs(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "modelTopology" in data


def _detect_dir(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return "saved_model"
    if list(path.glob("*.meta")):
        return "tf1_checkpoint"
    if (path / "model.json").is_file() and _is_tfjs(path / "model.json"):
        return "tfjs"
    raise FormatError(f"folder is not a model: expected {EXPECTED}", str(path))


def detect_format(path: str | Path) -> str:
    """One of FORMATS, decided by content; FormatError (one line) when it is none of them."""
    path = Path(path)
    if not path.exists():
        raise FormatError("model file not found", str(path))
    if path.is_dir():
        return _detect_dir(path)
    suffix = path.suffix.lower()
    data = _read(path)
    if not data:
        raise FormatError("model file is empty", str(path))
    if data[4:8] == b"TFL3":
        return "tflite"
    if suffix == ".tflite":
        raise FormatError("not a TFLite flatbuffer (no TFL3 identifier)", str(path), "expected a .tflite model")
    if data.startswith(HDF5_MAGIC):
        return "keras"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if "config.json" in zf.namelist():
                return "keras"
        raise FormatError("zip file is not a Keras 3 .keras model (no config.json)", str(path))
    if suffix in (".keras", ".h5", ".hdf5"):
        raise FormatError(f"not a Keras file (neither a .keras zip nor HDF5) but named {suffix}", str(path))
    if suffix == ".json" or path.name == "model.json":
        if _is_tfjs(path):
            return "tfjs"
        raise FormatError("JSON file is not a TF.js model (no modelTopology)", str(path))
    if suffix == ".meta":
        if path.with_suffix(".index").is_file() or list(path.parent.glob(f"{path.stem}*.index")):
            return "tf1_checkpoint"
        raise FormatError("TF1 .meta file without its checkpoint (.index/.data) beside it", str(path))
    if suffix == ".onnx":
        check_onnx(path, data)
        return "onnx"
    if looks_like_graph_def(data):
        return "frozen_pb"
    if suffix == ".pb":
        raise FormatError("not a TensorFlow GraphDef (protobuf content does not parse as one)", str(path))
    raise FormatError(f"unrecognised model file: expected {EXPECTED}", str(path))


def load_any(path: str | Path, **kw: Any) -> GraphSource:
    """Detect the format and load with its module (imported only now: TF and friends are heavy)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "tflite":
        from facelite.model.runtime import TFLiteModel

        model = TFLiteModel(path, runtime="ai-edge-litert")
        shape = [int(s) for s in model._interp.get_input_details()[0]["shape_signature"]]
        return GraphSource(
            name=kw.get("name", "model"),
            make_converter=_no_converter(path),
            reference=model,
            input_shape=[1, *[(-1 if s < 0 else s) for s in shape[1:]]],
            tflite_file=path,
        )
    log.info("%s: %s format", path, fmt)
    module = importlib.import_module(LOADERS[fmt])
    if fmt == "tfjs" and path.is_dir():
        path = path / "model.json"
    return module.load_graph(path, **kw)


def _no_converter(path: Path) -> Any:
    def make_converter() -> Any:
        raise FormatError("a .tflite source is used as is; it cannot be re-converted", str(path))

    return make_converter
