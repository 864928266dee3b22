"""Cross-validated training, the fold ensemble, choices on out-of-fold predictions, saved models and `predict`, on
tiny synthetic data and tiny models."""
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
from cxr.data import Prepared
from cxr.predict import predict_files

SIZE = 32
pytestmark = pytest.mark.backend  # also run under KERAS_BACKEND=jax by `make test`


def toy_data(n: int = 24, seed: int = 0, folds: int = 3) -> Prepared:
    """Noise images; PNEUMONIA ones carry a bright square (bacteria top-left, virus bottom-right). `n` training
    and n // 2 test images per class; one image per child; training children dealt to `folds` folds."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for split, count in (("train", n), ("test", n // 2)):
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(count):
                img = rng.integers(0, 80, (SIZE, SIZE)).astype(np.uint8)
                subtype = "normal" if label == "NORMAL" else ("bacteria" if i % 2 else "virus")
                if subtype == "bacteria":
                    img[4:14, 4:14] = 230
                elif subtype == "virus":
                    img[18:28, 18:28] = 230
                rows.append({"path": f"{split}/{label}/{i}.jpeg", "official_split": split, "split": split,
                             "fold": (i // 2) % folds if split == "train" else -1, "label": label,
                             "subtype": subtype, "patient_id": f"{label}-{split}-{i}"})
                images.append(img)
    return Prepared(index=pd.DataFrame(rows), skipped=pd.DataFrame(), images=np.stack(images), root=None,
                    source=None)


def tiny_config(**changes) -> Config:
    """The "tiny" set of `cxr.presets` (a tiny CNN on SIZE-px images, the augmentation layer an identity), with
    `changes` on top."""
    return Config.preset("tiny", **changes)


@pytest.fixture(scope="module")
def trained():
    prepared = toy_data()
    cfg = tiny_config()
    return cfg, prepared, train.fit(cfg, prepared, task="pneumonia")


def test_every_training_image_is_scored_once_out_of_fold_by_the_model_that_never_saw_it(trained):
    cfg, prepared, result = trained
    rows = prepared.rows("train")
    oof = result.oof
    assert sorted(oof["position"]) == sorted(rows) and oof["position"].is_unique  # each once, no test row
    np.testing.assert_array_equal(oof["fold"], prepared.folds(oof["position"].to_numpy()))
    assert result.n_folds == 3 and len(result.members) == 3
    for f, member in enumerate(result.members):  # member f never saw fold f and gave fold f's OOF scores
        part = oof[oof["fold"] == f]
        p = train.predict_proba(member, prepared.images[part["position"].to_numpy()], cfg.batch_size)
        np.testing.assert_allclose(p, part["p"], rtol=1e-5, atol=1e-5)
    assert {"fold", "stage", "option", "epoch", "loss", "oof_loss", "oof_auroc", "lr"} <= set(result.history)
    assert sorted(result.history["fold"].unique()) == [0, 1, 2]


def test_the_ensemble_averages_its_members_and_holds_no_augmentation(trained):
    cfg, prepared, result = trained
    x = prepared.images[prepared.rows("test")]
    members = np.stack([train.predict_proba(m, x, cfg.batch_size) for m in result.members])
    np.testing.assert_allclose(train.predict_proba(result.model, x, cfg.batch_size), members.mean(axis=0),
                               rtol=1e-5, atol=1e-6)
    assert cxr_model.members(result.model) == result.members
    for member in result.members:
        assert [layer.name for layer in member.layers] == list(cxr_model.LAYER_ORDER)  # no augmentation inside
    assert evaluate.metric_values(prepared.labels("pneumonia", prepared.rows("test")), members.mean(0),
                                  0.5)["auroc"] > 0.9  # the square is easy to see


def test_the_stage_and_epochs_are_chosen_on_the_pooled_recalibrated_oof_loss(trained):
    cfg, prepared, result = trained
    sel = result.selection.set_index("stage")
    assert list(sel.index) == ["head", "finetune"]
    kept = sel["selection_loss"].idxmin()  # the rule: the lower cross-fitted recalibrated OOF log-loss
    assert result.kept_stage == kept and sel.loc[kept, "kept"] and sel["kept"].sum() == 1
    for stage, row in sel.iterrows():  # each stage's epoch: its own minimum
        curve = result.pooled[(result.pooled["stage"] == stage) & (result.pooled["option"] == result.balance)]
        assert row["selection_loss"] == pytest.approx(curve["selection_loss"].min())
        assert row["best_epoch"] == int(curve.loc[curve["selection_loss"].idxmin(), "epoch"])
    assert result.kept_epoch == int(sel.loc[kept, "best_epoch"])
    y, p, fold = result.oof["y"].to_numpy(), result.oof["p"].to_numpy(), result.oof["fold"].to_numpy()
    np.testing.assert_allclose(result.stage_oof[kept], p)
    assert sel.loc[kept, "oof_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-6)
    # the selection loss recalibrates fold f with a calibrator fitted on the OTHER folds
    q = np.empty(len(p))
    for f in range(3):
        params = evaluate.fit_calibrator(y[fold != f], p[fold != f], cfg.calibration)
        q[fold == f] = evaluate.apply_calibrator(params, p[fold == f])
    assert sel.loc[kept, "selection_loss"] == pytest.approx(log_loss(y, np.clip(q, 1e-7, 1 - 1e-7)), rel=1e-6)
    assert train.selection_loss(y, p, fold, "none") == pytest.approx(sel.loc[kept, "oof_loss"])
    assert set(result.seconds) >= {"features", "head", "finetune"}
    assert result.batch_size == 8 and result.precision == "float32"


def test_a_finetune_that_does_not_beat_the_head_is_rolled_back():
    """A learning rate that wrecks the backbone: every member keeps exactly its fold's head."""
    prepared = toy_data(n=12, seed=1)
    cfg = tiny_config(finetune_epochs=1)
    head_only = train.fit(cfg.replace(finetune_epochs=0), prepared)
    wrecked = train.fit(cfg.replace(finetune_lr=1e4, weight_decay=0.0), prepared)
    assert wrecked.kept_stage == "head" and list(wrecked.selection["stage"]) == ["head", "finetune"]
    assert head_only.kept_stage == "head" and list(head_only.selection["stage"]) == ["head"]
    for a, b in zip(head_only.model.get_weights(), wrecked.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    not_tuned = train.fit(cfg.replace(finetune_tasks=("subtype",)), prepared, "pneumonia")  # not in finetune_tasks
    assert list(not_tuned.selection["stage"]) == ["head"]


def test_class_balance_auto_compares_the_options_on_the_oof_loss():
    prepared = toy_data(n=12, seed=2)
    index = prepared.index
    keep = ~((index["split"] == "train") & (index["label"] == "NORMAL") & (np.arange(len(index)) % 3 != 0))
    prepared = Prepared(index=index[keep].reset_index(drop=True), skipped=pd.DataFrame(),
                        images=prepared.images[keep.to_numpy()], root=None, source=None)
    result = train.fit(tiny_config(head_epochs=3, finetune_epochs=0, class_balance="auto"), prepared)
    table = result.class_balance
    assert sorted(table["option"]) == ["none", "sampling", "weights"] and table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "option"].item() == result.balance
    assert table.loc[table["chosen"], "selection_loss"].item() == table["selection_loss"].min()
    single = train.fit(tiny_config(head_epochs=3, finetune_epochs=0, class_balance="weights"), prepared)
    assert list(single.class_balance["option"]) == ["weights"] and single.balance == "weights"


def test_fit_restores_the_global_dtype_policy():
    import keras

    prepared = toy_data(n=8)
    before = keras.mixed_precision.global_policy().name
    result = train.fit(tiny_config(head_epochs=1, finetune_epochs=0, mixed_precision="on"), prepared)
    assert result.precision == "mixed_bfloat16"
    assert result.members[0].get_layer("logit").dtype_policy.name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == before


def test_settings_are_resolved_once_per_accelerator():
    from cxr.train import device

    if device.accelerator() == "cpu":
        assert train.batch_size(Config()) == 32 and train.batch_size(Config(), n_devices=2) == 64
        assert train.precision_policy(Config()) == "float32"
        assert train.resolve(Config()).batch_size == 32 and train.resolve(Config()).mixed_precision == "off"
    assert train.batch_size(Config(batch_size=48), n_devices=4) == 48
    with pytest.raises(ValueError, match="multiple"):
        train.batch_size(Config(batch_size=30), n_devices=4)
    assert train.precision_policy(Config(mixed_precision="on")) == "mixed_bfloat16"  # on every backend
    assert train.precision_policy(Config(mixed_precision="off")) == "float32"
    resolved = train.resolve(Config.preset("smoke"))
    assert resolved.batch_size == 16 and train.resolve(resolved) == resolved  # resolving twice changes nothing
    with pytest.raises(ValueError, match="resolved"):
        train.fit(Config(batch_size=None), toy_data(n=4))


def test_train_batches_are_full_reshuffled_balanced_and_augmented():
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
    shifted = train.TrainBatches(x, y, 16, seed=0, augment=lambda b, rng: b + 1000)
    np.testing.assert_array_equal(shifted[0][0], train.TrainBatches(x, y, 16, seed=0)[0][0] + 1000)


def test_training_ignores_the_test_split():
    """Training on data whose test rows are garbage gives the same weights as training on clean data."""
    prepared = toy_data(n=12, seed=3)
    cfg = tiny_config(head_epochs=2, finetune_epochs=1, aug_rotation=10.0, aug_noise=3.0, aug_resample=0.5)
    a = train.fit(cfg, prepared)
    garbage = prepared.images.copy()
    test = (prepared.index["split"] == "test").to_numpy()
    garbage[test] = 255
    index = prepared.index.copy()
    index.loc[test, "label"] = "???"
    b = train.fit(cfg, Prepared(index=index, skipped=pd.DataFrame(), images=garbage, root=None, source=None))
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_fit_refuses_single_class_training_labels_and_a_single_fold():
    prepared = toy_data(n=8)
    prepared.index.loc[(prepared.index["split"] == "train") & (prepared.index["label"] == "NORMAL"), "split"] = "test"
    with pytest.raises(ValueError, match="single class"):
        train.fit(tiny_config(head_epochs=1, finetune_epochs=0), prepared)
    one = toy_data(n=8, folds=1)
    with pytest.raises(ValueError, match="at least 2 folds"):
        train.fit(tiny_config(head_epochs=1, finetune_epochs=0), one)


def test_class_weights_balance_the_classes():
    w = train.balanced_class_weight(np.array([0, 1, 1, 1]))
    assert w[0] * 1 == pytest.approx(w[1] * 3)
    with pytest.raises(ValueError, match="single class"):
        train.balanced_class_weight(np.ones(5))


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    cfg, prepared, result = trained
    threshold = 0.42
    folder = tmp_path_factory.mktemp("model") / "pneumonia"
    cxr_model.save_model(result.model, folder, cfg, threshold, ["NORMAL", "PNEUMONIA"])
    return folder, result, prepared.images, threshold


def test_the_saved_ensemble_loads_as_one_model_and_predicts_identically(saved):
    folder, result, images, _ = saved
    loaded, meta = cxr_model.load_model(folder)
    assert len(cxr_model.members(loaded)) == 3
    np.testing.assert_allclose(train.predict_proba(loaded, images[:20], 16),
                               train.predict_proba(result.model, images[:20], 16), rtol=1e-6, atol=1e-6)
    assert meta["class_names"] == ["NORMAL", "PNEUMONIA"] and meta["config"]["image_size"] == SIZE
    assert meta["config"]["batch_size"] == 8  # predict uses what training used


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
    expected = float(train.predict_proba(result.model, images[-1:], 16)[0])
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


def test_run_task_chooses_on_oof_saves_then_scores_the_test_once(tmp_path):
    from cxr import pipeline

    prepared = toy_data(n=10, seed=5)
    cfg = pipeline.start_run(tiny_config(head_epochs=2, finetune_epochs=1, output_dir=str(tmp_path / "run")))
    out = pipeline.run_task(cfg, prepared, "subtype")
    assert out.model_dir == tmp_path / "run" / "subtype"
    loaded, meta = cxr_model.load_model(out.model_dir)
    assert meta["class_names"] == ["bacteria", "virus"] and meta["threshold"] == pytest.approx(out.threshold)
    # the operating point and the calibration come from the out-of-fold predictions alone
    y, p = out.result.oof["y"].to_numpy(), out.result.oof["p"].to_numpy()
    calibrator = evaluate.fit_calibrator(y, p, cfg.calibration)
    assert meta["calibration"] == calibrator
    assert out.threshold == pipeline.operating_point(cfg, y, p, calibrator, "subtype")
    np.testing.assert_array_equal(out.test.positions, prepared.rows("test", "subtype"))
    np.testing.assert_array_equal(out.test.y, prepared.labels("subtype", out.test.positions))
    np.testing.assert_allclose(out.test.p, train.predict_proba(loaded, prepared.images[out.test.positions], 16),
                               atol=1e-5)
    same = evaluate.task_report(out.test.y, out.test.p, out.threshold, groups=prepared.groups(out.test.positions),
                                n_bootstrap=cfg.n_bootstrap, ci_level=cfg.ci_level, seed=cfg.seed)
    for key, value in same.items():  # NaN-safe equality; run_task adds more blocks
        assert json.dumps(out.report[key], sort_keys=True) == json.dumps(value, sort_keys=True), key
    assert {"threshold_uncertainty", "per_child", "calibration", "operating_point", "selection"} <= set(out.report)
    assert json.loads((tmp_path / "run" / "subtype_run.json").read_text())["task"] == "subtype"
    # every out-of-fold and test prediction on record, and one scoring of the test split in the ledger
    frame = evaluate.predictions.read_predictions(tmp_path / "run" / "predictions_subtype.csv")
    assert len(frame) == len(out.oof.y) + len(out.test.y) and set(frame.split) == {"oof", "test"}
    assert evaluate.ledger.count_test_accesses(tmp_path / "run") == 1
    doc = pipeline.finish_run(cfg, prepared, {"subtype": out.report})
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["tasks"]["subtype"]["n"] == doc["tasks"]["subtype"]["n"] and written["test_ledger"]["scorings"] == 1
    assert (tmp_path / "run" / "index.csv").is_file() and (tmp_path / "run" / "config.json").is_file()


def test_the_threshold_never_reads_test_labels(tmp_path):
    """Scramble every test label: training, calibration and the threshold stay the same."""
    from cxr import pipeline

    prepared = toy_data(n=10, seed=8)
    cfg = pipeline.start_run(tiny_config(head_epochs=2, finetune_epochs=0, output_dir=str(tmp_path / "a")))
    a = pipeline.run_task(cfg, prepared, "pneumonia")
    index = prepared.index.copy()
    test = index["split"] == "test"
    index.loc[test, "label"] = np.where(index.loc[test, "label"] == "NORMAL", "PNEUMONIA", "NORMAL")
    scrambled = Prepared(index=index, skipped=pd.DataFrame(), images=prepared.images, root=None, source=None)
    b = pipeline.run_task(cfg.replace(output_dir=str(tmp_path / "b")), scrambled, "pneumonia")
    assert a.threshold == b.threshold and a.calibrator == b.calibrator
    np.testing.assert_array_equal(a.oof.p, b.oof.p)


def test_one_batch_size_reaches_training_scoring_and_grad_cam(tmp_path, monkeypatch):
    """A setting given once (--set batch_size=8) is the batch size of every step: the backbone features, the
    training batches, every held-out and test prediction, and the Grad-CAM function."""
    import importlib

    from cxr import explain, pipeline
    from cxr.train import batches

    fit_module = importlib.import_module("cxr.train.fit")  # the module (cxr.train.fit is also the function)

    seen = []
    real = batches.padded_predict
    monkeypatch.setattr(batches, "padded_predict", lambda m, x, b, desc=None: seen.append(b) or real(m, x, b, desc))
    monkeypatch.setattr(fit_module, "padded_predict", batches.padded_predict)
    prepared = toy_data(n=10, seed=9)
    cfg = pipeline.start_run(tiny_config(batch_size=8, head_epochs=1, finetune_epochs=1,
                                         output_dir=str(tmp_path / "run")))
    out = pipeline.run_task(cfg, prepared, "pneumonia")
    assert seen and set(seen) == {8}
    assert out.result.batch_size == 8
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 8
    _, meta = cxr_model.load_model(out.model_dir)
    assert meta["config"]["batch_size"] == 8
    explain.grad_cam(out.result.model, prepared.images[:3], batch_size=cfg.batch_size)
    cached = [key for m in out.result.members for key in getattr(m, "_cxr_cam_functions", {})]
    assert cached and {size for _, size in cached} == {8}


def test_error_examples(tmp_path):
    from cxr import pipeline

    prepared = toy_data(n=10, seed=7)
    index, images = prepared.index, prepared.images
    # a NORMAL test image identical to a PNEUMONIA one: whatever the model learns, one of the two is an error
    test = index["split"] == "test"
    twin = np.flatnonzero(test & (index["label"] == "NORMAL"))[0]
    images[twin] = images[np.flatnonzero(test & (index["label"] == "PNEUMONIA"))[0]]
    cfg = pipeline.start_run(tiny_config(head_epochs=1, finetune_epochs=0, output_dir=str(tmp_path / "run")))
    out = pipeline.run_task(cfg, prepared, "pneumonia")
    rows, imgs = pipeline.error_examples(out, prepared, k=3)
    assert 0 < len(rows) == len(imgs) and (rows["decision"] != rows["y"]).all()
    for path, img in zip(rows["path"], imgs):  # each image is the row's own
        np.testing.assert_array_equal(img, images[int(np.flatnonzero(index["path"].to_numpy() == path)[0])])
