"""Augmentation with albumentations: the report's offline recipe and an online pipeline.

Offline (run once before training, as the course report did):
    every frame plus its horizontal flip; MaskDropout on a quarter of the flipped copies; every
    frame that contains big rock repeated so that it appears ``big_rock_repeats`` times.

    albumentations' MaskDropout treats every connected region of one label value as an object
    and erases one of them from image (to 0) and labels (to 0, background, which the loss
    ignores): it erases one region of one class, the whole class where it is one region.

Online (inside ``tf.data``, per batch element): geometric only by default (flip, small affine);
the report found pixel-level transforms (brightness, contrast, noise) harmful, so they are an
opt-in for the ablation. Labels always stay integers in 0..4: masks are moved with nearest
interpolation and borders are filled with background.

This module does not import TensorFlow; ``trainer.train`` wraps :func:`augment_pair` in
``tf.numpy_function``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.contract.labels import LabelSet
from trainer.data.split import has_hazard


@dataclass
class OfflineStats:
    """What the offline recipe produced."""

    originals: int
    flipped: int
    mask_dropout: int
    big_rock_copies: int

    @property
    def total(self) -> int:
        return self.originals + self.flipped + self.big_rock_copies


def offline_augment(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    label_set: LabelSet,
    flip: bool = True,
    mask_dropout_fraction: float = 0.25,
    big_rock_repeats: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, OfflineStats]:
    """The report's offline augmentation.

    Args:
        images: float32 (N, H, W) in [0, 1].
        labels: uint8 (N, H, W), values of ``label_set``.
        label_set: the classes; frames with one of its hazard classes (big rock) are the ones
            oversampled.
        flip: add the horizontal flip of every frame.
        mask_dropout_fraction: share of the flipped copies that also get MaskDropout (0 = none).
        big_rock_repeats: frames with big rock appear this many times in total (1 = no
            oversampling); the extra copies are taken from originals and flips alike.
        seed: seeds the choice of frames and MaskDropout.

    Returns:
        ``(images, labels, stats)``; originals first, then flips, then big-rock copies.

    Raises:
        ValueError: for a fraction outside [0, 1] or repeats < 1.
    """
    import albumentations as A

    if not 0.0 <= mask_dropout_fraction <= 1.0:
        raise ValueError(f"mask_dropout_fraction must be in [0, 1], got {mask_dropout_fraction}")
    if big_rock_repeats < 1:
        raise ValueError(f"big_rock_repeats must be >= 1, got {big_rock_repeats}")
    rng = np.random.default_rng(seed)
    out_images, out_labels = [images], [labels]
    n_flipped = n_dropout = 0
    if flip:
        flipper = A.HorizontalFlip(p=1.0)
        dropout = A.Compose([A.MaskDropout(max_objects=1, fill=0, fill_mask=0, p=1.0)], seed=seed)
        chosen = rng.random(len(images)) < mask_dropout_fraction
        flipped_images = np.empty_like(images)
        flipped_labels = np.empty_like(labels)
        for i, (image, label) in enumerate(zip(images, labels)):
            result = flipper(image=image, mask=label)
            if chosen[i]:
                result = dropout(image=result["image"], mask=result["mask"])
            flipped_images[i], flipped_labels[i] = result["image"], result["mask"]
        out_images.append(flipped_images)
        out_labels.append(flipped_labels)
        n_flipped, n_dropout = len(images), int(chosen.sum())
    pool_images, pool_labels = np.concatenate(out_images), np.concatenate(out_labels)
    rock = has_hazard(pool_labels, label_set)
    copies = np.repeat(np.flatnonzero(rock), big_rock_repeats - 1)
    out = (
        np.concatenate([pool_images, pool_images[copies]]),
        np.concatenate([pool_labels, pool_labels[copies]]),
    )
    return *out, OfflineStats(len(images), n_flipped, n_dropout, len(copies))


def online_pipeline(geometric: bool = True, pixel: bool = False, seed: int | None = None):
    """The per-sample augmentation used while training.

    Args:
        geometric: horizontal flip and a small affine (scale 0.9-1.1, shift 5 %, rotate 5 deg).
        pixel: brightness/contrast and Gaussian noise (off by default: the report found it hurts).
        seed: makes the random draws repeatable.

    Returns:
        An ``albumentations.Compose``, or None when both kinds are off.
    """
    import albumentations as A
    import cv2

    transforms = []
    if geometric:
        transforms += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-5, 5),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,  # background, ignored by the loss
                p=0.5,
            ),
        ]
    if pixel:
        transforms += [
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.3),
        ]
    return A.Compose(transforms, seed=seed) if transforms else None


def augment_pair(pipeline, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``pipeline`` to one (H, W) image and label; float32 image in [0, 1], uint8 label."""
    if pipeline is None:
        return image, label
    result = pipeline(image=np.asarray(image, np.float32), mask=np.asarray(label, np.uint8))
    return np.clip(result["image"], 0.0, 1.0).astype(np.float32), result["mask"].astype(np.uint8)
