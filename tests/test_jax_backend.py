"""Keras 3 on the JAX backend as a way to train: `trainer fit` without TensorFlow, data-parallel
over two JAX CPU devices, and the `.keras` it saves through TensorFlow's converter.

Each JAX run is its own process (Keras picks its backend at import); TensorFlow is made
unimportable there, so that nothing on the JAX path can lean on it unseen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.test_distributed import DATA, SETTINGS, free_ports
from trainer.config import DataConfig, TrainConfig
from trainer.convert import ConvertConfig, check_integer_only, convert_run

ROOT = Path(__file__).resolve().parents[1]

# imported first in every JAX process: `import tensorflow` fails as on a machine without it
NO_TENSORFLOW = textwrap.dedent(
    """
    import sys
    class _NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("tensorflow is blocked in this test")
    sys.meta_path.insert(0, _NoTensorFlow())
    """
)


def run_jax(code: str, *, devices: int = 1, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW + textwrap.dedent(code)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_gpu_asked_on_a_machine_without_one_is_one_line_and_exit_2(tmp_path):
    """Settled before any data is read: the data file is garbage, and nothing is written."""
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz")
    code = f"""
        import sys
        sys.argv = ["trainer", "fit", {str(garbage)!r}, "--device", "gpu",
                    "--runs", {str(tmp_path / "runs")!r}]
        from trainer.cli import main
        main()
    """
    proc = run_jax(code, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[-1].startswith("Error: --device gpu: JAX sees no GPU on this machine")
    assert "garbage" not in proc.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_gpu_asked_under_tensorflow_is_the_same_line(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "fit", str(garbage), "--device", "gpu", "--runs",
         str(tmp_path / "runs")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: --device gpu: TensorFlow sees no GPU on this machine")
    )


@pytest.mark.slow
def test_a_jax_trained_model_converts_to_integer_only_int8(small_npz, tmp_path):
    """`trainer fit` under JAX, no TensorFlow in the process; then TensorFlow's converter turns
    its `.keras` into an int8 file that passes the integer-only check, with its parity report."""
    code = f"""
        import sys
        sys.argv = ["trainer", "fit", {str(small_npz)!r}, "--runs", {str(tmp_path)!r}, "--name",
                    "jax", "--width", "0.25", "--epochs", "2", "--limit", "64", "--batch-size",
                    "8", "--steps-per-epoch", "4"]
        from trainer.cli import main
        try:
            main()
        finally:
            print("TENSORFLOW", "tensorflow" in sys.modules)
    """
    proc = run_jax(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TENSORFLOW False" in proc.stdout
    assert "on jax; precision float32, XLA on" in proc.stderr
    run_dir = tmp_path / "jax"
    devices = json.loads((run_dir / "devices.json").read_text())
    assert devices["backend"] == "jax" and devices["kind"] == "cpu" and len(devices["devices"]) == 1
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_miou" in history[0]

    report = convert_run(run_dir, ConvertConfig(calibration_frames=8))
    ops = check_integer_only(run_dir / "model_int8.tflite")
    assert "CONV_2D" in ops and not any(op.startswith(("FLEX", "CUSTOM")) for op in ops)
    assert report["models"]["float32"]["pixel_agreement"] > 0.999  # LiteRT equals the Keras model
    assert report["models"]["int8"]["pixel_agreement"] > 0.9
    assert json.loads((run_dir / "parity.json").read_text())["frames"] == report["frames"]


# tests/test_distributed.py's SETTINGS and DATA: no augmentation, the same split and global
# batch, a loss that is a mean over all pixels. Under JAX both runs are one program over the
# global batch (XLA splits it across devices), so they differ only by the order of float additions.


@pytest.mark.slow
def test_two_jax_devices_train_as_one(small_npz, tmp_path):
    results = {}
    for devices in (1, 2):
        strategy = "mirrored" if devices > 1 else "default"
        code = f"""
            import json, numpy as np
            from trainer.config import DataConfig, TrainConfig
            from trainer.train import fit
            cfg = TrainConfig(data=DataConfig(path={str(small_npz)!r}, **{DATA!r}),
                              strategy={strategy!r}, replicas={devices}, **{SETTINGS!r})
            result = fit(cfg, {str(tmp_path / str(devices))!r})
            np.save({str(tmp_path / f"w{devices}.npy")!r},
                    np.concatenate([w.ravel() for w in result.model.get_weights()]))
            print("RESULT", json.dumps({{"replicas": result.replicas, "best": result.best_miou}}))
        """
        proc = run_jax(code, devices=devices)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
        results[devices] = json.loads(line.split(" ", 1)[1])
    assert results[1]["replicas"] == 1 and results[2]["replicas"] == 2
    one, two = np.load(tmp_path / "w1.npy"), np.load(tmp_path / "w2.npy")
    # AdamW turns float noise into at most a few learning-rate steps (see test_distributed)
    assert np.abs(one - two).max() < 5 * SETTINGS["learning_rate"]
    assert results[2]["best"] == pytest.approx(results[1]["best"], abs=0.01)
    devices = json.loads((tmp_path / "2" / "devices.json").read_text())
    assert len(devices["devices"]) == 2


@pytest.mark.slow
def test_two_jax_processes_train_as_one(small_npz, tmp_path):
    """Two processes on localhost through jax.distributed (Keras' KERAS_DISTRIBUTION_*
    variables), one CPU device each, each feeding its share of every global batch: the chief's
    weights end as one process's on the same global batches, and only the chief writes."""
    one = tmp_path / "one"
    code = f"""
        import numpy as np
        from trainer.config import DataConfig, TrainConfig
        from trainer.train import fit
        cfg = TrainConfig(data=DataConfig(path={str(small_npz)!r}, **{DATA!r}), **{SETTINGS!r})
        result = fit(cfg, {str(one)!r})
        np.save({str(tmp_path / "w1.npy")!r},
                np.concatenate([w.ravel() for w in result.model.get_weights()]))
    """
    proc = run_jax(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ports = free_ports(2)
    procs = []
    for index in (0, 1):
        code = f"""
            import numpy as np
            from trainer.config import DataConfig, TrainConfig
            from trainer.train import fit
            cfg = TrainConfig(data=DataConfig(path={str(small_npz)!r}, **{DATA!r}),
                              strategy="multiworker", **{SETTINGS!r})
            result = fit(cfg, {str(tmp_path / "two")!r})
            np.save({str(tmp_path / f"p{index}.npy")!r},
                    np.concatenate([w.ravel() for w in result.model.get_weights()]))
            print("CHIEF", result.chief, "REPLICAS", result.replicas)
        """
        env = {
            **os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "",
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": ",".join(f"localhost:{p}" for p in ports),
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
        }  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-c", NO_TENSORFLOW + textwrap.dedent(code)], env=env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "CHIEF True REPLICAS 2" in outputs[0][0] and "CHIEF False REPLICAS 2" in outputs[1][0]
    single, chief, other = (np.load(tmp_path / f) for f in ("w1.npy", "p0.npy", "p1.npy"))
    np.testing.assert_array_equal(chief, other)  # replicated: one set of weights
    assert np.abs(single - chief).max() < 5 * SETTINGS["learning_rate"]
    assert (tmp_path / "two" / "metrics.json").exists()
    devices = json.loads((tmp_path / "two" / "devices.json").read_text())
    assert len(devices["devices"]) == 2


@pytest.mark.slow
def test_the_afd_weights_reach_the_compiled_jax_step():
    """Under JAX a variable outside the model's state is a constant of the traced step; after
    the weights change, the step must see them (the loss of a fresh model compiled with them)."""
    code = """
        import numpy as np, keras
        from edge.contract.labels import MARS
        from trainer.jax_backend import retrace_after_weights_change
        from trainer.losses import AdaptiveWeights, make_loss, parse_loss_spec, per_frame
        from trainer.models import build_model
        rng = np.random.default_rng(0)
        x = rng.random((4, 32, 32, 1), dtype=np.float32)
        y = rng.integers(0, 5, (4, 32, 32)).astype(np.int32)

        def compiled(adaptive):
            keras.utils.set_random_seed(1)
            model = build_model("marsseg", (32, 32, 1), 5, width=0.25)
            loss = make_loss(parse_loss_spec("afd"), None, adaptive, ignore=0)
            model.compile(optimizer="sgd", loss=per_frame(loss))
            return model

        adaptive = AdaptiveWeights(5)
        model = compiled(adaptive)
        before = float(model.test_on_batch(x, y))
        adaptive.update(np.array([0.0, 0.9, 0.1, 0.5, 0.0]))
        stale = float(model.test_on_batch(x, y))
        retrace_after_weights_change(model)
        after = float(model.test_on_batch(x, y))
        fresh = AdaptiveWeights(5)
        fresh.update(np.array([0.0, 0.9, 0.1, 0.5, 0.0]))
        reference = float(compiled(fresh).test_on_batch(x, y))
        print("LOSSES", before, stale, after, reference)
    """
    proc = run_jax(code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, stale, after, reference = map(float, proc.stdout.split("LOSSES")[1].split())
    assert stale == pytest.approx(before)  # what the trace alone would have kept using
    assert after == pytest.approx(reference, rel=1e-5) and abs(after - before) > 1e-3


def _frames(n=20, h=8, w=8):
    rng = np.random.default_rng(3)
    images = rng.random((n, h, w), dtype=np.float32)
    labels = np.tile(np.arange(n, dtype=np.uint8)[:, None, None], (1, h, w))  # label = frame id
    return images, labels


def _cfg(geometric=True):
    return TrainConfig(data=DataConfig(online_geometric=geometric), seed=5)


def test_the_jax_input_stream_covers_each_pass_once_in_a_new_order():
    from trainer.jax_backend import FramesDataset

    images, labels = _frames()
    ds = FramesDataset(images, labels, 4, training=True, cfg=_cfg(False), steps=3)
    seen = []
    for epoch in range(5):  # 15 batches of 4 = 60 frames = 3 passes over 20
        ds.epoch = epoch  # what StreamEpoch does before each epoch
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (4, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
            seen += y[:, 4, 4].tolist()
    passes = [seen[k : k + 20] for k in range(0, 60, 20)]
    assert all(sorted(p) == list(range(20)) for p in passes)
    assert passes[0] != passes[1] != passes[2]


def test_the_jax_input_is_the_same_in_whichever_order_batches_are_made():
    from trainer.jax_backend import FramesDataset

    images, labels = _frames()
    one = FramesDataset(images, labels, 4, training=True, cfg=_cfg())
    other = FramesDataset(images, labels, 4, training=True, cfg=_cfg())
    backwards = [other[i] for i in reversed(range(len(other)))][::-1]
    for i, (x, y) in enumerate(backwards):
        np.testing.assert_array_equal(one[i][0], x)
        np.testing.assert_array_equal(one[i][1], y)
    assert not np.array_equal(one[0][0][..., 0], images[one[0][1][:, 4, 4]])  # augmented


def test_the_jax_input_shards_are_disjoint_and_even():
    """Every process must run as many steps on as many frames: an odd count is cut (training)
    or padded with blanks (validation), never left to one process."""
    from trainer.jax_backend import FramesDataset

    images, labels = _frames(n=23)
    shards = [
        FramesDataset(images, labels, 2, training=True, cfg=_cfg(False), shard=(2, k))
        for k in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 5
    ids = [set(np.concatenate([s[i][1][:, 4, 4] for i in range(len(s))]).tolist()) for s in shards]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 20
    val = FramesDataset(images, labels, 4, training=False, cfg=_cfg())
    assert len(val) == 6 and sum(len(val[i][1]) for i in range(len(val))) == 23
    halves = [FramesDataset(images, labels + 1, 4, training=False, cfg=_cfg(), shard=(2, k))
              for k in (0, 1)]  # fmt: skip
    sizes = [[len(h[i][1]) for i in range(len(h))] for h in halves]
    assert sizes[0] == sizes[1] == [4, 4, 4]
    seen = np.concatenate([h[i][1][:, 4, 4] for h in halves for i in range(len(h))])
    assert sorted(seen[seen > 0].tolist()) == list(range(1, 24)) and (seen == 0).sum() == 1


def test_a_last_validation_batch_is_padded_to_split_over_the_devices():
    from trainer.jax_backend import FramesDataset

    images, labels = _frames(n=13)
    labels = labels + 1  # no frame of the ignored label 0
    val = FramesDataset(images, labels, 8, training=False, cfg=_cfg(), multiple=2)
    x, y = val[1]  # frames 8-12 and one pad
    assert x.shape == (6, 8, 8, 1) and (y[5] == 0).all() and (x[5] == 0).all()
    np.testing.assert_array_equal(y[:5, 4, 4], np.arange(9, 14))
    bare = FramesDataset(images, labels, 8, training=False, cfg=_cfg(), multiple=2,
                         pad_label=None)  # fmt: skip
    assert len(bare[1][1]) == 4
