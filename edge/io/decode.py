"""Reading one frame file without trusting it, and telling whether a file is finished.

Readers refuse what could exhaust a rover's memory before decoding it: frames with more than
``max_pixels`` pixels (read from the header), decompression bombs. Frames above
:data:`FULL_DECODE_PIXELS` are decoded reduced (JPEG DCT scaling, else a box reduction), and no
float64 copy of a frame is ever made. Every reader returns a uint8 grayscale array (H, W);
anything unreadable raises :class:`BadFrame`, which the pipeline logs and skips.

A file that does not look complete yet (:func:`looks_complete`: a PNG's closing chunk, a JPEG's
end marker after its last segment, the length an .npy or PGM header announces) is one a camera
is still writing.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pnm", ".npy", ".img"})
# Names a writer uses before renaming a finished file into place.
TEMP_SUFFIXES = frozenset(
    {".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", ".filepart"}
)
# Frames with more pixels are refused unread (--max-frame-pixels): 50 MP is 2.5x a 20 MP camera.
DEFAULT_MAX_PIXELS = 50_000_000
# Frames with more pixels are decoded reduced by an integer factor (a NAVCAM frame is 1 MP, so
# every frame a model was trained on is decoded whole, exactly as in training).
FULL_DECODE_PIXELS = 16_000_000


class BadFrame(ValueError):
    """A frame file that cannot be read as a grayscale image."""


@dataclass
class Frame:
    """One frame handed to the pipeline.

    Attributes:
        name: a name for outputs and telemetry (the file name without its suffix).
        image: uint8 (H, W), or None when reading failed.
        error: why reading failed, or None.
        path: the source file, if any.
        index: position in the stream (0-based, counting dropped frames too).
        read_us: time spent reading and decoding.
        label: the true label map when the source has one (npz), else None.
        reduced: the factor a very large frame was reduced by when decoding (1: not reduced).
        mtime_ns: the source file's modification time as taken (it tells a rewrite of the same
            name from the frame already handled when a run resumes), or None.
        dropped_before: how many frames the source had dropped when it took this one (read
            ahead, the source's own count may already be past it), or None.
        capture: when and by which camera it was taken (:func:`edge.io.capture.capture_record`),
            or None.
    """

    name: str
    image: np.ndarray | None
    error: str | None = None
    path: Path | None = None
    index: int = 0
    read_us: float = 0.0
    label: np.ndarray | None = None
    reduced: int = 1
    mtime_ns: int | None = None
    dropped_before: int | None = None
    capture: dict | None = None


def is_candidate(name: str | Path) -> bool:
    """Whether a directory entry looks like a finished frame file (by its name only)."""
    name = Path(name).name
    if is_transient(name):
        return False
    suffixes = [s.lower() for s in Path(name).suffixes]
    return bool(suffixes) and suffixes[-1] in IMAGE_SUFFIXES


def is_transient(name: str) -> bool:
    """A hidden, backup or partly written file (a writer's temporary): passed over silently,
    unlike a finished file of an unknown type, which the camera folder reports."""
    if name.startswith((".", "~")) or name.endswith("~"):
        return True
    return any(s.lower() in TEMP_SUFFIXES for s in Path(name).suffixes)


# ----------------------------------------------------------------------------------------------
# Reading one frame.


def read_frame(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one frame file as uint8 grayscale (H, W).

    PNG, JPEG and PGM/PPM through Pillow (colour is converted to luminance, 16-bit scaled to
    8-bit); PDS3 and PDS4 ``.IMG`` (:mod:`edge.io.pds`); ``.npy`` arrays of shape (H, W), (H, W, 1) or (H, W, 3), either uint8, uint16
    (scaled), or float in [0, 1] or [0, 255].

    Args:
        path: the file.
        max_pixels: refuse frames with more pixels than this, before decoding them.

    Raises:
        BadFrame: if the file is empty, truncated, not an image, too large, or has an unusable
            shape or range.
    """
    image, _ = read_frame_reduced(Path(path), max_pixels)
    return image


def read_frame_reduced(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """:func:`read_frame`, also returning the factor a very large frame was reduced by."""
    image, reduced, _ = decode_frame(path, max_pixels)
    return image, reduced


def decode_frame(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int, dict]:
    """:func:`read_frame_reduced`, also returning what the file says of its capture (EXIF:
    :func:`edge.io.capture.from_exif`; a PDS label: :func:`edge.io.pds.read_pds`): ``time_utc``,
    ``camera``, ``source``; {} for none)."""
    if regular_file(path).st_size == 0:
        raise BadFrame(f"{path.name}: empty file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return (*_read_npy(path, max_pixels), {})
    if suffix == ".img":
        from edge.io.pds import PdsError, read_pds

        try:
            grey, meta = read_pds(path, max_pixels)
        except PdsError as err:
            raise BadFrame(str(err)) from err
        except OSError as err:
            raise BadFrame(f"{path.name}: cannot read ({os_reason(err)})") from err
        return grey, 1, meta
    return _read_image(path, max_pixels)


def os_reason(err: OSError) -> str:
    return err.strerror or str(err)


def regular_file(path: Path) -> os.stat_result:
    """The file's status, following links.

    Raises:
        BadFrame: when it cannot be reached, or is not a regular file (opening a FIFO or a
            device would block the run).
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise BadFrame(f"{path.name}: cannot read ({os_reason(err)})") from err
    if not stat.S_ISREG(st.st_mode):
        raise BadFrame(f"{path.name}: not a regular file (a FIFO, device or folder); not opened")
    return st


def check_pixels(name: str, width: int, height: int, max_pixels: int) -> int:
    """The integer reduction factor for a frame of this size (1: decode whole).

    Raises:
        BadFrame: when the frame is larger than ``max_pixels``.
    """
    pixels = width * height
    if pixels > max_pixels:
        raise BadFrame(
            f"{name}: {width}x{height} is {pixels / 1e6:.0f} MP, over the cap of "
            f"{max_pixels / 1e6:.0f} MP (--max-frame-pixels); not decoded"
        )
    return max(1, math.ceil(math.sqrt(pixels / FULL_DECODE_PIXELS)))


def _read_image(path: Path, max_pixels: int) -> tuple[np.ndarray, int, dict]:
    from PIL import Image, UnidentifiedImageError

    from edge.io.capture import from_exif

    try:
        with warnings.catch_warnings():
            # our own cap decides; Pillow's bomb warning (89-179 MP) would only print
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width = img.size[0]
                factor = check_pixels(path.name, *img.size, max_pixels)
                if img.format == "JPEG" and img.mode in ("RGB", "YCbCr"):
                    # libjpeg decodes the luminance plane alone (a third of the work for the
                    # grey frames NAVCAM JPEGs carry as colour: identical to converting; within
                    # one grey level for colour), and DCT scaling reduces by 1/2, 1/4 or 1/8
                    # when asked: never the whole of a very large frame
                    img.draft("L", (img.size[0] // factor, img.size[1] // factor))
                elif factor > 1 and img.format == "JPEG":
                    img.draft(img.mode, (img.size[0] // factor, img.size[1] // factor))
                img.load()  # decode now: a truncated file fails here, not later
                exif = from_exif(img)
                grey = _grey(img)
        rest = math.ceil(math.sqrt(grey.size / FULL_DECODE_PIXELS))
        if rest > 1:  # box-reduce the 8-bit frame (Pillow cannot reduce every mode)
            grey = np.asarray(Image.fromarray(grey).reduce(rest))
        return grey, max(1, round(width / grey.shape[1])), exif
    except Image.DecompressionBombError as err:
        raise BadFrame(f"{path.name}: a decompression bomb ({err}); not decoded") from err
    except UnidentifiedImageError as err:
        raise BadFrame(f"{path.name}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadFrame(f"{path.name}: corrupt or truncated image ({err})") from err


def _grey(img) -> np.ndarray:
    """A decoded Pillow image as uint8 grey, without float64 copies."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img)
        return _scale_16bit(np.clip(array, 0, 65535) if array.dtype.kind == "i" else array)
    if img.mode == "F":
        return to_grayscale_uint8(np.asarray(img), "frame")
    if img.mode != "L":
        img = img.convert("L")  # ITU-R 601 luminance
    return np.array(img, dtype=np.uint8)


def _scale_16bit(array: np.ndarray) -> np.ndarray:
    """16-bit grey to 8-bit: 0..65535 -> 0..255 (rounded) when the data uses more than 8 bits,
    a million pixels at a time (a 50 MP frame needs no 200 MB temporary)."""
    if not array.size or int(array.max()) <= 255:
        return array.astype(np.uint8)
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(flat.size, np.uint8)
    for start in range(0, flat.size, 1 << 20):
        chunk = flat[start : start + (1 << 20)].astype(np.uint32)
        out[start : start + (1 << 20)] = (chunk * 255 + 32767) // 65535
    return out.reshape(array.shape)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from an .npy header.

    Raises:
        OSError, ValueError, EOFError: for a file that is not (yet) an .npy.
    """
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(handle)
        return tuple(shape), dtype, handle.tell()


def _read_npy(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
    except (OSError, ValueError, EOFError) as err:
        raise BadFrame(f"{path.name}: not a readable .npy array ({err})") from err
    if array.ndim >= 2:
        check_pixels(path.name, int(array.shape[1]), int(array.shape[0]), max_pixels)
    # a copy: the camera may rewrite the file while the frame is in use
    return np.array(to_grayscale_uint8(array, path.name), copy=True), 1


def to_grayscale_uint8(array: np.ndarray, name: str = "frame") -> np.ndarray:
    """Turn an (H, W), (H, W, 1) or (H, W, 3) array into uint8 grayscale.

    uint8 is taken as it is, uint16 is scaled to 8 bits like a 16-bit PNG, other integers must
    lie in 0..255, floats in [0, 1] (scaled) or [0, 255]. Colour becomes ITU-R 601 luminance.
    No float64 copy is made.

    Raises:
        BadFrame: for another shape, a non-numeric dtype, NaN, or values out of range.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 3:
        array = _luminance(array, name)
    if array.ndim != 2 or min(array.shape) == 0:
        raise BadFrame(f"{name}: shape {array.shape}, expected (H, W), (H, W, 1) or (H, W, 3)")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "iuf":
        raise BadFrame(f"{name}: dtype {array.dtype} is not numeric")
    if array.dtype == np.uint16:
        return _scale_16bit(array)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise BadFrame(f"{name}: contains NaN or inf")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise BadFrame(f"{name}: values {low:g}..{high:g}, expected 0..255 (or 0..1 floats)")
    if array.dtype.kind in "iu":
        return array.astype(np.uint8)
    if high <= 1.0:
        array = array * np.float32(255.0)
    return np.rint(array).astype(np.uint8)


def _luminance(rgb: np.ndarray, name: str) -> np.ndarray:
    """ITU-R 601 luminance of an (H, W, 3) array, in the array's own range."""
    if rgb.dtype.kind in "iu":
        if rgb.size and (int(rgb.min()) < 0 or int(rgb.max()) > 65535):
            raise BadFrame(f"{name}: colour values outside 0..65535")
        # fixed point, like Pillow's "L" conversion: (299 R + 587 G + 114 B) / 1000, rounded
        weights = np.array([299, 587, 114], np.uint32)  # 65535 * 1000 fits in 32 bits
        grey = (rgb.astype(np.uint32) @ weights + 500) // 1000  # integer: numpy's own loop
        return grey.astype(np.uint16 if rgb.dtype.itemsize > 1 else np.uint8)
    return float_luminance(rgb)


def float_luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of an (H, W, 3) float array, as float32: channel by channel, not a
    product with a vector, which numpy hands to OpenBLAS, whose threads then spin on the other
    cores after the call."""
    rgb = rgb.astype(np.float32, copy=False)
    return (
        rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587)
        + rgb[..., 2] * np.float32(0.114)
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Is a file complete?


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every PNG ends with


def looks_complete(path: Path) -> bool:
    """Whether a frame file looks fully written, judged from its header and its last bytes.

    PNG must end with its IEND chunk (give or take a short trailer); JPEG must hold every segment its headers announce (an
    embedded EXIF thumbnail ends with an end-of-image marker of its own) and end with the
    end-of-image marker after the scan; a binary PGM/PPM or an .npy must be as long as its header
    says. Other formats are assumed complete. This is cheap (no decoding).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return True  # never opened (a FIFO would block): taken, and reported bad
        with open(path, "rb") as handle:
            head = handle.read(256)
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return False
            handle.seek(max(0, size - 64))
            tail = handle.read()
            suffix = path.suffix.lower()
            if suffix in (".jpg", ".jpeg"):
                return tail[-16:].rstrip(b"\x00").endswith(b"\xff\xd9") and _jpeg_segments_whole(
                    handle, size
                )
    except OSError:
        return False
    if suffix == ".png":  # some cameras append a few bytes after the last chunk
        return PNG_END in tail
    if suffix == ".npy":
        return size >= _npy_expected_size(path)
    if suffix in (".pgm", ".ppm", ".pnm"):
        return size >= _pnm_expected_size(head)
    return True


def _jpeg_segments_whole(handle, size: int) -> bool:
    """Walk the JPEG marker segments up to the first scan: each must fit in the file, and the
    scan must start before the file's end marker."""
    handle.seek(0)
    if handle.read(2) != b"\xff\xd8":
        return True  # not a JPEG we understand: let the decoder judge
    pos = 2
    while pos + 4 <= size:
        handle.seek(pos)
        marker = handle.read(4)
        if marker[0] != 0xFF:
            return True  # not a segment: let the decoder judge
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        end = pos + 2 + struct.unpack(">H", marker[2:4])[0]
        if end > size:
            return False  # a segment (e.g. EXIF with its thumbnail) runs past the end
        if marker[1] == 0xDA:  # start of scan: entropy-coded data follows
            return end < size - 2
        pos = end
    return False


def _npy_expected_size(path: Path) -> int:
    try:
        shape, dtype, offset = _npy_header(path)
        return offset + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError, EOFError):
        return 1 << 62  # header not there yet (or never will be: the grace period decides)


def _pnm_expected_size(head: bytes) -> int:
    """Size of a binary P5/P6 file from its header (comments allowed), or 0 if not binary PNM."""
    if head[:2] not in (b"P5", b"P6"):
        return 0
    tokens, pos = [], 2
    while len(tokens) < 3 and pos < len(head):
        while pos < len(head) and head[pos : pos + 1].isspace():
            pos += 1
        if head[pos : pos + 1] == b"#":
            while pos < len(head) and head[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(head) and not head[pos : pos + 1].isspace():
            pos += 1
        if start < pos:
            tokens.append(head[start:pos])
    if len(tokens) < 3 or pos >= len(head):
        return 1 << 62
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError:
        return 0  # not a header we understand: let the decoder judge
    channels = 3 if head[:2] == b"P6" else 1
    return pos + 1 + width * height * channels * (2 if maxval > 255 else 1)
