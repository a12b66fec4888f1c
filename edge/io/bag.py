"""Frames from a recorded drive: a ROS 2 bag (mcap or sqlite3) replayed through the pipeline.

``edge-seg run --bag BAG --topic /navcam/image`` reads ``sensor_msgs/msg/Image`` (``mono8``,
``mono16``, ``rgb8``, ``bgr8``, ...) or ``sensor_msgs/msg/CompressedImage`` (JPEG, PNG) messages
of one topic with ``rosbags`` (pure Python: no ROS install), in the bag's order. The header stamp
is the capture time (the bag's receive time where the header's is unset) and the header's
``frame_id`` the camera; frames are named ``<topic>_<index>_<stamp ns>``. A message that cannot be decoded
is a bad frame (logged and counted), never the end of the replay. Needs the ``[ros]`` extra.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.io.decode import (
    DEFAULT_MAX_PIXELS,
    BadFrame,
    Frame,
    _grey,
    _scale_16bit,
    to_grayscale_uint8,
)

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class BagFrames:
    """The frames of one image topic of a ROS 2 bag.

    Args:
        bag: the bag folder (or a single .mcap / .db3 file of one).
        topic: the image topic.
        max_pixels: frames with more pixels are bad frames, not decoded.

    Raises:
        ValueError: when rosbags is missing, the bag cannot be opened, or the topic is not an
            image topic of it (the message lists the bag's image topics).
    """

    def __init__(self, bag: str | Path, topic: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        try:
            from rosbags.rosbag2 import Reader
            from rosbags.typesys import Stores, get_typestore
        except ImportError as err:
            raise ValueError("--bag needs rosbags: pip install 'marsseg-edge[ros]'") from err
        self.bag, self.topic, self.max_pixels = Path(bag), topic, max_pixels
        self.dropped = 0
        self.idle = False
        self._stop = False
        self._typestore = get_typestore(Stores.LATEST)
        path = self.bag.parent if self.bag.is_file() else self.bag
        try:
            self._reader = Reader(path)
            self._reader.open()
        except Exception as err:  # rosbags raises its own errors for a bad bag
            raise ValueError(f"cannot open the ROS 2 bag {bag}: {err}") from err
        images = {c.topic: c.msgtype for c in self._reader.connections if c.msgtype in IMAGE_TYPES}
        self._connections = [c for c in self._reader.connections if c.topic == topic]
        if not self._connections or self._connections[0].msgtype not in IMAGE_TYPES:
            self._reader.close()
            listed = ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in sorted(images.items()))
            raise ValueError(
                f"topic {topic!r} is not an image topic of {bag}; its image topics: "
                f"{listed or 'none'}"
            )
        self.count = sum(c.msgcount for c in self._connections)

    def stop(self) -> None:
        self._stop = True

    def __iter__(self) -> Iterator[Frame]:
        stem = self.topic.strip("/").replace("/", "_") or "image"
        try:
            for index, (conn, timestamp, raw) in enumerate(
                self._reader.messages(self._connections)
            ):
                if self._stop:
                    return
                t0 = time.perf_counter_ns()
                image, error, capture = None, None, None
                stamp_ns = timestamp
                try:
                    msg = self._typestore.deserialize_cdr(raw, conn.msgtype)
                    stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                    stamp_ns = stamp_ns or timestamp  # unset header: the bag's receive time
                    image = decode_message(msg, self.max_pixels)
                    capture = _capture(stamp_ns, msg.header.frame_id)
                except BadFrame as err:
                    error = str(err)
                except Exception as err:  # a corrupt message: a bad frame, never the end
                    error = f"message {index} of {self.topic}: cannot deserialize ({err})"
                yield Frame(
                    name=f"{stem}_{index:06d}_{stamp_ns}",  # unique even where stamps repeat
                    image=image,
                    error=error,
                    index=index,
                    read_us=(time.perf_counter_ns() - t0) / 1e3,
                    capture=capture,
                )
        finally:
            self._reader.close()


def decode_message(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An Image or CompressedImage message as uint8 grey (H, W).

    Raises:
        BadFrame: an encoding that is not read, a size that does not match the data, or a
            compressed image Pillow cannot decode.
    """
    if hasattr(msg, "format"):  # CompressedImage
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(msg.data))) as img:
                if img.size[0] * img.size[1] > max_pixels:
                    raise BadFrame(f"a {img.size[0]}x{img.size[1]} compressed image: over the cap")
                img.load()
                return _grey(img)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise BadFrame(
                f"a {msg.format or 'compressed'} image Pillow cannot decode ({err})"
            ) from err
    h, w, step, encoding = int(msg.height), int(msg.width), int(msg.step), msg.encoding.lower()
    if h * w > max_pixels:
        raise BadFrame(f"a {w}x{h} image: over the cap of {max_pixels / 1e6:.0f} MP")
    channels = {"mono8": (1, "u1"), "8uc1": (1, "u1"), "mono16": (1, "u2"), "16uc1": (1, "u2"),
                "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"), "bgra8": (4, "u1")}  # fmt: skip
    if encoding not in channels:
        raise BadFrame(f"image encoding {msg.encoding!r} (read: {', '.join(channels)})")
    n, kind = channels[encoding]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    data = np.asarray(msg.data, np.uint8)
    if step < w * n * dtype.itemsize or data.size < h * step:
        raise BadFrame(f"a {w}x{h} {encoding} image with step {step} and {data.size} bytes")
    rows = data[: h * step].reshape(h, step)[:, : w * n * dtype.itemsize]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(h, w, n)
    if dtype.itemsize == 2:
        return _scale_16bit(pixels[..., 0].astype(np.uint16))
    if n == 1:
        return pixels[..., 0].copy()
    rgb = pixels[..., :3] if encoding.startswith("rgb") else pixels[..., 2::-1]
    # ITU-R 601 luminance in fixed point, rounded as a colour file decoded by Pillow would be
    return to_grayscale_uint8(rgb, "image")


def _capture(stamp_ns: int, frame_id: str) -> dict:
    when = datetime.fromtimestamp(stamp_ns / 1e9, tz=timezone.utc)
    record = {"time_utc": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
              "t_unix_s": round(stamp_ns / 1e9, 3), "source": "ros_header"}  # fmt: skip
    if frame_id:
        record["camera"] = frame_id
    return record
