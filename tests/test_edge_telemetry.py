"""What the rover's autonomy consumes: regions, hazards, confidence, self-describing telemetry."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.contract.labels import MARS
from edge.contract.metrics import class_fractions
from edge.run.hazards import (
    DEFAULT_HAZARD_AREA_PX,
    DEFAULT_REGIONS,
    HazardRule,
    RegionAnalyzer,
    RegionConfig,
)
from edge.run.loop import RunStats, StatusLine
from tests.conftest import BAND_CENTRES
from tests.test_edge_run import edge_seg, wait_for, write_png

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).resolve().parents[1] / "edge" / "schemas"
SOIL, ROCK = 1, 4


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def terrain(rock_box: tuple[int, int, int, int] | None = None, shape=(64, 128)) -> np.ndarray:
    """All soil, with big rock in ``rock_box`` = (top, bottom, left, right)."""
    labels = np.full(shape, SOIL, np.uint8)
    if rock_box:
        top, bottom, left, right = rock_box
        labels[top:bottom, left:right] = ROCK
    return labels


def test_region_fractions_and_the_hazard_rule_have_known_answers():
    # a rule on the share of the corridor (the default rule is on rocks: tests/test_rocks.py)
    analyzer = RegionAnalyzer(RegionConfig(hazards=[HazardRule("big_rock", "corridor")]), MARS)
    corridor = analyzer.masks((64, 128))["corridor"]
    near = analyzer.masks((64, 128))["near_field"]
    assert near[48:].all() and not near[:47].any()  # the bottom quarter
    assert corridor[63, 40:88].all() and not corridor[20].any()  # wide at the bottom, none above
    clear = analyzer.analyze(terrain(), np.ones((64, 128)))
    assert clear["regions"]["near_field"]["soil"] == 1.0 and not clear["hazard"]
    rock = terrain((56, 64, 56, 72))  # 8x16 = 128 px, all inside the corridor
    assert corridor[56:64, 56:72].all()
    found = analyzer.analyze(rock, np.ones((64, 128)))
    expected = 128 / corridor.sum()
    assert found["hazards"][0]["fraction"] == pytest.approx(expected, abs=1e-4) and found["hazard"]
    assert found["regions"]["near_field"]["big_rock"] == pytest.approx(128 / near.sum(), abs=1e-4)
    outside = analyzer.analyze(terrain((0, 16, 0, 32)), np.ones((64, 128)))  # up in the sky corner
    assert not outside["hazard"] and outside["hazards"][0]["fraction"] == 0.0
    unsure = np.ones((64, 128))
    unsure[56:64, 56:72] = 0.3  # the rock pixels are not confident: unknown, not a hazard
    assert not analyzer.analyze(rock, unsure)["hazard"]
    assert analyzer.analyze(rock, unsure)["confidence"]["low_confidence_fraction"] == pytest.approx(
        128 / (64 * 128), abs=1e-4
    )


def test_a_regions_file_sets_regions_thresholds_and_rules(tmp_path):
    path = tmp_path / "regions.json"
    doc = {
        "regions": {"left": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]},
        "hazards": [{"class": "sand", "region": "left", "min_fraction": 0.5}],
        "min_confidence": 0.0,
    }
    path.write_text(json.dumps(doc))
    analyzer = RegionAnalyzer(RegionConfig.load(path), MARS)
    labels = terrain()
    labels[:, :40] = 3  # sand on 40 of the left 64 columns
    result = analyzer.analyze(labels, None)
    assert result["hazard"] and set(result["regions"]) == {"left"} and "confidence" not in result
    for bad, message in (
        ({"hazards": [{"class": "lava", "region": "corridor"}]}, "hazard class 'lava'"),
        ({"hazards": [{"class": "sand", "region": "moon"}]}, "unknown region 'moon'"),
        ({"regions": {"x": [[0, 0], [2, 0], [0, 1]]}}, "fractions of the frame"),
        ({"colour": "red"}, "unknown keys"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            RegionAnalyzer(RegionConfig.load(path), MARS)
    assert RegionConfig().rules(MARS) == [
        HazardRule("big_rock", "corridor", None, DEFAULT_HAZARD_AREA_PX)
    ]
    assert set(DEFAULT_REGIONS) == {"near_field", "corridor"}


def band_terrain(rock: bool) -> tuple[np.ndarray, np.ndarray]:
    """A frame the band model segments exactly: soil grey, with a big-rock-grey patch ahead."""
    labels = terrain((48, 64, 48, 80) if rock else None)  # 512 px: over the default rock size
    values = np.round(np.array(BAND_CENTRES) * 255).astype(np.uint8)
    return values[labels], labels


@pytest.fixture
def run_out(band_models, tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    for i, rock in enumerate([False, True, False, True, True]):
        write_png(cam / f"f{i}.png", band_terrain(rock)[0])
    (cam / "f9_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", "--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    return cam, out


def test_telemetry_and_summary_follow_their_schemas(run_out):
    _, out = run_out
    lines = [json.loads(line) for line in (out / "telemetry.jsonl").read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, schema("telemetry"))
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, schema("summary"))
    jsonschema.validate(json.loads((out / "status.json").read_text()), schema("status"))
    ok = [line for line in lines if line["status"] == "ok"]
    assert [line["hazard"] for line in ok] == [False, True, False, True, True]
    assert summary["hazard_frames"] == 3 and summary["model"]["classes"][4] == "big_rock"
    rule = {"class": "big_rock", "region": "corridor", "min_area_px": DEFAULT_HAZARD_AREA_PX}
    assert summary["regions"]["hazards"] == [rule]  # the default rule, as applied
    rocks = [line["rocks"] for line in ok]
    assert [len(r) for r in rocks] == [0, 1, 0, 1, 1]
    assert rocks[1][0]["box"] == [48, 48, 79, 63] and rocks[1][0]["area_px"] == 512
    assert rocks[1][0]["regions"] == ["near_field", "corridor"]
    assert ok[1]["hazards"][0]["rocks"] == [0]
    assert {line["run_id"] for line in lines} == {summary["run_id"]}
    assert [line["frame_index"] for line in lines] == list(range(6))
    assert all(line["model"]["sha256"] == summary["model"]["sha256"][:16] for line in lines)
    assert summary["software"]["marsseg_edge"] and summary["software"]["litert"]
    # which kernels ran and why (the default --kernels auto), the CPU named
    execution = summary["execution"]
    assert execution["kernels"] in ("xnnpack", "xnnpack-no-amx") and execution["chosen_by"]
    assert execution["cpu"]["int8_isa"] and execution["cpu"]["model"]


def test_the_frame_index_continues_across_restarts(band_models, run_out, tmp_path):
    cam, out = run_out
    first = json.loads((out / "summary.json").read_text())
    for path in cam.iterdir():
        path.unlink()
    write_png(cam / "g0.png", band_terrain(False)[0])
    result = CliRunner().invoke(
        main,
        ["run", "--camera-dir", str(cam), "--model", str(band_models["int8"]), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    last = json.loads((out / "telemetry.jsonl").read_text().splitlines()[-1])
    again = json.loads((out / "summary.json").read_text())
    assert last["frame_index"] == 6 and last["run_id"] == first["run_id"] and again["restarts"] == 1


def test_the_heartbeat_beats_while_no_frame_comes(band_models, tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    proc = edge_seg("run", "--camera-dir", str(cam), "--model", str(band_models["int8"]),
                    "--out", str(out), "--watch", "--heartbeat", "0.2", "--idle-timeout", "2")  # fmt: skip
    try:
        assert wait_for(lambda: (out / "status.json").exists())
        first = json.loads((out / "status.json").read_text())
        time.sleep(0.6)
        second = json.loads((out / "status.json").read_text())
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert second["t_unix_s"] > first["t_unix_s"] and second["state"] == "running"
    assert second["frames"] == 0 and second["last_frame_age_s"] is None
    final = json.loads((out / "status.json").read_text())
    assert final["state"] == "stopped: idle timeout" and proc.returncode == 5, stderr


def test_version_and_log_level(band_models, tmp_path):
    version = CliRunner().invoke(main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("edge-seg ")
    cam = tmp_path / "cam"
    cam.mkdir()
    write_png(cam / "a.png", band_terrain(False)[0])
    quiet = edge_seg("--log-level", "error", "run", "--camera-dir", str(cam), "--model",
                     str(band_models["int8"]), "--out", str(tmp_path / "o"))  # fmt: skip
    _, stderr = quiet.communicate(timeout=60)
    assert quiet.returncode == 0 and "INFO" not in stderr


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_warnings_never_garble_the_status_line():
    stream = FakeTerminal()
    status = StatusLine(stream, every_s=0)
    logger = logging.getLogger("test.status")
    logger.propagate = False
    logger.addHandler(status.log_handler(logging.Formatter("%(levelname)s %(message)s")))
    stats = RunStats()
    stats.frames = 7
    status(stats)
    logger.warning("a frame was bad")
    text = stream.getvalue()
    status_text = text[text.index("frames 7") : text.index("dropped 0") + len("dropped 0")]
    # the warning is on a line of its own, after the status was cleared, and the status returns
    assert f"\r\x1b[KWARNING a frame was bad\n{status_text}" in text


def test_a_model_without_a_background_target_is_flagged(band_models, tmp_path, caplog):
    from edge.contract.labels import MARS as labels
    from edge.contract.metadata import ModelMetadata
    from edge.contract.preprocess import Preprocessing

    model = tmp_path / "m.tflite"
    model.write_bytes(band_models["bare"].read_bytes())
    doc = ModelMetadata(
        labels, Preprocessing(64, 128), {"loss": "ce", "predicts_ignored_label": False}
    )
    model.with_suffix(".json").write_bytes(doc.to_bytes())
    cam = tmp_path / "cam"
    cam.mkdir()
    write_png(cam / "a.png", band_terrain(False)[0])
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, ["run", "--camera-dir", str(cam), "--model", str(model),
                                           "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 0 and "trained without a background target" in caplog.text
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["regions"]["hazards"] == []  # the rules applied: none
    info = CliRunner().invoke(main, ["info", str(model)])
    assert "trained without a background target" in info.output


def test_the_hazard_table_finds_labelled_rocks_and_counts_the_flag(band_models, tmp_path):
    from tools.hazard_table import markdown, measure, segment_all

    cam, labels = tmp_path / "cam", tmp_path / "labels"
    cam.mkdir()
    labels.mkdir()
    for i, rock in enumerate([False, True, False, True]):
        image, truth = band_terrain(rock)
        write_png(cam / f"f{i}.png", image)
        write_png(labels / f"f{i}.png", truth)
    truth = band_terrain(False)[1]
    truth[0:12, 0:12] = ROCK  # a labelled rock the model cannot see (the frame shows soil)
    write_png(labels / "f0.png", truth)
    _, label_set, segmented = segment_all(cam, labels, band_models["int8"], None)
    row = measure(segmented, label_set, 0.2, 100, DEFAULT_HAZARD_AREA_PX)
    assert row["frames"] == 4 and row["rock_free_frames"] == 1
    assert row["recall_by_size"]["100-400 px"] == {"rocks": 1, "found": 0, "recall": 0.0}
    assert row["recall_by_size"]["400-up px"] == {"rocks": 2, "found": 2, "recall": 1.0}
    assert row["false_rocks_per_frame_any"] == 0.0
    assert row["true_hazard_frames"] == 2 and row["hazard_recall"] == 1.0
    assert row["false_alarm_rate"] == 0.0
    assert "| p(rock) >= 0.2 | 100 | 300 | - | 0.0 % | 100.0 % |" in markdown([row], "")


def test_the_hazard_table_says_where_a_false_alarm_lies(band_models, tmp_path):
    """A rock the model sees where the labels say soil is wrong by the labels; where they say
    nothing (unlabelled), it cannot be judged; the table keeps the two apart."""
    from tools.hazard_table import markdown, measure, segment_all

    cam, labels = tmp_path / "cam", tmp_path / "labels"
    cam.mkdir()
    labels.mkdir()
    image, truth = band_terrain(True)
    for name, value in (("soil", SOIL), ("unlabelled", 0), ("rock", ROCK)):
        write_png(cam / f"{name}.png", image)
        write_png(labels / f"{name}.png", np.where(truth == ROCK, value, truth).astype(np.uint8))
    # the labels hold a rock smaller than the rule's 300 px where the model sees 512 px
    write_png(cam / "small.png", image)
    small = np.where(truth == ROCK, SOIL, truth).astype(np.uint8)
    small[48:64, 48:56] = ROCK  # 128 px, a quarter of the rock seen
    write_png(labels / "small.png", small)
    # two rocks fire: one on labelled soil, one on unlabelled ground: it cannot be judged
    two = terrain((48, 64, 40, 62))
    two[48:64, 68:90] = ROCK
    values = np.round(np.array(BAND_CENTRES) * 255).astype(np.uint8)
    write_png(cam / "two.png", values[two])
    two_truth = np.where(two == ROCK, SOIL, two).astype(np.uint8)
    two_truth[48:64, 68:90] = 0
    write_png(labels / "two.png", two_truth)
    write_png(cam / "plain.png", band_terrain(False)[0])
    write_png(labels / "plain.png", band_terrain(False)[1])
    _, label_set, segmented = segment_all(cam, labels, band_models["int8"], None)
    row = measure(segmented, label_set, 0.2, 100, DEFAULT_HAZARD_AREA_PX)
    assert row["true_hazard_frames"] == 1 and row["hazard_recall"] == 1.0
    assert row["other_frames"] == 5 and row["false_alarm_rate"] == pytest.approx(4 / 5)
    assert row["false_alarms_by_ground"] == {
        "labelled_rock": 1, "labelled_terrain": 1, "unlabelled": 2}  # fmt: skip
    assert row["false_alarm_rate_on_labelled_terrain"] == pytest.approx(1 / 5)
    assert "| 80.0 % | 1 (20.0 %); 1; 2 |" in markdown([row], "")


@pytest.mark.parametrize("crop", ["none", "centre"])
@pytest.mark.parametrize("shape", [(64, 128), (128, 256), (100, 150), (256, 256)])
def test_the_analysis_of_model_size_maps_equals_that_of_the_restored_frame(
    band_models, crop, shape
):
    """The rover analyses the model-size maps through the pixel map; the figures must be the
    ones of the frame-size maps a restore makes (a 2x frame, a non-integer ratio, a crop)."""
    from edge.contract.preprocess import Preprocessing
    from edge.segmenter import Segmenter

    segmenter = Segmenter(band_models["logits"])
    segmenter.preprocessing = Preprocessing(64, 128, crop=crop)
    config = RegionConfig(min_confidence=0.6, low_confidence=0.7)
    analyzer = RegionAnalyzer(config, segmenter.labels, hazards=True)
    rng = np.random.default_rng(sum(shape))
    values = np.round(np.array(BAND_CENTRES) * 255).astype(np.int16)
    image = values[rng.integers(0, len(values), (shape[0] // 8 + 1, shape[1] // 8 + 1))]
    image = np.repeat(np.repeat(image, 8, 0), 8, 1)[: shape[0], : shape[1]]
    image = np.clip(image + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)  # unsure px
    seg = segmenter.segment(image, with_confidence=True)
    assert seg.labels.shape == shape and seg.model_labels.shape == (64, 128)
    pixel_map = segmenter.pixel_map(shape)
    np.testing.assert_array_equal(
        np.where(pixel_map >= 0, seg.model_labels.ravel()[pixel_map], segmenter.labels.ignore or 0),
        seg.labels,
    )
    whole = analyzer.analyze(seg.labels, seg.top_probability)
    mapped = analyzer.analyze_mapped(seg.model_labels, seg.model_top, pixel_map)
    assert mapped["regions"] == whole["regions"] and mapped["hazards"] == whole["hazards"]
    for key, value in whole["confidence"].items():
        assert mapped["confidence"][key] == pytest.approx(value, abs=1.5e-4)
    assert mapped["class_fractions"] == whole["class_fractions"]
    truth = class_fractions(seg.labels, segmenter.num_classes)
    assert list(whole["class_fractions"].values()) == [round(float(f), 4) for f in truth]
    assert 0.0 < whole["confidence"]["low_confidence_fraction"] < 1.0  # the test means something


def test_a_label_past_the_label_set_is_refused_not_counted_elsewhere():
    analyzer = RegionAnalyzer(RegionConfig(), MARS)
    labels = np.zeros((16, 16), np.uint8)
    assert analyzer.analyze(labels, None)["class_fractions"]["background"] == 1.0
    labels[3, 4] = MARS.num_classes  # one past the last class
    with pytest.raises(ValueError, match=r"holds labels 0\.\.5; the label set has 5 classes"):
        analyzer.analyze(labels, None)
    signed = np.zeros((16, 16), np.int8)
    signed[0, 0] = -1  # would land in the previous column's last class
    with pytest.raises(ValueError, match=r"holds labels -1\.\.0"):
        analyzer.analyze(signed, None)


@pytest.mark.parametrize("crop", ["none", "centre"])
@pytest.mark.parametrize("shape", [(64, 128), (100, 150), (300, 90), (37, 53)])
def test_region_counts_are_exactly_a_weighted_count_per_region(crop, shape):
    """The one histogram over (weight column, class) against the plain definition: per region,
    the frame pixels of each class, those outside the model's view as the ignored label; on
    the model-size map through the pixel map and on the frame's own map, with a region the
    view leaves out (the top of a tall frame under a centre crop)."""
    from edge.contract.preprocess import Preprocessing

    regions = {**RegionConfig().regions, "sky": [[0, 0], [1, 0], [1, 0.1], [0, 0.1]],
               "overlap": [[0.2, 0.4], [0.9, 0.4], [0.9, 1], [0.2, 1]]}  # fmt: skip
    analyzer = RegionAnalyzer(RegionConfig(regions=regions), MARS)
    h, w = 32, 48
    pixel_map = Preprocessing(h, w, crop=crop).restore(
        np.arange(h * w, dtype=np.int32).reshape(h, w), shape, fill=-1
    )
    rng = np.random.default_rng(sum(shape))
    small = rng.integers(0, MARS.num_classes, (h, w)).astype(np.uint8)
    frame = np.where(pixel_map >= 0, small.ravel()[pixel_map], MARS.ignore or 0).astype(np.uint8)
    masks = [np.ones(shape, bool), *analyzer.masks(shape).values()]
    expected = np.array([np.bincount(frame[m], minlength=MARS.num_classes) for m in masks])
    mapped = analyzer._class_counts(small.ravel(), analyzer._geometry(shape, pixel_map, h * w))
    own = analyzer._class_counts(frame.ravel(), analyzer._geometry(shape, None))
    np.testing.assert_array_equal(mapped, expected)
    np.testing.assert_array_equal(own, expected)


def test_one_pass_over_int8_logits_gives_argmax_and_top_probability(band_models):
    """The rover's int8 path (running maximum, exp table) against argmax and the softmax, ties
    included (the lower class wins, as argmax)."""
    from edge.segmenter import Segmenter

    segmenter = Segmenter(band_models["logits"])
    rng = np.random.default_rng(0)
    raw = rng.integers(-128, 128, (32, 48, 5)).astype(np.int8)
    raw[:4, :, 2] = raw[:4, :, 1] = 127  # ties at the top between classes 1 and 2
    labels, top = segmenter.top_class(raw)
    np.testing.assert_array_equal(labels, raw.argmax(axis=-1))
    assert (labels[:4] == 1).all()
    scale, zero = segmenter.output_quant
    logits = (raw.astype(np.float64) - zero) * scale
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(top, (softmax / softmax.sum(-1, keepdims=True)).max(-1), rtol=1e-5)
