from __future__ import annotations

import numpy as np
import pytest

from edge.contract.labels import MARS
from trainer.augment import augment_pair, offline_augment, online_pipeline


@pytest.fixture
def coded(small_set):
    """Frames whose image encodes their labels (grey = label/4), so alignment can be checked."""
    labels = small_set.labels[:40]
    images = (labels.astype(np.float32) / 4.0) * 0.8 + 0.1
    return images, labels


def test_offline_recipe_counts(small_set):
    images, labels = small_set.images[:40] / 255.0, small_set.labels[:40]
    rock = (labels == 4).any(axis=(1, 2)).sum()
    out_images, out_labels, stats = offline_augment(
        images.astype(np.float32), labels, label_set=MARS, seed=1
    )
    assert rock >= 1
    assert stats.flipped == 40 and stats.big_rock_copies == 3 * 2 * rock
    assert len(out_images) == len(out_labels) == stats.total == 80 + 6 * rock
    assert 0 < stats.mask_dropout < 40
    assert out_labels.dtype == np.uint8 and set(np.unique(out_labels)) <= {0, 1, 2, 3, 4}


def test_flip_moves_labels_with_the_image(coded):
    images, labels = coded
    out_images, out_labels, _ = offline_augment(
        images, labels, label_set=MARS, mask_dropout_fraction=0.0, big_rock_repeats=1
    )
    np.testing.assert_array_equal(out_labels[40:], labels[:, :, ::-1])
    np.testing.assert_array_equal(out_images[40:], images[:, :, ::-1])


def test_mask_dropout_erases_image_and_label_together(coded):
    images, labels = coded
    out_images, out_labels, stats = offline_augment(
        images, labels, label_set=MARS, mask_dropout_fraction=1.0, big_rock_repeats=1, seed=2
    )
    assert stats.mask_dropout == 40
    flipped_images, flipped_labels = out_images[40:], out_labels[40:]
    erased = (flipped_labels == 0) & (labels[:, :, ::-1] != 0)
    assert erased.any()
    assert (flipped_images[erased] == 0).all()
    kept = ~erased
    np.testing.assert_array_equal(flipped_labels[kept], labels[:, :, ::-1][kept])


def test_online_geometric_keeps_alignment_and_integer_labels(coded):
    images, labels = coded
    pipeline = online_pipeline(geometric=True, seed=7)
    changed, aligned, shifted = 0, [], []
    for image, label in zip(images, labels):
        aug_image, aug_label = augment_pair(pipeline, image, label)
        assert aug_label.dtype == np.uint8 and aug_label.max() <= 4
        changed += not np.array_equal(aug_label, label)
        decoded = np.clip(np.rint((aug_image - 0.1) / 0.8 * 4), 0, 4)
        # Linear for the image vs nearest for the labels differ only along region edges.
        aligned.append(np.mean(decoded == aug_label))
        shifted.append(np.mean(decoded == np.roll(aug_label, 2, axis=1)))
    assert changed > 10
    assert min(aligned) > 0.95
    assert np.mean(aligned) > np.mean(shifted) + 0.01


def test_pixel_augmentation_is_opt_in():
    assert online_pipeline(geometric=False) is None
    names = [type(t).__name__ for t in online_pipeline(pixel=True).transforms]
    assert "RandomBrightnessContrast" in names and "GaussNoise" in names
    assert "RandomBrightnessContrast" not in [
        type(t).__name__ for t in online_pipeline().transforms
    ]


def test_bad_fraction_is_rejected(coded):
    with pytest.raises(ValueError, match="mask_dropout_fraction"):
        offline_augment(*coded, label_set=MARS, mask_dropout_fraction=2.0)
