"""One task end to end, the same for the notebook and `python -m cxr train`:

    fit (train + val only) -> on VALIDATION: operating point (and its stability), calibration
    -> save the model (with threshold and calibration) -> score the test split ONCE -> report, predictions file,
    one line in the test-access ledger

and `run_study`, every task plus `metrics.json`. Each step is a call into the module that owns it (`train`,
`model`, `evaluate.*`); this file only fixes their order. Nothing before "score the test split" reads a test label
or a test image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr import evaluate, model as cxr_model, train
from cxr.config import Config, task as get_task
from cxr.data import Prepared
from cxr.evaluate import calibration, clinical, ledger, predictions, threshold as thresholds

STABILITY_POLICIES = ("youden", "plateau", "calibrated")  # compared on validation resamples, whatever the policy


@dataclass
class Scores:
    """One split's rows of a task: positions (into prepared.index / images), 0/1 labels, probabilities, and the
    probabilities after the validation-fitted calibration (equal to `p` when calibration is "none")."""

    positions: np.ndarray
    y: np.ndarray
    p: np.ndarray
    p_calibrated: np.ndarray
    groups: np.ndarray  # patient ids


@dataclass
class TaskOutcome:
    """What `run_task` produced for one task."""

    task: str
    result: train.TrainResult  # the trained model, its history, stage selection and timings
    threshold: float  # chosen on validation by config.threshold_policy (on the uncalibrated probability)
    calibrator: dict[str, Any] | None  # fitted on validation (`evaluate.calibration.fit_calibrator`), or None
    val: Scores
    test: Scores
    report: dict[str, Any]  # evaluate.task_report (+ calibration, operating point): an entry of metrics.json
    stability: pd.DataFrame  # the threshold policies on bootstrap resamples of the validation set
    draws: pd.DataFrame  # patient-level bootstrap draws of the test metrics at the threshold
    predictions: pd.DataFrame  # every validation and test prediction (also written to predictions_<task>.csv)
    model_dir: Path  # the saved model folder (model.keras + model.json)
    extra: dict[str, Any] = field(default_factory=dict)

    # the names the notebook used before the validation/test split of fields
    @property
    def positions(self) -> np.ndarray:
        return self.test.positions

    @property
    def y(self) -> np.ndarray:
        return self.test.y

    @property
    def p(self) -> np.ndarray:
        return self.test.p


def scores(config: Config, prepared: Prepared, task: str, model: Any, split: str,
           calibrator: dict[str, Any] | None = None) -> Scores:
    """Predict one split of `task` with `model` (and apply `calibrator` when given)."""
    positions, y, p = train.predict_split(model, prepared.index, prepared.images, task, split)
    p_cal = calibration.apply_calibrator(calibrator, p) if calibrator else p.copy()
    groups = prepared.index["patient_id"].to_numpy()[positions]
    return Scores(positions, y.astype(int), p, np.asarray(p_cal, dtype="float64"), groups)


def choose_threshold(config: Config, y: np.ndarray, p: np.ndarray) -> float:
    """The threshold of `config.threshold_policy` (with its tolerance / target) on validation labels and scores."""
    return thresholds.choose(y, p, config.threshold_policy, tolerance=config.threshold_tolerance,
                             target_sensitivity=config.target_sensitivity)


def operating_point(config: Config, val: Scores) -> tuple[float, pd.DataFrame]:
    """The threshold of `config.threshold_policy` on validation, and how the policies move under patient-level
    bootstrap resamples of the validation set (`evaluate.threshold.stability`)."""
    t = choose_threshold(config, val.y, val.p)
    policies = list(dict.fromkeys([config.threshold_policy, *STABILITY_POLICIES]))
    n_boot = max(50, min(200, config.n_bootstrap // 10))
    table = thresholds.stability(val.y, val.p, policy=policies, n_boot=n_boot, seed=config.seed, groups=val.groups)
    return t, table


def fit_calibration(config: Config, val: Scores) -> dict[str, Any] | None:
    """The calibrator of `config.calibration`, fitted on validation only (None for "none")."""
    if config.calibration == "none":
        return None
    return calibration.fit_calibrator(val.y, val.p, config.calibration)


def score_test(config: Config, prepared: Prepared, task: str, model: Any, threshold: float,
               calibrator: dict[str, Any] | None, val: Scores, run_dir: Path,
               note: str = "") -> tuple[Scores, dict[str, Any], pd.DataFrame]:
    """Score the test split ONCE: its scores, the task report (patient-level intervals as the headline, image-level
    kept; calibration before/after) and the patient-level bootstrap draws; one line in the test-access ledger."""
    test = scores(config, prepared, task, model, "test", calibrator)
    report = evaluate.task_report(test.y, test.p, threshold, config, groups=test.groups)
    if calibrator is not None:
        report["calibration"] = calibration.calibrate_and_report(val.y, val.p, test.y, test.p, calibrator["method"])
    draws = evaluate.bootstrap_draws(test.y, test.p, threshold, groups=test.groups,
                                     n_bootstrap=config.n_bootstrap, seed=config.seed)
    ledger.record_test_access(run_dir, task, config.to_dict(), ledger.metric_summary(report), note=note)
    return test, report, draws


def run_task(config: Config, prepared: Prepared, task: str, run_dir: str | Path | None = None,
             verbose: int = 0) -> TaskOutcome:
    """Train `task`; on validation choose its threshold and fit its calibration; save the model to
    `<run_dir>/<task>/` (run record `<run_dir>/<task>_run.json`); then score the test split once and write
    `<run_dir>/predictions_<task>.csv`. `run_dir` defaults to `config.run_dir`."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    class_names = list(get_task(task).class_names)
    result = train.fit(config, prepared.index, prepared.images, task=task, verbose=verbose)

    val = scores(config, prepared, task, result.model, "val")
    threshold, stability = operating_point(config, val)
    calibrator = fit_calibration(config, val)
    if calibrator is not None:
        val.p_calibrated = calibration.apply_calibrator(calibrator, val.p)
    model_dir = cxr_model.save_model(result.model, run_dir / task, config, threshold, class_names,
                                     extra={"calibration": calibrator, "threshold_policy": config.threshold_policy})
    train.record(result, config, run_dir / f"{task}_run.json")

    test, report, draws = score_test(config, prepared, task, result.model, threshold, calibrator, val, run_dir)
    report["operating_point"] = {
        "policy": config.threshold_policy, "tolerance": config.threshold_tolerance,
        "validation_stability": _records(thresholds.stability_summary(stability)),
    }
    report["kept_stage"] = result.kept_stage
    frame = pd.concat([predictions.predictions_frame(prepared.index, s.positions, split, task, s.p, s.p_calibrated,
                                                     threshold) for split, s in (("val", val), ("test", test))],
                      ignore_index=True)
    predictions.write_predictions(frame, predictions.predictions_path(run_dir, task))
    outcome = TaskOutcome(task, result, threshold, calibrator, val, test, report, stability, draws, frame, model_dir)
    seeds = seed_runs(config, prepared, task, outcome, run_dir)
    if seeds is not None:
        report["seeds"] = seeds
    return outcome


def seed_runs(config: Config, prepared: Prepared, task: str, first: TaskOutcome,
              run_dir: str | Path | None = None) -> dict[str, Any] | None:
    """With `config.n_seeds` > 1: train the same recipe with seeds seed+1, ..., each with its own validation
    threshold, and score each on test (one ledger line each); report every seed's test metrics, their spread, and
    the SEED ENSEMBLE (the mean of the seeds' probabilities, its threshold chosen on the ensemble's validation
    probabilities) as a separate, pre-declared row. The extra models are not saved. None with one seed."""
    if config.n_seeds <= 1:
        return None
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    runs = [(config.seed, first.val, first.test, first.threshold, first.report)]
    for k in range(1, config.n_seeds):
        c = config.replace(seed=config.seed + k)
        model = train.fit(c, prepared.index, prepared.images, task=task).model
        val = scores(c, prepared, task, model, "val")
        t = choose_threshold(c, val.y, val.p)
        test = scores(c, prepared, task, model, "test")
        report = evaluate.task_report(test.y, test.p, t, config, groups=test.groups)
        ledger.record_test_access(run_dir, task, c.to_dict(), ledger.metric_summary(report), note=f"seed {c.seed}")
        runs.append((c.seed, val, test, t, report))
    val_p = np.mean([r[1].p for r in runs], axis=0)
    test_p = np.mean([r[2].p for r in runs], axis=0)
    t_ens = choose_threshold(config, first.val.y, val_p)
    ensemble = evaluate.task_report(first.test.y, test_p, t_ens, config, groups=first.test.groups)
    ledger.record_test_access(run_dir, task, config.to_dict(), ledger.metric_summary(ensemble),
                              note=f"ensemble of {config.n_seeds} seeds")
    per_seed = pd.DataFrame([{"seed": seed, "threshold": t, **{m: rep["at_threshold"][m]["value"]
                                                                 for m in evaluate.METRICS}}
                             for seed, _, _, t, rep in runs])
    spread = {m: {"mean": float(per_seed[m].mean()), "sd": float(per_seed[m].std(ddof=1)),
                  "min": float(per_seed[m].min()), "max": float(per_seed[m].max())} for m in evaluate.METRICS}
    return {"n_seeds": config.n_seeds, "per_seed": per_seed.to_dict(orient="records"), "spread": spread,
            "ensemble": ensemble}


def evaluate_saved(config: Config, prepared: Prepared, task: str, model_dir: str | Path,
                   run_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-score a saved model of `task` (`python -m cxr evaluate`): its saved threshold and calibration, the
    validation scores for the calibration report, then the test split once (a ledger line). The task report."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    model, meta = cxr_model.load_model(model_dir)
    calibrator = meta.get("calibration")
    val = scores(config, prepared, task, model, "val", calibrator)
    _, report, _ = score_test(config, prepared, task, model, float(meta["threshold"]), calibrator, val, run_dir,
                              note="re-scored by python -m cxr evaluate")
    return report


def clinical_curves(outcome: TaskOutcome, ci_level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the operating point means beyond the test set: PPV/NPV across prevalences, and its decision curve
    (net benefit against threshold probability, at the test prevalence), both from the patient-level bootstrap
    draws of test sensitivity and specificity."""
    at = outcome.report["at_threshold"]
    point = (at["sensitivity"]["value"], at["specificity"]["value"])
    draws = outcome.draws
    curves = clinical.prevalence_curves(draws["sensitivity"], draws["specificity"], point=point, ci_level=ci_level)
    decision = clinical.operating_point_curve(draws["sensitivity"], draws["specificity"],
                                              prevalence=float(outcome.test.y.mean()), point=point, ci_level=ci_level)
    return curves, decision


def error_examples(outcome: TaskOutcome, prepared: Prepared, k: int = 4) -> tuple[pd.DataFrame, np.ndarray]:
    """The most confident test errors of a task (`evaluate.predictions.most_confident_errors`: k false positives,
    then k false negatives) and their images (uint8, (n, S, S)), in the same order."""
    rows = predictions.most_confident_errors(outcome.predictions, k=k)
    where = pd.Series(np.arange(len(prepared.index)), index=prepared.index["path"].to_numpy())
    return rows, prepared.images[where.loc[rows["path"]].to_numpy()]


def describe_seeds(report: dict[str, Any], accelerator: str = "cpu") -> str:
    """One or two sentences on the variation between training runs, from the report's "seeds" block."""
    seeds = report.get("seeds")
    if not seeds:
        return (f"One training run per task (n_seeds = 1, on the {accelerator.upper()}): the spread of the test "
                "metrics across random seeds was not measured, so the intervals above cover the sampling of test "
                "patients only, not the randomness of training.")
    spread, ens = seeds["spread"], seeds["ensemble"]["at_threshold"]
    parts = [f"{m} {spread[m]['min']:.3f}-{spread[m]['max']:.3f} (SD {spread[m]['sd']:.3f})"
             for m in ("auroc", "accuracy", "specificity")]
    return (f"Across {seeds['n_seeds']} seeds the test metrics ranged: " + ", ".join(parts) + ". The seed ensemble "
            f"(pre-declared, threshold from its validation probabilities): AUROC {evaluate.fmt(ens['auroc'])}, "
            f"accuracy {evaluate.fmt(ens['accuracy'])}, specificity {evaluate.fmt(ens['specificity'])}.")


def _records(frame: pd.DataFrame) -> dict[str, Any]:
    return {str(k): {c: (None if pd.isna(v) else float(v)) for c, v in row.items()} for k, row in frame.iterrows()}


def write_metrics(config: Config, prepared: Prepared, reports: dict[str, dict[str, Any]],
                  run_dir: str | Path | None = None) -> dict[str, Any]:
    """The metrics document (protocol + one report per task + the test-access count), written to
    `<run_dir>/metrics.json`."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    doc = evaluate.metrics_document(evaluate.protocol(config, prepared.index), reports)
    path = run_dir / ledger.LEDGER_NAME
    doc["test_ledger"] = {"file": ledger.LEDGER_NAME, "scorings": ledger.count_test_accesses(path),
                          "description": ledger.describe_ledger(path)}
    evaluate.write_metrics(run_dir / "metrics.json", doc)
    return doc


def run_study(config: Config, prepared: Prepared, tasks: list[str] | tuple[str, ...] = ("pneumonia", "subtype"),
              run_dir: str | Path | None = None, verbose: int = 0) -> tuple[dict[str, TaskOutcome], dict[str, Any]]:
    """`run_task` for every task, then `metrics.json`: (outcomes by task, the metrics document)."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    outcomes = {task: run_task(config, prepared, task, run_dir, verbose) for task in tasks}
    doc = write_metrics(config, prepared, {t: o.report for t, o in outcomes.items()}, run_dir)
    return outcomes, doc
