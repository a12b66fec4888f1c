from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.contract.labels import MARS
from tests.conftest import write_course_npz
from trainer import data as D
from trainer.config import DataConfig, TrainConfig


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
    rock = D.has_hazard(labels, MARS)
    assert 2 <= rock.sum() < len(labels) // 2
    train, val = D.split_indices(labels, 0.2, seed=3, label_set=MARS)
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).size == len(labels)
    assert rock[train].any() and rock[val].any()
    assert abs(rock[val].mean() - rock.mean()) < 0.1
    again = D.split_indices(labels, 0.2, seed=3, label_set=MARS)
    np.testing.assert_array_equal(val, again[1])


def test_split_puts_a_single_pair_of_rock_frames_on_both_sides(rng):
    labels = np.ones((50, 8, 8), np.uint8)
    labels[[4, 30], 0, 0] = 4
    for seed in range(5):
        train, val = D.split_indices(labels, 0.1, seed, label_set=MARS)
        assert len(np.intersect1d([4, 30], val)) == 1 and len(np.intersect1d([4, 30], train)) == 1


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        D.split_indices(np.zeros((4, 8, 8), np.uint8), 1.5, label_set=MARS)


# ----------------------------------------------------------------------------------------------
# AI4Mars: tiny folders in both release layouts.


def navcam_id(i: int, site: int) -> str:
    """A NAVCAM product id like the release's: camera, clock, EDR, site and drive."""
    return f"NLB_{400000000 + i:09d}EDR_F{site:03d}0000NCAM00{i:03d}M1"


def ai4mars_label(size: int, i: int) -> np.ndarray:
    """Rows 0-3 unlabelled (255, "sky"), then bands of soil, bedrock, sand; a big rock in frames
    0 and 1."""
    label = np.full((size, size), 255, np.uint8)
    label[4:12], label[12:20], label[20:] = 0, 1, 2
    if i < 2:
        label[22:26, 4:8] = 3
    return label


def make_ai4mars(
    root: Path, layout: str = "ncam", n_train: int = 6, n_test: int = 2, masks: bool = True
) -> Path:
    """An AI4Mars folder: ``layout`` ``ncam`` (msl/ncam/...) or ``merged`` (msl/...), 32x32
    frames, train labels, the min1 and min3 expert test sets, rover and range masks.

    Frame i is at site i // 2 (two frames per rover position); test frames come after the
    training ones and also have a train label (the loader must not train on them).
    """
    cam = root / "msl" / "ncam" if layout == "ncam" else root / "msl"
    folders = {
        k: cam / v
        for k, v in {
            "edr": "images/edr", "mxy": "images/mxy", "rng": "images/rng-30m",
            "train": "labels/train", "min1": "labels/test/masked-gold-min1-100agree",
            "min3": "labels/test/masked-gold-min3-100agree",
        }.items()
    }  # fmt: skip
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_test):
        name = navcam_id(i, site=i // 2)
        grey = np.full((32, 32), 40 + 15 * i % 200, np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(folders["edr"] / f"{name}.JPG")
        Image.fromarray(ai4mars_label(32, i)).save(folders["train"] / f"{name}.png")
        if i >= n_train:
            for agreement in ("min1", "min3"):
                merged = ai4mars_label(32, i)
                merged[20:] = 3 if agreement == "min1" else 2  # tells the two sets apart
                Image.fromarray(merged).save(folders[agreement] / f"{name}_merged.png")
        if masks:
            rover = np.zeros((32, 32), np.uint8)
            rover[28:, :] = 1  # the bottom rows are rover hardware
            far = np.zeros((16, 16), np.uint8)  # masks of another size are resized
            far[2:4, :] = 1  # beyond 30 m: label rows 4-7
            Image.fromarray(rover).save(folders["mxy"] / f"{name.replace('EDR', 'MXY')}.png")
            Image.fromarray(far).save(folders["rng"] / f"{name.replace('EDR', 'RNG')}.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folders["edr"] / "unlabelled_frame.JPG")
    return root


@pytest.mark.parametrize("layout", ["ncam", "merged"])
@pytest.mark.parametrize("entry", ["root", "msl", "camera", "images/edr"])
def test_ai4mars_found_from_the_root_or_any_folder_under_it(tmp_path, layout, entry):
    root = make_ai4mars(tmp_path, layout)
    camera = root / "msl" / ("ncam" if layout == "ncam" else "")
    path = {
        "root": root,
        "msl": root / "msl",
        "camera": camera,
        "images/edr": camera / "images" / "edr",
    }
    data = D.load_dataset(path[entry], size=(16, 16))
    assert data.layout == "ai4mars" and data.images.shape == (6, 16, 16)
    assert data.test_images.shape == (2, 16, 16) and len(data.test_names) == 2
    # the test frames also have train labels: they must not be trained on
    assert not set(data.names) & set(data.test_names)


def test_ai4mars_labels_are_mapped_and_masks_applied(tmp_path):
    data = D.load_dataset(make_ai4mars(tmp_path), size=(32, 32))
    labels = data.labels[0]
    assert (labels[:4] == 0).all()  # 255 -> 0 (sky)
    assert (labels[4:8] == 0).all()  # soil, but the range mask says beyond 30 m
    assert (labels[8:12] == 1).all() and (labels[12:20] == 2).all()  # soil 0 -> 1, bedrock 1 -> 2
    assert (labels[22:26, 4:8] == 4).all() and (labels[20:22] == 3).all()  # big rock, sand
    assert (labels[28:] == 0).all()  # rover hardware
    assert data.images.dtype == np.float32 and data.images[3].mean() == pytest.approx(
        85 / 255, abs=0.02
    )


def test_ai4mars_test_split_follows_the_agreement_level(tmp_path):
    root = make_ai4mars(tmp_path)
    min3 = D.load_dataset(root, size=(32, 32), agreement=3)
    min1 = D.load_dataset(root, size=(32, 32), agreement=1)
    assert (min3.test_labels[:, 24, 16] == 3).all()  # sand
    assert (min1.test_labels[:, 24, 16] == 4).all()  # big rock


def test_ai4mars_without_masks_or_test_split(tmp_path):
    root = make_ai4mars(tmp_path, n_test=0, masks=False)
    data = D.load_dataset(root, size=(32, 32))
    assert data.test_images is None and (data.labels[:, 4:8] == 1).all()


def test_ai4mars_frame_size_is_the_callers_and_nothing_is_cropped(tmp_path):
    root = make_ai4mars(tmp_path)
    data = D.load_dataset(root, size=(8, 16))
    assert data.images.shape[1:] == (8, 16) and data.preprocessing.size == (8, 16)
    assert (data.labels[0, 0] == 0).all() and (data.labels[0, 3] == 2).all()  # top and bottom kept
    cropped = D.load_dataset(root, size=(8, 16), crop="centre")  # keeps the middle 16 rows
    assert cropped.preprocessing.crop == "centre" and (cropped.labels[0, 0] == 1).all()


def test_ai4mars_through_a_symlinked_folder(tmp_path):
    make_ai4mars(tmp_path / "store")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "ai4mars").symlink_to(tmp_path / "store", target_is_directory=True)
    assert len(D.load_dataset(tmp_path / "datasets", size=(16, 16)).images) == 6


def test_ai4mars_groups_keep_a_rover_position_on_one_side(tmp_path):
    data = D.load_dataset(make_ai4mars(tmp_path, n_train=12, n_test=0), size=(16, 16))
    assert len(np.unique(data.groups)) == 6
    for seed in range(4):
        train, val = D.split_indices(data.labels, 0.34, seed, data.groups, label_set=MARS)
        assert not set(data.groups[train]) & set(data.groups[val])
        assert len(val) in (4, 6)


def test_outlier_filter_is_for_the_course_file_only(tmp_path):
    from trainer.config import DataConfig

    root = make_ai4mars(tmp_path, n_train=12, n_test=0)
    data = D.load_dataset(root, size=(16, 16))  # frames 2-11 share one mask: honest, kept
    clean, _, _, report = D.clean_and_split(data, DataConfig(path=str(root)))
    assert report is None and len(clean.images) == 12
    forced = DataConfig(remove_outliers=True, group_split=False)
    assert D.clean_and_split(data, forced)[3].count == 10


def test_ai4mars_rejects_unknown_label_values(tmp_path):
    root = make_ai4mars(tmp_path)
    label = root / "msl" / "ncam" / "labels" / "train" / f"{navcam_id(0, 0)}.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(label)
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        D.load_dataset(root)


def test_ai4mars_without_pairs_or_layout(tmp_path):
    root = tmp_path / "copy"
    (root / "images" / "edr").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "images" / "edr" / "a.jpg")
    with pytest.raises(ValueError, match="no frame has a label of the same name"):
        D.load_dataset(root)
    (tmp_path / "other" / "frames").mkdir(parents=True)
    with pytest.raises(ValueError, match="not an AI4Mars folder"):
        D.load_dataset(tmp_path / "other" / "frames")


def test_npz_keeps_its_own_size(small_npz):
    with pytest.raises(ValueError, match="holds 64x128 frames"):
        D.load_dataset(small_npz, size=(96, 96))
    assert D.load_dataset(small_npz, size=(64, 128)).frame_shape == (64, 128)


def test_a_lone_group_of_a_stratum_trains():
    """Every big rock at one rover position: that position trains, validation still gets
    frames, and nothing is left out."""
    labels = np.ones((10, 4, 4), np.uint8)
    labels[[0, 1], 0, 0] = 4
    groups = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    train, val = D.split_indices(labels, 0.3, 0, groups, label_set=MARS)
    assert {0, 1} <= set(train) and len(val) and len(train) + len(val) == 10
    two = np.ones((2, 4, 4), np.uint8)
    two[0, 0, 0] = 4
    assert [x.tolist() for x in D.split_indices(two, 0.2, 0, label_set=MARS)] == [[0], [1]]


def expert_only(root):
    """An AI4Mars copy that holds only the expert test labels (no labels/train)."""
    import shutil

    make_ai4mars(root, n_train=0, n_test=3)
    shutil.rmtree(root / "msl" / "ncam" / "labels" / "train")
    return root


def test_an_expert_test_only_folder_loads_with_no_training_frames(tmp_path):
    data = D.load_dataset(expert_only(tmp_path), size=(16, 16))
    assert data.images.shape == (0, 16, 16) and data.test_images.shape == (3, 16, 16)


def test_an_expert_test_only_folder_is_inspected_and_refused_for_training(tmp_path):
    from trainer.inspection import inspect_dataset
    from trainer.train import prepare_data

    root = expert_only(tmp_path / "data")
    result = inspect_dataset(root, tmp_path / "inspect", size=(16, 16))
    assert result.summary["described"] == "test" and result.summary["n_test"] == 3
    assert result.summary["n_train"] == 0 and "expert test frames" in result.text()
    assert result.summary["class_fractions"]["sand"] > 0
    cfg = TrainConfig(data=DataConfig(path=str(root), size="16x16"))
    with pytest.raises(ValueError, match=r"no training labels, only 3 expert test frames"):
        prepare_data(cfg)


def test_evaluate_scores_an_expert_test_only_folder_at_each_agreement(tmp_path):
    from trainer.config import to_json
    from trainer.evaluate import evaluate_run
    from trainer.models import build_model

    root = expert_only(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    build_model("marsseg", (32, 32, 1), 5, width=0.25).save(run / "model.keras")
    to_json(TrainConfig(data=DataConfig(path=str(root), size="32x32")), run / "config.json")
    min3 = evaluate_run(run, root, "test", tmp_path / "e3")
    min1 = evaluate_run(run, root, "test", tmp_path / "e1", agreement=1)
    assert min3["frames"] == min1["frames"] == 3
    assert (min3["test_agreement"], min1["test_agreement"]) == (3, 1)
    # min1 labels the bottom rows big rock, min3 sand: the two scores read different labels
    assert min1["confusion"] != min3["confusion"]


def _recorded_run(folder: Path, val_names: list[str], manifest: bool = False) -> Path:
    """A run folder (data.json) or a shipped model folder (manifest.json) recording a split."""
    import json

    folder.mkdir(parents=True)
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"data": {"val_names": val_names}}))
    else:
        (folder / "data.json").write_text(json.dumps({"val_names": val_names}))
    return folder


@pytest.mark.parametrize("manifest", [False, True])
def test_split_from_keeps_the_recorded_validation_frames(tmp_path, manifest):
    root = make_ai4mars(tmp_path / "data", n_train=12, n_test=0)
    data = D.load_dataset(root, size=(16, 16))
    chosen = [data.names[i] for i in (9, 2, 3)]  # in any order
    source = _recorded_run(tmp_path / "run", chosen, manifest)
    _, train, val, _ = D.clean_and_split(data, DataConfig(path=str(root), split_from=str(source)))
    assert val.tolist() == [2, 3, 9]
    assert train.tolist() == [i for i in range(12) if i not in (2, 3, 9)]
    # the split is the record's at any frame size, not the one the stratification would draw
    other = D.load_dataset(root, size=(8, 8))
    assert D.clean_and_split(other, DataConfig(split_from=str(source)))[2].tolist() == [2, 3, 9]


def test_split_from_refuses_frames_the_data_lacks_or_a_folder_without_a_split(tmp_path):
    root = make_ai4mars(tmp_path / "data", n_train=6, n_test=0)
    data = D.load_dataset(root, size=(16, 16))
    source = _recorded_run(tmp_path / "run", [data.names[0], "NLB_elsewhere"])
    with pytest.raises(ValueError, match=r"1 of the 2 validation frames of .* not in .*NLB_else"):
        D.clean_and_split(data, DataConfig(split_from=str(source)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="records no validation frames"):
        D.clean_and_split(data, DataConfig(split_from=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="no such file or folder"):
        D.clean_and_split(data, DataConfig(split_from=str(tmp_path / "gone")))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "data.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a JSON object expected, found list"):
        D.clean_and_split(data, DataConfig(split_from=str(tmp_path / "list")))
    # none: a split drawn by seed, as without the setting
    anew = D.clean_and_split(data, DataConfig(split_from="none"))[2]
    assert anew.tolist() == D.clean_and_split(data, DataConfig())[2].tolist()


def test_init_from_a_run_keeps_its_split_and_evaluation_finds_it_in_the_run(tmp_path, caplog):
    """Fine-tuning from a model (at another size, say) must not train on the frames that model
    was validated on; the new run then validates on those frames wherever it is moved."""
    import json

    from trainer.evaluate import run_split
    from trainer.train import _split_like_init

    root = make_ai4mars(tmp_path / "data", n_train=12, n_test=0)
    data = D.load_dataset(root, size=(16, 16))
    init = _recorded_run(tmp_path / "init", [data.names[i] for i in (4, 5)])
    (init / "m.keras").touch()  # the weights, as far as the split is concerned
    cfg = TrainConfig(data=DataConfig(path=str(root), size="16x16"), init=str(init / "m.keras"))
    _split_like_init(cfg, data)
    assert cfg.data.split_from == str(init.resolve())
    other = TrainConfig(data=DataConfig(path=str(root)), init=str(_recorded_run(
        tmp_path / "npz-run", ["frame_of_other_data"])))  # fmt: skip
    _split_like_init(other, data)
    assert other.data.split_from is None  # another data set's split: split anew
    # --limit cut off one or all of the init's frames: split anew, with a warning, never fail
    for limit, cut in ((5, 1), (3, 2)):
        limited = TrainConfig(data=DataConfig(path=str(root), limit=limit), init=str(init))
        with caplog.at_level("WARNING"):
            _split_like_init(limited, D.clean_frames(data, limited.data)[0], data.names)
        assert limited.data.split_from is None
        assert f"validated on 2 frames, {cut} of them not among these" in caplog.text
        caplog.clear()
    # --split-from none: split anew although the init recorded a split
    refused = TrainConfig(data=DataConfig(path=str(root), split_from="none"), init=str(init))
    _split_like_init(refused, data)
    assert (
        D.clean_and_split(data, refused.data)[2].tolist()
        == D.clean_and_split(data, DataConfig())[2].tolist()
    )
    # a run made with it, its init since deleted: evaluation reads its own data.json
    from trainer.config import to_json

    run = tmp_path / "run"
    run.mkdir()
    to_json(cfg, run / "config.json")
    (run / "data.json").write_text(json.dumps({"val_names": [data.names[i] for i in (4, 5)]}))
    for file in init.iterdir():
        file.unlink()
    assert run_split(run, root)[2].tolist() == [4, 5]
    # and --resume keeps the run's own split
    from trainer.train import prepare_data

    cfg.batch_size = 2
    kept = prepare_data(cfg, own_split=run).info
    assert kept["val_names"] == [data.names[i] for i in (4, 5)]
    assert kept["split_from"] == str(init.resolve()) and not kept["grouped_split"]
