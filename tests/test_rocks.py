"""Rocks as objects, the ground plane, capture times and the annotated overlay."""

from __future__ import annotations

import json
import math
from collections import deque
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from edge.contract.labels import MARS
from edge.io.capture import capture_record, from_name
from edge.run.ground import Camera, GridSettings
from edge.run.hazards import HazardRule, RegionAnalyzer, RegionConfig
from edge.run.rocks import FrameGeometry, RockSettings, find_rocks, label_components

SOIL, ROCK = 1, 4


def flood_components(mask: np.ndarray) -> list[set]:
    """A plain breadth-first flood fill (8-connectivity): the reference."""
    seen = np.zeros_like(mask, bool)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        part, todo = set(), deque([start])
        seen[start] = True
        while todo:
            r, c = todo.popleft()
            part.add((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    q = (r + dr, c + dc)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1]:
                        if mask[q] and not seen[q]:
                            seen[q] = True
                            todo.append(q)
        found.append(part)
    return found


@pytest.mark.parametrize("seed", range(6))
def test_components_match_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(1, 30), rng.integers(1, 40))) < [0.05, 0.3, 0.5, 0.7][seed % 4]
    labels, count = label_components(mask)
    reference = flood_components(mask)
    assert count == len(reference) and ((labels > 0) == mask).all()
    ours = [set(zip(*np.nonzero(labels == n))) for n in range(1, count + 1)]
    assert sorted(map(sorted, ours)) == sorted(map(sorted, reference))
    firsts = [min(part) for part in ours]  # numbered by first pixel, row-major
    assert firsts == sorted(firsts)


def test_diagonal_pixels_join_and_a_gap_splits():
    mask = np.zeros((4, 6), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one rock
    mask[0, 4] = mask[2, 4] = True  # a row between: two
    _, count = label_components(mask)
    assert count == 3


def frame_map(shape, model_shape):
    """The pixel map of a plain resize by an integer factor."""
    fy, fx = shape[0] // model_shape[0], shape[1] // model_shape[1]
    index = np.arange(model_shape[0] * model_shape[1]).reshape(model_shape)
    return np.repeat(np.repeat(index, fy, 0), fx, 1)


def test_rocks_are_reported_in_frame_pixels_largest_first():
    small = np.full((32, 32), SOIL, np.uint8)
    small[20:26, 10:20] = ROCK  # 60 model px -> 240 frame px at 2x
    small[2:4, 2:4] = ROCK  # 4 model px -> 16 frame px: under min_area_px
    small[10:20, 25:30] = ROCK  # 50 -> 200
    top = np.full(small.shape, 230, np.uint8)
    geometry = FrameGeometry(frame_map((64, 64), (32, 32)), (32, 32))
    rocks = find_rocks(small, top, geometry, ROCK, RockSettings(None, None, 0.5, 100))
    assert [r["area_px"] for r in rocks] == [240, 200]
    assert rocks[0]["box"] == [20, 40, 39, 51] and rocks[0]["base"] == [29.5, 51]
    assert rocks[0]["centroid"] == [29.5, 45.5] and rocks[0]["confidence"] == pytest.approx(0.902)
    unsure = top.copy()
    unsure[20:26, 10:20] = 100  # under min_confidence: not rock
    assert [r["area_px"] for r in find_rocks(small, unsure, geometry, ROCK, RockSettings(None, None, 0.5, 100))] == [200]  # fmt: skip


def test_rock_probability_finds_rocks_the_arg_max_calls_soil():
    small = np.full((32, 32), SOIL, np.uint8)
    rock_p = np.zeros(small.shape, np.uint8)
    rock_p[20:30, 5:15] = 90  # p(rock) 0.35: soil wins the arg max, a hazard detector still sees it
    geometry = FrameGeometry(frame_map((32, 32), (32, 32)), (32, 32))
    top = np.full(small.shape, 160, np.uint8)
    assert find_rocks(small, top, geometry, ROCK, RockSettings(None, None, 0.5, 10)) == []
    rocks = find_rocks(small, top, geometry, ROCK, RockSettings(None, 0.3, 0.5, 10), rock_p)
    assert len(rocks) == 1 and rocks[0]["area_px"] == 100
    assert rocks[0]["confidence"] == pytest.approx(90 / 255, abs=1e-3)
    assert find_rocks(small, top, geometry, ROCK, RockSettings(None, 0.4, 0.5, 10), rock_p) == []


def test_the_object_rule_needs_a_large_enough_rock_in_the_region():
    config = RegionConfig(hazards=[HazardRule("big_rock", "corridor", None, 300)])
    analyzer = RegionAnalyzer(config, MARS)
    labels = np.full((64, 128), SOIL, np.uint8)
    labels[50:64, 50:70] = ROCK  # 280 px in the corridor: too small
    result = analyzer.analyze(labels, np.ones(labels.shape))
    assert not result["hazard"] and result["rocks"][0]["area_px"] == 280
    labels[48:64, 50:70] = ROCK  # 320 px
    result = analyzer.analyze(labels, np.ones(labels.shape))
    assert result["hazard"] and result["hazards"][0]["rocks"] == [0]
    far = np.full((64, 128), SOIL, np.uint8)
    far[0:20, 0:20] = ROCK  # large, but outside the corridor
    result = analyzer.analyze(far, np.ones(far.shape))
    assert not result["hazard"] and result["rocks"][0]["regions"] == []


def test_a_regions_file_configures_rocks_camera_and_grid(tmp_path):
    path = tmp_path / "regions.json"
    doc = {
        "hazards": [{"class": "big_rock", "region": "corridor", "min_size_m": 0.3}],
        "rocks": {"min_probability": None, "min_confidence": 0.6, "min_area_px": 20},
        "camera": {"height_m": 1.9, "pitch_deg": 30, "hfov_deg": 45, "image_size": [1024, 1024]},
        "grid": {"cell_m": 0.25, "forward_m": 6, "lateral_m": 3},
    }
    path.write_text(json.dumps(doc))
    config = RegionConfig.load(path)
    assert config.rocks == RockSettings(None, None, 0.6, 20) and config.grid.shape == (24, 24)
    settings = RegionAnalyzer(config, MARS).settings()
    assert settings["rocks"]["class"] == "big_rock" and settings["camera"]["height_m"] == 1.9
    for bad, message in (
        ({"hazards": [{"class": "big_rock", "region": "corridor", "min_size_m": 1}]}, "camera"),
        (
            {
                "hazards": [
                    {
                        "class": "big_rock",
                        "region": "corridor",
                        "min_area_px": 9,
                        "min_fraction": 0.1,
                    }
                ]
            },
            "not both",
        ),
        ({"grid": {"cell_m": 0.5}}, "needs a camera"),
        ({"camera": {"height_m": 1.9, "pitch_deg": 30}}, "hfov_deg"),
        ({"camera": {"height_m": -1, "pitch_deg": 30, "hfov_deg": 45}}, "height_m"),
        ({"rocks": {"min_probability": 1.5}}, "min_probability"),
        ({"rocks": {"size": 3}}, "unknown keys"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            RegionConfig.load(path)
    path.write_text(json.dumps({"rocks": {"class": "sand"},
                                "hazards": [{"class": "big_rock", "region": "corridor",
                                             "min_area_px": 10}]}))  # fmt: skip
    with pytest.raises(ValueError, match="rocks are made of 'sand'"):
        RegionAnalyzer(RegionConfig.load(path), MARS)


def test_the_camera_model_gives_known_ranges_and_the_horizon():
    camera = Camera(height_m=2.0, pitch_deg=30.0, hfov_deg=90.0)
    shape = (101, 101)  # the centre pixel is (50, 50); focal length 50.5 px (half the width)
    distance, bearing = camera.range_bearing(50, 50, shape)
    assert distance == pytest.approx(2.0 / math.tan(math.radians(30)))  # along the optical axis
    assert bearing == pytest.approx(0.0)
    horizon = camera.horizon_row(shape)
    assert horizon == pytest.approx(50 - 50.5 * math.tan(math.radians(30)))
    assert math.isnan(camera.range_bearing(50, horizon - 1, shape)[0])
    _, right = camera.range_bearing(90, 50, shape)
    assert right > 0  # to the right
    with pytest.raises(ValueError, match="aspect ratio"):
        Camera(2.0, 30.0, 90.0, image_size=(1024, 1024)).check_frame((64, 128))


def test_above_the_horizon_nothing_is_a_hazard_and_rocks_get_ranges():
    camera = Camera(height_m=1.9, pitch_deg=10.0, hfov_deg=45.0)
    rule = HazardRule("big_rock", "whole", None, 10)
    config = RegionConfig(regions={"whole": [[0, 0], [1, 0], [1, 1], [0, 1]]}, hazards=[rule],
                          camera=camera, grid=GridSettings(cell_m=0.5))  # fmt: skip
    analyzer = RegionAnalyzer(config, MARS)
    shape = (128, 128)
    horizon = camera.horizon_row(shape)
    assert 10 < horizon < 60
    labels = np.full(shape, SOIL, np.uint8)
    labels[0:8, 0:20] = ROCK  # up in the sky: a rock of the far field, above the horizon
    result = analyzer.analyze(labels, np.ones(shape))
    assert not result["hazard"] and result["rocks"][0].get("above_horizon") is True
    labels[110:120, 60:70] = ROCK  # near the rover
    result = analyzer.analyze(labels, np.ones(shape))
    near = next(r for r in result["rocks"] if "range_m" in r)
    expected, _ = camera.range_bearing(*near["base"], shape)
    assert near["range_m"] == pytest.approx(expected, abs=0.01) and 2 < near["range_m"] < 8
    assert result["hazard"] and result["hazards"][0]["rocks"] == [near["id"]]
    grid = result["grid"]
    assert grid["blocked_cells"] >= 1 and grid["nearest_blocked_m"] <= near["range_m"]
    assert result["_grid"].dtype == np.uint8 and result["_grid"].shape == tuple(grid["shape"])


def test_capture_time_from_exif_then_the_product_id_then_the_file(tmp_path):
    from edge.io.decode import decode_frame

    path = tmp_path / "frame.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2026:11:30 10:20:30"
    exif.get_ifd(0x8769)[36881] = "+02:00"
    exif[272] = "NAVCAM-TEST"
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(path, exif=exif)
    _, _, found = decode_frame(path)
    record = capture_record(path.name, found, 0)
    assert record["source"] == "exif" and record["time_utc"] == "2026-11-30T08:20:30.000Z"
    assert record["camera"] == "NAVCAM-TEST"
    named = capture_record("NLA_397681586EDR_F0020000AUT_04096M1.JPG", {}, 0)
    expected = datetime(2000, 1, 1, 11, 58, 55, 816000, tzinfo=timezone.utc).timestamp()
    assert named["source"] == "sclk" and named["sclk"] == 397681586
    assert named["t_unix_s"] == pytest.approx(expected + 397681586, abs=1e-3)
    assert named["camera"] == "navcam_left_a" and named["time_utc"].startswith("2012-08-08")
    plain = capture_record("frame_0001.png", {}, 1_700_000_000_000_000_000)
    assert plain["source"] == "file_mtime" and plain["t_unix_s"] == 1_700_000_000.0
    assert "camera" not in plain and capture_record("x.png", None, None) is None
    assert from_name("NRB_450140267EDR_X")["camera"] == "navcam_right_b"
    assert from_name("frame_NLA_397681586") == {}


def test_the_annotated_overlay_boxes_rocks_and_says_the_state():
    from edge.contract.labels import overlay
    from edge.io.annotate import HAZARD_RED, annotate

    image = np.full((128, 128), 90, np.uint8)
    labels = np.full(image.shape, SOIL, np.uint8)
    plain = overlay(image, labels, MARS)
    record = {
        "hazard": True,
        "hazards": [{"class": "big_rock", "region": "corridor", "rocks": [0], "hazard": True}],
        "rocks": [{"id": 0, "box": [40, 90, 70, 110], "area_px": 600, "range_m": 3.2}],
    }
    drawn = annotate(plain, record, {"corridor": [[0.25, 1], [0.75, 1], [0.5, 0.5]]}, MARS)
    assert drawn.shape == plain.shape and (drawn != plain).any()
    assert (drawn[100, 40] == HAZARD_RED).all()  # the hazard rock's box edge
    clear = annotate(plain, {"hazard": False, "hazards": [], "rocks": []}, {}, MARS)
    assert not (clear == HAZARD_RED).all(axis=-1).any()  # no red anywhere when clear


def test_files_that_are_not_frames_are_named_and_counted(band_models, tmp_path):
    from click.testing import CliRunner

    from edge.cli import main
    from tests.test_edge_run import write_png

    cam = tmp_path / "cam"
    cam.mkdir()
    write_png(cam / "f0.png", np.full((64, 128), 60, np.uint8))
    for name in ("a.FITS", "b.fits", "notes.txt", "README", ".hidden.xyz", "f1.png.part", "x.LBL"):
        (cam / name).write_bytes(b"x")
    (cam / "sub.d").mkdir()
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--camera-dir", str(cam), "--model",
                                       str(band_models["int8"]), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files"] == {"(no suffix)": 1, ".fits": 2, ".txt": 1}
    assert "skipped 4 files that are not frames: 1 (no suffix), 2 .fits, 1 .txt" in result.output


def test_every_rock_a_rule_fired_on_is_listed_and_background_is_never_rock():
    from edge.run.hazards import MAX_ROCKS

    config = RegionConfig(regions={"bottom": [[0, 0.9], [1, 0.9], [1, 1], [0, 1]]},
                          hazards=[HazardRule("big_rock", "bottom", None, 4)],
                          rocks=RockSettings(None, 0.2, 0.5, 4))  # fmt: skip
    analyzer = RegionAnalyzer(config, MARS)
    small = np.full((64, 128), SOIL, np.uint8)
    rock_p = np.zeros(small.shape, np.uint8)
    for k in range(MAX_ROCKS + 2):  # 22 rocks up top, larger ones first
        rock_p[2 : 2 + 3 + (k < MAX_ROCKS), 5 * k : 5 * k + 3] = 200
    rock_p[61:63, 60:62] = 200  # the smallest, low in the frame: the one the rule fires on
    small[20:30, 0:10] = 0  # background ...
    rock_p[20:30, 0:10] = 250  # ... however likely rock: sky or rover hardware, never a rock
    identity = np.arange(small.size).reshape(small.shape)
    result = analyzer.analyze_mapped(small, np.full(small.shape, 200, np.uint8), identity, rock_p)
    assert result["rocks_total"] == MAX_ROCKS + 3
    fired = result["hazards"][0]["rocks"]
    assert result["hazard"] and len(fired) == 1 and fired[0] >= MAX_ROCKS
    assert fired[0] in {r["id"] for r in result["rocks"]}  # listed although not among the largest
    assert len(result["rocks"]) == MAX_ROCKS + 1
    assert all(r["box"][1] != 20 for r in result["rocks"])  # nothing from the background patch


def test_a_frame_the_camera_model_does_not_fit_is_one_bad_frame(band_models, tmp_path):
    from click.testing import CliRunner

    from edge.cli import main
    from tests.test_edge_run import write_png

    cam = tmp_path / "cam"
    cam.mkdir()
    write_png(cam / "a_wide.png", np.full((64, 128), 60, np.uint8))
    write_png(cam / "b_square.png", np.full((64, 64), 60, np.uint8))
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"camera": {"height_m": 1.9, "pitch_deg": 30, "hfov_deg": 45,
                                              "image_size": [128, 64]}}))  # fmt: skip
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--camera-dir", str(cam), "--model",
                                       str(band_models["int8"]), "--out", str(out),
                                       "--regions", str(regions)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "telemetry.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok", "error"]
    assert "aspect ratio" in lines[1]["error"]


def test_the_rock_probability_is_the_softmax_of_the_int8_logits(band_models):
    from edge.segmenter import Segmenter

    segmenter = Segmenter(band_models["logits"])
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (64, 128)).astype(np.uint8)
    seg = segmenter.segment(frame, with_probabilities=True, class_probability=ROCK)
    expected = np.rint(seg.probabilities[..., ROCK] * 255)
    assert np.abs(seg.model_class_probability.astype(int) - expected).max() <= 1
    assert 0 < seg.model_class_probability.max() and seg.model_top is None  # not asked for
