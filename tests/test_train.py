"""Training, the validation-only threshold, saved models and `predict` on tiny synthetic data and tiny models."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import log_loss

from conftest import REPO
from cxr import evaluate, model as cxr_model, train
from cxr.config import Config
from cxr.predict import predict_files

SIZE = 32
pytestmark = pytest.mark.backend  # also run under KERAS_BACKEND=jax by `make test`


def toy_data(n: int = 24, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Noise images; PNEUMONIA ones carry a bright square (bacteria top-left, virus bottom-right)."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                img = rng.integers(0, 80, (SIZE, SIZE)).astype(np.uint8)
                subtype = "normal" if label == "NORMAL" else ("bacteria" if i % 2 else "virus")
                if subtype == "bacteria":
                    img[4:14, 4:14] = 230
                elif subtype == "virus":
                    img[18:28, 18:28] = 230
                rows.append({"path": f"{split}/{label}/{i}.jpeg", "official_split": "test" if split == "test" else
                             "train", "split": split, "label": label, "subtype": subtype,
                             "patient_id": f"{label}-{split}-{i}"})
                images.append(img)
    return pd.DataFrame(rows), np.stack(images)


def tiny_config(**changes) -> Config:
    base = dict(backbone="tiny_cnn", weights=None, image_size=SIZE, batch_size=16, head_epochs=8, head_lr=3e-3,
                finetune_epochs=3, finetune_lr=1e-2, patience=8, n_bootstrap=50, mixed_precision="off",
                class_balance="none", aug_rotation=0.0, aug_scale=0.0, aug_shift=0.0, aug_shear=0.0,
                aug_brightness=0.0, aug_contrast=0.0, aug_gamma=0.0, aug_noise=0.0)
    return Config(**{**base, **changes})


@pytest.fixture(scope="module")
def trained():
    index, images = toy_data()
    cfg = tiny_config()
    return cfg, index, images, train.fit(cfg, index, images, task="pneumonia")


def val_log_loss(model, index, images, task="pneumonia") -> float:
    _, y, p = train.predict_split(model, index, images, task, "val")
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


def test_fit_lowers_the_validation_loss_and_keeps_the_finetuned_stage(trained):
    """The whole backbone fine-tuned beats the frozen-feature head on validation log-loss, so it is kept, and the
    kept model is the best fine-tuning epoch (its validation log-loss is the one recorded)."""
    cfg, index, images, result = trained
    h = result.history
    assert list(h["stage"].unique()) == ["head", "finetune"]
    assert {"epoch", "loss", "val_loss", "val_auroc", "lr"} <= set(h.columns)
    assert h["val_loss"].iloc[-1] < h["val_loss"].iloc[0]
    sel = result.selection.set_index("stage")
    assert sel.loc["finetune", "val_loss"] < sel.loc["head", "val_loss"]
    assert result.kept_stage == "finetune" and sel.loc["finetune", "kept"] and not sel.loc["head", "kept"]
    ft = h[h["stage"] == "finetune"]
    assert sel.loc["finetune", "val_loss"] == pytest.approx(ft["val_loss"].min())
    assert sel.loc["finetune", "epochs"] == cfg.finetune_epochs
    assert val_log_loss(result.model, index, images) == pytest.approx(sel.loc["finetune", "val_loss"], rel=1e-4)
    assert set(result.seconds) >= {"features", "head", "finetune"}
    assert result.batch_size == 16 and result.precision == "float32"
    _, y, p = train.predict_split(result.model, index, images, "pneumonia", "val")
    assert evaluate.metric_values(y, p, 0.5)["auroc"] > 0.9  # the square is easy to see
    assert [layer.name for layer in result.model.layers] == list(cxr_model.LAYER_ORDER)  # no augmentation inside


def test_a_finetune_that_does_not_beat_the_head_is_rolled_back():
    """A learning rate that wrecks the backbone: the head stage is kept, with exactly its weights."""
    index, images = toy_data(n=12, seed=1)
    cfg = tiny_config(head_epochs=3, finetune_epochs=1)
    head_only = train.fit(cfg.replace(finetune_epochs=0), index, images)
    wrecked = train.fit(cfg.replace(finetune_lr=1e4, weight_decay=0.0), index, images)
    assert wrecked.kept_stage == "head" and list(wrecked.selection["stage"]) == ["head", "finetune"]
    sel = wrecked.selection.set_index("stage")
    assert sel.loc["finetune", "val_loss"] >= sel.loc["head", "val_loss"] and sel.loc["head", "kept"]
    assert head_only.kept_stage == "head" and list(head_only.selection["stage"]) == ["head"]
    for a, b in zip(head_only.model.get_weights(), wrecked.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_class_balance_auto_compares_the_options_on_validation_log_loss():
    index, images = toy_data(n=12, seed=2)
    keep = ~((index["split"] == "train") & (index["label"] == "NORMAL") & (np.arange(len(index)) % 4 != 0))
    index, images = index[keep].reset_index(drop=True), images[keep.to_numpy()]  # 1 NORMAL : 4 PNEUMONIA in train
    result = train.fit(tiny_config(head_epochs=3, finetune_epochs=0, class_balance="auto"), index, images)
    table = result.class_balance
    assert sorted(table["option"]) == ["none", "sampling", "weights"] and table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "option"].item() == result.balance
    assert table.loc[table["chosen"], "val_loss"].item() == table["val_loss"].min()
    assert result.selection.loc[0, "val_loss"] == pytest.approx(table["val_loss"].min())
    assert val_log_loss(result.model, index, images) == pytest.approx(table["val_loss"].min(), rel=1e-4)
    single = train.fit(tiny_config(head_epochs=3, finetune_epochs=0, class_balance="weights"), index, images)
    assert list(single.class_balance["option"]) == ["weights"] and single.balance == "weights"


def test_fit_restores_the_global_dtype_policy():
    import keras

    index, images = toy_data(n=8)
    before = keras.mixed_precision.global_policy().name
    result = train.fit(tiny_config(head_epochs=1, finetune_epochs=0, mixed_precision="on"), index, images)
    assert result.precision == "mixed_bfloat16"
    assert result.model.get_layer("logit").dtype_policy.name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == before


def test_batch_size_and_precision_follow_the_accelerator():
    from cxr.train import device

    if device.accelerator() == "cpu":
        assert train.batch_size(Config()) == 32 and train.batch_size(Config(), n_devices=2) == 64
        assert train.precision_policy(Config()) == "float32"
    assert train.batch_size(Config(batch_size=48), n_devices=4) == 48
    with pytest.raises(ValueError, match="multiple"):
        train.batch_size(Config(batch_size=30), n_devices=4)
    assert train.precision_policy(Config(mixed_precision="on")) == "mixed_bfloat16"  # on every backend
    assert train.precision_policy(Config(mixed_precision="off")) == "float32"


def test_train_batches_are_full_reshuffled_and_balanced():
    y = np.array([0] * 10 + [1] * 40, dtype="float32")
    x = np.arange(50, dtype="float32")[:, None]
    plain = train.TrainBatches(x, y, 16, seed=0)
    assert len(plain) == 3 and all(plain[i][0].shape == (16, 1) for i in range(3))
    first = np.concatenate([plain[i][0][:, 0] for i in range(3)])
    assert len(np.unique(first)) == 48  # a permutation, partial last batch dropped
    plain.on_epoch_end()
    assert not np.array_equal(first, np.concatenate([plain[i][0][:, 0] for i in range(3)]))
    weighted = train.TrainBatches(x, y, 16, class_weight=train.balanced_class_weight(y))
    xb, yb, wb = weighted[0]
    np.testing.assert_allclose(wb, np.where(yb == 0, 2.5, 0.625))
    balanced = train.TrainBatches(x, y, 16, balance=True, seed=1)
    share = []
    for _ in range(40):
        share += [balanced[i][1].mean() for i in range(len(balanced))]
        balanced.on_epoch_end()
    assert np.mean(share) == pytest.approx(0.5, abs=0.05)
    tiny = train.TrainBatches(x[:5], y[36:41], 16)
    assert len(tiny) == 1 and tiny[0][0].shape == (16, 1)  # fewer rows than a batch: drawn to fill it


def test_threshold_never_reads_test_labels(trained):
    """Scramble every test label: the threshold (and the training before it) must not change."""
    cfg, index, images, result = trained
    t1 = train.validation_threshold(result.model, cfg, index, images, "pneumonia")
    scrambled = index.copy()
    test = scrambled["split"] == "test"
    scrambled.loc[test, "label"] = "???"
    scrambled.loc[test, "subtype"] = "???"
    t2 = train.validation_threshold(result.model, cfg, scrambled, images, "pneumonia")
    assert t1 == t2
    assert 0.0 <= t1 <= 1.0
    _, y_val, p_val = train.predict_split(result.model, index, images, "pneumonia", "val")
    assert t1 == evaluate.choose(y_val, p_val, cfg.threshold_policy, tolerance=cfg.threshold_tolerance)


def test_training_ignores_the_test_split():
    """Training on data whose test rows are garbage gives the same weights as training on clean data."""
    index, images = toy_data(n=12, seed=3)
    cfg = tiny_config(head_epochs=2, finetune_epochs=1, aug_rotation=10.0, aug_noise=3.0)
    a = train.fit(cfg, index, images)
    garbage = images.copy()
    garbage[(index["split"] == "test").to_numpy()] = 255
    index2 = index.copy()
    index2.loc[index2["split"] == "test", "label"] = "???"
    b = train.fit(cfg, index2, garbage)
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_fit_refuses_single_class_validation():
    index, images = toy_data(n=8)
    index.loc[(index["split"] == "val") & (index["label"] == "NORMAL"), "split"] = "train"
    with pytest.raises(ValueError, match="single class"):
        train.fit(tiny_config(head_epochs=1, finetune_epochs=0), index, images)


def test_fit_refuses_single_class_training_labels():
    index, images = toy_data(n=8)
    index.loc[(index["split"] == "train") & (index["label"] == "NORMAL"), "split"] = "test"
    with pytest.raises(ValueError, match="single class"):
        train.fit(tiny_config(head_epochs=1, finetune_epochs=0), index, images)


def test_class_weights_balance_the_classes():
    w = train.balanced_class_weight(np.array([0, 1, 1, 1]))
    assert w[0] * 1 == pytest.approx(w[1] * 3)
    with pytest.raises(ValueError, match="single class"):
        train.balanced_class_weight(np.ones(5))


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    cfg, index, images, result = trained
    threshold = train.validation_threshold(result.model, cfg, index, images, "pneumonia")
    folder = tmp_path_factory.mktemp("model") / "pneumonia"
    cxr_model.save_model(result.model, folder, cfg, threshold, ["NORMAL", "PNEUMONIA"])
    return folder, result, images, threshold


def test_saved_model_predicts_identically(saved):
    folder, result, images, _ = saved
    loaded, meta = cxr_model.load_model(folder)
    np.testing.assert_allclose(train.predict_proba(loaded, images[:20]), train.predict_proba(result.model, images[:20]),
                               rtol=1e-6, atol=1e-6)
    assert meta["class_names"] == ["NORMAL", "PNEUMONIA"] and meta["config"]["image_size"] == SIZE


def test_predict_scores_good_files_and_reports_bad_ones(saved, tmp_path):
    folder, result, images, threshold = saved
    good = tmp_path / "good.png"  # lossless, so the decoded image is exactly the training array
    Image.fromarray(images[-1]).save(good)
    big = tmp_path / "big.jpeg"  # a larger RGB JPEG goes through the same resize policy
    Image.fromarray(np.repeat(np.kron(images[-1], np.ones((4, 4), np.uint8))[..., None], 3, -1)).save(big)
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    text = tmp_path / "notes.jpeg"
    text.write_text("hello")
    missing = tmp_path / "missing.jpeg"
    out = tmp_path / "overlays"
    results = predict_files(folder, [good, corrupt, big, text, missing], gradcam_dir=out)
    assert [r["path"] for r in results] == [str(p) for p in (good, corrupt, big, text, missing)]
    assert {i for i, r in enumerate(results) if "error" in r} == {1, 3, 4}
    expected = float(train.predict_proba(result.model, images[-1:])[0])
    assert results[0]["probability"] == pytest.approx(expected, abs=1e-5)
    assert results[0]["label"] == ("PNEUMONIA" if expected >= threshold else "NORMAL")
    assert results[0]["threshold"] == pytest.approx(threshold, abs=1e-6)
    for r in (results[0], results[2]):
        assert 0.0 <= r["probability"] <= 1.0
        assert Image.open(r["gradcam"]).size[0] > 100  # an overlay figure was written
    assert len(list(out.glob("*.png"))) == 2


def test_predict_cli_exit_code_and_json_lines(saved, tmp_path):
    folder, _, images, _ = saved
    good = tmp_path / "a.png"
    Image.fromarray(images[0]).save(good)
    bad = tmp_path / "b.jpeg"
    bad.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "cxr", "predict", str(good), str(bad), "--model", str(folder)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [("error" in r) for r in lines] == [False, True]
    assert lines[0]["label"] in ("NORMAL", "PNEUMONIA")


def test_run_task_is_fit_threshold_save_score_report(tmp_path):
    from cxr import pipeline
    from cxr.data import Prepared

    index, images = toy_data(n=10, seed=5)
    cfg = tiny_config(head_epochs=2, finetune_epochs=1, output_dir=str(tmp_path / "run"))
    prepared = Prepared(index=index, skipped=pd.DataFrame(), images=images, root=tmp_path, source=tmp_path)
    out = pipeline.run_task(cfg, prepared, "subtype")
    assert out.model_dir == tmp_path / "run" / "subtype"
    loaded, meta = cxr_model.load_model(out.model_dir)
    assert meta["class_names"] == ["bacteria", "virus"] and meta["threshold"] == pytest.approx(out.threshold)
    # the operating point and the calibration come from validation alone
    _, y_val, p_val = train.predict_split(out.result.model, index, images, "subtype", "val")
    assert out.threshold == evaluate.choose(y_val, p_val, cfg.threshold_policy, tolerance=cfg.threshold_tolerance)
    assert meta["calibration"] == evaluate.fit_calibrator(y_val, p_val, cfg.calibration)
    np.testing.assert_array_equal(out.positions, prepared.rows("test", "subtype"))
    np.testing.assert_array_equal(out.y, prepared.labels("subtype", out.positions))
    np.testing.assert_allclose(out.p, train.predict_proba(loaded, images[out.positions]), atol=1e-5)
    same = evaluate.task_report(out.y, out.p, out.threshold, cfg, groups=index.patient_id.to_numpy()[out.positions])
    for key, value in same.items():  # NaN-safe equality; run_task adds calibration and the operating point
        assert json.dumps(out.report[key], sort_keys=True) == json.dumps(value, sort_keys=True), key
    assert out.report["ci_method"] == evaluate.PATIENT_CI_METHOD
    assert json.loads((tmp_path / "run" / "subtype_run.json").read_text())["task"] == "subtype"
    # every validation and test prediction on record, and one scoring of the test split in the ledger
    frame = evaluate.predictions.read_predictions(tmp_path / "run" / "predictions_subtype.csv")
    assert len(frame) == len(out.val.y) + len(out.y) and set(frame.split) == {"val", "test"}
    assert evaluate.ledger.count_test_accesses(tmp_path / "run") == 1
    doc = pipeline.write_metrics(cfg, prepared, {"subtype": out.report})
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["tasks"]["subtype"]["n"] == doc["tasks"]["subtype"]["n"] and written["test_ledger"]["scorings"] == 1


def test_seed_runs_report_the_spread_and_the_ensemble(tmp_path):
    from cxr import pipeline
    from cxr.data import Prepared

    index, images = toy_data(n=10, seed=6)
    cfg = tiny_config(head_epochs=2, finetune_epochs=0, n_seeds=2, output_dir=str(tmp_path / "run"))
    prepared = Prepared(index=index, skipped=pd.DataFrame(), images=images, root=tmp_path, source=tmp_path)
    out = pipeline.run_task(cfg, prepared, "pneumonia")
    seeds = out.report["seeds"]
    assert seeds["n_seeds"] == 2 and [r["seed"] for r in seeds["per_seed"]] == [cfg.seed, cfg.seed + 1]
    aurocs = [r["auroc"] for r in seeds["per_seed"]]
    assert seeds["per_seed"][0]["auroc"] == out.report["at_threshold"]["auroc"]["value"]
    assert seeds["spread"]["auroc"]["min"] == min(aurocs) and seeds["spread"]["auroc"]["max"] == max(aurocs)
    assert seeds["ensemble"]["n"] == out.report["n"]
    # the first run, the second seed and the ensemble each scored the test split once
    assert evaluate.ledger.count_test_accesses(tmp_path / "run") == 3
    one = pipeline.run_task(cfg.replace(n_seeds=1, output_dir=str(tmp_path / "one")), prepared, "pneumonia")
    assert "seeds" not in one.report


def test_error_examples_and_seed_statement(tmp_path):
    from cxr import pipeline
    from cxr.data import Prepared

    index, images = toy_data(n=10, seed=7)
    # a NORMAL test image identical to a PNEUMONIA one: whatever the model learns, one of the two is an error
    test = index["split"] == "test"
    twin = np.flatnonzero(test & (index["label"] == "NORMAL"))[0]
    images[twin] = images[np.flatnonzero(test & (index["label"] == "PNEUMONIA"))[0]]
    cfg = tiny_config(head_epochs=1, finetune_epochs=0, output_dir=str(tmp_path / "run"))
    prepared = Prepared(index=index, skipped=pd.DataFrame(), images=images, root=tmp_path, source=tmp_path)
    out = pipeline.run_task(cfg, prepared, "pneumonia")
    rows, imgs = pipeline.error_examples(out, prepared, k=3)
    assert 0 < len(rows) == len(imgs) and (rows["decision"] != rows["y"]).all()
    for path, img in zip(rows["path"], imgs):  # each image is the row's own
        np.testing.assert_array_equal(img, images[int(np.flatnonzero(index["path"].to_numpy() == path)[0])])
    assert "not measured" in pipeline.describe_seeds(out.report)
