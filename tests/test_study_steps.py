"""The study's steps in one order (`cxr.pipeline.STEPS`, `Study`), run on tiny synthetic data: the ledger and the
run folder they leave, the notebook calling the same steps in the same order, `python -m cxr evaluate`'s re-scoring
(`rescore_run`), the explanation steps and the one image shape of the explain functions. (The comparison of a
`python -m cxr train` run with a smoke notebook run, on the bundled sample, is part of the notebook's smoke test in
tests/test_notebook.py, so that the notebook runs once in the suite.)"""
from __future__ import annotations

import ast
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from cxr import explain, pipeline
from cxr.config import TASKS
from cxr.evaluate import ledger
from test_train import tiny_config, toy_data

NOTEBOOK = REPO / "notebook.ipynb"
ORDER = ("start", "data", "markers", "baseline_fit", "pneumonia", "counterfactual", "shift", "baseline_score", "subtype",
         "finish")
LEDGER_ORDER = [("pneumonia", "test", ""),
                ("pneumonia (trivial baseline)", "test", "trivial baseline: six image statistics"),
                ("subtype", "test", "")]


def study_data(n: int = 10, seed: int = 5):
    """`test_train.toy_data` with what the data audit reads of a real index: a perceptual hash and the bytes' sha1
    of every image, an empty exclusion reason, an empty list of skipped files."""
    import hashlib

    from PIL import Image

    from cxr.data.audit import perceptual_hash

    prepared = toy_data(n=n, seed=seed)
    prepared.index["phash"] = [perceptual_hash(Image.fromarray(im)) for im in prepared.images]
    prepared.index["sha1"] = [hashlib.sha1(im.tobytes()).hexdigest() for im in prepared.images]
    prepared.index["excluded_reason"] = ""
    prepared.skipped = pd.DataFrame(columns=["path", "reason"])
    return prepared


def ledger_sequence(run_dir) -> list[tuple[str, str, str]]:
    """(task, split, note) of every line of a run folder's test-access ledger, oldest first."""
    frame = ledger.read_ledger(run_dir)
    return list(zip(frame["task"], frame["split"], frame["note"].fillna("")))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The whole study (`run_study`) on toy data: every step but "data" (the toy data are given)."""
    run = tmp_path_factory.mktemp("study") / "run"
    done = pipeline.Study(tiny_config(head_epochs=2, finetune_epochs=0, output_dir=str(run), explain_images=4,
                                      gradcam_examples=1))
    done.prepared = study_data(n=10, seed=5)
    return pipeline.run_study(done, skip=("data",))


def test_the_steps_are_one_order_with_a_step_for_every_task():
    assert tuple(name for name, _ in pipeline.STEPS) == ORDER
    assert set(TASKS) <= set(ORDER)
    with pytest.raises(ValueError, match="no such step"):
        pipeline.run_study(pipeline.Study(tiny_config()), skip=("dta",))


def test_the_whole_study_leaves_its_ledger_and_run_folder_in_the_order_of_the_steps(study):
    run = study.run_dir
    assert ledger_sequence(run) == LEDGER_ORDER
    assert list(study.outcomes) == ["pneumonia", "subtype"]
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    expected = {"config.json", "index.csv", "metrics.json", "test_ledger.jsonl", "pneumonia_run.json",
                "subtype_run.json", "predictions_pneumonia.csv", "predictions_subtype.csv",
                "pneumonia/model.keras", "pneumonia/model.json", "subtype/model.keras", "subtype/model.json"}
    assert expected <= names, expected - names
    doc = json.loads((run / "metrics.json").read_text())
    assert set(doc) == set(study.doc) and list(doc["tasks"]) == ["pneumonia", "subtype"]
    assert {"data", "baseline", "shift", "markers"} <= set(doc) and doc["test_ledger"]["scorings"] == 3
    assert doc["markers"]["finding"]["train_normal"] == int((study.prepared.index["subtype"] == "normal").sum()
                                                            - (study.prepared.index["split"] == "test").mul(
        study.prepared.index["subtype"] == "normal").sum())
    assert doc["markers"]["counterfactual"]["task"] == "pneumonia"
    again = study.record("explanation", {"where": "test"})
    assert json.loads((run / "metrics.json").read_text())["explanation"] == {"where": "test"} == again["explanation"]
    with pytest.raises(ValueError, match="written by finish"):
        study.record("tasks", {})
    assert doc["baseline"]["test"]["n"] == study.baseline.report["n"] == len(study.prepared.rows("test"))
    assert json.loads((run / "config.json").read_text())["batch_size"] == study.config.batch_size == 8


def test_a_task_left_out_is_skipped_and_the_shift_needs_the_main_task(tmp_path):
    """`python -m cxr train --tasks subtype`: no pneumonia step, no shift checks; the baseline is still scored."""
    study = pipeline.Study(tiny_config(head_epochs=1, finetune_epochs=0, output_dir=str(tmp_path / "run")),
                           tasks=("subtype",))
    study.prepared = study_data(n=10, seed=6)
    pipeline.run_study(study, skip=("data",))
    assert list(study.outcomes) == ["subtype"] and study.shift is None
    assert [t for t, _, _ in ledger_sequence(study.run_dir)] == ["pneumonia (trivial baseline)", "subtype"]
    assert "shift" not in json.loads((study.run_dir / "metrics.json").read_text())


def _notebook_steps() -> list[str]:
    """The study steps the notebook's code cells call, in cell order, named as in STEPS."""
    nb = json.loads(NOTEBOOK.read_text())
    method = {"start": "start", "data": "data", "markers": "markers", "fit_baseline": "baseline_fit",
              "counterfactual_check": "counterfactual", "shift_checks": "shift", "score_baseline": "baseline_score",
              "finish": "finish"}
    steps = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            call = node if isinstance(node, ast.Call) else None
            if call is None or not isinstance(call.func, ast.Attribute) or \
                    not (isinstance(call.func.value, ast.Name) and call.func.value.id == "study"):
                continue
            if call.func.attr == "task":
                steps.append(call.args[0].value)
            elif call.func.attr in method:
                steps.append(method[call.func.attr])
    return steps


def test_the_notebook_calls_the_steps_in_the_order_of_steps_one_per_cell():
    assert _notebook_steps() == list(ORDER)
    nb = json.loads(NOTEBOOK.read_text())
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for source in sources:  # the study's functions are called through the study, not beside it
        assert not re.search(r"pipeline\.(start_run|run_task|fit_baseline|score_baseline|shift_checks|finish_run)\(",
                             source), source
        assert "n_bootstrap=cfg" not in source and "[..., None]" not in source and ">= pneumonia.threshold" not in source


def test_rescore_run_keeps_what_training_chose_and_the_other_blocks(study, tmp_path):
    """`python -m cxr evaluate` (`rescore_run`): the saved model re-scored (one more ledger line), the operating
    point and selection of training kept, the data, baseline and shift blocks kept."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(study.run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    before = json.loads((run / "metrics.json").read_text())
    config = study.config.replace(output_dir=str(run))
    doc = pipeline.rescore_run(config, study.prepared, ["pneumonia"], run)
    assert ledger_sequence(run) == LEDGER_ORDER + [("pneumonia", "test", "re-scored by python -m cxr evaluate")]
    assert list(doc["tasks"]) == ["pneumonia"] and doc["test_ledger"]["scorings"] == 4
    for key in ("operating_point", "selection"):
        assert doc["tasks"]["pneumonia"][key] == before["tasks"]["pneumonia"][key]
    assert doc["tasks"]["pneumonia"]["threshold"] == pytest.approx(before["tasks"]["pneumonia"]["threshold"])
    assert json.loads((run / "metrics.json").read_text())["baseline"] == before["baseline"]
    for key in ("data", "shift"):
        assert json.dumps(doc[key], sort_keys=True, default=str) == json.dumps(before[key], sort_keys=True)


def test_the_explanation_steps_choose_their_images_by_rule(study):
    outcome, c = study.outcomes["pneumonia"], study.config
    cam = study.grad_cam("pneumonia")
    np.testing.assert_array_equal(cam.images, study.prepared.images[outcome.test.positions])
    np.testing.assert_array_equal(cam.called, (outcome.test.p >= outcome.threshold).astype(int))
    same = explain.grad_cam(outcome.result.model, cam.images, target_class=cam.called, batch_size=c.batch_size,
                            normalize="none")
    np.testing.assert_allclose(cam.maps, same, atol=1e-6)
    pairs = cam.pairs(cam.wrong)
    assert len(pairs["images"]) == len(cam.wrong) and pairs["cells"] == cam.wrong["cell"].tolist()
    assert set(cam.right["cell"]) <= {"TP", "TN"} and set(cam.wrong["cell"]) <= {"FP", "FN"}
    member = outcome.result.members[0]
    faith = study.faithfulness_check()
    positives = cam.images[cam.called == 1][: c.explain_images]
    assert len(faith.auc) == len(positives) > 0
    direct = explain.deletion_insertion(member, positives, explain.grad_cam(member, positives, batch_size=8),
                                        seed=c.seed, batch_size=8)
    pd.testing.assert_frame_equal(faith.auc, direct.auc)
    sanity = study.randomization_check()
    assert sanity["n_images"].iloc[0] + sanity["n_empty"].iloc[0] == min(c.explain_images, len(cam.images))
    audit = study.shortcut_audit()
    assert int(audit.loc[audit["class"] == "all", "n"].iloc[0]) == len(cam.images)


def test_the_explain_functions_take_one_image_shape(study):
    """(B, H, W) and (B, H, W, 1) give the same maps, checks and counterfactual; other shapes are refused."""
    from cxr.explain.cam import image_batch
    from cxr.explain.checks import stamp_counterfactual
    from cxr.train import predict_proba

    member = study.outcomes["pneumonia"].result.members[0]
    x = study.prepared.images[study.prepared.rows("test")][:5]
    assert image_batch(x).shape == image_batch(x[..., None]).shape == x.shape
    assert image_batch(x[0]).shape == (1, *x.shape[1:])
    for bad in (x[..., None].repeat(3, -1), x[None], np.zeros(4)):
        with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, H, W, 1\)"):
            image_batch(bad)
    maps = explain.grad_cam(member, x, batch_size=8)
    np.testing.assert_array_equal(maps, explain.grad_cam(member, x[..., None], batch_size=8))
    a = explain.randomization_test(member, x, seed=0, batch_size=8)
    b = explain.randomization_test(member, x[..., None], seed=0, batch_size=8)
    pd.testing.assert_frame_equal(a, b)
    for one, other in zip(a.attrs["cams"], b.attrs["cams"]):
        np.testing.assert_array_equal(one, other)
    a = explain.deletion_insertion(member, x, maps, steps=4, seed=0, batch_size=8)
    b = explain.deletion_insertion(member, x[..., None], maps, steps=4, seed=0, batch_size=8)
    pd.testing.assert_frame_equal(a.auc, b.auc)
    predict = lambda batch: predict_proba(member, batch, 8)  # noqa: E731
    assert stamp_counterfactual(predict, x, 1.0) == stamp_counterfactual(predict, x[..., None], 1.0)


NOTEBOOK_ONLY = ("notebook.ipynb", "run_env.json", "figures/")  # the notebook's display: the executed copy, its
# run summary and its figures; everything else in a run folder is the study's own


def study_files(run_dir) -> set[str]:
    """The study's files in a run folder (relative names), without the lock and the notebook's display files."""
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    return {n for n in names if not n.startswith(".") and not n.startswith(NOTEBOOK_ONLY)}


def assert_same_study(cli_dir, notebook_dir) -> None:
    """A `python -m cxr train` run folder is a notebook run's: the same files, the same config.json but its
    output_dir (the source compared as the file it names), the same ledger lines (task, split, note) in the same
    order, which is the order of `pipeline.STEPS`."""
    assert study_files(cli_dir) == study_files(notebook_dir), study_files(cli_dir) ^ study_files(notebook_dir)
    cli, nb = (json.loads((d / "config.json").read_text()) for d in (cli_dir, notebook_dir))
    for config in (cli, nb):
        config.pop("output_dir")
        config["source"] = str((REPO / config["source"]).resolve())  # the notebook's is relative to the checkout
    assert cli == nb, {k: (cli[k], nb.get(k)) for k in cli if cli[k] != nb.get(k)}
    assert ledger_sequence(cli_dir) == ledger_sequence(notebook_dir) == LEDGER_ORDER


def test_the_counterfactual_step_scores_each_oof_normal_with_its_own_fold_model(study, monkeypatch):
    """`Study.counterfactual_check`: the OOF normals called normal, each stamped and re-scored by the fold model
    that never saw it; the same numbers as stamping them by hand. (The toy model calls every image pneumonia at its
    threshold, so the threshold is raised to the median normal score to have normals called normal.)"""
    import dataclasses

    from cxr.data.markers import paste_stamp
    from cxr.explain.checks import counterfactual_summary
    from cxr.train import predict_proba

    outcome, c = study.outcomes["pneumonia"], study.config
    normals = outcome.result.oof.loc[outcome.result.oof["y"] == 0, "p"]
    outcome = dataclasses.replace(outcome, threshold=float(normals.median()) + 1e-9)
    monkeypatch.setitem(study.outcomes, "pneumonia", outcome)
    result = study.counterfactual_check()
    oof = outcome.result.oof
    calm = oof[(oof["y"] == 0) & (oof["p"] < outcome.threshold)]
    assert result["n"] == len(calm) > 0
    before, after = [], []
    for fold, rows in calm.groupby("fold"):
        images = study.prepared.images[rows["position"].to_numpy()]
        member = outcome.result.members[int(fold)]
        before.append(predict_proba(member, images, c.batch_size))
        after.append(predict_proba(member, np.stack([paste_stamp(im) for im in images]), c.batch_size))
    by_hand = counterfactual_summary(np.concatenate(before), np.concatenate(after), outcome.threshold, c.ci_level,
                                     c.seed)
    assert result["changed"] == by_hand["changed"]
    assert result["mean_rise"] == pytest.approx(by_hand["mean_rise"])
    in_fold_order = calm.sort_values("fold", kind="stable")["p"].to_numpy()
    np.testing.assert_allclose(np.concatenate(before), in_fold_order, atol=1e-5)  # the OOF scores again


def test_the_operating_point_block_holds_the_rule_its_targets_and_the_cross_fitted_check(study):
    for name, outcome in study.outcomes.items():
        op = outcome.report["operating_point"]
        assert op["policy"] == ("sensitivity" if name == "pneumonia" else "specificity")
        assert op["kept_class"] == ("PNEUMONIA" if name == "pneumonia" else "bacteria")
        assert [row["fold"] for row in op["cross_fitted"]][-1] == "pooled"
        assert {row["metric"] for row in op["targets"]} == {"sensitivity", "specificity"}
        if not op["fits"]:
            assert outcome.threshold == 0.5


def test_the_targets_and_cross_fitted_tables_read_the_report(study):
    outcome = study.outcomes["pneumonia"]
    targets = pipeline.targets_table(outcome)
    assert list(targets.index) == ["sensitivity", "specificity"]
    assert targets.loc["specificity", "target"] == study.config.min_specificity
    assert targets.loc["sensitivity", "test"] == outcome.report["at_threshold"]["sensitivity"]["value"]
    crossfit = pipeline.cross_fitted_table(outcome)
    assert crossfit.index[-1] == "pooled" and crossfit["n"].iloc[-1] == len(outcome.oof.y)
