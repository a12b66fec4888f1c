"""Who is running what: run identity across restarts, software versions, the heartbeat file.

A *run* is an output folder: its ``run.json`` holds a run id made at the first start, and every
restart on the same folder continues it, with a frame index that keeps counting from the last
telemetry line. A heartbeat thread rewrites ``status.json`` every few seconds, even while no frame
arrives, so that a supervisor tells a dead camera (``last_frame_age_s`` growing) from a dead
process (the file stops changing).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import threading
import time
import uuid
from pathlib import Path

from edge.io.sinks import atomic_write_json, read_json_object

TELEMETRY_SCHEMA = "marsseg-edge/telemetry/2"  # 2: capture, rocks, grid, rules on rocks
SUMMARY_SCHEMA = "marsseg-edge/summary/1"
STATUS_SCHEMA = "marsseg-edge/status/1"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions(runtime: str | None = None) -> dict:
    """Versions of this package, Python, numpy, Pillow and the TFLite runtime in use."""

    import numpy
    import PIL

    versions = {
        "marsseg_edge": package_version(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
    }
    if runtime:
        from edge.runtimes.interpreter import runtime_version

        versions[runtime] = runtime_version(runtime)
    return versions


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("marsseg-edge")
    except metadata.PackageNotFoundError:  # a checkout that is not installed
        from edge import __version__

        return __version__


class RunIdentity:
    """The run id of an output folder and the next frame index.

    Args:
        out_dir: the output folder (``run.json`` is kept there).
        last_index: the frame index of the last telemetry line already written, if any.
        camera_dir: the folder this start reads (kept, so that the next start can tell whether
            it resumes the same stream: :attr:`previous_camera_dir`).
    """

    def __init__(
        self, out_dir: Path, last_index: int | None = None, camera_dir: Path | None = None
    ):
        self.path = Path(out_dir) / "run.json"
        state = self._read()
        self.camera_dir = None if camera_dir is None else str(Path(camera_dir).resolve())
        self.previous_camera_dir = state.get("camera_dir")
        self.run_id = state.get("run_id") or (
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            + "-"
            + uuid.uuid4().hex[:6]
        )
        self.restarts = int(state.get("restarts", -1)) + 1
        known = [
            v
            for v in (state.get("next_frame_index"), None if last_index is None else last_index + 1)
            if v is not None
        ]
        self.next_index = max(known, default=0)
        self.created_utc = state.get("created_utc") or utc_now()
        # the model the previous start ran ({file, name, sha256, precision}); None before any
        self.previous_model = state.get("model") if isinstance(state.get("model"), dict) else None
        self.model: dict | None = None  # this start's: set by the driver, saved with the rest

    @staticmethod
    def previous_state(out_dir: Path) -> dict:
        """What ``run.json`` in ``out_dir`` holds ({} when there is none or it is unreadable)."""
        return RunIdentity._read_file(Path(out_dir) / "run.json")

    def _read(self) -> dict:
        return self._read_file(self.path)

    @staticmethod
    def _read_file(path: Path) -> dict:
        return read_json_object(path) or {}

    def take_index(self) -> int:
        index, self.next_index = self.next_index, self.next_index + 1
        return index

    def save(self) -> None:
        """Write ``run.json`` (errors ignored: a full disk must not stop the run)."""
        try:
            atomic_write_json(
                self.path,
                {
                    "run_id": self.run_id,
                    "created_utc": self.created_utc,
                    "restarts": self.restarts,
                    "next_frame_index": self.next_index,
                    "camera_dir": self.camera_dir,
                    "model": self.model or self.previous_model,
                },
                durable=True,
            )
        except OSError:
            pass


class Heartbeat:
    """Rewrites a status file every ``every_s`` seconds from a thread, and at stop.

    Args:
        path: the status file (written atomically).
        status: a callable returning the fields to write (called from the thread).
        every_s: the period.
    """

    def __init__(self, path: Path, status, every_s: float = 5.0):
        self.path = Path(path)
        self.status = status
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat("running")
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat("running")

    def beat(self, state: str) -> None:
        record = {"schema": STATUS_SCHEMA, "state": state, "pid": os.getpid(),
                  "t_unix_s": round(time.time(), 3), **self.status()}  # fmt: skip
        try:
            atomic_write_json(self.path, record)
        except OSError:
            pass  # a full disk: the next beat tries again

    def stop(self, state: str = "stopped") -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 1)
        self.beat(state)
