"""Rover-grade streaming: hostile files, full disks, long streams (real files, real LiteRT)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main
from edge.contract.labels import MARS
from edge.io import camera as cameradir
from edge.io import decode
from edge.io.sinks import OutputWriter, Telemetry, short_stem
from edge.run.loop import RunStats, run_stream
from edge.run.quantiles import LogHistogram
from edge.segmenter import Segmenter
from tests.conftest import band_frame
from tests.test_edge_run import edge_seg, wait_for, write_png


def png_of_zeros(path: Path, width: int, height: int, bit_depth: int = 1) -> Path:
    """A valid PNG of the given size, streamed (a huge one costs a few MB of zlib output)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 500) for _ in range(height // 500))
    body += packer.compress(row * (height % 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def run_cli(*args: str):
    return CliRunner().invoke(main, ["run", *args])


@pytest.fixture
def cam(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    return folder


# 1-2. Decompression bombs and frames too large for the rover's memory.


def test_a_decompression_bomb_is_a_bad_frame_and_the_next_frame_runs(band_models, cam, tmp_path):
    png_of_zeros(cam / "a_bomb.png", 20000, 20000)  # 400 MP: Pillow's bomb error
    png_of_zeros(cam / "b_big.png", 8000, 8000)  # 64 MP: over our 50 MP cap
    image, truth = band_frame()
    write_png(cam / "c_good.png", image)
    labels = tmp_path / "labels"
    labels.mkdir()
    png_of_zeros(labels / "c_good.png", 20000, 20000)  # a bomb as a label file too
    out = tmp_path / "out"
    result = run_cli("--camera-dir", str(cam), "--model", str(band_models["int8"]),
                     "--out", str(out), "--labels", str(labels))  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["errors"]) == (1, 2)
    records = [json.loads(line) for line in (out / "telemetry.jsonl").read_text().splitlines()]
    errors = {r["frame"]: r["error"] for r in records if r["status"] == "error"}
    assert "decompression bomb" in errors["a_bomb"] and "over the cap of 50 MP" in errors["b_big"]
    mask = np.asarray(Image.open(out / "masks" / "c_good.png"))
    np.testing.assert_array_equal(mask, truth)


def test_the_pixel_cap_is_a_flag(cam, tmp_path):
    png_of_zeros(cam / "frame.png", 3000, 2000)
    with pytest.raises(decode.BadFrame, match=r"3000x2000 is 6 MP, over the cap of 5 MP"):
        decode.read_frame(cam / "frame.png", max_pixels=5_000_000)
    assert decode.read_frame(cam / "frame.png").shape == (2000, 3000)


def test_very_large_frames_are_decoded_reduced(cam):
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (250, 250), dtype=np.uint8)
    big = np.tile(tile, (20, 20))  # 5000x5000 = 25 MP: above the 16 MP decoded whole
    Image.fromarray(big).save(cam / "big.jpg", quality=90)
    image, factor = decode.read_frame_reduced(cam / "big.jpg")
    assert factor == 2 and image.shape == (2500, 2500)  # JPEG DCT scaling
    Image.fromarray(big).save(cam / "big.png")
    image, factor = decode.read_frame_reduced(cam / "big.png")
    assert factor == 2 and image.shape == (2500, 2500)
    np.testing.assert_array_equal(
        image[:2, :2], big[:4, :4].reshape(2, 2, 2, 2).mean((1, 3)).round()
    )


def test_16bit_frames_are_scaled_without_floats(cam):
    ramp = (np.arange(64 * 128, dtype=np.uint32).reshape(64, 128) * 8).astype(np.uint16)
    Image.fromarray(ramp).save(cam / "deep.png")
    image = decode.read_frame(cam / "deep.png")
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, (ramp.astype(np.uint32) * 255 + 32767) // 65535)
    np.save(cam / "deep.npy", ramp)
    np.testing.assert_array_equal(decode.read_frame(cam / "deep.npy"), image)


# 3. A full disk.


def test_outputs_that_cannot_be_written_are_counted_and_telemetry_stays_whole(
    band_models, cam, tmp_path, monkeypatch
):
    """ENOSPC simulated at the writer boundary (the real file system is in the next test)."""
    import edge.io.sinks as sinks

    for i in range(6):
        write_png(cam / f"f{i}.png", band_frame(np.random.default_rng(i))[0])
    real_write, real_atomic = os.write, sinks.atomic_write_bytes
    full = {"on": False}

    def write(fd, data):
        if full["on"] and fd > 2:
            real_write(fd, data[: len(data) // 2])  # the disk takes half a line, then is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def atomic(path, payload):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_atomic(path, payload)

    monkeypatch.setattr(sinks.os, "write", write)
    monkeypatch.setattr(sinks, "atomic_write_bytes", atomic)
    segmenter = Segmenter(band_models["int8"])
    out = tmp_path / "out"

    def fill_after_two(stats):
        full["on"] = 2 <= stats.frames < 5  # full for frames 3-5, room again for the last

    with OutputWriter(out, label_set=MARS) as writer:
        # in turn (overlap off): the disk fills at a given frame, not at the write-back's pace
        stats = run_stream(
            cameradir.CameraDir(cam), segmenter, writer, on_frame=fill_after_two, overlap=False
        )
    assert (stats.frames, stats.errors, stats.unwritten) == (6, 0, 3)
    assert stats.telemetry_failures == 3 and stats.telemetry_lost == 0
    lines = (out / "telemetry.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert [r["frame"] for r in records] == [f"f{i}" for i in range(6)]  # waited, then written
    assert [r["written"] for r in records] == [True, True, False, False, False, True]


def _unshare_available() -> bool:
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="no unprivileged user namespaces here")
@pytest.mark.parametrize("when", ["at start", "mid-run"])
def test_a_really_full_disk(band_models, cam, tmp_path, when):
    """A 96 KiB tmpfs in a private mount namespace (no privileges needed)."""
    for i in range(12):
        write_png(cam / f"f{i:02d}.png", band_frame(np.random.default_rng(i))[0])
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "out").mkdir(parents=True) if when == "at start" else None
    fill = (
        f"dd if=/dev/zero of={disk}/filler bs=1k count=200 2>/dev/null;"
        if when == "at start"
        else ""
    )
    script = (
        f"mount -t tmpfs -o size=96k tmpfs {disk} && mkdir -p {disk}/out && {fill} "
        f"{sys.executable} -m edge.cli run --camera-dir {cam} --model {band_models['int8']} "
        f"--out {disk}/out --overlay --threads 1; echo EXIT=$?; "
        f"cat {disk}/out/telemetry.jsonl > {tmp_path}/telemetry.copy 2>/dev/null; "
        f"ls {disk}/out > {tmp_path}/listing.copy"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(  # from the repository: mutmut's stats run reads its config there
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        cwd=root, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert "EXIT=6" in proc.stdout, proc.stdout + proc.stderr
    assert "frames 12  errors 0" in proc.stdout and "unwritten" in proc.stdout  # printed anyway
    assert "Traceback" not in proc.stderr
    for line in (tmp_path / "telemetry.copy").read_text().splitlines():
        json.loads(line)  # valid JSONL: no line cut mid-record


def test_a_telemetry_line_cut_by_a_crash_is_repaired(tmp_path, caplog):
    path = tmp_path / "telemetry.jsonl"
    path.write_text('{"frame":"a"}\n{"frame":"b","timi')
    with caplog.at_level(logging.WARNING):
        telemetry = Telemetry(path)
        telemetry.write({"frame": "c"})
        telemetry.close()
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == ["a", "c"]
    assert "ended mid-line" in caplog.text


# 4-5. Symlink loops and unreadable links; SIGTERM while pacing.


def test_symlink_loops_and_dangling_links_are_bad_frames_once(band_models, cam, tmp_path, caplog):
    (cam / "a_loop.png").symlink_to(cam / "a_loop.png")
    (cam / "b_dangling.png").symlink_to(tmp_path / "nowhere.png")
    write_png(cam / "c_good.png", band_frame()[0])
    with caplog.at_level(logging.WARNING):
        source = cameradir.CameraDir(cam, watch=True, poll_s=0.01, idle_timeout=1.0)
        stats = run_stream(source, Segmenter(band_models["int8"]))
    assert (stats.frames, stats.errors) == (1, 2)
    assert len([r for r in caplog.records if "a_loop" in r.getMessage()]) == 1  # not 48 a second
    assert not [r for r in caplog.records if "cannot list" in r.getMessage()]


def test_sigterm_stops_a_slowly_paced_run_at_once(band_models, cam, tmp_path):
    for i in range(3):
        write_png(cam / f"f{i}.png", band_frame()[0])
    out = tmp_path / "out"
    proc = edge_seg("run", "--camera-dir", str(cam), "--model", str(band_models["int8"]),
                    "--out", str(out), "--max-fps", "0.02", "--threads", "1")  # fmt: skip
    try:
        assert wait_for(
            lambda: (out / "telemetry.jsonl").exists() and (out / "telemetry.jsonl").stat().st_size
        )
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0 and took < 5  # it used to sleep out the 50 s frame period
    assert json.loads((out / "summary.json").read_text())["stopped_by"] == "SIGTERM"


# 6-7. Cost and memory independent of the stream's length and the folder's size.


def test_inotify_never_lists_the_folder_again(band_models, cam, monkeypatch):
    listings = []
    real = cameradir.CameraDir._listing
    monkeypatch.setattr(
        cameradir.CameraDir,
        "_listing",
        lambda self, after="", resume=None: listings.append(after) or real(self, after, resume),
    )
    for i in range(200):
        (cam / f"old{i:04d}.txt").write_text("not a frame")
    source = cameradir.CameraDir(cam, watch=True, idle_timeout=1.5, max_queue=100, notify="inotify")
    stream = iter(source)

    def camera():
        time.sleep(0.3)
        for i in range(20):
            write_png(cam / f"n{i:03d}.png", band_frame()[0])

    writer = threading.Thread(target=camera)
    writer.start()
    names = [f.name for f in stream]
    writer.join()
    assert names == [f"n{i:03d}" for i in range(20)] and listings == [""]  # the start only


def test_a_frame_finished_while_it_is_checked_is_taken_once(cam, monkeypatch):
    """Seen empty, complete by the time it is checked: handed with the empty file's identity,
    the writer's close event looked like a new version and the frame came out twice (found
    under load by the mutation run's clean pass)."""
    buffer = io.BytesIO()
    Image.fromarray(band_frame()[0]).save(buffer, format="PNG")
    target = cam / "late.png"
    real = decode.looks_complete

    def the_writer_finishes_meanwhile(path):
        if path == target and target.stat().st_size == 0:
            target.write_bytes(buffer.getvalue())
        return real(path)

    monkeypatch.setattr(cameradir, "looks_complete", the_writer_finishes_meanwhile)
    source = cameradir.CameraDir(cam, watch=True, idle_timeout=1.0, max_queue=10, notify="inotify")
    writer = threading.Timer(0.3, target.touch)  # created empty: its first event says size 0
    writer.start()
    frames = list(source)
    writer.join()
    assert [(f.name, f.error) for f in frames] == [("late", None)]


def test_polling_lists_only_when_the_folder_changes(cam, monkeypatch):
    listings = []
    real = cameradir.CameraDir._listing
    monkeypatch.setattr(
        cameradir.CameraDir,
        "_listing",
        lambda self, after="", resume=None: listings.append(after) or real(self, after, resume),
    )
    write_png(cam / "a.png", band_frame()[0])
    time.sleep(2.1)  # the folder's time is no longer recent (coarse clocks are relisted)
    source = cameradir.CameraDir(cam, watch=True, poll_s=0.01, idle_timeout=0.5, notify="poll")
    assert [f.name for f in source] == ["a"]
    assert len(listings) <= 2  # the start, and at most one poll (the folder never changed)


def test_bookkeeping_is_bounded():
    stats = RunStats()
    sizes = {k: h._buckets.size for k, h in stats.latency.items()}
    for i in range(20000):
        stats.add_timings({s: 100.0 + i % 977 for s in stats.latency})
    assert {k: h._buckets.size for k, h in stats.latency.items()} == sizes
    assert all(len(d) <= 30 for d in stats.recent.values())
    writer = OutputWriter.__new__(OutputWriter)
    writer._stems = __import__("collections").OrderedDict()
    for i in range(10000):
        writer.output_name(f"frame{i:06d}", Path(f"frame{i:06d}.png"))
    assert len(writer._stems) <= 4096


def test_freed_memory_goes_back_to_the_system_every_thousand_frames():
    """glibc keeps freed memory for later; the loop trims it (edge/run/memory.py). On glibc a
    trim returns what a burst of freed allocations left (RSS drops); elsewhere it is off."""
    from edge.run.memory import AllocatorTrim

    trim = AllocatorTrim(every=1000)
    if trim._trim is None:
        pytest.skip("not glibc: no malloc_trim")

    def rss_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))

    held = [np.ones(10_000, np.float64) for _ in range(2000)]  # 160 MB, 80 KB blocks: heap
    del held[1::2]  # every other one freed: holes glibc keeps, not returned at the top
    before = rss_kib()
    for _ in range(999):
        trim.frame()
    assert trim.trims == 0 and rss_kib() > before - 10_000
    trim.frame()
    assert trim.trims == 1 and rss_kib() < before - 40_000  # the holes went back
    del held


_ARENA_CHILD = """
import sys, threading
import numpy as np
from edge.run.memory import limit_arenas, _libc_function
if sys.argv[1] == "limit":
    assert limit_arenas(1)

def churn():
    for _ in range(200):
        blocks = [np.ones(20_000) for _ in range(8)]
        del blocks

threads = [threading.Thread(target=churn) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
_libc_function("malloc_stats", [])()  # one "Arena N:" section per arena, on stderr
"""


@pytest.mark.parametrize("mode", ["limit", "default"])
def test_the_loop_keeps_the_threads_on_one_allocator_arena(mode):
    """Each thread would get an arena of its own, each a heap that stays resident
    (edge/run/memory.py); after limit_arenas(1) four allocating threads share the one arena."""
    import subprocess
    import sys

    from edge.run.memory import _libc_function

    if _libc_function("mallopt", []) is None:
        pytest.skip("not glibc: no arenas to limit")
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", _ARENA_CHILD, mode], capture_output=True,
                          text=True, timeout=120, check=True, env=env)  # fmt: skip
    arenas = done.stderr.count("Arena ")
    assert arenas == 1 if mode == "limit" else arenas > 1


def test_log_histogram_quantiles_are_within_one_percent():
    values = np.random.default_rng(1).lognormal(0.0, 1.0, 50000) + 0.01
    hist = LogHistogram(0.01)
    for v in values:
        hist.add(float(v))
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        exact = np.percentile(values, 100 * q, method="lower")
        assert abs(hist.quantile(q) - exact) <= 0.01 * exact


# 8. Frames lost: slow writers, JPEG thumbnails, reused names.


def test_a_writer_pausing_longer_than_the_grace_period_loses_nothing(band_models, cam):
    image, truth = band_frame()
    write_png(cam.parent / "whole.png", image)
    payload = (cam.parent / "whole.png").read_bytes()
    source = cameradir.CameraDir(cam, watch=True, grace_s=0.3, idle_timeout=2.0, notify="inotify")
    frames = []

    def camera():
        time.sleep(0.2)
        with open(cam / "slow.png", "wb") as handle:
            handle.write(payload[:100])
            handle.flush()
            time.sleep(1.0)  # > grace_s
            handle.write(payload[100:])

    writer = threading.Thread(target=camera)
    writer.start()
    frames = list(source)
    writer.join()
    assert [(f.name, f.error) for f in frames] == [("slow", None)]
    np.testing.assert_array_equal(
        Segmenter(band_models["int8"]).segment(frames[0].image).labels, truth
    )


def jpeg_with_thumbnail(image: np.ndarray) -> bytes:
    """A JPEG whose EXIF segment carries a thumbnail (which ends in an end-of-image marker)."""
    import io

    thumb = io.BytesIO()
    Image.fromarray(image[::4, ::4]).save(thumb, "JPEG")
    exif = Image.Exif()
    exif[0x010E] = "frame"  # ImageDescription
    full = io.BytesIO()
    pil = Image.fromarray(image)
    pil.save(full, "JPEG", exif=exif.tobytes() + b"\x00" * 0)
    data = full.getvalue()
    # splice the thumbnail into the APP1 (EXIF) segment, fixing its length
    app1 = data.index(b"\xff\xe1")
    length = struct.unpack(">H", data[app1 + 2 : app1 + 4])[0]
    body = data[app1 + 4 : app1 + 2 + length] + thumb.getvalue()
    return (
        data[:app1]
        + b"\xff\xe1"
        + struct.pack(">H", len(body) + 2)
        + body
        + data[app1 + 2 + length :]
    )


def test_a_jpeg_cut_right_after_its_thumbnail_is_not_taken_early(tmp_path):
    image = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (64, 1))
    payload = jpeg_with_thumbnail(image)
    path = tmp_path / "frame.jpg"
    path.write_bytes(payload)
    assert decode.looks_complete(path) and decode.read_frame(path).shape == (64, 128)
    cut = payload.index(b"\xff\xd9") + 2  # the thumbnail's end marker
    path.write_bytes(payload[:cut])
    assert payload[:cut].endswith(b"\xff\xd9") and not decode.looks_complete(path)


def test_a_camera_that_reuses_a_file_name_gets_every_frame(cam):
    source = cameradir.CameraDir(cam, watch=True, idle_timeout=1.5, max_queue=5, notify="inotify")
    rng = np.random.default_rng(5)
    written = [band_frame(rng)[0] for _ in range(3)]

    def camera():
        for image in written:
            time.sleep(0.3)
            tmp = cam / ".latest.tmp.png"
            write_png(tmp, image)
            os.replace(tmp, cam / "latest.png")  # the same name, every time

    writer = threading.Thread(target=camera)
    writer.start()
    frames = list(source)
    writer.join()
    assert [f.name for f in frames] == ["latest"] * 3
    for frame, image in zip(frames, written):
        np.testing.assert_array_equal(frame.image, image)


# 9. Left-overs of killed runs; long names.


def test_stale_temporaries_are_removed_and_long_names_shortened(band_models, cam, tmp_path):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    stale = out / "masks" / ".f0.png.999999999.tmp"  # a pid that cannot be running
    stale.write_bytes(b"half a png")
    live = out / "masks" / f".f1.png.{os.getpid()}.tmp"
    long_name = "x" * 240
    write_png(cam / f"{long_name}.png", band_frame()[0])
    result = run_cli(
        "--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not live.exists()
    masks = [p.name for p in (out / "masks").iterdir()]
    assert masks == [f"{short_stem(long_name)}.png"] and len(masks[0].encode()) <= 204


# 10. A model that is not a segmentation model.


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory):
    import keras

    from trainer.convert import convert_saved_model

    a, b = keras.Input((64, 128, 1), name="a"), keras.Input((64, 128, 1), name="b")
    out = keras.layers.Softmax()(keras.layers.Conv2D(5, 1)(keras.layers.Add()([a, b])))
    model = keras.Model([a, b], out)
    folder = tmp_path_factory.mktemp("two_inputs")
    model.export(str(folder / "saved"), verbose=False)
    path = folder / "two_inputs.tflite"
    path.write_bytes(convert_saved_model(folder / "saved", "float32"))
    return path


def test_a_model_with_two_inputs_is_refused(two_input_model, cam, tmp_path):
    result = run_cli(
        "--camera-dir", str(cam), "--model", str(two_input_model), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 2 and "2 input(s) and 1 output(s)" in result.output


# 11. Outcomes a supervisor can read.


@pytest.mark.parametrize(("content", "code"), [("empty", 3), ("corrupt", 4), ("good", 0)])
def test_exit_codes(band_models, cam, tmp_path, content, code):
    if content == "corrupt":
        (cam / "a.png").write_bytes(b"not a png")
        (cam / "b.jpg").write_bytes(b"")
    elif content == "good":
        write_png(cam / "a.png", band_frame()[0])
    result = run_cli(
        "--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == code, result.output


def test_info_and_run_share_the_bad_model_code(tmp_path, cam):
    (tmp_path / "fake.tflite").write_bytes(b"not a flatbuffer")
    info = CliRunner().invoke(main, ["info", str(tmp_path / "fake.tflite")])
    run = run_cli("--camera-dir", str(cam), "--model", str(tmp_path / "fake.tflite"))
    assert info.exit_code == run.exit_code == 2


# 12. Retention.


def test_keep_bounds_the_outputs_and_consumed_frames_go(band_models, cam, tmp_path):
    for i in range(5):
        write_png(cam / f"f{i}.png", band_frame()[0])
    out, done = tmp_path / "out", tmp_path / "done"
    result = run_cli("--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(out),
                     "--overlay", "--keep", "2", "--move-consumed", str(done))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["f3.png", "f4.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["f3.png", "f4.png"]
    assert not list(cam.iterdir()) and len(list(done.iterdir())) == 5
    write_png(cam / "g.png", band_frame()[0])
    result = run_cli("--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(tmp_path / "o2"),
                     "--no-masks", "--delete-consumed")  # fmt: skip
    assert (
        result.exit_code == 0
        and not (tmp_path / "o2" / "masks").exists()
        and not list(cam.iterdir())
    )


# Found by review: each of these failed before its fix.


def test_a_fifo_in_the_folder_is_a_bad_frame_not_a_hang(band_models, cam):
    os.mkfifo(cam / "a_fifo.png")
    write_png(cam / "b_good.png", band_frame()[0])
    source = cameradir.CameraDir(cam, watch=True, idle_timeout=1.0, notify="inotify")
    frames = list(source)
    errors = {f.name: f.error for f in frames if f.error}
    assert [f.name for f in frames if not f.error] == ["b_good"]
    assert "not a regular file" in errors["a_fifo"]


def test_a_broken_fresh_file_is_retried_once_not_in_a_loop(cam, monkeypatch):
    payload = png_of_zeros(cam.parent / "whole.png", 64, 32).read_bytes()
    broken = payload[:40] + b"\x00" * 30 + payload[-30:]  # a valid start and end, junk between
    (cam / "broken.png").write_bytes(broken)
    calls = []
    real = decode.decode_frame
    monkeypatch.setattr(cameradir, "decode_frame", lambda *a, **k: calls.append(1) or real(*a, **k))
    frames = list(
        cameradir.CameraDir(cam, watch=True, grace_s=0.3, idle_timeout=0.5, notify="poll")
    )
    assert [f.name for f in frames] == ["broken"] and frames[0].error
    assert len(calls) == 2  # the first try, and one retry after grace_s


def test_a_file_finished_during_the_start_is_taken_once(cam):
    image = band_frame()[0]
    write_png(cam / "a.png", image)
    payload = write_png(cam.parent / "c.png", image).read_bytes()
    handle = open(cam / "c.png", "wb")
    handle.write(payload[:50])
    handle.flush()
    source = cameradir.CameraDir(cam, watch=True, idle_timeout=1.0, notify="inotify")
    stream = iter(source)
    assert next(stream).name == "a"
    handle.write(payload[50:])
    handle.close()
    time.sleep(0.2)
    assert [f.name for f in stream] == ["c"]


def test_a_file_arriving_without_a_close_event_is_taken(cam, tmp_path):
    payload = write_png(tmp_path / "ok.png", band_frame()[0]).read_bytes() + b"trailer!"
    (tmp_path / "src.png").write_bytes(payload)
    source = cameradir.CameraDir(cam, watch=True, grace_s=0.1, idle_timeout=2.5, notify="inotify")
    stream = iter(source)

    def link():
        time.sleep(0.2)
        os.link(tmp_path / "src.png", cam / "linked.png")  # a create event, no close

    threading.Thread(target=link).start()
    frames = list(stream)
    assert [(f.name, f.error) for f in frames] == [("linked", None)]


def test_keep_with_a_reused_name_keeps_the_current_mask(band_models, tmp_path):
    out = tmp_path / "out"
    image = band_frame()[0]
    with OutputWriter(out, keep=2, label_set=MARS) as writer:
        for name in ("latest", "other", "latest", "latest"):
            writer.write_images(name, image, np.zeros(image.shape, np.uint8))
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["latest.png", "other.png"]


@pytest.mark.parametrize("mode", ["I;16", "P"])
def test_large_frames_of_any_mode_are_decoded_reduced(cam, mode):
    side = 4200  # 17.6 MP: above the 16 MP decoded whole
    if mode == "I;16":
        Image.fromarray(np.full((side, side), 40000, np.uint16)).save(cam / "deep.png")
    else:
        Image.new("P", (side, side), 3).save(cam / "deep.png")
    image, factor = decode.read_frame_reduced(cam / "deep.png")
    assert factor == 2 and image.shape == (side // 2, side // 2)


def test_npy_frames_are_copies_not_views_of_the_file(cam):
    np.save(cam / "f.npy", np.arange(64 * 128, dtype=np.uint32).reshape(64, 128) % 256)
    np.save(cam / "g.npy", np.full((64, 128), 7, np.uint8))
    for name in ("f.npy", "g.npy"):
        frame = decode.read_frame(cam / name)
        assert frame.dtype == np.uint8 and frame.flags.writeable and frame.flags.owndata
    assert decode.read_frame(cam / "f.npy")[0, 5] == 5


def test_an_unusable_inotify_is_exit_2_and_a_crash_is_in_the_heartbeat(
    band_models, cam, tmp_path, monkeypatch
):
    import edge.run.loop

    monkeypatch.setitem(sys.modules, "watchdog.observers.inotify", None)  # not importable
    result = run_cli("--camera-dir", str(cam), "--model", str(band_models["int8"]),
                     "--out", str(tmp_path / "a"), "--watch", "--notify", "inotify")  # fmt: skip
    assert result.exit_code == 2 and "inotify is not available" in result.output
    monkeypatch.delitem(sys.modules, "watchdog.observers.inotify")

    def crash(*args, **kwargs):
        raise RuntimeError("the interpreter died")

    monkeypatch.setattr(edge.run.loop, "run_stream", crash)
    result = run_cli(
        "--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(tmp_path / "b")
    )
    assert result.exit_code != 0
    assert (
        json.loads((tmp_path / "b" / "status.json").read_text())["state"] == "failed: RuntimeError"
    )


def test_a_paced_npz_run_and_out_of_range_labels_do_not_end_the_run(band_models, tmp_path):
    from edge.io.npz import NpzFrames

    image, truth = band_frame()
    labels = truth.copy()
    labels[0, 0] = 9  # not a class of the model
    np.savez(
        tmp_path / "eval.npz", images=np.stack([image, image]), labels=np.stack([labels, truth])
    )
    stats = run_stream(
        NpzFrames(tmp_path / "eval.npz"), Segmenter(band_models["int8"]), max_fps=1000
    )
    assert (stats.frames, stats.errors, stats.scored_frames) == (2, 0, 1)


def test_hazard_rules_that_could_never_or_always_fire_are_refused(tmp_path):
    from edge.contract.labels import MARS
    from edge.run.hazards import RegionAnalyzer, RegionConfig

    path = tmp_path / "regions.json"
    for doc, message in (
        (
            {"hazards": [{"class": "big_rock", "region": "corridor", "min_fraction": 0}]},
            "min_fraction",
        ),
        (
            {"hazards": [{"class": "big_rock", "region": "corridor", "min_fraction": 1.5}]},
            "min_fraction",
        ),
        (
            {
                "hazards": [
                    {"class": "big_rock", "region": "corridor", "min_fraction": float("nan")}
                ]
            },
            "min_fraction",
        ),
        ({"hazards": [{"class": "background", "region": "corridor"}]}, "no knowledge here"),
        ({"regions": [[0, 0], [1, 0], [1, 1]]}, "must be an object"),
    ):
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=message):
            RegionAnalyzer(RegionConfig.load(path), MARS)
