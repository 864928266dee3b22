"""The study, step by step, in ONE order for `python -m cxr train` and the notebook alike: `Study` holds what the
steps made, `STEPS` names them in order, `run_study` runs them all.

    start           start_run: the run folder taken, settings resolved once, config.json
    data            data.prepare: index, audit, folds, decoded images
    markers         the marker audit: the burned-in stamp per image (`cxr.data.markers`; no model)
    baseline_fit    the trivial baseline, cross-validated on the training children (no test row)
    pneumonia       run_task: cross-validated training (`train.fit`: the fold ensemble and its out-of-fold
                    predictions) -> on the OUT-OF-FOLD predictions: calibration and the operating point (with
                    its stability) -> the ensemble saved with both -> `score_test`: the test split scored ONCE
                    (the report with every interval, the predictions file, one line of the test-access ledger)
    counterfactual  the stamp pasted on the main task's out-of-fold normals, re-scored by their fold models
    shift           the shift checks of the main task, on its out-of-fold predictions
    baseline_score  the trivial baseline scored on test once (a ledger line)
    subtype         run_task for the second task
    finish          finish_run: metrics.json (with the data audit, the baseline, the shift checks), index.csv

(`python -m cxr train` runs "data" before "start", under `claimed_run`: data that cannot train the tasks leave no
run folder behind; neither step writes a result the other reads.)

The notebook calls the same steps, one per cell (`study.task("pneumonia")`, ...), then explains the main task
(`Study.grad_cam`, `randomization_check`, `faithfulness_check`, `shortcut_audit`: figures only, nothing in the
run folder but them). `rescore_run` is `python -m cxr evaluate`. Each step is a call into the module that owns it
(`train`, `model`, `evaluate.*`, `explain`); this file only fixes their order. Nothing before `score_test` reads
a test label or a test image.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from cxr import evaluate, model as cxr_model, reporting, train
from cxr.config import PRIMARY_TASK, TASKS, Config, task as get_task
from cxr.data import Prepared
from cxr.evaluate import calibration, clinical, ledger, predictions, threshold as thresholds, uncertainty
from cxr.io import atomic_write_csv

STABILITY_POLICIES = ("sensitivity", "youden", "plateau", "calibrated")  # compared on OOF resamples
SELECTION = "oof"  # the split name of the out-of-fold predictions in the predictions file


@dataclass
class Scores:
    """One set of scored rows of a task: positions (into prepared.index / images), 0/1 labels, probabilities, the
    probabilities after the calibration fitted on the out-of-fold predictions (equal to `p` with calibration
    "none"), and the children (patient ids)."""

    positions: np.ndarray
    y: np.ndarray
    p: np.ndarray
    p_calibrated: np.ndarray
    groups: np.ndarray


@dataclass
class TaskOutcome:
    """What `run_task` produced for one task."""

    task: str
    result: train.TrainResult  # the fold ensemble, its members, the out-of-fold evidence, timings
    threshold: float  # chosen on the out-of-fold predictions by config.threshold_policy (uncalibrated probability)
    calibrator: dict[str, Any] | None  # fitted on the out-of-fold predictions, or None
    oof: Scores  # the training children, each scored by the fold model that never saw it
    test: Scores  # the official test, scored once in this run by the ensemble
    report: dict[str, Any]  # the task's entry of metrics.json
    stability: pd.DataFrame  # the threshold policies on bootstrap resamples of the out-of-fold predictions
    draws: pd.DataFrame  # patient-level bootstrap draws of the test metrics at the threshold
    predictions: pd.DataFrame  # every out-of-fold and test prediction (also predictions_<task>.csv)
    model_dir: Path  # the saved model folder (model.keras + model.json)


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


def fit_calibration(config: Config, y: np.ndarray, p: np.ndarray) -> dict[str, Any] | None:
    """The calibrator of `config.calibration`, fitted on the out-of-fold predictions only (None for "none")."""
    if config.calibration == "none":
        return None
    return calibration.fit_calibrator(y, p, config.calibration)


def task_rule(config: Config, task: str = PRIMARY_TASK) -> dict[str, Any]:
    """The declared operating rule of `task` (protocol v2, items 3 and 4): its policy, the class whose sensitivity
    it keeps (`Task.kept_class`, the clinical polarity) and its targets, read from the Config."""
    t, op = get_task(task), config.operating
    if t.primary:
        return {"policy": op.threshold_policy, "kept_class": t.class_names[t.kept_class],
                "target_sensitivity": op.target_sensitivity, "min_specificity": op.min_specificity,
                "tolerance": op.threshold_tolerance}
    return {"policy": op.subtype_threshold_policy, "kept_class": t.class_names[t.kept_class],
            "target_specificity": op.target_specificity, "min_sensitivity": op.subtype_min_sensitivity,
            "tolerance": op.threshold_tolerance}


def rule_threshold(config: Config, y: np.ndarray, p: np.ndarray, calibrator: dict[str, Any] | None = None,
                   task: str = PRIMARY_TASK) -> tuple[float, bool]:
    """The threshold of `task`'s rule (`task_rule`) on out-of-fold labels and probabilities, and whether the rule
    fits. A secondary task whose rule keeps class 0 (bacterial vs viral) fits only when class 1's sensitivity at
    that threshold reaches `config.subtype_min_sensitivity`; when it does not, no threshold serves both classes and
    the task has no operating point: (0.5, False)."""
    t, op = get_task(task), config.operating
    policy = op.threshold_policy if t.primary else op.subtype_threshold_policy
    cut = thresholds.choose(y, p, policy, tolerance=op.threshold_tolerance, target_sensitivity=op.target_sensitivity,
                            target_specificity=op.target_specificity, calibrator=calibrator)
    if not t.primary and t.kept_class == 0:
        y, p = np.asarray(y), np.asarray(p)
        if float(np.mean(p[y == 1] >= cut)) < op.subtype_min_sensitivity:
            return 0.5, False
    return cut, True


def operating_point(config: Config, y: np.ndarray, p: np.ndarray,
                    calibrator: dict[str, Any] | None = None, task: str = PRIMARY_TASK) -> float:
    """THE operating point of the study: the threshold of `task`'s rule (`rule_threshold`: for the primary task
    `config.threshold_policy` with its target sensitivity or tolerance, and the model's own calibrator for
    "calibrated"; 0.5 for a task whose rule does not fit) on out-of-fold labels and probabilities. Every caller
    goes through it: each task, the stability resamples, the threshold-resampling bootstrap of the test
    intervals, the cross-fitted check."""
    return rule_threshold(config, y, p, calibrator, task)[0]


def stability(config: Config, selection: Scores, calibrator: dict[str, Any] | None,
              task: str = PRIMARY_TASK) -> pd.DataFrame:
    """How each policy's threshold moves under patient-level bootstrap resamples of the out-of-fold predictions."""
    op, boot = config.operating, config.bootstrap
    own = op.threshold_policy if get_task(task).primary else op.subtype_threshold_policy
    policies = list(dict.fromkeys([own, *STABILITY_POLICIES]))
    if calibrator is None:
        policies = [p for p in policies if p != "calibrated"]
    n_boot = max(50, min(200, boot.n_bootstrap // 10))
    return thresholds.stability(selection.y, selection.p, policy=policies, n_boot=n_boot, seed=boot.seed,
                                groups=selection.groups, tolerance=op.threshold_tolerance,
                                target_sensitivity=op.target_sensitivity, target_specificity=op.target_specificity,
                                calibrator=calibrator)


def rule_targets(config: Config, task: str, report: dict[str, Any], oof: Scores, threshold: float,
                 crossfit: pd.DataFrame) -> list[dict[str, Any]]:
    """Each declared target of `task`'s rule beside what the out-of-fold predictions, the cross-fitted rule (chosen
    on the other folds, applied to each held-out one, pooled) and the test gave, and whether the test met it.
    Nothing is re-tuned when a target is missed; it is reported."""
    rule = task_rule(config, task)
    oof_called = oof.p >= threshold
    oof_rates = {"sensitivity": float(oof_called[oof.y == 1].mean()),
                 "specificity": float(1 - oof_called[oof.y == 0].mean())}
    pooled = crossfit[crossfit["fold"] == "pooled"].iloc[0]
    wanted = ([("sensitivity", rule["target_sensitivity"]), ("specificity", rule["min_specificity"])]
              if "target_sensitivity" in rule else
              [("specificity", rule["target_specificity"]), ("sensitivity", rule["min_sensitivity"])])
    rows = []
    for metric, target in wanted:
        test = report["at_threshold"][metric]
        rows.append({"metric": metric, "target": float(target), "oof": oof_rates[metric],
                     "cross_fitted": float(pooled[metric]), "test": float(test["value"]),
                     "test_ci_low": float(test["ci_low"]), "test_ci_high": float(test["ci_high"]),
                     "met_on_test": bool(test["value"] >= target)})
    return rows


def bootstrap_settings(config: Config) -> dict[str, Any]:
    """The settings of every interval, read from the Config in this one place: n_bootstrap, ci_level and seed (the
    keyword arguments of the task reports, the baseline's and the notebook's curves): the Config's bootstrap
    section."""
    return config.bootstrap.as_kwargs()


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


def targets_table(outcome: TaskOutcome) -> pd.DataFrame:
    """The declared targets of a task's rule (`rule_targets`) as a table: one row per metric, the target, the
    out-of-fold, cross-fitted and test values (with its interval) and whether the test met it; the threshold and
    whether the rule fits in the index name."""
    op = outcome.report["operating_point"]
    frame = pd.DataFrame(op["targets"]).set_index("metric")
    frame.index.name = (f"{op['policy']} rule, threshold {outcome.threshold:.3f}"
                        + ("" if op.get("fits", True) else " (the rule does not fit: no operating point, 0.5)"))
    return frame


def cross_fitted_table(outcome: TaskOutcome) -> pd.DataFrame:
    """The rule cross-fitted over the folds (`cxr.evaluate.threshold.cross_fitted`), as a table."""
    return pd.DataFrame(outcome.report["operating_point"]["cross_fitted"]).set_index("fold")


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
    through the run's preprocessing (its `reencode_quality` too: `raw_sample_agreement`, under "raw_sample") and its summary with the protocol's targets (`resize_summary`,
    under "resize")."""
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


# ---------------------------------------------------------------------------------------------------------------
# The study: one object and its steps in one order (python -m cxr train and the notebook alike)


@dataclass
class GradCam:
    """The Grad-CAM maps of a task's test split (notebook section 7): every test image explained by the fold
    ensemble for the class it was called at the task's threshold, raw maps on one colour scale, and the cases
    shown, chosen by rule (`explain.confident_cases`, `explain.near_threshold_cases`)."""

    task: str
    images: np.ndarray  # the task's test images (n, S, S) uint8, in the order of outcome.test
    y: np.ndarray
    p: np.ndarray
    threshold: float
    called: np.ndarray  # 0/1: the ensemble's call at the threshold
    maps: np.ndarray  # (n, S, S) raw Grad-CAM of the called class (the score's units)
    scale: float  # one colour scale for every map (`plots.map_scale`)
    right: pd.DataFrame  # the most confident true positives and true negatives
    wrong: pd.DataFrame  # the most confident false positives and false negatives
    near: pd.DataFrame  # the cases closest to the threshold, on each side of it

    def pairs(self, cases: pd.DataFrame) -> dict[str, Any]:
        """The arguments of `plots.gradcam_pairs` for `cases` (`right`, `wrong` or `near`)."""
        from cxr.explain import SCALE_NOTE

        at = cases.index.to_numpy()
        return dict(images=self.images[at], cams=self.maps[at], y=cases.y, p=cases.p, threshold=self.threshold,
                    scale=self.scale, cells=cases.cell.tolist(), scale_note=SCALE_NOTE)

    def where(self, cases: pd.DataFrame) -> str:
        """The caption of the figure of `cases`: where the heat of each map shown lies
        (`reporting.describe_case_regions`)."""
        from cxr import explain

        at = cases.index.to_numpy()
        return reporting.describe_case_regions(explain.case_regions(self.maps[at], cases.cell, cases.p, at))


@dataclass
class Study:
    """The study and what its steps made, filled in by `STEPS` in order (`run_study`), or cell by cell in the
    notebook. `config` is replaced by the resolved one at `start`; `tasks` limits the task steps
    (`python -m cxr train --tasks`)."""

    config: Config
    tasks: tuple[str, ...] = tuple(TASKS)
    verbose: int = 0
    prepared: Prepared | None = None
    baseline: Baseline | None = None
    outcomes: dict[str, TaskOutcome] = field(default_factory=dict)
    shift: dict[str, pd.DataFrame] | None = None
    marker_found: pd.DataFrame | None = None  # `markers`: the detector's result per image of prepared.index
    marker_counts: pd.DataFrame | None = None  # `markers`: per official split and subtype
    counterfactual: dict[str, Any] | None = None  # `counterfactual_check` of the main task
    doc: dict[str, Any] | None = None
    gradcam: GradCam | None = None

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def curves(self, outcome: TaskOutcome, calibrated: bool = True) -> evaluate.curves.Curves:
        """The test curves of a scored task, for its figures (`evaluate.curves.task_curves`: ROC, precision-recall,
        reliability before and, with `calibrated`, after calibration; bands from this run's bootstrap settings)."""
        test = outcome.test
        return evaluate.curves.task_curves(test.y, test.p, outcome.threshold,
                                           test.p_calibrated if calibrated else None, groups=test.groups,
                                           **bootstrap_settings(self.config))

    # the steps, in the order of STEPS

    def start(self) -> Config:
        """Take the run folder, resolve the settings once, write config.json (`start_run`): the resolved Config."""
        self.config = start_run(self.config)
        return self.config

    def data(self) -> Prepared:
        """The study's data (`data.prepare`, checked to train `tasks`; run again, prepared again)."""
        from cxr import data

        self.prepared = data.prepare(self.config, tasks=self.tasks)
        return self.prepared

    def fit_baseline(self) -> Baseline:
        """The trivial baseline of the main task on the training children (`fit_baseline`)."""
        self.baseline = fit_baseline(self.config, self.prepared)
        return self.baseline

    def task(self, name: str) -> TaskOutcome | None:
        """Train, choose and score one task (`run_task`); None (nothing done) for a task not in `tasks`."""
        if name not in self.tasks:
            return None
        self.outcomes[name] = run_task(self.config, self.prepared, name, self.run_dir, self.verbose)
        return self.outcomes[name]

    def shift_checks(self) -> dict[str, pd.DataFrame] | None:
        """The shift checks of the baseline's task (`shift_checks`); None when that task was not trained."""
        outcome = self.outcomes.get(self.baseline.task)
        self.shift = shift_checks(self.config, outcome, self.prepared, self.baseline) if outcome else None
        return self.shift

    def score_baseline(self) -> dict[str, Any]:
        """The trivial baseline on test, once (`score_baseline`): its report."""
        return score_baseline(self.config, self.prepared, self.baseline, self.run_dir)

    def finish(self) -> dict[str, Any]:
        """metrics.json and index.csv (`finish_run`, with `study_blocks`): the metrics document."""
        self.doc = finish_run(self.config, self.prepared, {t: o.report for t, o in self.outcomes.items()},
                              self.run_dir, extra=study_blocks(self.config, self.prepared, self.baseline, self.shift,
                                                               self.marker_counts, self.counterfactual))
        return self.doc

    def record(self, name: str, block: Any) -> dict[str, Any]:
        """Add `block` under `name` to the metrics document after `finish` (the Grad-CAM summary, computed after
        the study in the notebook) and rewrite metrics.json (atomically): the document."""
        if self.doc is None:
            raise ValueError("record() comes after finish(): there is no metrics document yet")
        if name in ("protocol", "tasks", "test_ledger", "schema_version"):
            raise ValueError(f"{name!r} is written by finish(), not by record()")
        self.doc[name] = block
        evaluate.write_metrics(self.run_dir / "metrics.json", self.doc)
        return self.doc

    # protocol v2's checks of the marker shortcut (notebook sections 1 and 5; nothing scored on test)

    def markers(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The marker audit (`cxr.data.markers`): the detector's result for every image of the study (`detect`:
        kv_score, stamp, bold_r) and its counts per split, class and subtype (`marker_table`). A data audit: it
        reads images, never a model's score."""
        from cxr.data import markers

        self.marker_found = markers.detect(self.prepared.images)
        self.marker_counts = markers.marker_table(self.prepared.index, self.marker_found)
        return self.marker_found, self.marker_counts

    def counterfactual_check(self, task: str = PRIMARY_TASK) -> dict[str, Any] | None:
        """The stamp counterfactual on the training children (protocol v2, item 2): the stamp pasted
        (`cxr.data.markers.paste_stamp`) onto every out-of-fold normal image that its fold model calls normal at
        the task's threshold, scored again by that same fold model (which never saw the child), and summarised
        (`explain.counterfactual_summary`: share of calls that change, mean probability rise, against the targets
        of at most 2% and 0.02)."""
        from cxr import train as cxr_train
        from cxr.data.markers import paste_stamp
        from cxr.explain.checks import counterfactual_summary

        if task not in self.outcomes:
            return None
        outcome, c = self.outcomes[task], self.config
        oof = outcome.result.oof
        before, after = [], []
        for fold, rows in oof[(oof["y"] == 0) & (oof["p"] < outcome.threshold)].groupby("fold"):
            images = self.prepared.images[rows["position"].to_numpy()]
            member = outcome.result.members[int(fold)]
            stamped = np.stack([paste_stamp(image) for image in images])
            before.append(cxr_train.predict_proba(member, images, c.batch_size))
            after.append(cxr_train.predict_proba(member, stamped, c.batch_size))
        result = counterfactual_summary(np.concatenate(before) if before else np.zeros(0),
                                        np.concatenate(after) if after else np.zeros(0), outcome.threshold,
                                        c.ci_level, c.seed)
        self.counterfactual = {"task": task, "marker_zones": bool(c.marker_zones), **result}
        return self.counterfactual

    # the explanation of the main task (notebook section 7, after the study: figures only)

    def grad_cam(self, task: str = PRIMARY_TASK) -> GradCam:
        """Grad-CAM of every test image of `task` for the class the ensemble called, raw, on one colour scale, and
        the most confident right calls and errors (`config.gradcam_examples` per confusion cell, twice as many
        errors) and the cases closest to the threshold (`config.gradcam_examples` on each side)."""
        from cxr import explain
        from cxr.plots import map_scale

        outcome, c = self.outcomes[task], self.config
        images = self.prepared.images[outcome.test.positions]
        called = (outcome.test.p >= outcome.threshold).astype(int)
        maps = explain.grad_cam(outcome.result.model, images, target_class=called, batch_size=c.batch_size,
                                normalize="none")
        right = explain.confident_cases(outcome.test.y, outcome.test.p, outcome.threshold, ("TP", "TN"),
                                        c.gradcam_examples)
        wrong = explain.confident_cases(outcome.test.y, outcome.test.p, outcome.threshold, ("FP", "FN"),
                                        2 * c.gradcam_examples)
        near = explain.near_threshold_cases(outcome.test.y, outcome.test.p, outcome.threshold, c.gradcam_examples)
        self.gradcam = GradCam(task, images, outcome.test.y, outcome.test.p, outcome.threshold, called, maps,
                               map_scale(maps), right, wrong, near)
        return self.gradcam

    def randomization_check(self) -> pd.DataFrame:
        """The cascading randomisation check (`explain.randomization_test`) of the first fold model on the first
        `config.explain_images` test images."""
        from cxr import explain

        cam, c = self.gradcam, self.config
        member = self.outcomes[cam.task].result.members[0]
        return explain.randomization_test(member, cam.images[: c.explain_images], seed=c.seed,
                                          batch_size=c.batch_size)

    def faithfulness_check(self) -> Any:
        """Deletion and insertion (`explain.deletion_insertion`) for the first fold model on the first
        `config.explain_images` test images called positive, with that model's maps of the positive class."""
        from cxr import explain

        cam, c = self.gradcam, self.config
        member = self.outcomes[cam.task].result.members[0]
        images = cam.images[cam.called == 1][: c.explain_images]
        maps = explain.grad_cam(member, images, target_class=1, batch_size=c.batch_size)
        return explain.deletion_insertion(member, images, maps, seed=c.seed, batch_size=c.batch_size)

    def shortcut_audit(self) -> pd.DataFrame:
        """Where the heat of every test map falls (`explain.shortcut_audit`: lungs, marker corners, border band,
        outside the body box), per confusion cell; `reporting.describe_where` says it in words."""
        from cxr import explain

        cam = self.gradcam
        return explain.shortcut_audit(cam.maps, cam.y, cam.called, get_task(cam.task).class_names)


STEPS: tuple[tuple[str, Callable[[Study], Any]], ...] = (
    ("start", Study.start),
    ("data", Study.data),
    ("markers", Study.markers),
    ("baseline_fit", Study.fit_baseline),
    ("pneumonia", lambda study: study.task("pneumonia")),
    ("counterfactual", Study.counterfactual_check),
    ("shift", Study.shift_checks),
    ("baseline_score", Study.score_baseline),
    ("subtype", lambda study: study.task("subtype")),
    ("finish", Study.finish),
)


def run_study(study: Study, skip: tuple[str, ...] = ()) -> Study:
    """The whole study: every step of `STEPS` in order but those named in `skip` (already run: `python -m cxr
    train` runs "data" first, under `claimed_run`, so that data that cannot train leave no run folder behind)."""
    unknown = set(skip) - {name for name, _ in STEPS}
    if unknown:
        raise ValueError(f"no such step: {sorted(unknown)}; the steps are {[name for name, _ in STEPS]}")
    for name, step in STEPS:
        if name not in skip:
            step(study)
    return study
