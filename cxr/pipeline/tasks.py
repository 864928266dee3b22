"""The study's steps as functions: the run folder, each task trained, chosen on its out-of-fold predictions,
saved and scored on the test split once (`run_task`, `score_test`), the trivial baseline, the shift checks, the
metrics document (`finish_run`) and re-scoring a saved run (`rescore_run`). `cxr.pipeline.study` calls them in
order."""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from cxr import evaluate, model as cxr_model, reporting, train
from cxr.config import PRIMARY_TASK, Config, task as get_task
from cxr.data import Prepared
from cxr.evaluate import calibration, clinical, document, ledger, predictions, threshold as thresholds, uncertainty
from cxr.io import atomic_write_csv
from cxr.pipeline.outcomes import Scores, TaskOutcome
from cxr.pipeline.rules import (bootstrap_settings, fit_calibration, operating_point, rule_targets, rule_threshold,
                                stability, task_rule)

SELECTION = "oof"  # the split name of the out-of-fold predictions in the predictions file


@contextlib.contextmanager
def claimed_run(run_dir: str | Path) -> Iterator[Path]:
    """`lock_run` for a command's whole work: when the work fails and the run folder holds nothing but its lock
    (the command stopped before writing anything, e.g. on bad data), the folders it created are removed again, so
    a failed command leaves nothing behind."""
    from cxr.io import LOCK_NAME, unlock_folder

    run_dir = Path(run_dir)
    top = next((p for p in (run_dir, *run_dir.parents) if p.parent.exists()), run_dir)  # first folder made here
    created = not top.exists()
    lock_run(run_dir)
    try:
        yield run_dir
    except BaseException:
        left = [p for p in top.rglob("*") if p.is_file()] if created else None
        if created and [p.relative_to(run_dir).as_posix() for p in left] == [LOCK_NAME]:
            unlock_folder(run_dir)
            shutil.rmtree(top, ignore_errors=True)
        raise


def lock_run(run_dir: str | Path) -> Path:
    """Take the run folder for this process (`cxr.io.lock_folder`: held until the process ends) and remove what a
    killed earlier run left there (temporary files and model folders of interrupted atomic writes). Another live
    run writing the same folder is a `UserError` (one line; the CLI exits with 2): two runs never mix one folder."""
    from cxr import UserError, ensure_writable
    from cxr.io import FolderLocked, lock_folder, sweep_stale

    run_dir = Path(run_dir)
    ensure_writable(run_dir, "run folder")
    try:
        lock_folder(run_dir)
    except FolderLocked as error:
        raise UserError(str(error)) from None
    # under the lock no other writer is alive: every temporary left here is a killed run's
    for folder in [run_dir, *(d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith("."))]:
        sweep_stale(folder, min_age_s=0.0)
    return run_dir


def start_run(config: Config) -> Config:
    """Take the run folder (`lock_run`), resolve the machine-dependent settings ONCE (`train.resolve`: batch size,
    dtype policy) and write the folder's config.json (the resolved Config). Returns the resolved Config, the one
    every later step takes."""
    lock_run(config.run_dir)
    config = train.resolve(config)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.save(config.run_dir / "config.json")
    return config


def scores(config: Config, prepared: Prepared, task: str, model: Any, split: str,
           calibrator: dict[str, Any] | None = None) -> Scores:
    """Predict one split of `task` with `model` (and apply `calibrator` when given)."""
    positions, y, p = train.predict_split(model, prepared, task, split, config.batch_size)
    p_cal = calibration.apply_calibrator(calibrator, p) if calibrator else p.copy()
    return Scores(positions, y.astype(int), p, np.asarray(p_cal, dtype="float64"), prepared.groups(positions))


def oof_scores(result: train.TrainResult, prepared: Prepared, calibrator: dict[str, Any] | None) -> Scores:
    """The out-of-fold predictions of a training result as `Scores`."""
    positions, p = result.oof["position"].to_numpy(), result.oof["p"].to_numpy("float64")
    p_cal = calibration.apply_calibrator(calibrator, p) if calibrator else p.copy()
    return Scores(positions, result.oof["y"].to_numpy(int), p, np.asarray(p_cal, "float64"),
                  prepared.groups(positions))


def score_test(config: Config, prepared: Prepared, task: str, model: Any, threshold: float,
               calibrator: dict[str, Any] | None, selection: Scores, run_dir: Path,
               note: str = "") -> tuple[Scores, dict[str, Any], pd.DataFrame]:
    """Score the test split ONCE: its scores; the task report (metrics at the threshold and at 0.5 with
    patient-level intervals, image-level ones beside them; the interval that re-chooses the threshold on every
    resample of the selection data (`uncertainty.threshold_uncertainty`); per-child results; calibration before
    and after); the patient-level bootstrap draws; and one line in the test-access ledger. THE one function that
    reads test labels."""
    test = scores(config, prepared, task, model, "test", calibrator)
    boot = bootstrap_settings(config)
    report = evaluate.task_report(test.y, test.p, threshold, groups=test.groups, **boot)
    nested = uncertainty.threshold_uncertainty(  # the whole rule on every resample: calibration refitted too
        selection.y, selection.p, selection.groups, test.y, test.p, test.groups,
        lambda y, p: operating_point(config, y, p, fit_calibration(config, y, p), task), **boot)
    report["threshold_uncertainty"] = {"intervals": nested["intervals"].to_dict(orient="index"),
                                       **{k: nested[k] for k in ("threshold", "n_bootstrap", "ci_level", "ci_method")}}
    report["per_child"] = evaluate.child_report(test.y, test.p, test.groups, threshold, **boot)
    if calibrator is not None:
        report["calibration"] = calibration.calibrate_and_report(selection.y, selection.p, test.y, test.p,
                                                                 calibrator["method"], groups_test=test.groups, **boot)
    draws = evaluate.bootstrap_draws(test.y, test.p, threshold, groups=test.groups, n_bootstrap=config.n_bootstrap,
                                     seed=config.seed)
    ledger.record_test_access(run_dir, task, config.to_dict(), ledger.metric_summary(report), note=note)
    return test, report, draws


def run_task(config: Config, prepared: Prepared, task: str, run_dir: str | Path | None = None,
             verbose: int = 0) -> TaskOutcome:
    """Train `task` by cross-validation; on the out-of-fold predictions fit its calibration and choose its
    threshold; save the fold ensemble to `<run_dir>/<task>/` (run record `<run_dir>/<task>_run.json`); then score
    the test split once in this run and write `<run_dir>/predictions_<task>.csv`. `config` is the resolved Config of
    `start_run`; `run_dir` defaults to `config.run_dir`."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    result = train.fit(config, prepared, task, verbose=verbose)
    y, p = result.oof["y"].to_numpy(int), result.oof["p"].to_numpy("float64")
    calibrator = fit_calibration(config, y, p)
    oof = oof_scores(result, prepared, calibrator)
    threshold, fits = rule_threshold(config, oof.y, oof.p, calibrator, task)
    rule = task_rule(config, task)
    table = stability(config, oof, calibrator, task)
    crossfit = thresholds.cross_fitted(oof.y, oof.p, result.oof["fold"].to_numpy(),
                                       lambda y_, p_: operating_point(config, y_, p_, calibrator, task))
    model_dir = cxr_model.save_model(result.model, run_dir / task, config, threshold, get_task(task).class_names,
                                     extra={"calibration": calibrator, "threshold_policy": rule["policy"],
                                            "operating_point": "declared rule" if fits else "none (0.5)",
                                            "kept_stage": result.kept_stage, "n_members": result.n_folds})
    train.record(result, config, run_dir / f"{task}_run.json")

    test, report, draws = score_test(config, prepared, task, result.model, threshold, calibrator, oof, run_dir)
    report["operating_point"] = {
        **rule, "fits": fits, "chosen_on": "out-of-fold predictions of the training children",
        "stability": thresholds.stability_summary(table).reset_index().to_dict(orient="records"),
        "cross_fitted": crossfit.to_dict(orient="records"),
        "targets": rule_targets(config, task, report, oof, threshold, crossfit),
    }
    report["selection"] = {"kept_stage": result.kept_stage, "kept_epoch": result.kept_epoch,
                           "class_balance": result.balance, "n_folds": result.n_folds,
                           "oof": train_oof_summary(result)}
    frame = pd.concat([predictions.predictions_frame(prepared.index, s.positions, split, task, s.p, s.p_calibrated,
                                                     threshold) for split, s in ((SELECTION, oof), ("test", test))],
                      ignore_index=True)
    predictions.write_predictions(frame, predictions.predictions_path(run_dir, task))
    return TaskOutcome(task, result, threshold, calibrator, oof, test, report, table, draws, frame, model_dir)


def train_oof_summary(result: train.TrainResult) -> dict[str, Any]:
    """The kept stage's pooled out-of-fold log-loss and AUROC, and the per-fold spread of both (fold variance)."""
    kept = result.selection[result.selection["kept"]].iloc[0]
    per_fold = []
    for f, rows in result.oof.groupby("fold"):
        loss, auroc = train.loss_auroc(rows["y"].to_numpy(), rows["p"].to_numpy())
        per_fold.append({"fold": int(f), "n": int(len(rows)), "log_loss": loss, "auroc": auroc})
    return {"selection_loss": float(kept["selection_loss"]), "log_loss": float(kept["oof_loss"]),
            "auroc": float(kept["oof_auroc"]), "per_fold": per_fold}


def evaluate_saved(config: Config, prepared: Prepared, task: str, run_dir: str | Path) -> dict[str, Any]:
    """Re-score a saved model of `task` (`python -m cxr evaluate`): its saved threshold and calibration, the
    out-of-fold predictions of its run (predictions_<task>.csv) as the selection data, then the test split once
    (a ledger line). The task report."""
    run_dir = Path(run_dir)
    model, meta = cxr_model.load_model(run_dir / task)
    frame = predictions.read_predictions(predictions.predictions_path(run_dir, task))
    oof = frame[frame["split"] == SELECTION]
    where = pd.Series(np.arange(len(prepared.index)), index=prepared.index["path"].to_numpy())
    positions = where.loc[oof["path"]].to_numpy()
    calibrator = meta.get("calibration")
    p = oof["probability"].to_numpy("float64")
    selection = Scores(positions, oof["y"].to_numpy(int), p,
                       calibration.apply_calibrator(calibrator, p) if calibrator else p.copy(),
                       prepared.groups(positions))
    _, report, _ = score_test(config, prepared, task, model, float(meta["threshold"]), calibrator, selection,
                              run_dir, note="re-scored by python -m cxr evaluate")
    return report


def rescore_run(config: Config, prepared: Prepared, tasks: list[str] | tuple[str, ...],
                run_dir: str | Path) -> dict[str, Any]:
    """`python -m cxr evaluate`: re-score the saved models of `tasks` (`evaluate_saved`: a ledger line each) and
    rewrite the run's metrics.json. What training chose (each task's operating point and selection) and the blocks
    not re-computed here (data, baseline, shift) are kept from the run's previous metrics.json."""
    run_dir = Path(run_dir)
    previous = evaluate.read_metrics(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    reports = {}
    for task in tasks:
        kept = {k: v for k, v in previous.get("tasks", {}).get(task, {}).items() if k in ("operating_point", "selection")}
        reports[task] = {**evaluate_saved(config, prepared, task, run_dir), **kept}
    blocks = {k: previous[k] for k in ("data", "baseline", "shift", "markers", "explanation") if k in previous}
    return finish_run(config, prepared, reports, run_dir, extra=blocks)


def finish_run(config: Config, prepared: Prepared, reports: dict[str, dict[str, Any]],
               run_dir: str | Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics document (protocol + one report per task + the test-access count, + `extra` blocks such as
    the data audit or the trivial baseline), written to `<run_dir>/metrics.json`, and the run's index.csv (every
    readable image with its split, fold and exclusion reason)."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    atomic_write_csv(run_dir / "index.csv", prepared.inventory)
    doc = evaluate.metrics_document(evaluate.protocol(config, prepared.index), reports)
    doc.update(extra or {})
    path = run_dir / ledger.LEDGER_NAME
    doc["test_ledger"] = {"file": ledger.LEDGER_NAME, "scorings": ledger.count_test_accesses(path),
                          "description": reporting.describe_ledger(path)}
    evaluate.write_metrics(run_dir / "metrics.json", doc)
    return doc


def clinical_curves(outcome: TaskOutcome, ci_level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the operating point means beyond the test set: PPV/NPV across prevalences, and its decision curves
    (net benefit against threshold probability) at clinically plausible prevalences and at the test's own, both
    from the patient-level bootstrap draws of test sensitivity and specificity."""
    at = outcome.report["at_threshold"]
    point = (at["sensitivity"]["value"], at["specificity"]["value"])
    draws = outcome.draws
    curves = clinical.prevalence_curves(draws["sensitivity"], draws["specificity"], point=point, ci_level=ci_level)
    decision = clinical.net_benefit_table(draws["sensitivity"], draws["specificity"],
                                          test_prevalence=float(outcome.test.y.mean()), point=point,
                                          ci_level=ci_level)
    return curves, decision


def error_examples(outcome: TaskOutcome, prepared: Prepared, k: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The most confident test errors of a task (`evaluate.predictions.most_confident_errors`: k false positives,
    then k false negatives) and their images (uint8, (n, S, S)), in the same order."""
    rows = predictions.most_confident_errors(outcome.predictions, k=k)
    where = pd.Series(np.arange(len(prepared.index)), index=prepared.index["path"].to_numpy())
    return rows, prepared.images[where.loc[rows["path"]].to_numpy()]


# ---------------------------------------------------------------------------------------------------------------
# The study's other blocks: the data audit, the trivial baseline, the shift checks (notebook and CLI alike)


def data_audit(config: Config, prepared: Prepared) -> dict[str, Any]:
    """What the data audit found, for metrics.json and the notebook: the patient-id evidence, the near-duplicate
    audit (at `config.near_duplicate_bits`) and the flow of images and children."""
    from cxr.data import audit

    return {"patient_ids": audit.patient_id_evidence(prepared.inventory),
            "near_duplicates": audit.near_duplicate_summary(prepared.inventory, prepared.near_duplicates,
                                                            config.near_duplicate_bits),
            "flow": audit.flow_counts(prepared.inventory, prepared.skipped).to_dict(orient="records")}


@dataclass
class Baseline:
    """The trivial baseline of a task (`cxr.evaluate.baseline`): image statistics of the training rows, the
    cross-validated fit on the study's folds, and, once scored, its test report."""

    task: str
    positions: np.ndarray
    statistics: pd.DataFrame
    fit: dict[str, Any]
    univariate: pd.Series
    report: dict[str, Any] | None = None


def fit_baseline(config: Config, prepared: Prepared, task: str = PRIMARY_TASK) -> Baseline:
    """Six image statistics of every training image, a logistic regression cross-validated on the study's folds
    (out-of-fold AUROC) and fitted on all of them. Reads no test row."""
    from cxr.evaluate import baseline

    rows = prepared.rows("train", task)
    stats = baseline.image_statistics(prepared.images[rows])
    y = prepared.labels(task, rows)
    fit = baseline.fit_baseline(stats, y, prepared.folds(rows), config.seed)
    return Baseline(task, rows, stats, fit, baseline.univariate_auroc(stats, y))


def score_baseline(config: Config, prepared: Prepared, fitted: Baseline, run_dir: str | Path) -> dict[str, Any]:
    """Score the trivial baseline on the test split ONCE (declared in the protocol; one ledger line), at the
    threshold that keeps the protocol's sensitivity on its out-of-fold predictions."""
    from cxr.evaluate import baseline

    rows = prepared.rows("test", fitted.task)
    y = prepared.labels(fitted.task, rows).astype(int)
    oof_y = prepared.labels(fitted.task, fitted.positions).astype(int)
    threshold = thresholds.choose(oof_y, fitted.fit["oof_p"], "sensitivity",
                                  target_sensitivity=config.target_sensitivity)
    p = fitted.fit["model"].predict_proba(baseline.image_statistics(prepared.images[rows]))[:, 1]
    report = evaluate.task_report(y, p, threshold, groups=prepared.groups(rows), **bootstrap_settings(config))
    report["oof_auroc"] = fitted.fit["oof_auroc"]
    report["coefficients"] = fitted.fit["coefficients"]
    ledger.record_test_access(run_dir, f"{fitted.task} (trivial baseline)", config.to_dict(),
                              ledger.metric_summary(report), note="trivial baseline: six image statistics")
    fitted.report = report
    return report


def shift_checks(config: Config, outcome: TaskOutcome, prepared: Prepared, fitted: Baseline,
                 n_degrade: int = 200) -> dict[str, pd.DataFrame]:
    """The checks of `cxr.evaluate.shift` on the out-of-fold predictions of the training children (no test
    label): false positives by position in the id blocks, the effect of blurring / downscaling a seeded sample of
    `n_degrade` normal images (each scored by its fold's model), and the network's reliance on sharpness within
    each class. Also every full-resolution original available (`raw-sample/` and `originals/`) against its copy
    through the run's preprocessing (its `reencode_quality` too: `raw_sample_agreement`, under "raw_sample") and
    its summary with the protocol's targets (`resize_summary`, under "resize")."""
    from cxr.data import raw_sample_dir
    from cxr.data.sources import originals_dir
    from cxr.evaluate import shift

    frame = outcome.predictions[outcome.predictions["split"] == SELECTION]
    normals = np.flatnonzero(outcome.oof.y == 0)
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.choice(normals, size=min(n_degrade, len(normals)), replace=False))
    positions = outcome.oof.positions[pick]
    changes = shift.degradation(outcome.result.members, prepared.images[positions], prepared.folds(positions),
                                outcome.threshold, config.batch_size)
    order = pd.Series(np.arange(len(fitted.positions)), index=fitted.positions).loc[outcome.oof.positions]
    statistics = fitted.statistics.iloc[order.to_numpy()].reset_index(drop=True)
    logit = calibration.logit(outcome.oof.p)
    raw = shift.raw_sample_agreement(outcome.result, prepared, config, outcome.threshold,
                                     [d for d in (raw_sample_dir(), originals_dir()) if d is not None])
    return {"id_blocks": shift.id_blocks(frame), "test_blocks": shift.test_id_blocks(prepared.index),
            "degradation": changes, "sharpness": shift.sharpness_reliance(logit, outcome.oof.y, statistics),
            "raw_sample": raw, "resize": shift.resize_summary(raw, outcome.threshold, config.ci_level)}


def study_blocks(config: Config, prepared: Prepared, fitted: Baseline | None = None,
                 shift: dict[str, pd.DataFrame] | None = None, marker_counts: pd.DataFrame | None = None,
                 counterfactual: dict[str, Any] | None = None) -> dict[str, Any]:
    """The blocks of metrics.json beside the tasks: the data audit, the trivial baseline (its OOF AUROC, and its
    test report once scored), the shift checks (tables as records) and the marker audit (its counts, the finding
    and the stamp counterfactual on the training children)."""
    from cxr.data import markers

    blocks: dict[str, Any] = {"data": data_audit(config, prepared)}
    if marker_counts is not None:
        blocks["markers"] = {"finding": markers.marker_finding(marker_counts),
                             "counts": marker_counts.reset_index().to_dict(orient="records"),
                             "counterfactual": counterfactual}
    if fitted is not None:
        blocks["baseline"] = {"task": fitted.task, "oof_auroc": fitted.fit["oof_auroc"],
                              "univariate_auroc": fitted.univariate.to_dict(), "test": fitted.report}
    if shift is not None:
        blocks["shift"] = {name: frame.to_dict(orient="records") for name, frame in shift.items()}
    return blocks


def previous_run_comparison(config: Config, run_dir: str | Path, thresholds: dict[str, float],
                            previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """This run against the previous committed run on the test images both scored (`evaluate.PREVIOUS_RUN`: its
    test predictions, `doc/previous_predictions.csv`), per task in `thresholds` (each at its own run's threshold):
    `evaluate.paired.compare_predictions` (McNemar on the normals' and the positives' calls, the paired
    patient-clustered AUROC difference). None when the previous predictions are not there; a task the two runs
    share no test image of (a smoke run's subset may) is skipped with its reason under "skipped"."""
    from cxr.evaluate.document import PREVIOUS_RUN
    from cxr.evaluate.paired import compare_predictions

    previous = PREVIOUS_RUN if previous is None else previous
    path = Path(previous["predictions"])
    if not path.is_file():
        return None
    before = pd.read_csv(path)
    now = document.committed_predictions(run_dir, tasks=list(thresholds))
    out: dict[str, Any] = {"name": previous["name"], "predictions": path.name, "tasks": {}, "skipped": {}}
    for task, threshold in thresholds.items():
        try:
            out["tasks"][task] = {"threshold": threshold, "threshold_before": previous["thresholds"][task],
                                  **compare_predictions(now, before, task, threshold, previous["thresholds"][task],
                                                        **bootstrap_settings(config))}
        except (KeyError, ValueError) as error:
            out["skipped"][task] = str(error)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The study: one object and its steps in one order (python -m cxr train and the notebook alike)
