"""Honest evaluation, in the order a study uses it (every fit on the SELECTION data only, the out-of-fold
predictions of the training children; the test scored once per task in a run):

- `threshold`: operating-point policies chosen on the selection data, and their stability under resampling;
- `calibration`: temperature / Platt scaling fitted on the selection data; calibration slope and intercept,
  smoothed reliability curves;
- `curves`: what the figures draw (ROC, precision-recall, reliability series with their intervals);
- `resample`: the one resampling engine (the bootstrap of patients within their class) behind every interval;
- `metrics`: test metrics with image-level and patient-level (cluster) bootstrap intervals, per image and per child;
- `uncertainty`: the uncertainty of the operating point (threshold-resampling bootstrap), the coverage simulation
  of the intervals;
- `clinical`: what the operating point means across prevalences (PPV/NPV), decision curves and net benefit
  across plausible prevalences;
- `predictions`: every out-of-fold and test prediction on record, error analysis;
- `baseline`: a trivial baseline on six image statistics (how easy the task is without the lungs);
- `shift`: what the training children say about the shift to the test split and to other resize paths;
- `ledger`: one line per scoring of the test split;
- `document`: `metrics.json` (its protocol block, writing and reading it) and its tables for display.

Every module here returns numbers, tables or dicts; the sentences and the Markdown written from them are in
`cxr.reporting`, which nothing here imports. The names used most are re-exported here (`evaluate.task_report`,
`evaluate.choose`, ...).
"""
from cxr.evaluate import (baseline, calibration, clinical, curves, ledger, paired, predictions, resample,  # modules
                          shift, threshold, uncertainty)
from cxr.evaluate.calibration import (apply_calibrator, apply_temperature, calibrate_and_report,
                                      calibration_intercept_slope, calibration_intervals, fit_calibrator,
                                      fit_temperature, invert_calibrator, reliability_table, smoothed_reliability)
from cxr.evaluate.document import (PREVIOUS_RUN, REFERENCES, SCHEMA_VERSION, child_summary, comparison_table, fmt,
                                   interval_table, metrics_document, protocol, read_metrics, report_table,
                                   results_table, write_metrics)
from cxr.evaluate.metrics import (CI_METHOD, CI_METHODS, METRIC_LABELS, METRICS, PATIENT_CI_METHOD, REGISTRY, Metric,
                                  bootstrap_draws, check_inputs, child_report, child_table, confusion,
                                  expected_calibration_error, metric_values, task_report)
from cxr.evaluate.paired import stage_comparison
from cxr.evaluate.resample import patient_strata
from cxr.evaluate.threshold import choose, stability, stability_summary
from cxr.evaluate.uncertainty import threshold_uncertainty
from cxr.io import update_markdown  # the results blocks of README.md and doc/results.md

__all__ = [n for n in dir() if not n.startswith("_")]
