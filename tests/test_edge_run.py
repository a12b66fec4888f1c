"""The rover loop with the real LiteRT interpreter: frames in, masks/overlays/telemetry out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main
from edge.io.camera import CameraDir
from edge.segmenter import Segmenter
from tests.conftest import band_frame
from tests.test_edge_import import run_without_tensorflow


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def camera(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A camera folder of 4 easy frames (PNG, .npy, colour PNG, PGM), their labels, the truths."""
    rng = np.random.default_rng(7)
    frames_dir, labels_dir = tmp_path / "cam", tmp_path / "labels"
    frames_dir.mkdir()
    labels_dir.mkdir()
    truths = {}
    for name, kind in (("f000", "png"), ("f001", "npy"), ("f002", "rgb"), ("f003", "pgm")):
        image, labels = band_frame(rng)
        truths[name] = labels
        write_png(labels_dir / f"{name}.png", labels)
        if kind == "png":
            write_png(frames_dir / f"{name}.png", image)
        elif kind == "npy":
            np.save(frames_dir / f"{name}.npy", image.astype(np.float32) / 255.0)
        elif kind == "rgb":
            write_png(frames_dir / f"{name}.png", np.repeat(image[..., None], 3, axis=-1))
        else:
            Image.fromarray(image).save(frames_dir / f"{name}.pgm")
    return frames_dir, labels_dir, truths


def add_bad_frames(frames_dir: Path) -> int:
    """Corrupt, truncated, empty and non-image files; returns how many."""
    good = (frames_dir / "f000.png").read_bytes()
    (frames_dir / "f010_truncated.png").write_bytes(good[: len(good) // 2])
    (frames_dir / "f011_empty.png").write_bytes(b"")
    (frames_dir / "f012_text.jpg").write_text("this is not a jpeg")
    (frames_dir / "f013_bad.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(frames_dir / "f014_wrong_shape.npy", np.zeros((2, 3, 4, 5)))
    return 5


def test_int8_and_float32_give_the_same_class_map(band_models):
    image, truth = band_frame(np.random.default_rng(0))
    maps = {
        p: Segmenter(band_models[p], threads=2).segment(image).labels for p in ("float32", "int8")
    }
    assert Segmenter(band_models["int8"]).quantized
    np.testing.assert_array_equal(maps["int8"], maps["float32"])
    np.testing.assert_array_equal(maps["float32"], truth)


def test_run_writes_complete_masks_overlays_and_telemetry(band_models, camera, tmp_path):
    frames_dir, labels_dir, truths = camera
    bad = add_bad_frames(frames_dir)
    (frames_dir / ".hidden.png").write_bytes(b"not read")
    (frames_dir / "f020.png.part").write_bytes(b"still being written")
    (frames_dir / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", "--camera-dir", str(frames_dir), "--model", str(band_models["int8"]),
         "--out", str(out), "--overlay", "--labels", str(labels_dir), "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["errors"], summary["dropped"]) == (4, bad, 0)
    assert summary["miou"] == pytest.approx(1.0)
    assert summary["latency_ms"]["invoke"]["p99"] >= summary["latency_ms"]["invoke"]["p50"] > 0
    # the process's CPU, every thread, per segmented frame
    assert summary["cpu_s"] > 0
    assert summary["cpu_ms_per_frame"] == pytest.approx(summary["cpu_s"] * 1e3 / 4, abs=0.2)
    assert "p99" in result.output and "mIoU 1.0000" in result.output and "ms/frame" in result.output

    for name, truth in truths.items():
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(mask, truth)
        colour = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert colour.shape == (64, 128, 3)
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{n}.png" for n in sorted(truths)]
    records = [json.loads(line) for line in (out / "telemetry.jsonl").read_text().splitlines()]
    assert len(records) == 4 + bad
    errors = [r for r in records if r["status"] == "error"]
    assert {r["frame"] for r in errors} == {
        "f010_truncated", "f011_empty", "f012_text", "f013_bad", "f014_wrong_shape"
    }  # fmt: skip
    ok = next(r for r in records if r["frame"] == "f000")
    assert set(ok["timings_ms"]) >= {"read", "preprocess", "invoke", "postprocess", "write"}
    assert sum(ok["class_fractions"].values()) == pytest.approx(1.0, abs=1e-3)


def test_other_frame_sizes_are_resized_back(band_models, tmp_path):
    frames_dir = tmp_path / "cam"
    frames_dir.mkdir()
    image, truth = band_frame()
    write_png(frames_dir / "big.png", np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(frames_dir), "--model", str(band_models["float32"]),
               "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "big.png"))
    assert mask.shape == (128, 256)
    assert (mask[::2, ::2] == truth).mean() > 0.95  # all but the block edges


@pytest.mark.parametrize("problem", ["no model", "not a model", "wrong shape", "no folder"])
def test_bad_model_or_folder_is_one_line_and_exit_2(problem, band_models, camera, tmp_path):
    frames_dir = camera[0]
    (tmp_path / "fake.tflite").write_bytes(b"\x89PNG\r\n\x1a\n not a flatbuffer at all")
    model = {
        "no model": tmp_path / "missing.tflite",
        "not a model": tmp_path / "fake.tflite",
        "wrong shape": band_models["rgb"],
        "no folder": band_models["int8"],
    }[problem]
    if problem == "no folder":
        frames_dir = tmp_path / "nowhere"
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(frames_dir), "--model", str(model),
               "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("Error:") and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_edge_seg_run_without_tensorflow(band_models, camera, tmp_path):
    frames_dir, labels_dir, _ = camera
    out = tmp_path / "out"
    result = run_without_tensorflow(
        f"""
        from edge.cli import main
        try:
            main(["run", "--camera-dir", {str(frames_dir)!r}, "--model", {str(band_models["int8"])!r},
                  "--out", {str(out)!r}, "--labels", {str(labels_dir)!r}])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        assert not any(k.split(".")[0] in {{"tensorflow", "keras"}} for k in sys.modules)
        print("ran without tensorflow")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ran without tensorflow" in result.stdout
    assert json.loads((out / "summary.json").read_text())["miou"] == pytest.approx(1.0)


def edge_seg(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_watch_picks_up_a_frame_written_after_start(band_models, camera, tmp_path):
    frames_dir, _, truths = camera
    out = tmp_path / "out"
    proc = edge_seg(
        "run", "--camera-dir", str(frames_dir), "--model", str(band_models["int8"]),
        "--out", str(out), "--watch", "--idle-timeout", "4", "--threads", "1",
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(list((out / "masks").glob("*.png"))) == len(truths))
        # A camera writing slowly: half the file, a pause, the rest. It must not be read early.
        image, truth = band_frame(np.random.default_rng(11))
        write_png(tmp_path / "late.png", image)
        payload = (tmp_path / "late.png").read_bytes()
        with open(frames_dir / "late.png", "wb") as handle:
            handle.write(payload[:100])
            handle.flush()
            time.sleep(0.5)
            handle.write(payload[100:])
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 5, stderr  # the idle timeout ended it
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["errors"]) == (len(truths) + 1, 0), stderr
    assert summary["stopped_by"] == "idle timeout" and summary["config"]["notify"] == "inotify"
    np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / "late.png")), truth)


def test_sigterm_ends_a_watch_with_the_summary(band_models, camera, tmp_path):
    frames_dir, _, truths = camera
    out = tmp_path / "out"
    proc = edge_seg(
        "run", "--camera-dir", str(frames_dir), "--model", str(band_models["float32"]),
        "--out", str(out), "--watch",
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(list((out / "masks").glob("*.png"))) == len(truths))
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGTERM" in stdout and "p99" in stdout
    assert json.loads((out / "summary.json").read_text())["stopped_by"] == "SIGTERM"


@pytest.mark.parametrize("notify", ["inotify", "poll"])
def test_a_slow_model_drops_the_oldest_live_frames(tmp_path, notify):
    frames_dir = tmp_path / "cam"
    frames_dir.mkdir()
    image, _ = band_frame()
    write_png(frames_dir / "a000.png", image)
    source = CameraDir(frames_dir, watch=True, max_queue=1, idle_timeout=0.5, notify=notify)
    stream = iter(source)
    assert next(stream).name == "a000"
    for i in range(1, 6):  # the camera writes five frames while the model is busy
        write_png(frames_dir / f"a{i:03d}.png", image)
    time.sleep(0.3)  # the model is still busy: every event is in
    assert next(stream).name == "a005"  # only the newest is kept
    assert source.dropped == 4
    assert list(stream) == []  # idle timeout
    assert source.idle


def test_incomplete_files_wait_and_stalled_ones_are_reported(tmp_path):
    frames_dir = tmp_path / "cam"
    frames_dir.mkdir()
    image, _ = band_frame()
    payload = write_png(tmp_path / "whole.png", image).read_bytes()
    (frames_dir / "a_stalled.png").write_bytes(
        payload[: len(payload) // 2]
    )  # the camera died mid-write
    source = CameraDir(frames_dir, watch=True, poll_s=0.02, grace_s=0.4, idle_timeout=0.5)
    started = time.monotonic()
    frames = list(source)
    assert [f.name for f in frames] == ["a_stalled"]
    assert frames[0].error and "truncated" in frames[0].error
    assert time.monotonic() - started >= 0.4


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".pgm", ".npy"])
def test_completeness_check_per_format(suffix, tmp_path):
    from edge.io.decode import looks_complete

    image, _ = band_frame()
    path = tmp_path / f"frame{suffix}"
    if suffix == ".npy":
        np.save(path, image)
    else:
        Image.fromarray(image).save(path)
    payload = path.read_bytes()
    assert looks_complete(path)
    path.write_bytes(payload[: len(payload) - 3])
    assert not looks_complete(path)
    path.write_bytes(b"")
    assert not looks_complete(path)


def test_the_closing_line_names_summary_json_only_when_it_was_written(band_models, tmp_path):
    from edge.run.driver import RoverRun, RunOptions, StartError

    (tmp_path / "cam").mkdir()
    opts = RunOptions(camera_dir=tmp_path / "cam", model=band_models["int8"], out=tmp_path / "o")
    rover = RoverRun(opts, say=lambda line: None)
    assert rover.outputs(True).endswith("(masks/, telemetry.jsonl, summary.json, run.json, "
                                        "status.json)")  # fmt: skip
    assert rover.outputs(False).endswith(
        "(masks/, telemetry.jsonl, run.json, status.json)"
    )  # e.g. after a full disk
    with pytest.raises(StartError, match="--idle-timeout only applies with --watch"):
        RoverRun(RunOptions(camera_dir=tmp_path / "cam", idle_timeout=1.0))


def test_a_folder_of_only_bad_frames_exits_4_and_says_why(band_models, tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    (cam / "a.png").write_bytes(b"not a png")
    (cam / "b.png").write_bytes(b"")
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(cam), "--model", str(band_models["int8"]),
               "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 4
    assert "exit 4: none of the 2 frames could be segmented" in result.output
