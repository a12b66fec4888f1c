"""Property tests: invariants that must hold for any input hypothesis can think of."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from edge.contract.labels import MARS, LabelSet
from edge.contract.metrics import confusion_matrix, iou_per_class, mean_iou, score
from edge.contract.preprocess import Preprocessing
from edge.io.decode import looks_complete, read_frame
from edge.io.sinks import png_bytes
from edge.run.quantiles import LogHistogram

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def label_maps(num_classes: int = 5, max_side: int = 12):
    """Pairs of equally shaped label maps."""
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(
        lambda shape: st.tuples(
            arrays(np.uint8, shape, elements=st.integers(0, num_classes - 1)),
            arrays(np.uint8, shape, elements=st.integers(0, num_classes - 1)),
        )
    )


# Metrics against a naive reference.


def naive_scores(truth: np.ndarray, pred: np.ndarray, ignore: int | None, n: int):
    """Per-class IoU by counting pixels one by one, and their mean over the present classes."""
    ious = {}
    for c in range(n):
        if c == ignore:
            continue
        inter = union = 0
        for t, p in zip(truth.ravel().tolist(), pred.ravel().tolist()):
            if t == ignore:
                continue  # a pixel of the ignored truth is never scored
            inter += t == c and p == c
            union += t == c or p == c
        ious[c] = inter / union if union else math.nan
    present = [v for v in ious.values() if not math.isnan(v)]
    return ious, (sum(present) / len(present)) if present else math.nan


@FAST
@given(label_maps())
def test_confusion_and_iou_match_a_naive_count(pair):
    truth, pred = pair
    cm = confusion_matrix(truth, pred)
    assert cm.sum() == truth.size
    for t in range(5):
        for p in range(5):
            assert cm[t, p] == int(((truth == t) & (pred == p)).sum())
    ious, miou = naive_scores(truth, pred, 0, 5)
    got = iou_per_class(cm)
    for c, expected in ious.items():
        assert (math.isnan(expected) and math.isnan(got[c])) or got[c] == pytest.approx(expected)
    assert (math.isnan(miou) and math.isnan(mean_iou(cm, MARS))) or mean_iou(
        cm, MARS
    ) == pytest.approx(miou)


@FAST
@given(label_maps(num_classes=3))
def test_metrics_follow_the_label_set(pair):
    truth, pred = pair
    three = LabelSet(("unknown", "a", "b"), ignore=None)
    _, miou = naive_scores(truth, pred, None, 3)
    report = score(truth, pred, three)
    assert list(report.per_class) == ["unknown", "a", "b"]
    assert (math.isnan(miou) and math.isnan(report.mean_iou)) or report.mean_iou == pytest.approx(
        miou
    )


@FAST
@given(label_maps())
def test_a_perfect_prediction_scores_one_and_is_not_hurt_on_ignored_pixels(pair):
    truth, noise = pair
    assume((truth > 0).any())
    assert score(truth, truth, MARS).mean_iou == 1.0
    anything_on_background = np.where(truth == 0, noise, truth)
    assert score(truth, anything_on_background, MARS).per_class == score(
        truth, truth, MARS
    ).per_class or (score(truth, anything_on_background, MARS).mean_iou <= 1.0)
    # predictions on ignored truth only change IoUs through false positives of their class
    report = score(truth, anything_on_background, MARS)
    hazards = report.hazards["big_rock"]
    if hazards["predicted_pixels"]:
        on_unlabelled = ((truth == 0) & (anything_on_background == 4)).sum()
        assert hazards["on_unlabelled"] == pytest.approx(
            on_unlabelled / hazards["predicted_pixels"]
        )


# Quantization round trips.


@FAST
@given(
    scale=st.floats(1 / 512, 1 / 64),
    zero=st.integers(-128, 127),
    values=arrays(np.float32, st.integers(1, 64), elements=st.floats(0, 1, width=32)),
)
def test_int8_quantization_round_trips_within_half_a_step(scale, zero, values):
    from edge.segmenter import Segmenter

    quantized = np.clip(np.round(values / scale + zero), -128, 127).astype(np.int8)
    segmenter = Segmenter.__new__(Segmenter)  # only the dequantization under test
    segmenter.output_dtype, segmenter.output_quant = np.dtype(np.int8), (scale, zero)
    segmenter.output_kind, segmenter.logit_window = "probabilities", None
    restored = segmenter.probabilities(quantized)
    assert np.array_equal(segmenter.dequantize(quantized), restored)
    representable = (values / scale + zero >= -128.5) & (values / scale + zero <= 127.5)
    assert np.all(np.abs(restored - values)[representable] <= scale / 2 + 1e-6)


@FAST
@given(
    low=st.floats(-6, 2),
    span=st.floats(1, 12),
    raw=arrays(np.int8, (3, 4, 5), elements=st.integers(-128, 127)),
)
def test_a_windowed_int8_output_reads_back_as_logits_inside_its_window(low, span, raw):
    """relu6 of the window (trainer/logit_window.py) on TFLite's [0, 6] grid: the rover's logits
    are the window's, and the table's top probability is the softmax's."""
    from edge.segmenter import Segmenter

    segmenter = Segmenter.__new__(Segmenter)
    segmenter.output_dtype, segmenter.output_quant = np.dtype(np.int8), (6.0 / 255, -128)
    segmenter.output_kind, segmenter.logit_window = "logits", (low, low + span)
    logits = segmenter.dequantize(raw)
    want = low + (raw.astype(np.float64) + 128) * (6.0 / 255) * span / 6.0
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert logits.min() >= low - 1e-5 and logits.max() <= low + span + 1e-5
    probs = segmenter.probabilities(raw)
    np.testing.assert_allclose(segmenter.top_probability(raw), probs.max(-1), rtol=1e-4)
    labels, top = segmenter.top_class(raw)
    np.testing.assert_array_equal(labels, raw.argmax(-1))
    np.testing.assert_allclose(top, probs.max(-1), rtol=1e-4)


def test_int8_probabilities_match_the_float_model(band_models):
    """The dequantized int8 output is the float model's probabilities to within a few steps
    (measured: 4.7 output steps; the errors of the quantized layers add up)."""
    from edge.segmenter import Segmenter
    from tests.conftest import band_frame

    image, _ = band_frame(np.random.default_rng(1))
    f32 = Segmenter(band_models["float32"]).segment(image, with_probabilities=True).probabilities
    int8 = Segmenter(band_models["int8"])
    probs = int8.segment(image, with_probabilities=True).probabilities
    step = int8.output_quant[0]
    assert np.abs(probs - f32).max() <= 8 * step
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=5 * step * probs.shape[-1])


@FAST
@given(scale=st.floats(1 / 300, 1 / 200), zero=st.integers(-130, -120))
def test_the_input_table_is_the_quantized_training_scaling(scale, zero):
    from edge.segmenter import Segmenter

    segmenter = Segmenter.__new__(Segmenter)
    segmenter.preprocessing = Preprocessing(8, 8)
    segmenter.input_dtype, segmenter.input_quant = np.dtype(np.int8), (scale, zero)
    table = segmenter._input_table()
    grey = np.arange(256)
    expected = np.clip(np.round((grey / 255.0) / scale + zero), -128, 127)
    assert np.all(np.abs(table.astype(int) - expected) <= 1)  # float32 vs float64 rounding
    assert np.all(np.diff(table.astype(int)) >= 0)  # brighter is never smaller


# Augmentation keeps image and labels aligned, at any frame size.


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(4, 24).map(lambda v: 4 * v),
    width=st.integers(4, 24).map(lambda v: 4 * v),
    seed=st.integers(0, 10_000),
)
def test_augmentation_keeps_image_and_labels_aligned(height, width, seed):
    from trainer.augment import augment_pair, offline_augment, online_pipeline

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, size=(4, 4)).astype(np.uint8)
    labels = np.kron(coarse, np.ones((height // 4, width // 4), np.uint8))
    image = labels.astype(np.float32) * 0.2  # the label is written in the image
    pipeline = online_pipeline(geometric=True, seed=seed)
    out_image, out_labels = augment_pair(pipeline, image, labels)
    assert out_image.shape == out_labels.shape == (height, width)
    interior = _uniform_neighbourhood(out_labels)
    np.testing.assert_allclose(out_image[interior], out_labels[interior] * 0.2, atol=1e-4)
    images, label_sets, _ = offline_augment(
        image[None], labels[None], label_set=MARS, seed=seed, big_rock_repeats=2
    )
    for im, lab in zip(images, label_sets):
        np.testing.assert_allclose(im, lab.astype(np.float32) * 0.2, atol=1e-6)


def _uniform_neighbourhood(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbours all share their label and that are not on the frame's edge
    (where bilinear sampling blends the image with the border fill)."""
    padded = np.pad(labels, 1, constant_values=255)
    same = np.ones(labels.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] == labels
    return same


# The PNG encoder against Pillow's decoder.


@FAST
@given(
    arrays(
        np.uint8,
        st.one_of(
            st.tuples(st.integers(1, 40), st.integers(1, 40)),
            st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3)),
        ),
    ),
    st.integers(0, 9),
)
def test_png_encoder_round_trips_through_pillow(array, level):
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(array, level))))
    np.testing.assert_array_equal(decoded, array)


# The completeness check on truncated files.


def _encoded(kind: str, image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    if kind == "npy":
        np.save(buffer, image)
    else:
        Image.fromarray(image).save(buffer, {"png": "PNG", "jpg": "JPEG", "pgm": "PPM"}[kind])
    return buffer.getvalue()


@FAST
@given(
    kind=st.sampled_from(["png", "jpg", "npy", "pgm"]),
    image=arrays(np.uint8, st.tuples(st.integers(4, 24), st.integers(4, 24))),
    cut=st.floats(0.0, 1.0, exclude_max=True),
)
def test_a_truncated_frame_never_looks_complete(tmp_path_factory, kind, image, cut):
    payload = _encoded(kind, image)
    path = tmp_path_factory.mktemp("complete") / f"frame.{kind}"
    path.write_bytes(payload)
    assert looks_complete(path)
    assert read_frame(path).shape == image.shape
    path.write_bytes(payload[: int(cut * len(payload))])
    assert not looks_complete(path)


# Streaming percentiles.


@FAST
@given(st.lists(st.floats(1e-3, 1e5), min_size=1, max_size=400), st.floats(0, 1))
def test_streaming_quantiles_are_within_their_relative_error(values, q):
    hist = LogHistogram.of(values, accuracy=0.01)
    # the "lower" rank q * (n - 1), in the histogram's own arithmetic: numpy's percentile goes
    # through 100 * q and can land on the rank below (values [1, 1, 1, 0.5], q = 1/3)
    exact = sorted(values)[math.floor(q * (len(values) - 1))]
    assert abs(hist.quantile(q) - exact) <= 0.01 * exact + 1e-9
    assert hist.count == len(values) and hist.min == min(values) and hist.max == max(values)


def test_log_histogram_by_hand():
    """Sums, zeros, the ends of the range and the summary, worked out by hand."""
    hist = LogHistogram.of([0.0, 0.0, 1.0, 2.0, 3.0])
    assert (hist.count, hist.zeros, hist.total, hist.min, hist.max) == (5, 2, 6.0, 0.0, 3.0)
    assert hist.mean == pytest.approx(1.2) and hist.std == pytest.approx(math.sqrt(14 / 5 - 1.44))
    assert hist.quantile(0.25) == 0.0  # rank 1 of [0, 0, 1, 2, 3]: a zero
    assert hist.quantile(0.75) == pytest.approx(2.0, rel=0.01)  # rank 3
    assert hist.summary(full=True) == {
        "count": 5, "std": round(hist.std, 3), "min": 0.0, "mean": 1.2,
        "p50": round(hist.quantile(0.5), 3), "p90": round(hist.quantile(0.9), 3),
        "p99": round(hist.quantile(0.99), 3), "max": 3.0,
    }  # fmt: skip
    assert hist.quantile(0.99) == pytest.approx(2.0, rel=0.01)  # rank floor(3.96) = 3
    near_high = LogHistogram.of([1.0, 9.99e5])  # the top bucket of the default range
    assert near_high.quantile(1.0) == pytest.approx(9.99e5, rel=0.01)
    beyond = LogHistogram.of([1.0, 5e6])  # counted as `high`, and never out of bounds
    assert beyond.count == 2 and beyond.quantile(0.0) == pytest.approx(1.0, rel=0.01)
    assert LogHistogram().summary() == {} and math.isnan(LogHistogram().quantile(0.5))
    for kwargs, message in (
        ({"accuracy": 0.0}, r"accuracy must be in \(0, 1\), got 0.0"),
        ({"accuracy": 1.0}, r"accuracy must be in \(0, 1\), got 1.0"),
        ({"low": 0.0}, r"need 0 < low < high, got 0.0, 1000000.0"),
        ({"low": 5.0, "high": 5.0}, r"need 0 < low < high, got 5.0, 5.0"),
    ):
        with pytest.raises(ValueError, match=message):
            LogHistogram(**kwargs)
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\], got 1.5"):
        hist.quantile(1.5)


# The shared preprocessing: any frame size comes back to itself.


@FAST
@given(
    rows=st.integers(8, 80),
    cols=st.integers(8, 80),
    crop=st.sampled_from(["none", "centre"]),
    model=st.sampled_from([(16, 16), (16, 32), (24, 8)]),
)
def test_restore_brings_any_frame_size_back(rows, cols, crop, model):
    prep = Preprocessing(*model, crop=crop)
    labels = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) % 5
    small = prep.prepare_labels(labels.astype(np.uint8))
    assert small.shape == model
    restored = prep.restore(small, (rows, cols), fill=0)
    assert restored.shape == (rows, cols)
    top, left, h, w = prep.region((rows, cols))
    outside = np.ones((rows, cols), bool)
    outside[top : top + h, left : left + w] = False
    assert (restored[outside] == 0).all()


@FAST
@given(st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=6, unique=True))
def test_label_sets_round_trip(names):
    labels = LabelSet(tuple(names), hazards=(names[-1],))
    assert LabelSet.from_dict(labels.as_dict()) == labels
    assert MARS.scored == (1, 2, 3, 4)
