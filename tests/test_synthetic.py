from __future__ import annotations

import hashlib

import numpy as np
import pytest

from benchmarks.data_hardness import LIMIT, measure
from edge.contract.metrics import class_fractions
from edge.synthetic import SyntheticConfig, generate, outlier_mask
from trainer import data as D


def _digest(s) -> str:
    return hashlib.sha256(s.images.tobytes() + s.labels.tobytes()).hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs():
    cfg = SyntheticConfig(n_train=30, n_test=0, seed=11)
    assert _digest(generate(cfg)) == _digest(generate(cfg))
    assert _digest(generate(SyntheticConfig(n_train=30, n_test=0, seed=12))) != _digest(
        generate(cfg)
    )


def test_frame_does_not_depend_on_set_size():
    a = generate(SyntheticConfig(n_train=10, n_test=0, seed=4, outlier_rate=0))
    b = generate(SyntheticConfig(n_train=20, n_test=0, seed=4, outlier_rate=0))
    np.testing.assert_array_equal(a.images, b.images[:10])


def test_frames_look_like_the_course_data():
    s = generate(SyntheticConfig(n_train=400, n_test=0, seed=0))
    assert s.images.dtype == np.uint8 and s.images.shape == (400, 64, 128)
    assert s.images.min() >= 2 and s.images.max() <= 254
    keep = np.setdiff1d(np.arange(400), s.outlier_index)
    fractions = class_fractions(s.labels[keep])
    # course: 24.3 / 33.9 / 23.3 / 18.4 / 0.13 %
    np.testing.assert_allclose(fractions[:4], [0.243, 0.339, 0.233, 0.184], atol=0.06)
    assert 0 < fractions[4] < 0.01
    assert len(s.outlier_index) == 16
    assert all((s.labels[i] == outlier_mask(64, 128)).all() for i in s.outlier_index)


def test_grey_levels_of_terrain_classes_overlap():
    s = generate(SyntheticConfig(n_train=200, n_test=0, seed=3, outlier_rate=0))
    means = [s.images[s.labels == c].mean() for c in (1, 2, 3)]
    spreads = [s.images[s.labels == c].std() for c in (1, 2, 3)]
    assert max(means) - min(means) < min(spreads) / 2


def test_intensity_alone_cannot_segment():
    result = measure(frames=600, seed=5)
    assert result["outliers_match"]
    assert result["intensity_only_miou"] <= LIMIT


def test_config_validation():
    with pytest.raises(ValueError, match="big_rock_rate"):
        SyntheticConfig(big_rock_rate=2.0)


def test_write_npz_is_loadable(small_npz):
    data = D.load_npz(small_npz)
    assert data.images.shape == (160, 64, 128)
    assert data.test_images.shape == data.test_labels.shape == (24, 64, 128)
    with np.load(small_npz) as f:
        assert f["training_set"].dtype == np.float64
        assert D.find_outliers(data.labels).indices.tolist() == f["synthetic_outliers"].tolist()
