"""A label set of its own, end to end: a 3-class and a 6-class set are trained, converted to
int8 and run on the rover side, with the classes coming from the data all the way through."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.synthetic import SyntheticConfig, generate

pytestmark = pytest.mark.slow  # two tiny trainings and conversions (~1 min on 2 cores)

SETS = {
    # unlabelled, ground (soil, bedrock, sand), rock: the hazard
    3: (("unlabelled", "ground", "rock"), ("rock",), np.array([0, 1, 1, 1, 2], np.uint8)),
    # Mars' five and "shadow": sand pixels in the right half, to have a sixth class to learn
    6: (("background", "soil", "bedrock", "sand", "big_rock", "shadow"), ("big_rock",), None),
}


def write_set(path, classes: int):
    names, hazards, lut = SETS[classes]
    mars = generate(SyntheticConfig(n_train=64, n_test=0, seed=4, big_rock_rate=0.3))
    labels = lut[mars.labels] if lut is not None else mars.labels.copy()
    if classes == 6:
        right = np.zeros(labels.shape, bool)
        right[..., labels.shape[-1] // 2 :] = True
        labels[(labels == 3) & right] = 5
    training_set = np.stack([mars.images, labels], axis=1)
    np.savez_compressed(
        path,
        training_set=training_set,
        class_names=np.array(names),
        hazard_classes=np.array(hazards),
    )
    return names


@pytest.mark.parametrize("classes", [3, 6])
def test_a_label_set_of_its_own_trains_converts_and_runs(classes, tmp_path):
    from edge.segmenter import Segmenter
    from trainer.config import DataConfig, TrainConfig
    from trainer.convert import ConvertConfig, convert_run
    from trainer.train import fit

    names = write_set(tmp_path / "d.npz", classes)
    cfg = TrainConfig(
        data=DataConfig(path=str(tmp_path / "d.npz"), big_rock_repeats=2),
        model="marsseg", width=0.25, epochs=1, batch_size=8, steps_per_epoch=2, verbose=0,
    )  # fmt: skip
    run = tmp_path / "run"
    fit(cfg, run)
    data = json.loads((run / "data.json").read_text())
    assert tuple(data["labels"]["names"]) == names
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == set(names[1:])  # every class but the ignored one
    report = convert_run(run, ConvertConfig(precisions=("int8",), calibration_frames=8))
    assert set(report["models"]["int8"]["per_class_iou"]) == set(names[1:])
    segmenter = Segmenter(run / "model_int8.tflite")
    assert segmenter.num_classes == classes and segmenter.labels.names == names
    assert segmenter.labels.hazards == SETS[classes][1]
    frame = np.random.default_rng(0).integers(0, 255, (64, 128), np.uint8)
    assert segmenter.segment(frame).labels.max() < classes
