"""A restart of `edge-seg run` on the same output and camera folder resumes: no frame handled
twice, none lost, also after a kill -9 between a frame's outputs and its telemetry line."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main
from tests.conftest import band_frame
from tests.test_edge_run import edge_seg, wait_for, write_png


def make_camera(folder: Path, n: int, seed: int = 5) -> list[str]:
    """``n`` band frames f00.png.., and one broken file among them; returns the file names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(folder / f"f{i:02d}.png", band_frame(rng)[0])
    (folder / "f03_broken.png").write_bytes(b"not a png")
    return sorted(p.name for p in folder.iterdir())


def run(model: Path, cam: Path, out: Path, *extra: str):
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(cam), "--model", str(model), "--out", str(out), *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def resumed(summary: dict) -> tuple[str, int] | None:
    """(the last frame recorded, frames skipped) of a resumed run's summary."""
    r = summary["resumed"]
    return None if r is None else (r["after"], r["skipped"])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "telemetry.jsonl").read_text().splitlines()]


def test_a_restart_skips_the_frames_already_handled(band_models, tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    names = make_camera(cam, 6)
    first = run(band_models["int8"], cam, out, "--limit", "3")
    assert first["resumed"] is None and first["frames"] + first["errors"] == 3
    second = run(band_models["int8"], cam, out)
    assert resumed(second) == (names[2], 3)
    lines = records(out)
    assert [line["source"] for line in lines] == names  # each once, in order, the bad one too
    assert [line["frame_index"] for line in lines] == list(range(len(names)))
    assert {line["run_id"] for line in lines} == {first["run_id"]}
    nothing_new = run(band_models["int8"], cam, out)  # exit 0: a restart with nothing to do
    assert nothing_new["frames"] == 0 and nothing_new["resumed"]["skipped"] == len(names)
    again = run(band_models["int8"], cam, out, "--reprocess")
    assert again["resumed"] is None and again["config"]["reprocess"]
    assert Counter(line["source"] for line in records(out)) == {name: 2 for name in names}


def test_a_frame_cut_off_before_its_line_is_done_once_more(band_models, tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    names = make_camera(cam, 5)
    run(band_models["int8"], cam, out, "--limit", "4")
    # a kill -9 after the 4th frame's mask was written and before its line: the line is missing
    telemetry = out / "telemetry.jsonl"
    kept = telemetry.read_bytes().splitlines(keepends=True)[:3]
    telemetry.write_bytes(b"".join(kept))
    assert (out / "masks" / f"{Path(names[3]).stem}.png").exists()
    summary = run(band_models["int8"], cam, out)
    assert resumed(summary) == (names[2], 3)
    assert [line["source"] for line in records(out)] == names


def test_a_frame_rewritten_under_the_last_name_is_taken_again(band_models, tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    make_camera(cam, 2)
    (cam / "f03_broken.png").unlink()
    run(band_models["int8"], cam, out)
    last = cam / "f01.png"
    write_png(last, band_frame(np.random.default_rng(11))[0])
    os.utime(last, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new write, a new time
    summary = run(band_models["int8"], cam, out)
    assert resumed(summary) == ("f01.png", 1) and summary["frames"] == 1
    assert [line["source"] for line in records(out)] == ["f00.png", "f01.png", "f01.png"]


def test_another_camera_folder_on_the_same_output_skips_nothing(band_models, tmp_path):
    out = tmp_path / "out"
    make_camera(tmp_path / "cam1", 3)
    make_camera(tmp_path / "cam2", 3, seed=6)  # the same names
    run(band_models["int8"], tmp_path / "cam1", out)
    summary = run(band_models["int8"], tmp_path / "cam2", out)
    assert summary["resumed"] is None and summary["frames"] + summary["errors"] == 4


def test_frames_handled_but_not_yet_consumed_are_consumed_on_resume(band_models, tmp_path):
    cam, out, done = tmp_path / "cam", tmp_path / "out", tmp_path / "done"
    names = make_camera(cam, 4)
    run(band_models["int8"], cam, out, "--limit", "2")  # as if killed before moving them
    summary = run(band_models["int8"], cam, out, "--move-consumed", str(done))
    assert summary["resumed"]["skipped"] == 2
    left = sorted(p.name for p in cam.iterdir())
    assert left == ["f03_broken.png"]  # an unreadable frame stays for a rewrite
    assert sorted(p.name for p in done.iterdir()) == [n for n in names if n != "f03_broken.png"]


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_a_random_moment_loses_no_frame_and_repeats_none(band_models, tmp_path, seed):
    """The real thing: SIGKILL a run mid-stream at a random moment, restart it, compare."""
    cam, out = tmp_path / "cam", tmp_path / "out"
    names = make_camera(cam, 40, seed=seed)
    delay = np.random.default_rng(seed).uniform(0.0, 0.3)
    args = ("run", "--camera-dir", str(cam), "--model", str(band_models["int8"]),
            "--out", str(out), "--max-fps", "60", "--heartbeat", "0")  # fmt: skip
    proc = edge_seg(*args)
    try:
        assert wait_for(lambda: (out / "telemetry.jsonl").exists()
                        and (out / "telemetry.jsonl").stat().st_size > 0)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "summary.json").exists()  # killed: no summary
    before = len(records(out))
    assert 0 < before < len(names)
    summary = run(band_models["int8"], cam, out, "--max-fps", "1000")
    assert summary["resumed"]["skipped"] == before
    assert [line["source"] for line in records(out)] == names


def test_a_resumed_listing_keeps_only_the_frames_after_the_floor(tmp_path):
    """A restart on a folder of a million handled frames must not hold a million names."""
    from edge.io.camera import CameraDir
    from edge.run.resume import ResumePoint

    cam = tmp_path / "cam"
    names = make_camera(cam, 50)
    mark = names[30]
    point = ResumePoint(mark, {mark: ((cam / mark).stat().st_mtime_ns, True)}, mark, 1)
    source = CameraDir(cam)
    listed = source._listing(resume=point)
    assert [p.name for p, _ in listed] == names[30:]  # the floor itself: judged by its line
    assert source.skipped == 30
    source = CameraDir(cam, resume=point)
    assert [f.path.name for f in source] == names[31:] and source.skipped == 31


def write_lines(path: Path, cam: Path, sources: list[str], status: str = "ok") -> None:
    folder = str(cam.resolve())
    with open(path, "a") as handle:
        for source in sources:
            handle.write(json.dumps({"camera_dir": folder, "source": source, "status": status}))
            handle.write("\n")


def test_frames_taken_out_of_name_order_are_judged_by_the_lines_not_the_last_one(tmp_path):
    """Following a folder, a half-written x1 waits while x2 goes ahead: killed after x2's line,
    the restart must do x1 (not skip it as older than the last line) and skip x2."""
    from edge.run.resume import resume_point

    cam, telemetry = tmp_path / "cam", tmp_path / "telemetry.jsonl"
    cam.mkdir()
    write_lines(telemetry, cam, [f"a{i}" for i in range(10)] + ["x2"])
    folder = str(cam.resolve())
    point = resume_point(telemetry, folder, None, out_of_order=2)
    assert point.last == "x2" and point.floor == "a0"  # from the lines settled long enough
    assert point.done("x2", None) and not point.done("x1", None) and not point.before_floor("x1")
    assert point.before_floor("a") and not point.disposable("x1")
    # read from its end, the file is cut to its last lines; the floor leaves out both edges
    point = resume_point(telemetry, folder, None, max_lines=8, out_of_order=2)
    assert point.lines == 8 and point.floor == "a5" and point.done("a3", None)
    # lines of another folder do not count, nor do old lines without a folder unless run.json
    write_lines(telemetry, tmp_path / "elsewhere", ["z9"])
    assert resume_point(telemetry, folder, None).last == "x2"
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"source": "b1", "status": "ok"}) + "\n")
    assert resume_point(old, folder, None) is None
    assert resume_point(old, folder, folder).done("b1", None)


def test_an_empty_start_on_another_folder_does_not_borrow_the_first_ones_lines(
    band_models, tmp_path
):
    """camA's lines must never make a later start on camB skip camB's frames, even after a
    start on camB that wrote no line recorded camB in run.json."""
    out = tmp_path / "out"
    make_camera(tmp_path / "camA", 3)
    run(band_models["int8"], tmp_path / "camA", out)
    (tmp_path / "camB").mkdir()
    result = CliRunner().invoke(main, ["run", "--camera-dir", str(tmp_path / "camB"),
                                       "--model", str(band_models["int8"]), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 3  # no frame
    assert "exit 3: the input held no frame" in result.output  # said, not only returned
    names = make_camera(tmp_path / "camB", 3, seed=9)
    summary = run(band_models["int8"], tmp_path / "camB", out)
    assert summary["resumed"] is None and summary["frames"] + summary["errors"] == len(names)


def test_a_restart_keeps_the_run_on_its_model_and_says_when_it_changes(
    band_models, tmp_path, caplog
):
    """--precision auto times the files at every start; a run restarted by its supervisor must
    not flip between int8 and float32 on a timing that came out the other way."""
    import shutil

    folder = tmp_path / "set"
    folder.mkdir()
    for p in ("int8", "float32"):
        shutil.copy(band_models[p], folder / f"model_{p}.tflite")
    models = {"float32": {"pixel_agreement": 1.0}, "int8": {"pixel_agreement": 0.999}}
    (folder / "parity.json").write_text(json.dumps({"models": models}))
    cam, out = tmp_path / "cam", tmp_path / "out"
    make_camera(cam, 2)
    run(folder, cam, out, "--precision", "float32", "--reprocess")
    state = json.loads((out / "run.json").read_text())
    assert state["model"]["precision"] == "float32"
    assert state["model"]["file"] == str((folder / "model_float32.tflite").resolve())
    kept = run(folder, cam, out, "--reprocess")  # auto: the earlier start's file, untimed
    assert kept["execution"]["precision"]["chosen_by"] == "kept from the run's earlier start"
    assert {r["model"]["precision"] for r in records(out) if "model" in r} == {"float32"}
    with caplog.at_level("WARNING"):
        run(folder, cam, out, "--precision", "int8", "--reprocess")
    assert "it now runs" in caplog.text and "(int8, sha256" in caplog.text
    assert json.loads((out / "run.json").read_text())["model"]["precision"] == "int8"
    assert records(out)[-1]["model"]["precision"] == "int8"
    # the timing depended on the thread count: another one times the files again
    threads = json.loads((out / "run.json").read_text())["model"]["threads"]
    other = run(folder, cam, out, "--reprocess", "--threads", str(3 - threads))
    assert other["execution"]["precision"]["chosen_by"] == "timing"


def test_a_restart_keeps_the_earlier_summary_and_totals_the_run(band_models, tmp_path):
    """A restart that finds every frame handled writes a summary of no frame: the earlier
    start's summary is kept in summaries/, and run_totals counts the run as a whole."""
    rng = np.random.default_rng(2)
    cam, labels, out = tmp_path / "cam", tmp_path / "labels", tmp_path / "out"
    cam.mkdir()
    labels.mkdir()
    for i in range(3):
        image, truth = band_frame(rng)
        write_png(cam / f"f{i}.png", image)
        write_png(labels / f"f{i}.png", truth)
    first = run(band_models["int8"], cam, out, "--labels", str(labels))
    assert first["frames"] == 3 and first["miou"] is not None
    assert first["run_totals"]["frames"] == 3 and first["run_totals"]["starts"] == 1
    second = run(band_models["int8"], cam, out, "--labels", str(labels))
    assert second["frames"] == 0 and second["miou"] is None  # everything was handled
    (kept_file,) = (out / "summaries").iterdir()
    kept = json.loads(kept_file.read_text())
    assert kept == first and kept_file.name.startswith("summary-000000-")
    totals = second["run_totals"]
    assert (totals["starts"], totals["starts_summarised"], totals["frames"]) == (2, 2, 3)
    assert totals["miou"] == pytest.approx(first["miou"], abs=1e-4)
    assert totals["since_utc"] == first["started_utc"]
    assert totals["models"] == [first["model"]["sha256"][:16]]
    redone = run(band_models["int8"], cam, out, "--labels", str(labels), "--reprocess")
    assert redone["run_totals"]["frames"] == 3  # the frames done again count once
    assert redone["run_totals"]["starts_summarised"] == 1
    assert len(list((out / "summaries").iterdir())) == 2
    # a summary that does not add up is left out, never fatal; and it is kept all the same
    broken = json.loads((out / "summary.json").read_text())
    broken["run_totals"]["confusion"] = [[1, 2], [3, 4]]  # another label set's size
    (out / "summary.json").write_text(json.dumps(broken))
    fourth = run(band_models["int8"], cam, out, "--labels", str(labels))
    assert fourth["run_totals"]["starts_summarised"] == 1 and fourth["run_totals"]["starts"] == 4
    assert len(list((out / "summaries").iterdir())) == 3
