"""Shared fixtures: small synthetic data made with fixed seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.synthetic import SyntheticConfig, generate, write_npz


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


def write_course_npz(path: Path, training_set: np.ndarray, **extra) -> Path:
    """Write an npz the way the course file was written (np.savez_compressed)."""
    np.savez_compressed(path, training_set=training_set, **extra)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
