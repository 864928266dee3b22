"""The study: one object (`Study`) whose methods are its steps, `STEPS` naming them in the one order that
`python -m cxr train` (`run_study`) and the notebook (one cell per step) both follow, and the Grad-CAM of the
main task after it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from cxr import evaluate, reporting
from cxr.config import PRIMARY_TASK, TASKS, Config, task as get_task
from cxr.data import Prepared
from cxr.pipeline.outcomes import TaskOutcome
from cxr.pipeline.rules import bootstrap_settings
from cxr.pipeline.tasks import (Baseline, finish_run, fit_baseline, previous_run_comparison, run_task,
                                score_baseline, shift_checks, start_run, study_blocks)


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
        extra = study_blocks(self.config, self.prepared, self.baseline, self.shift, self.marker_counts,
                             self.counterfactual)
        previous = previous_run_comparison(self.config, self.run_dir,
                                           {t: o.threshold for t, o in self.outcomes.items()})
        if previous is not None:
            extra["previous_run"] = previous
        self.doc = finish_run(self.config, self.prepared, {t: o.report for t, o in self.outcomes.items()},
                              self.run_dir, extra=extra)
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
