"""Real training on tiny synthetic data: the run directory, resume, interrupt, evaluate, predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from trainer.cli import main
from trainer.config import DataConfig, TrainConfig
from trainer.train import fit, resume_config

pytestmark = pytest.mark.slow
RUN_FILES = (
    "config.json",
    "model.keras",
    "last.keras",
    "state.json",
    "history.csv",
    "curves.png",
    "metrics.json",
    "confusion.png",
    "devices.json",
)


def tiny_config(npz, **overrides) -> TrainConfig:
    values = {
        "model": "marsseg",
        "width": 0.25,
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "steps_per_epoch": 3,
        "verbose": 0,
        **overrides,
    }
    return TrainConfig(data=DataConfig(path=str(npz), limit=80, big_rock_repeats=2), **values)


def _history_rows(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_run(small_npz, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = fit(tiny_config(small_npz), run_dir)
    return run_dir, result


def test_fit_leaves_a_complete_run(trained_run):
    run_dir, result = trained_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert not list(run_dir.glob(".*partial*"))
    assert result.epochs_run == 2 and not result.interrupted
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and set(metrics["per_class_iou"]) == {
        "soil",
        "bedrock",
        "sand",
        "big_rock",
    }
    assert json.loads((run_dir / "config.json").read_text())["model"] == "marsseg"
    devices = json.loads((run_dir / "devices.json").read_text())  # what it trained on
    assert devices["backend"] == "tensorflow" and devices["kind"] in ("cpu", "gpu")
    assert devices["devices"]
    assert devices["precision"] == "float32" and "tensorflow" in devices["versions"]
    rows = _history_rows(run_dir)
    assert len(rows) == 2 and "val_miou" in rows[0] and "val_iou_big_rock" in rows[0]
    assert result.best_miou == pytest.approx(max(float(r["val_miou"]) for r in rows), abs=1e-6)


def test_resume_continues_from_the_last_epoch(small_npz, tmp_path):
    run_dir = tmp_path / "resumable"
    fit(tiny_config(small_npz, epochs=1), run_dir)
    cfg, changes = resume_config(run_dir, {"epochs": 2, "learning_rate": 5e-4, "width": 0.25})
    assert changes == ["epochs 1 -> 2", "learning_rate 0.001 -> 0.0005"]  # width unchanged
    result = fit(cfg, run_dir, resume=True)
    rows = _history_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1e-3, 5e-4])
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 2 and result.epochs_run == 2
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    schedule = json.loads((run_dir / "state.json").read_text())["schedule"]
    assert set(schedule) == {"plateau_wait", "plateau_best", "stop_wait", "stop_best"}
    with pytest.raises(ValueError, match=r"cannot change width \(0.25 in the run, 0.5 asked\)"):
        resume_config(run_dir, {"width": 0.5})


def test_evaluating_on_other_data_is_refused(trained_run, small_npz, tmp_path):
    from edge.synthetic import SyntheticConfig, write_npz
    from trainer.evaluate import run_split

    other = tmp_path / "other.npz"
    write_npz(SyntheticConfig(n_train=160, n_test=4, seed=9, big_rock_rate=0.2), other)
    with pytest.raises(ValueError, match="validation frames other than the run's"):
        run_split(trained_run[0], other)


def test_too_few_frames_for_a_batch_says_so(small_npz, tmp_path):
    with pytest.raises(ValueError, match="do not fill one batch of 512: lower --batch-size"):
        fit(tiny_config(small_npz, batch_size=512), tmp_path / "tiny_batch")


def test_existing_run_is_not_overwritten(trained_run, small_npz):
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        fit(tiny_config(small_npz), trained_run[0])


def test_keyboard_interrupt_keeps_best_checkpoint_and_history(small_npz, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    run_dir = tmp_path / "interrupted"
    result = fit(tiny_config(small_npz, epochs=3), run_dir, callbacks=[Interrupt()])
    assert result.interrupted and result.epochs_run == 1
    assert len(_history_rows(run_dir)) == 1
    from trainer.evaluate import load_model

    assert load_model(run_dir / "model.keras").output_shape == (None, 64, 128, 5)
    assert (run_dir / "metrics.json").exists() and not list(run_dir.glob(".*partial*"))


def test_evaluate_and_predict_cli(trained_run, small_npz, tmp_path):
    run_dir, _ = trained_run
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["evaluate", str(run_dir), str(small_npz), "--split", "test", "--out", str(tmp_path / "e")],
    )
    assert result.exit_code == 0, result.output
    assert "mean IoU" in result.output and "big_rock" in result.output
    for name in ("metrics.json", "confusion.png", "worst_frames.png"):
        assert (tmp_path / "e" / name).is_file()
    csv_path = tmp_path / "submission.csv"
    result = runner.invoke(
        main,
        [
            "predict",
            str(run_dir),
            str(small_npz),
            "--submission",
            str(csv_path),
            "--masks",
            str(tmp_path / "masks"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "id," + ",".join(str(i) for i in range(64 * 128))
    assert len(lines) == 1 + 24
    values = np.array(lines[1].split(",")[1:], dtype=int)
    assert values.size == 8192 and set(np.unique(values)) <= {0, 1, 2, 3, 4}
    assert len(list((tmp_path / "masks").glob("*.png"))) == 24


@pytest.mark.parametrize("flag", ["--arch", "--model"])  # --model: the older name, still taken
def test_fit_cli_rejects_unknown_architecture(flag, small_npz, tmp_path):
    result = CliRunner().invoke(
        main, ["fit", str(small_npz), flag, "resnet", "--runs", str(tmp_path)]
    )
    assert result.exit_code == 2 and "valid names: deeplabv3plus" in result.output


def test_fit_help_names_the_architecture_option():
    result = CliRunner().invoke(main, ["fit", "--help"], terminal_width=100)
    assert (
        "--arch, --model TEXT" in result.output and "edge-seg, --model is a model" in result.output
    )


def test_mirrored_strategy_over_two_cpu_devices(small_npz, tmp_path):
    """MirroredStrategy needs the logical devices before TensorFlow starts: a fresh process."""
    code = textwrap.dedent(
        f"""
        from trainer.train import fit, resume_config
        from tests.test_train import tiny_config
        result = fit(tiny_config({str(small_npz)!r}, epochs=1, strategy="mirrored", replicas=2),
                     {str(tmp_path / "mirrored")!r})
        print("REPLICAS-OK", result.epochs_run, result.replicas)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert "REPLICAS-OK 1 2" in proc.stdout, proc.stderr[-3000:]


def test_init_starts_from_another_runs_weights(trained_run, small_npz, tmp_path):
    source = keras.saving.load_model(trained_run[0] / "model.keras", compile=False)
    seen = {}

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["weights"] = [w.copy() for w in self.model.get_weights()]

    cfg = tiny_config(small_npz, epochs=1, init=str(trained_run[0]))
    fit(cfg, tmp_path / "finetuned", callbacks=[FirstWeights()])
    for got, want in zip(seen["weights"], source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"do not fit marsseg here \(another model, width"):
        fit(tiny_config(small_npz, width=0.5, init=str(trained_run[0])), tmp_path / "wider")
    with pytest.raises(ValueError, match=r"--init .*: no model at"):
        fit(tiny_config(small_npz, init=str(tmp_path / "nowhere")), tmp_path / "missing")


def test_ema_saves_the_average_of_the_weights(trained_run, small_npz, tmp_path):
    """With a momentum near 1 the average barely leaves the starting weights, while the
    optimizer's own weights do: model.keras must hold the average (and validation score it).
    Keras starts the average at the weights after the first step, so it moves by about one
    step while the plain run moves by six."""

    def moved(run_dir):
        start = keras.saving.load_model(trained_run[0] / "model.keras", compile=False)
        end = keras.saving.load_model(run_dir / "model.keras", compile=False)
        return max(
            float(np.max(np.abs(a.numpy() - b.numpy())))
            for a, b in zip(start.trainable_weights, end.trainable_weights, strict=True)
        )

    common = {"epochs": 1, "steps_per_epoch": 6, "init": str(trained_run[0])}
    fit(tiny_config(small_npz, **common), tmp_path / "plain")
    fit(tiny_config(small_npz, ema=0.9999, **common), tmp_path / "ema")
    plain, averaged = moved(tmp_path / "plain"), moved(tmp_path / "ema")
    assert plain > 1e-3
    assert averaged < plain / 3
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["ema"] == 0.9999
    with pytest.raises(ValueError, match=r"--ema 1.5: a momentum in \[0, 1\)"):
        fit(tiny_config(small_npz, ema=1.5), tmp_path / "bad")


def test_fit_gets_one_loss_per_frame(small_npz):
    """Keras divides a loss by the replicas only when it reduces per-frame values itself; a
    batch-level scalar made MirroredStrategy apply the sum of the replicas' gradients."""
    from trainer.losses import parse_loss_spec
    from trainer.train import build_training_model, prepare_data

    cfg = tiny_config(small_npz)
    data = prepare_data(cfg)
    state = {"epoch": 0, "lr": cfg.learning_rate}
    model, _ = build_training_model(cfg, data, parse_loss_spec(cfg.loss), state, None)
    labels = data.train_labels[:3].astype(np.int32)
    probs = model(data.train_images[:3, ..., None]).numpy()
    values = np.asarray(model.loss(labels, probs))
    assert values.shape == (3,) and np.all(values == values[0]) and values[0] > 0


def test_a_cosine_run_checkpoints_and_resumes_on_its_schedule(small_npz, tmp_path):
    run_dir = tmp_path / "cosine"
    cfg = tiny_config(small_npz, schedule="cosine", warmup_epochs=0.5, epochs=2, min_lr=1e-5)
    fit(cfg, run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] == 2 and state["schedule"]["plateau_best"] is None  # no plateau used
    rates = [float(r["learning_rate"]) for r in _history_rows(run_dir)]
    assert rates[0] > rates[1] > 1e-5  # past the warm-up, decaying
    resumed, _ = resume_config(run_dir, {"epochs": 3})
    fit(resumed, run_dir, resume=True)
    assert len(_history_rows(run_dir)) == 3
