"""When a frame was taken, and by which camera, from what the file itself says.

A navigation stack fuses a frame's hazards with the rover's pose *at capture*, not at processing
(``t_unix_s`` is when the run took the frame up, which after a backlog or a restart can be hours
later). The capture time is taken, in this order, from:

1. the image's own metadata: EXIF ``DateTimeOriginal`` (with ``OffsetTimeOriginal`` when
   present; without it the time is read as UTC, which is what flight cameras write), source
   ``"exif"``; or a PDS label's ``START_TIME`` (:mod:`edge.io.pds`), source ``"pds"``;
2. a Mars Science Laboratory product id in the file name (``NLA_397681586EDR_...``: camera
   letters, then the spacecraft clock, SCLK, in seconds): source ``"sclk"``. The SCLK is turned
   into UTC from its epoch (2000-01-01 11:58:55.816 UTC) without the SPICE clock kernel's drift
   correction or the leap seconds since 2000 (five by 2017), so the UTC is approximate (seconds);
   ``sclk`` itself is exact;
3. the file's modification time (when it was written into the camera folder): source
   ``"file_mtime"``.

The camera comes from the same product id (``NLA`` is the left NAVCAM on the A-side compute
element) or, failing that, from EXIF ``Model``; else it is absent.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

MSL_SCLK_EPOCH = datetime(2000, 1, 1, 11, 58, 55, 816000, tzinfo=timezone.utc)
# MSL product ids: instrument letter, eye or filter, compute element, "_", 9-10 digit SCLK
_MSL_ID = re.compile(r"^([NFR])([LR])([AB])_(\d{9,10})")
_MSL_CAMERAS = {"N": "navcam", "F": "front_hazcam", "R": "rear_hazcam"}
_EXIF_IFD, _DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _MODEL = 0x8769, 36867, 36881, 272


def from_name(name: str) -> dict:
    """``{"camera", "sclk", "time_utc"}`` from an MSL product id at the start of ``name``, or {}."""
    match = _MSL_ID.match(name)
    if not match:
        return {}
    kind, eye, side, sclk = match.groups()
    eye = "left" if eye == "L" else "right"
    when = MSL_SCLK_EPOCH + timedelta(seconds=int(sclk))
    return {"camera": f"{_MSL_CAMERAS[kind]}_{eye}_{side.lower()}", "sclk": int(sclk),
            "time_utc": when}  # fmt: skip


def from_exif(img) -> dict:
    """``{"time_utc", "camera"}`` from an open Pillow image's EXIF, or {} (no EXIF, or none of
    the tags). Cheap when there is no EXIF: only the header already read is looked at."""
    if "exif" not in img.info:
        return {}
    try:
        exif = img.getexif()
        found = {}
        taken = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL)
        if isinstance(taken, str) and taken.strip():
            offset = exif.get_ifd(_EXIF_IFD).get(_OFFSET_ORIGINAL)
            when = datetime.strptime(taken.strip()[:19], "%Y:%m:%d %H:%M:%S")
            zone = timezone.utc
            if isinstance(offset, str) and re.fullmatch(r"[+-]\d\d:\d\d", offset.strip()):
                sign = -1 if offset.strip()[0] == "-" else 1
                hours, minutes = int(offset.strip()[1:3]), int(offset.strip()[4:6])
                zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
            found["time_utc"] = when.replace(tzinfo=zone).astimezone(timezone.utc)
        model = exif.get(_MODEL)
        if isinstance(model, str) and model.strip():
            found["camera"] = model.strip().replace("\x00", "")[:64]
        return found
    except (ValueError, TypeError, KeyError, OSError, SyntaxError, OverflowError):
        return {}  # a damaged EXIF block (or a date out of range) says nothing; the frame is fine


def capture_record(name: str, exif: dict | None, mtime_ns: int | None) -> dict | None:
    """The telemetry's ``capture`` field: ``time_utc`` (ISO 8601), ``t_unix_s``, ``source``
    and, where known, ``camera`` and ``sclk``; None when nothing tells the time."""
    exif = exif or {}
    named = from_name(name)
    record: dict = {}
    if "time_utc" in exif:  # the file's own metadata: EXIF, or a PDS label's START_TIME
        when, record["source"] = exif["time_utc"], exif.get("source", "exif")
    elif "time_utc" in named:
        when, record["source"] = named["time_utc"], "sclk"
    elif mtime_ns is not None:
        try:
            when = datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None  # a clock far out of range says nothing
        record["source"] = "file_mtime"
    else:
        return None
    record["time_utc"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record["t_unix_s"] = round(when.timestamp(), 3)
    camera = named.get("camera") or exif.get("camera")
    if camera:
        record["camera"] = camera
    if "sclk" in named:
        record["sclk"] = named["sclk"]
    return record
