"""Planetary Data System images: PDS3 (attached or detached label) and PDS4, read without pandas.

Real NAVCAM products are PDS files, not JPEGs. The simple cases a camera folder holds are read
here with the standard library and numpy (``pdr`` reads them too, and is the tests' reference,
but it brings pandas: too heavy for the rover's minimal install):

- **PDS3**: an ODL label (``KEY = VALUE`` lines, ``OBJECT = IMAGE`` ... ``END_OBJECT``, ``END``)
  at the start of the ``.IMG`` (attached) or in a ``.LBL`` beside it (detached). The ``^IMAGE``
  pointer gives the data's place (a record number, a byte offset ``<BYTES>``, or a file and
  either). ``LINES``, ``LINE_SAMPLES``, ``SAMPLE_BITS`` 8 or 16, ``SAMPLE_TYPE`` (MSB or LSB,
  unsigned or signed), ``LINE_PREFIX_BYTES``/``LINE_SUFFIX_BYTES``, ``BANDS`` (the first band is
  used), ``SCALING_FACTOR``/``OFFSET`` and ``SAMPLE_BIT_MASK`` (12 bits in 16) are honoured.
- **PDS4**: an XML label (``.xml`` beside the ``.img``) with an ``Array_2D_Image`` (or a one-band
  ``Array_3D_Image``): ``offset``, the axes, ``data_type`` (``UnsignedByte``, ``UnsignedMSB2``,
  ``UnsignedLSB2``, ``SignedMSB2``, ``SignedLSB2``), ``scaling_factor``/``value_offset``.

The samples are scaled as the label says and then to 8 bits over the range the label allows
(``SAMPLE_BIT_MASK``'s bits, else ``SAMPLE_BITS``). ``START_TIME`` (PDS3) or
``start_date_time`` (PDS4) is the capture time; a PDS3 ``INSTRUMENT_ID`` names the camera. A
label value of the wrong kind, band-interleaved data or a short file is a :class:`PdsError`
(the frame is bad, the run goes on).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

LABEL_SUFFIXES = (".lbl", ".LBL", ".xml", ".XML")
MAX_LABEL_BYTES = 1 << 20  # an attached label longer than this is not a label


class PdsError(ValueError):
    """The file is not a PDS image this reader can take (the message says why)."""


def read_pds(path: Path, max_pixels: int) -> tuple[np.ndarray, dict]:
    """A PDS image as uint8 (H, W), and ``{"time_utc", "camera", "source": "pds"}`` where known.

    Raises:
        PdsError: no label, an unsupported layout, or a file shorter than its label says.
    """
    try:
        return _read(path, max_pixels)
    except PdsError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, AttributeError) as err:
        # a label value of the wrong kind ("N/A" where a count belongs, a unit on a factor)
        raise PdsError(f"{path.name}: a label this reader cannot use ({type(err).__name__}: "
                       f"{err})") from err  # fmt: skip


def _read(path: Path, max_pixels: int) -> tuple[np.ndarray, dict]:
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.lstrip().startswith((b"PDS_VERSION_ID", b"ODL_VERSION_ID", b"CCSD")):
        return _pds3(path, path, max_pixels)
    for suffix in LABEL_SUFFIXES:
        label = path.with_suffix(suffix)
        if label.is_file():
            if suffix.lower() == ".lbl":
                return _pds3(label, path, max_pixels)
            return _pds4(label, path, max_pixels)
    raise PdsError(
        f"{path.name}: no PDS label (none attached, no {path.stem}.LBL or {path.stem}.xml beside it)"
    )


# -- PDS3 ----------------------------------------------------------------------------------------


def parse_odl(text: str) -> dict:
    """An ODL label as nested dicts: top-level keys, and each ``OBJECT`` under its name
    (the first of each name). Values are str, int, float, or a list for ``(a, b)``."""
    root: dict = {}
    stack = [root]
    lines = iter(text.splitlines())
    for line in lines:
        line = re.sub(r"/\*.*?\*/", "", line).strip()
        if not line:
            continue
        if line == "END":
            break
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        while value.count('"') % 2 or value.count("(") > value.count(")"):  # a value on lines
            try:
                value += " " + next(lines).strip()
            except StopIteration:
                break
        if key in ("OBJECT", "GROUP"):
            child: dict = {}
            stack[-1].setdefault(value, child)
            stack.append(child)
        elif key in ("END_OBJECT", "END_GROUP"):
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1][key] = _odl_value(value)
    return root


def _odl_value(text: str):
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        return [_odl_value(v) for v in text[1:-1].split(",")]
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1].strip()
    unit = re.fullmatch(r"(.*?)\s*<([^>]*)>", text)
    if unit:
        return [_odl_value(unit.group(1)), f"<{unit.group(2).upper()}>"]
    based = re.fullmatch(r"(\d+)#([0-9A-Fa-f]+)#", text)  # e.g. 2#0000111111111111#
    if based:
        return int(based.group(2), int(based.group(1)))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("'")


def _pds3(label_path: Path, data_path: Path, max_pixels: int) -> tuple[np.ndarray, dict]:
    with open(label_path, "rb") as handle:
        raw = handle.read(MAX_LABEL_BYTES)
    end = re.search(rb"(?m)^\s*END\s*$", raw)
    text = (raw[: end.end()] if end else raw).decode("latin-1")
    label = parse_odl(text)
    image = label.get("IMAGE")
    pointer = label.get("^IMAGE")
    if not isinstance(image, dict) or pointer is None:
        raise PdsError(
            f"{label_path.name}: a PDS3 label without an IMAGE object and ^IMAGE pointer"
        )
    record_bytes = int(label.get("RECORD_BYTES", 1) or 1)
    offset, file_name = _pointer(pointer, record_bytes)
    if file_name is not None:
        data_path = _sibling(label_path, file_name)
    try:
        lines, samples = int(image["LINES"]), int(image["LINE_SAMPLES"])
        bits = int(image.get("SAMPLE_BITS", 8))
    except (KeyError, TypeError, ValueError) as err:
        raise PdsError(f"{label_path.name}: IMAGE needs LINES, LINE_SAMPLES ({err})") from err
    kind = str(image.get("SAMPLE_TYPE", "UNSIGNED_INTEGER")).upper()
    storage = str(image.get("BAND_STORAGE_TYPE", "BAND_SEQUENTIAL")).upper()
    if int(image.get("BANDS", 1)) > 1 and storage != "BAND_SEQUENTIAL":
        raise PdsError(f"{label_path.name}: {storage} bands (band-sequential images are read)")
    dtype = _pds3_dtype(kind, bits, label_path.name)
    prefix, suffix = int(image.get("LINE_PREFIX_BYTES", 0)), int(image.get("LINE_SUFFIX_BYTES", 0))
    if lines * samples > max_pixels:
        raise PdsError(f"{data_path.name}: {samples}x{lines} is over the frame pixel cap; not read")
    line_bytes = prefix + samples * dtype.itemsize + suffix
    data = _read_block(data_path, offset, lines * line_bytes)
    rows = np.frombuffer(data, np.uint8).reshape(lines, line_bytes)[
        :, prefix : prefix + samples * dtype.itemsize
    ]
    if prefix or suffix:
        rows = np.ascontiguousarray(rows)
    values = rows.view(dtype).reshape(lines, samples)  # first band only
    mask = image.get("SAMPLE_BIT_MASK")
    valid_bits = bin(int(mask)).count("1") if isinstance(mask, int) and mask > 0 else bits
    if isinstance(mask, int) and 0 < mask < 2**bits - 1 and dtype.kind == "u":
        values = values & dtype.type(mask)
    grey = _to_uint8(values, float(image.get("SCALING_FACTOR", 1.0) or 1.0),
                     float(image.get("OFFSET", 0.0) or 0.0), valid_bits, dtype)  # fmt: skip
    meta: dict = {}
    when = _time(label.get("START_TIME") or label.get("IMAGE_TIME"))
    if when is not None:
        meta.update(time_utc=when, source="pds")
    camera = label.get("INSTRUMENT_ID")
    if isinstance(camera, str) and camera:
        meta["camera"] = camera.lower()
    return grey, meta


def _pointer(pointer, record_bytes: int) -> tuple[int, str | None]:
    """``(byte offset, file name or None)`` of a PDS3 pointer (records count from 1)."""

    def place(value) -> int:
        if isinstance(value, list) and len(value) == 2 and value[1] == "<BYTES>":
            return int(value[0]) - 1
        return (int(value) - 1) * record_bytes

    if isinstance(pointer, str):
        return 0, pointer
    if (
        isinstance(pointer, list)
        and pointer
        and isinstance(pointer[0], str)
        and pointer[0] != "<BYTES>"
    ):
        return (place(pointer[1]) if len(pointer) > 1 else 0), pointer[0]
    return place(pointer), None


def _pds3_dtype(kind: str, bits: int, name: str) -> np.dtype:
    if bits == 8:
        return np.dtype(np.int8 if "INTEGER" in kind and "UNSIGNED" not in kind else np.uint8)
    if bits != 16:
        raise PdsError(f"{name}: SAMPLE_BITS {bits} (8 or 16 are read)")
    order = "<" if kind.startswith(("LSB", "PC", "VAX")) else ">"
    if "REAL" in kind:
        raise PdsError(f"{name}: SAMPLE_TYPE {kind} (integer samples are read)")
    return np.dtype(f"{order}{'u' if 'UNSIGNED' in kind else 'i'}2")


# -- PDS4 ----------------------------------------------------------------------------------------

_PDS4_TYPES = {"UnsignedByte": "u1", "SignedByte": "i1", "UnsignedMSB2": ">u2",
               "UnsignedLSB2": "<u2", "SignedMSB2": ">i2", "SignedLSB2": "<i2"}  # fmt: skip


def _pds4(label_path: Path, data_path: Path, max_pixels: int) -> tuple[np.ndarray, dict]:
    try:
        tree = ET.parse(label_path)
    except ET.ParseError as err:
        raise PdsError(f"{label_path.name}: not a readable PDS4 XML label ({err})") from err
    root = tree.getroot()

    def find(node, name):
        return next((e for e in node.iter() if e.tag.rsplit("}", 1)[-1] == name), None)

    def text(node, name, default=None):
        found = find(node, name) if node is not None else None
        return found.text.strip() if found is not None and found.text else default

    array = find(root, "Array_2D_Image")
    if array is None:
        array = find(root, "Array_3D_Image")
    if array is None:
        raise PdsError(f"{label_path.name}: a PDS4 label without an Array_2D_Image")
    area = find(root, "File_Area_Observational")
    file_name = text(find(area if area is not None else root, "File"), "file_name")
    if file_name is not None:
        data_path = _sibling(label_path, file_name)
    kind = text(array, "data_type", "UnsignedByte")
    if kind not in _PDS4_TYPES:
        raise PdsError(f"{label_path.name}: data_type {kind} ({', '.join(_PDS4_TYPES)} are read)")
    axes = {}
    for axis in (e for e in array.iter() if e.tag.rsplit("}", 1)[-1] == "Axis_Array"):
        axes[text(axis, "axis_name", "").lower()] = int(text(axis, "elements", "0"))
    lines, samples = axes.get("line"), axes.get("sample")
    if not lines or not samples:
        raise PdsError(f"{label_path.name}: the array needs Line and Sample axes, got {axes}")
    if axes.get("band", 1) != 1 and next(iter(axes)) != "band":  # band-sequential: band 1 first
        raise PdsError(f"{label_path.name}: band-interleaved arrays are not read")
    if lines * samples > max_pixels:
        raise PdsError(f"{data_path.name}: {samples}x{lines} is over the frame pixel cap; not read")
    dtype = np.dtype(_PDS4_TYPES[kind])
    offset = int(text(array, "offset", "0"))
    data = _read_block(data_path, offset, lines * samples * dtype.itemsize)
    values = np.frombuffer(data, dtype).reshape(lines, samples)
    grey = _to_uint8(values, float(text(array, "scaling_factor", "1")),
                     float(text(array, "value_offset", "0")), dtype.itemsize * 8, dtype)  # fmt: skip
    meta: dict = {}
    when = _time(text(root, "start_date_time"))
    if when is not None:
        meta.update(time_utc=when, source="pds")
    return grey, meta


# -- shared --------------------------------------------------------------------------------------


def _sibling(label_path: Path, name: str) -> Path:
    """The data file a label names, beside the label (matched case-insensitively, as PDS
    volumes are often copied between file systems that differ on case)."""
    candidate = label_path.parent / Path(name).name
    if candidate.is_file():
        return candidate
    lower = Path(name).name.lower()
    for entry in label_path.parent.iterdir():
        if entry.name.lower() == lower:
            return entry
    raise PdsError(f"{label_path.name}: its data file {name} is not beside it")


def _read_block(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) < size:
        raise PdsError(
            f"{path.name}: truncated ({offset + len(data)} bytes; the label says {offset + size})"
        )
    return data


def _to_uint8(values: np.ndarray, scale: float, offset: float, bits: int, dtype) -> np.ndarray:
    """Samples scaled as the label says, then 0..2**bits-1 (or the signed range) to 0..255."""
    if dtype == np.uint8 and bits == 8 and scale == 1.0 and offset == 0.0:
        return np.array(values, np.uint8)  # the common 8-bit EDR: the samples are the grey levels
    physical = values.astype(np.float32)
    physical *= np.float32(scale)
    physical += np.float32(offset)
    if dtype.kind == "i":
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        low, high = 0.0, 2.0**bits - 1
    low, high = low * scale + offset, high * scale + offset
    if high <= low:
        low, high = float(physical.min()), float(max(physical.max(), physical.min() + 1))
    physical -= np.float32(low)
    physical *= np.float32(255.0 / (high - low))
    np.rint(physical, out=physical)
    return np.clip(physical, 0, 255, out=physical).astype(np.uint8)


def _time(value) -> datetime | None:
    """A PDS time (``2012-08-08T05:52:40.123``, ``Z`` or not: UTC) as an aware datetime."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().rstrip("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%jT%H:%M:%S.%f", "%Y-%jT%H:%M:%S"):
        try:
            return datetime.strptime(text[:26], fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None
