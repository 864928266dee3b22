"""One task end to end, the same for the notebook and `python -m cxr train`:

    fit (train + val only) -> threshold on validation -> save the model -> score the test split ONCE -> report

and `run_study`, every task plus `metrics.json`. Each step is a call into the module that owns it (`train`,
`model`, `evaluate`); this file only fixes their order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr import evaluate, model as cxr_model, train
from cxr.config import Config, task as get_task
from cxr.data import Prepared


@dataclass
class TaskOutcome:
    """What `run_task` produced for one task."""

    task: str
    result: train.TrainResult  # the trained model, its history and timings
    threshold: float  # chosen on validation by config.threshold_policy
    positions: np.ndarray  # the test rows (positions into prepared.index / prepared.images)
    y: np.ndarray  # their 0/1 labels
    p: np.ndarray  # the model's probabilities of the positive class
    report: dict[str, Any]  # evaluate.task_report: metrics with bootstrap intervals (an entry of metrics.json)
    model_dir: Path  # the saved model folder (model.keras + model.json)


def score_test(config: Config, prepared: Prepared, task: str, model: Any,
               threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Score the test split once: (positions, labels, probabilities, the task report)."""
    positions, y, p = train.predict_split(model, prepared.index, prepared.images, task, "test")
    return positions, y, p, evaluate.task_report(y, p, threshold, config)


def run_task(config: Config, prepared: Prepared, task: str, run_dir: str | Path | None = None,
             verbose: int = 0) -> TaskOutcome:
    """Train `task`, choose its threshold on validation, save the model to `<run_dir>/<task>/` (with the run record
    `<run_dir>/<task>_run.json`), then score the test split once. `run_dir` defaults to `config.run_dir`."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    class_names = list(get_task(task).class_names)
    result = train.fit(config, prepared.index, prepared.images, task=task, verbose=verbose)
    threshold = train.validation_threshold(result.model, config, prepared.index, prepared.images, task)
    model_dir = cxr_model.save_model(result.model, run_dir / task, config, threshold, class_names)
    train.record(result, config, run_dir / f"{task}_run.json")
    positions, y, p, report = score_test(config, prepared, task, result.model, threshold)
    return TaskOutcome(task, result, threshold, positions, y, p, report, model_dir)


def write_metrics(config: Config, prepared: Prepared, reports: dict[str, dict[str, Any]],
                  run_dir: str | Path | None = None) -> dict[str, Any]:
    """The metrics document (protocol + one report per task), written to `<run_dir>/metrics.json`."""
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    doc = evaluate.metrics_document(evaluate.protocol(config, prepared.index), reports)
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
