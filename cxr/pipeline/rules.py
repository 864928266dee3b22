"""The declared choices made on the out-of-fold predictions, in one place: the calibration, each task's
operating rule (`task_rule`: its policy, the class whose sensitivity it keeps, its targets), its threshold
(`rule_threshold`, `operating_point`), the stability of the threshold, the targets beside the out-of-fold,
cross-fitted and test values, and the bootstrap settings of every interval."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxr.config import PRIMARY_TASK, Config, task as get_task
from cxr.evaluate import calibration, threshold as thresholds

from cxr.pipeline.outcomes import Scores, TaskOutcome

STABILITY_POLICIES = ("sensitivity", "youden", "plateau", "calibrated")  # compared on OOF resamples


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
