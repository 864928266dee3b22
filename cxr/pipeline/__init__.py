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
(`train`, `model`, `evaluate.*`, `explain`); this package only fixes their order. Nothing before `score_test` reads
a test label or a test image.

The package follows the study: `outcomes` (the data types the steps pass on), `rules` (the declared choices made on
the out-of-fold predictions: calibration, each task's operating rule and threshold, its targets, the bootstrap
settings), `tasks` (the steps as functions: the run folder, a task trained, chosen, saved and scored, the baseline,
the shift checks, the metrics document, re-scoring), `study` (`Study`, `STEPS`, `run_study`, the Grad-CAM of the
main task). Every public name is re-exported here, so `pipeline.Study`, `pipeline.run_task`,
`pipeline.operating_point` ... are the names to use.
"""
from __future__ import annotations

from cxr.pipeline.outcomes import Scores, TaskOutcome
from cxr.pipeline.rules import (bootstrap_settings, cross_fitted_table, fit_calibration, operating_point, rule_targets,
                                rule_threshold, stability, STABILITY_POLICIES, targets_table, task_rule)
from cxr.pipeline.tasks import (Baseline, claimed_run, clinical_curves, data_audit, error_examples, evaluate_saved,
                                finish_run, fit_baseline, lock_run, oof_scores, rescore_run, run_task, score_baseline,
                                previous_run_comparison, score_test, scores, SELECTION, shift_checks, start_run,
                                study_blocks,
                                train_oof_summary)
from cxr.pipeline.study import (GradCam, run_study, STEPS, Study)

__all__ = [n for n in dir()
           if not n.startswith("_") and n not in ("annotations", "outcomes", "rules", "tasks", "study")]
