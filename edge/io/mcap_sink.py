"""The run as an MCAP recording that Foxglove opens: frames, class maps, rocks and telemetry.

``edge-seg run --mcap FILE`` writes, per segmented frame, on four topics (JSON messages with
JSON Schemas, the encoding Foxglove reads without generated code):

- ``/navcam/image`` (``foxglove.RawImage``, ``mono8``): the frame;
- ``/segmentation/class_map`` (``foxglove.RawImage``, ``rgb8``): the class map in the label
  set's colours (the ignored class black);
- ``/segmentation/rocks`` (``foxglove.ImageAnnotations``): each rock's box, red when a hazard
  rule fired on it, with its range or area;
- ``/segmentation/telemetry`` (the telemetry line, schema ``marsseg-edge/telemetry/2``).

Every message is stamped with the frame's capture time (``capture.t_unix_s``; the processing
time when the frame says none). The writer is chunked (1 MiB, zstd): a run killed mid-way leaves
a file whose whole chunks a streaming reader still reads. An endless run stays bounded: the
writer's index grows with every chunk, so the recording is split into numbered files
(``FILE``, ``FILE-0001.mcap``, ...) every ``split_bytes``, each one finished and indexed.
Needs the ``mcap`` package (the ``[ros]`` extra).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet, colourise

RAW_IMAGE_SCHEMA = {
    "title": "foxglove.RawImage",
    "type": "object",
    "properties": {
        "timestamp": {
            "type": "object",
            "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}},
        },
        "frame_id": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "encoding": {"type": "string"},
        "step": {"type": "integer"},
        "data": {"type": "string", "contentEncoding": "base64"},
    },
}
_POINT = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}
_COLOR = {"type": "object", "properties": {k: {"type": "number"} for k in "rgba"}}
ANNOTATIONS_SCHEMA = {
    "title": "foxglove.ImageAnnotations",
    "type": "object",
    "properties": {
        "circles": {"type": "array", "items": {"type": "object"}},
        "points": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "timestamp": RAW_IMAGE_SCHEMA["properties"]["timestamp"],
                    "type": {"type": "integer"},
                    "points": {"type": "array", "items": _POINT},
                    "outline_color": _COLOR,
                    "outline_colors": {"type": "array", "items": _COLOR},
                    "fill_color": _COLOR,
                    "thickness": {"type": "number"},
                },
            },
        },
        "texts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "timestamp": RAW_IMAGE_SCHEMA["properties"]["timestamp"],
                    "position": _POINT,
                    "text": {"type": "string"},
                    "font_size": {"type": "number"},
                    "text_color": _COLOR,
                    "background_color": _COLOR,
                },
            },
        },
    },
}
LINE_LOOP = 2  # foxglove.PointsAnnotationType
RED = {"r": 0.9, "g": 0.15, "b": 0.15, "a": 1.0}
ORANGE = {"r": 1.0, "g": 0.63, "b": 0.0, "a": 1.0}
WHITE = {"r": 1.0, "g": 1.0, "b": 1.0, "a": 1.0}
TOPICS = ("/navcam/image", "/segmentation/class_map", "/segmentation/rocks",
          "/segmentation/telemetry")  # fmt: skip


class McapSink:
    """Writes frames, class maps, rocks and telemetry to MCAP files (see the module doc).

    Args:
        path: the first file (``.mcap``); later ones get ``-0001`` ... before the suffix.
        label_set: the class colours.
        split_bytes: start a new file past this size.
        chunk_bytes: the chunk size (what a killed run can lose at most).

    Raises:
        RuntimeError: when the ``mcap`` package is missing (install the ``[ros]`` extra).
        OSError: when the file cannot be created.
    """

    def __init__(self, path: str | Path, label_set: LabelSet, split_bytes: int = 512 << 20,
                 chunk_bytes: int = 1 << 20):  # fmt: skip
        try:
            import mcap.writer  # noqa: F401
        except ImportError as err:
            raise RuntimeError(
                "--mcap needs the mcap package: pip install 'marsseg-edge[ros]'"
            ) from err
        self.path = Path(path)
        self.label_set = label_set
        self.split_bytes = split_bytes
        self.chunk_bytes = chunk_bytes
        self.files: list[Path] = []
        self.messages = 0
        self._writer = None
        self._handle = None
        self._open()

    def _open(self) -> None:
        """The next file: ``path``, else the first free ``-NNNN`` name (a restart under systemd
        writes the next file of the same recording instead of truncating the last)."""
        from mcap.writer import CompressionType, Writer

        n = 0
        while True:
            path = self.path if n == 0 else self.path.with_name(
                f"{self.path.stem}-{n:04d}{self.path.suffix}")  # fmt: skip
            try:
                self._handle = open(path, "xb")
                break
            except FileExistsError:
                n += 1
        self._writer = Writer(
            self._handle, chunk_size=self.chunk_bytes, compression=CompressionType.ZSTD
        )
        self._writer.start(profile="", library="marsseg-edge")
        self.files.append(path)
        schemas = {
            "image": self._writer.register_schema("foxglove.RawImage", "jsonschema",
                                                  json.dumps(RAW_IMAGE_SCHEMA).encode()),
            "annotations": self._writer.register_schema("foxglove.ImageAnnotations", "jsonschema",
                                                        json.dumps(ANNOTATIONS_SCHEMA).encode()),
            "telemetry": self._writer.register_schema("marsseg-edge/telemetry/2", "jsonschema",
                                                      json.dumps({"type": "object"}).encode()),
        }  # fmt: skip
        kinds = ("image", "image", "annotations", "telemetry")
        self._channels = {
            topic: self._writer.register_channel(topic, "json", schemas[kind])
            for topic, kind in zip(TOPICS, kinds)
        }

    def write(self, record: dict, image: np.ndarray, labels: np.ndarray) -> None:
        """One frame's messages.

        Raises:
            OSError: when the file cannot be written (e.g. a full disk).
        """
        if self._writer is None:  # the last split could not open its file: try again
            self._open()
        seconds = (record.get("capture") or {}).get("t_unix_s", record.get("t_unix_s", 0.0))
        ns = max(0, round(float(seconds) * 1e9))  # MCAP times are unsigned (a reset clock)
        stamp = {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}
        _h, w = image.shape
        colours = colourise(labels, self.label_set)
        if self.label_set.ignore is not None:
            colours[labels == self.label_set.ignore] = 0
        try:
            self._send("/navcam/image", ns, _raw(stamp, image, "mono8", w))
            self._send("/segmentation/class_map", ns, _raw(stamp, colours, "rgb8", 3 * w))
            self._send("/segmentation/rocks", ns, _annotations(stamp, record))
            self._send("/segmentation/telemetry", ns, record)
        except OSError:
            raise
        except Exception as err:  # the writer's own errors: a write failure, not the run's end
            raise OSError(f"MCAP write failed: {type(err).__name__}: {err}") from err
        if self._handle.tell() >= self.split_bytes:
            self._finish()
            self._open()

    def _send(self, topic: str, ns: int, payload: dict) -> None:
        self._writer.add_message(self._channels[topic], log_time=ns, publish_time=ns,
                                 data=json.dumps(payload, separators=(",", ":")).encode())  # fmt: skip
        self.messages += 1

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.finish()
            self._handle.close()
            self._writer = self._handle = None

    def close(self) -> None:
        """Finish the current file (its index and summary)."""
        self._finish()


def _raw(stamp: dict, pixels: np.ndarray, encoding: str, step: int) -> dict:
    return {"timestamp": stamp, "frame_id": "navcam", "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]), "encoding": encoding, "step": step,
            "data": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()}  # fmt: skip


def _annotations(stamp: dict, record: dict) -> dict:
    fired = {i for rule in record.get("hazards", []) if rule.get("hazard")
             for i in rule.get("rocks", [])}  # fmt: skip
    points, texts = [], []
    for rock in record.get("rocks", []):
        x0, y0, x1, y1 = rock["box"]
        colour = RED if rock["id"] in fired else ORANGE
        corners = [
            {"x": float(x), "y": float(y)} for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
        ]
        points.append({"timestamp": stamp, "type": LINE_LOOP, "points": corners,
                       "outline_color": colour, "thickness": 2.0})  # fmt: skip
        text = f"{rock['range_m']:.1f} m" if "range_m" in rock else f"{rock['area_px']} px"
        texts.append({"timestamp": stamp, "position": {"x": float(x0), "y": float(max(0, y0 - 2))},
                      "text": text, "font_size": 12.0, "text_color": WHITE,
                      "background_color": colour})  # fmt: skip
    return {"circles": [], "points": points, "texts": texts}
