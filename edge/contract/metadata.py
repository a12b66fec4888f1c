"""What a model says about itself: classes, colours, preprocessing, provenance.

``trainer convert`` embeds one JSON document in the .tflite's own metadata table (entry
:data:`METADATA_KEY`) and writes the same document beside it as ``<model>.json``. The rover reads
the embedded copy first (a model file cannot be separated from it), then the sidecar. Reading
needs no TensorFlow and no flatbuffers package: the few tables involved are walked with
``struct``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from edge.contract.labels import LabelSet
from edge.contract.preprocess import Preprocessing

METADATA_KEY = "marsseg_edge"
SCHEMA = "marsseg-edge/model-metadata/1"


@dataclass
class ModelMetadata:
    """The metadata document of a model.

    Attributes:
        labels: the classes the output channels stand for.
        preprocessing: how frames become inputs (size, crop, scale).
        info: everything else recorded at conversion (architecture, precision, training run,
            data, calibration).
        source: ``embedded``, ``sidecar`` or ``defaults`` (nothing found; see
            :func:`default_metadata`).
    """

    labels: LabelSet
    preprocessing: Preprocessing
    info: dict = field(default_factory=dict)
    source: str = "embedded"

    def document(self) -> dict:
        """The JSON document (what is embedded and written as the sidecar)."""
        return {
            "schema": SCHEMA,
            **self.info,
            "labels": self.labels.as_dict(),
            "preprocessing": self.preprocessing.as_dict(),
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.document(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_document(cls, doc: dict, source: str) -> ModelMetadata:
        """Parse a document written by :meth:`document`.

        Raises:
            ValueError: for another schema or a malformed document.
        """
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"not a {SCHEMA} document (schema {found!r})")
        info = {k: v for k, v in doc.items() if k not in ("schema", "labels", "preprocessing")}
        return cls(
            LabelSet.from_dict(doc.get("labels", {})),
            Preprocessing.from_dict(doc.get("preprocessing", {})),
            info,
            source,
        )


def default_metadata(height: int, width: int, num_classes: int) -> ModelMetadata:
    """What the rover assumes of a model without metadata: its tensor size, generic class names
    (``class_0``...), label 0 unscored, no hazard classes, whole-frame resizing."""
    labels = LabelSet(tuple(f"class_{i}" for i in range(num_classes)), ignore=0)
    return ModelMetadata(labels, Preprocessing(height, width), {}, "defaults")


def read_model_metadata(model_path: str | Path) -> ModelMetadata | None:
    """The model's metadata: the embedded document, else the sidecar ``<model>.json``.

    A ``.tflite`` embeds it in its metadata table, an ``.onnx`` (the ONNX Runtime peer,
    :mod:`edge.bench.onnx_peer`) in its ``metadata_props``; both under :data:`METADATA_KEY`.

    Returns:
        None when the model carries neither.

    Raises:
        ValueError: when a document is present but malformed (a model that says something
            wrong about itself must not run as if it said nothing).
    """
    path = Path(model_path)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from err
    reader = METADATA_READERS.get(path.suffix.lower(), tflite_metadata)
    entries = reader(buf)
    if METADATA_KEY in entries:
        try:
            doc = json.loads(entries[METADATA_KEY])
        except ValueError as err:
            raise ValueError(f"{path.name}: its embedded metadata is not JSON ({err})") from err
        return ModelMetadata.from_document(doc, "embedded")
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            doc = json.loads(sidecar.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{sidecar.name}: unreadable model sidecar ({err})") from err
        if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
            return ModelMetadata.from_document(doc, "sidecar")
    return None


def tflite_metadata(buf: bytes) -> dict[str, bytes]:
    """The ``metadata`` entries of a TFLite flatbuffer: {name: buffer bytes}.

    Raises:
        ValueError: if ``buf`` is not a TFLite flatbuffer.
    """
    if len(buf) < 16 or buf[4:8] != b"TFL3":
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    try:
        model = _u32(buf, 0)
        buffers = _vector_of_tables(buf, model, 4)
        out = {}
        for entry in _vector_of_tables(buf, model, 6):
            name_at = _field(buf, entry, 0)
            index_at = _field(buf, entry, 1)
            if name_at is None or index_at is None:
                continue
            index = _u32(buf, index_at)
            if index < len(buffers):
                out[_string(buf, name_at)] = _buffer_bytes(buf, buffers[index])
        return out
    except (struct.error, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"not a readable TFLite flatbuffer ({err})") from err


def onnx_metadata(buf: bytes) -> dict[str, bytes]:
    """The ``metadata_props`` of an ONNX model: {key: value bytes}, read without the onnx
    package (protobuf wire format: ModelProto field 14 holds StringStringEntryProto entries,
    key = field 1, value = field 2).

    Raises:
        ValueError: if ``buf`` is not a readable protobuf.
    """
    try:
        out = {}
        for field, wire, value in _proto_fields(memoryview(buf)):
            if field == 14 and wire == 2:
                entry = {f: bytes(v) for f, w, v in _proto_fields(value) if w == 2}
                out[entry.get(1, b"").decode()] = entry.get(2, b"")
        return out
    except (IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"not a readable ONNX model ({err})") from err


def _proto_fields(buf: memoryview):
    """(field number, wire type, value) of each top-level field of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            _in(buf, pos, size)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            _in(buf, pos, size)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise IndexError(f"wire type {wire} at byte {pos}")
        yield field, wire, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        _in(buf, pos, 1)
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
        if shift > 63:
            raise IndexError(f"varint longer than 10 bytes at byte {pos}")


# A flatbuffer table starts with an int32 back-offset to its vtable; the vtable lists one uint16
# offset per field (0: absent). Reference fields hold a uint32 offset relative to themselves.


def _u32(buf: bytes, pos: int) -> int:
    _in(buf, pos, 4)
    return struct.unpack_from("<I", buf, pos)[0]


def _in(buf: bytes, pos: int, size: int) -> None:
    """Offsets come from the file: one outside it (or negative, which struct would count from
    the end) means a damaged model."""
    if pos < 0 or pos + size > len(buf):
        raise IndexError(f"offset {pos} outside the {len(buf)}-byte model")


def _field(buf: bytes, table: int, index: int) -> int | None:
    _in(buf, table, 4)
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    _in(buf, vtable, 4)
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _vector(buf: bytes, table: int, index: int) -> tuple[int, int]:
    """(first element position, length) of a vector field; (0, 0) when absent."""
    at = _field(buf, table, index)
    if at is None:
        return 0, 0
    start = at + _u32(buf, at)
    return start + 4, _u32(buf, start)


def _vector_of_tables(buf: bytes, table: int, index: int) -> list[int]:
    start, length = _vector(buf, table, index)
    return [start + 4 * i + _u32(buf, start + 4 * i) for i in range(length)]


def _string(buf: bytes, at: int) -> str:
    start = at + _u32(buf, at)
    length = _u32(buf, start)
    _in(buf, start + 4, length)
    return bytes(buf[start + 4 : start + 4 + length]).decode()


def _buffer_bytes(buf: bytes, table: int) -> bytes:
    start, length = _vector(buf, table, 0)
    if length:
        _in(buf, start, length)
        return bytes(buf[start : start + length])
    # Models over 2 GB keep buffers after the flatbuffer: (offset, size) from the file start.
    offset_at, size_at = _field(buf, table, 1), _field(buf, table, 2)
    if offset_at is not None and size_at is not None:
        offset = struct.unpack_from("<Q", buf, offset_at)[0]
        size = struct.unpack_from("<Q", buf, size_at)[0]
        return bytes(buf[offset : offset + size])
    return b""


# Where each model format keeps the document (edge.runtimes.FORMATS names the formats).
METADATA_READERS = {".tflite": tflite_metadata, ".onnx": onnx_metadata}
