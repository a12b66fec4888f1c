"""Data-parallel training for real: two worker processes on localhost, and two logical CPU
devices in one process, each against a single-process run on the same global batch."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Deterministic tiny runs: no augmentation (its random draws differ between processes), the same
# split, seed and global batch everywhere. The loss is a mean over all pixels, so that the mean of
# the replicas' losses is the loss of the global batch; with a mean over labelled pixels only
# (the default losses) each replica weighs its own pixels, as in any data-parallel training.
SETTINGS = dict(
    model="marsseg", width=0.25, epochs=2, batch_size=8, learning_rate=1e-3, steps_per_epoch=3,
    loss="plain_ce", verbose=0,
)  # fmt: skip
DATA = dict(
    limit=64, flip=False, mask_dropout_fraction=0.0, big_rock_repeats=1, online_geometric=False
)
# How close a 2-replica run ends to the single-process run on the same global batch. The
# updates are the same up to the order of float additions (with SGD the weights agree to 1e-6:
# test_both_loops_are_exact_with_sgd); AdamW divides each gradient by its running RMS, which
# turns that float noise into up to a few learning-rate steps on weights whose gradient is near 0.
WEIGHT_ATOL = 5 * SETTINGS["learning_rate"]
LOSS_RTOL = 1e-3  # the training loss of every epoch
MIOU_ATOL = 0.01  # the best validation mean IoU


def worker_script(npz: Path, run_dir: Path, weights_out: Path, **overrides) -> str:
    settings = {**SETTINGS, **overrides}
    return textwrap.dedent(
        f"""
        import json, numpy as np
        from trainer.config import DataConfig, TrainConfig
        from trainer.train import fit
        cfg = TrainConfig(data=DataConfig(path={str(npz)!r}, **{DATA!r}), **{settings!r})
        result = fit(cfg, {str(run_dir)!r})
        np.savez({str(weights_out)!r}, *result.model.get_weights())
        print("RESULT", json.dumps({{"best": result.best_miou, "replicas": result.replicas,
                                     "chief": result.chief}}))
        """
    )


def run_python(code: str, env: dict | None = None, timeout: int = 600) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def result_of(proc: subprocess.Popen, timeout: int = 600) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT"))[7:])


def weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def single(small_npz, tmp_path_factory):
    """The reference: one process, one device, the custom loop, the same global batch."""
    folder = tmp_path_factory.mktemp("single")
    proc = run_python(worker_script(small_npz, folder / "run", folder / "w.npz", loop="custom"))
    return result_of(proc), last_weights(folder / "run"), folder / "run"


def single_dir(single) -> Path:
    return single[2]


def last_weights(run_dir: Path) -> list[np.ndarray]:
    """The weights at the end of the last epoch (before EarlyStopping restores the best)."""
    from trainer.evaluate import load_model

    return load_model(run_dir / "last.keras").get_weights()


def test_two_worker_processes_on_localhost(small_npz, single, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        code = worker_script(
            small_npz, tmp_path / f"run{index}", tmp_path / f"w{index}.npz", strategy="multiworker"
        )
        procs.append(run_python(code, {"TF_CONFIG": tf_config}))
    results = [result_of(p) for p in procs]  # both exit 0
    assert [r["chief"] for r in results] == [True, False] and results[0]["replicas"] == 2
    w0, w1 = weights(tmp_path / "w0.npz"), weights(tmp_path / "w1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1))  # identical on both workers
    # only the chief wrote a run folder, with everything in it
    assert not (tmp_path / "run1").exists()
    chief_files = {p.name for p in (tmp_path / "run0").iterdir()}
    assert {
        "config.json",
        "model.keras",
        "history.csv",
        "metrics.json",
        "state.json",
    } <= chief_files
    # the same as one process on the same global batch
    reference_best, reference_weights, _ = single
    assert results[0]["best"] == pytest.approx(reference_best["best"], abs=MIOU_ATOL)
    last = last_weights(tmp_path / "run0")
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(last, reference_weights)])
    print(f"weights vs one process: max {diff.max():.2e}, share > 1e-5: {(diff > 1e-5).mean():.4f}")
    assert diff.max() < WEIGHT_ATOL
    rows = list(csv.DictReader(open(tmp_path / "run0" / "history.csv")))
    assert {"learning_rate", "epoch_s", "train_frames_per_s", "val_miou"} <= set(rows[0])
    reference_rows = list(csv.DictReader(open(single_dir(single) / "history.csv")))
    for mine, theirs in zip(rows, reference_rows, strict=True):
        assert float(mine["loss"]) == pytest.approx(float(theirs["loss"]), rel=LOSS_RTOL)


SGD_SCRIPT = """
import sys, numpy as np
replicas = int(sys.argv[1])
from trainer.distributed import select_strategy, synchronize_batch_norm, train_custom
strategy = select_strategy("mirrored" if replicas > 1 else "default", replicas)
import keras
from edge.contract.labels import MARS
from edge.contract.preprocess import Preprocessing
from edge.synthetic import SyntheticConfig, generate
from trainer.config import DataConfig, TrainConfig
from trainer.losses import make_loss, per_frame
from trainer.models import build_model
from trainer.train import Prepared
made = generate(SyntheticConfig(n_train=40, n_test=0, height=32, width=32, seed=4))
images, labels = made.images.astype("float32") / 255, made.labels
data = Prepared(images[:32], labels[:32], images[32:], labels[32:], MARS, Preprocessing(32, 32), {})
cfg = TrainConfig(data=DataConfig(online_geometric=False), epochs=1, batch_size=8,
                  steps_per_epoch=4, verbose=0)
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_model("marsseg", (32, 32, 1), 5, width=0.25)
    if replicas > 1:
        synchronize_batch_norm(model)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=per_frame(make_loss("plain_ce", ignore=0)))
if sys.argv[3] == "custom":
    train_custom(model, data, cfg, strategy, 0, [], chief=True)
else:  # Keras' fit; in frame order, as its shuffle under a strategy is not the one above
    import tensorflow as tf
    frames = tf.data.Dataset.from_tensor_slices((images[:32, ..., None], labels[:32].astype("int32")))
    model.fit(frames.batch(8), epochs=1, shuffle=False, verbose=0)
np.save(sys.argv[2], np.concatenate([w.ravel() for w in model.get_weights()]))
"""


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_both_loops_are_exact_with_sgd(loop, tmp_path):
    """One replica against two on the same global batch, synchronized BatchNorm included: with
    SGD (no per-weight normalization) every weight agrees within 2e-3. Measured: 3e-4 (float32
    noise: synchronized BatchNorm computes variances as E[x^2] - E[x]^2); a replica's gradient
    counted twice gives 4e-2 (Keras' fit did that with a batch-level scalar loss: per_frame)."""
    for replicas in (1, 2):
        proc = run_python(SGD_SCRIPT.replace("sys.argv[1]", str(replicas)).replace(
            "sys.argv[2]", repr(str(tmp_path / f"r{replicas}.npy"))).replace(
            "sys.argv[3]", repr(loop)))  # fmt: skip
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    one, two = np.load(tmp_path / "r1.npy"), np.load(tmp_path / "r2.npy")
    assert np.abs(one - two).max() < 2e-3


def test_a_failure_is_one_line(small_npz, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "fit", str(small_npz), "--runs", str(tmp_path),
         "--strategy", "mirrored", "--replicas", "2", "--loop", "custom", "--batch-size", "7",
         "--width", "0.25", "--epochs", "1", "--limit", "32"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "Error: --batch-size 7 does not split over 2 replicas; use a multiple"
    import tensorflow as tf

    from trainer.distributed import one_line

    dump = "Input 0 of node x was passed a PerReplica:{\n" + "  0: <tf.Tensor ...>\n" * 300 + "}"
    line = one_line(tf.errors.InvalidArgumentError(None, None, dump))
    assert "\n" not in line and line.startswith("InvalidArgumentError: Input 0 of node x")


def test_two_cpu_devices_from_the_cli(small_npz, single, tmp_path):
    outputs = {}
    for name, args in (
        ("mirrored", ["--strategy", "mirrored", "--replicas", "2"]),
        ("custom", ["--strategy", "mirrored", "--replicas", "2", "--loop", "custom"]),
    ):
        cmd = [sys.executable, "-m", "trainer.cli", "fit", str(small_npz), "--runs", str(tmp_path),
               "--name", name, "--arch", "marsseg", "--width", "0.25", "--epochs", "2",
               "--batch-size", "8", "--lr", "1e-3", "--steps-per-epoch", "3", "--limit", "64",
               "--loss", "plain_ce", "--no-offline-aug", "--no-online-geometric", *args]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 replica(s)" in proc.stderr
        outputs[name] = json.loads((tmp_path / name / "state.json").read_text())["best"]
    reference = single[0]["best"]
    assert outputs["custom"] == pytest.approx(reference, abs=MIOU_ATOL)
    assert outputs["mirrored"] == pytest.approx(reference, abs=0.05)  # Keras' fit: its own loop


def test_mirrored_without_devices_says_what_to_do(small_npz, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "fit", str(small_npz), "--runs", str(tmp_path),
         "--strategy", "mirrored", "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "add --replicas N" in proc.stderr
