from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_course_npz
from trainer import data as D


def _frames(rng, n=6, h=64, w=128):
    images = rng.integers(2, 255, size=(n, h, w)).astype(np.float64)
    labels = rng.integers(0, 5, size=(n, h, w)).astype(np.float64)
    return np.stack([images, labels], axis=1)


def test_load_npz_scales_images_and_keeps_labels(tmp_path, rng):
    training = _frames(rng)
    test = rng.integers(0, 256, size=(3, 64, 128), dtype=np.uint8)
    data = D.load_npz(write_course_npz(tmp_path / "ok.npz", training, test_set=test))
    assert data.images.dtype == np.float32 and data.labels.dtype == np.uint8
    np.testing.assert_allclose(data.images, training[:, 0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.labels, training[:, 1])
    np.testing.assert_allclose(data.test_images * 255.0, test, atol=1e-4)
    assert data.test_labels is None


def test_wrong_key_names_the_key(tmp_path, rng):
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, train=_frames(rng))
    with pytest.raises(ValueError, match=r"no key 'training_set' \(found \['train'\]\)"):
        D.load_npz(path)


def test_wrong_shape_says_expected_layout(tmp_path, rng):
    path = write_course_npz(tmp_path / "bad.npz", _frames(rng)[:, 0])
    with pytest.raises(ValueError, match=r"expected \(N, 2, H, W\)"):
        D.load_npz(path)


def test_label_nine_names_frame_and_value(tmp_path, rng):
    training = _frames(rng)
    training[3, 1, 10, 20] = 9
    with pytest.raises(ValueError, match=r"found 9 in frame 3 .*right file"):
        D.load_npz(write_course_npz(tmp_path / "bad.npz", training))


def test_fractional_label_is_rejected(tmp_path, rng):
    training = _frames(rng)
    training[2, 1, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"whole numbers .* found 1.5 in frame 2"):
        D.load_npz(write_course_npz(tmp_path / "bad.npz", training))


def test_nan_pixels_name_the_frame(tmp_path, rng):
    training = _frames(rng)
    training[4, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite pixels .* frame 4"):
        D.load_npz(write_course_npz(tmp_path / "bad.npz", training))


def test_pixels_out_of_range(tmp_path, rng):
    training = _frames(rng)
    training[0, 0, 0, 0] = 300
    with pytest.raises(ValueError, match=r"expected grayscale 0..255"):
        D.load_npz(write_course_npz(tmp_path / "bad.npz", training))


def test_truncated_file_is_a_clear_error(tmp_path, rng):
    good = write_course_npz(tmp_path / "good.npz", _frames(rng))
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"is the file complete"):
        D.load_npz(bad)


def test_missing_path_suggests_what_to_give(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist.*make_synthetic"):
        D.load_dataset(tmp_path / "nope.npz")


def test_test_set_shape_must_match(tmp_path, rng):
    path = write_course_npz(
        tmp_path / "bad.npz", _frames(rng), test_set=np.zeros((2, 32, 32), np.uint8)
    )
    with pytest.raises(ValueError, match=r"test_set has shape \(2, 32, 32\)"):
        D.load_npz(path)


def test_outliers_planted_are_found_exactly(small_set):
    report = D.find_outliers(small_set.labels)
    assert report.count == len(small_set.outlier_index) == 5
    np.testing.assert_array_equal(report.indices, small_set.outlier_index)
    assert len(report.groups) == 1 and "5 frames share 1 repeated mask" in report.summary()


def test_no_outliers_in_clean_frames(small_set):
    keep = np.setdiff1d(np.arange(len(small_set.labels)), small_set.outlier_index)
    report = D.find_outliers(small_set.labels[keep])
    assert report.count == 0 and "none" in report.summary()


def test_outliers_below_threshold_are_kept(rng):
    labels = rng.integers(0, 5, size=(10, 16, 16)).astype(np.uint8)
    labels[[2, 7]] = labels[0]  # three copies
    assert D.find_outliers(labels, min_repeats=3).indices.tolist() == [0, 2, 7]
    assert D.find_outliers(labels, min_repeats=4).count == 0


def test_drop_outliers_keeps_source_index(small_set):
    mars = D.MarsData(small_set.images / 255.0, small_set.labels)
    clean = D.drop_outliers(mars, D.find_outliers(mars.labels))
    assert len(clean.images) == 115
    assert not np.isin(clean.index, small_set.outlier_index).any()


def test_split_is_stratified_on_big_rock(small_set):
    labels = small_set.labels
    rock = D.has_big_rock(labels)
    assert 2 <= rock.sum() < len(labels) // 2
    train, val = D.split_indices(labels, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).size == len(labels)
    assert rock[train].any() and rock[val].any()
    assert abs(rock[val].mean() - rock.mean()) < 0.1
    again = D.split_indices(labels, 0.2, seed=3)
    np.testing.assert_array_equal(val, again[1])


def test_split_puts_a_single_pair_of_rock_frames_on_both_sides(rng):
    labels = np.ones((50, 8, 8), np.uint8)
    labels[[4, 30], 0, 0] = 4
    for seed in range(5):
        train, val = D.split_indices(labels, 0.1, seed)
        assert len(np.intersect1d([4, 30], val)) == 1 and len(np.intersect1d([4, 30], train)) == 1


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        D.split_indices(np.zeros((4, 8, 8), np.uint8), 1.5)


@pytest.fixture
def ai4mars_dir(tmp_path):
    """A tiny AI4Mars-like folder: 3 NAVCAM JPGs (one unlabelled) and 2 label PNGs."""
    rng = np.random.default_rng(5)
    images, labels = tmp_path / "msl" / "images" / "edr", tmp_path / "msl" / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(
            images / f"NLA_{i}.JPG"
        )
    for i in range(2):
        label = np.full((256, 256), 255, np.uint8)
        label[128:, :128], label[128:, 128:], label[64:128, :], label[96:112, 96:160] = 0, 1, 2, 3
        Image.fromarray(label).save(labels / f"NLA_{i}.png")
    return tmp_path / "msl"


def test_ai4mars_folder_is_mapped_and_downsampled(ai4mars_dir):
    data = D.load_dataset(ai4mars_dir)
    assert data.images.shape == (2, 64, 128) and data.labels.shape == (2, 64, 128)
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    # 255 -> 0, 0..3 -> 1..4; centre crop keeps rows 64..192 of 256
    assert set(np.unique(data.labels)) == {1, 2, 3, 4}
    assert data.labels[0, -1, 0] == 1 and data.labels[0, -1, -1] == 2 and data.labels[0, 0, 0] == 3


def test_ai4mars_rejects_unknown_label_values(ai4mars_dir):
    Image.fromarray(np.full((256, 256), 7, np.uint8)).save(
        ai4mars_dir / "labels" / "train" / "NLA_0.png"
    )
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        D.load_ai4mars(ai4mars_dir)


def test_ai4mars_without_pairs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(ValueError, match="no image has a label"):
        D.load_ai4mars(tmp_path)
