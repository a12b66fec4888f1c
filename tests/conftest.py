"""Shared fixtures: small synthetic data made with fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from edge.synthetic import SyntheticConfig, generate, write_npz

# The same examples on every run, so that CI and mutation testing judge the code, not the draw;
# `HYPOTHESIS_PROFILE=explore make test-fast` searches new ones (keep what it finds as a test).
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))


@pytest.fixture(scope="session")
def small_set():
    """120 terrain frames (seed 1) with more big rocks than the default, and 5 outliers."""
    return generate(SyntheticConfig(n_train=120, n_test=0, seed=1, big_rock_rate=0.2))


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory) -> Path:
    """A 160-frame synthetic set written in the course npz layout."""
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    write_npz(SyntheticConfig(n_train=160, n_test=24, seed=2, big_rock_rate=0.2), path)
    return path


def noise_frames(folder: Path, n: int = 2, seed: int = 0, shape=(64, 128)) -> Path:
    """``folder`` made and filled with ``n`` PNG frames of uniform noise (``f0.png``...)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(folder / f"f{i}.png")
    return folder


def write_course_npz(path: Path, training_set: np.ndarray, **extra) -> Path:
    """Write an npz the way the course file was written (np.savez_compressed)."""
    np.savez_compressed(path, training_set=training_set, **extra)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Intensity bands of the "easy" frames: a tiny hand-weighted model labels band k as class k.
BAND_CENTRES = (0.1, 0.3, 0.5, 0.7, 0.9)


def build_band_model(channels: int = 1):
    """A real (untrained, hand-weighted) segmentation net whose answer is known.

    Class k's logit is the tangent at p_k of 50 x^2, so the arg max is the band centre nearest
    to the pixel value; at a centre the margin to the next class is 50 * 0.2^2 = 2 logits, wide
    enough for int8 and float32 to agree.
    """
    import keras

    inputs = keras.Input((64, 128, channels), name="image")
    identity = np.zeros((3, 3, channels, 1), np.float32)
    identity[1, 1, :, 0] = 1.0 / channels
    x = keras.layers.Conv2D(1, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    logits = keras.layers.Conv2D(len(BAND_CENTRES), 1, name="head_logits")(x)
    probs = keras.layers.Softmax(name="head_softmax")(logits)
    model = keras.Model(inputs, probs, name=f"bands_{channels}ch")
    model.get_layer("stem_conv").set_weights([identity])
    centres = np.array(BAND_CENTRES, np.float32)
    model.get_layer("head_logits").set_weights(
        [(2 * 50 * centres)[None, None, None, :], -50 * centres**2]
    )
    return model


def band_frame(rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An easy 64x128 frame: vertical blocks at the band centres, with its true labels."""
    order = np.arange(len(BAND_CENTRES)) if rng is None else rng.permutation(len(BAND_CENTRES))
    labels = np.zeros((64, 128), np.uint8)
    for i, cls in enumerate(order):
        labels[:, i * 26 : (i + 1) * 26] = cls
    values = np.round(np.array(BAND_CENTRES) * 255).astype(np.uint8)
    return values[labels], labels


def band_metadata(precision: str = "float32"):
    """The metadata document of the band models: the Mars classes, 64x128 frames."""
    from edge.contract.labels import MARS
    from edge.contract.metadata import ModelMetadata
    from edge.contract.preprocess import Preprocessing

    return ModelMetadata(MARS, Preprocessing(64, 128), {"name": "bands", "precision": precision})


@pytest.fixture(scope="session")
def band_models(tmp_path_factory) -> dict[str, Path]:
    """float32 and int8 .tflite of the band model (with metadata), the int8 one without
    metadata, an RGB-input one (the wrong shape), and the int8 rover graph (``logits``: the
    same model with a logits output, :mod:`trainer.export_graph`).

    Mutation testing runs a fresh pytest session per mutant; ``MARSSEG_TEST_MODEL_CACHE`` keeps
    the conversions of its first, unmutated session instead of repeating them (about 15 s each).
    """
    names = ("float32", "int8", "bare", "rgb", "logits")
    cache = os.environ.get("MARSSEG_TEST_MODEL_CACHE")  # set by `make mutation` only
    if cache and all((Path(cache) / f"bands_{n}.tflite").is_file() for n in names):
        return {n: Path(cache) / f"bands_{n}.tflite" for n in names}
    from trainer.convert import convert_saved_model, embed_metadata, export_saved_model
    from trainer.export_graph import rover_graph

    folder = Path(cache) if cache else tmp_path_factory.mktemp("band_models")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    calibration = np.stack([band_frame(rng)[0] for _ in range(8)]).astype(np.float32) / 255.0
    paths = {}
    model = build_band_model()
    saved = export_saved_model(model, folder / "saved", (64, 128, 1))
    for precision in ("float32", "int8"):
        flatbuffer = convert_saved_model(saved, precision, calibration)
        paths[precision] = folder / f"bands_{precision}.tflite"
        paths[precision].write_bytes(embed_metadata(flatbuffer, band_metadata(precision)))
        if precision == "int8":
            paths["bare"] = folder / "bands_bare.tflite"
            paths["bare"].write_bytes(flatbuffer)
    logits = export_saved_model(rover_graph(model)[0], folder / "saved_logits", (64, 128, 1))
    meta = band_metadata("int8")
    meta.info["output"] = "logits"
    paths["logits"] = folder / "bands_logits.tflite"
    paths["logits"].write_bytes(
        embed_metadata(convert_saved_model(logits, "int8", calibration), meta)
    )
    rgb = export_saved_model(build_band_model(3), folder / "saved_rgb", (64, 128, 3))
    paths["rgb"] = folder / "bands_rgb.tflite"
    paths["rgb"].write_bytes(convert_saved_model(rgb, "float32"))
    return paths
