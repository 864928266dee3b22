"""Honest evaluation, in the order a study uses it (every fit on VALIDATION only, the test scored once):

- `threshold`: operating-point policies chosen on validation, and their stability under resampling;
- `calibration`: temperature / Platt scaling fitted on validation; calibration slope and intercept, smoothed
  reliability curves;
- `metrics`: test metrics with image-level and patient-level (cluster) bootstrap intervals, per image and per child;
- `uncertainty`: the uncertainty of the operating point (nested bootstrap), the coverage simulation of the intervals;
- `clinical`: what the operating point means across prevalences (PPV/NPV), decision curves and net benefit
  across plausible prevalences;
- `predictions`: every validation and test prediction on record, error analysis;
- `ledger`: one line per scoring of the test split;
- `document`: `metrics.json`, its tables and the Markdown results blocks.

The names used most are re-exported here (`evaluate.task_report`, `evaluate.choose_threshold`, ...).
"""
from cxr.evaluate import calibration, clinical, ledger, predictions, threshold, uncertainty  # the modules themselves
from cxr.evaluate.calibration import (apply_calibrator, apply_temperature, calibrate_and_report,
                                      calibration_intercept_slope, calibration_intervals, describe_calibration,
                                      fit_calibrator, fit_temperature, invert_calibrator, reliability_table,
                                      smoothed_reliability)
from cxr.evaluate.document import (REFERENCES, SCHEMA_VERSION, TASK_TITLES, comparison_table, fmt, interval_table,
                                   markdown_results, metrics_document, protocol, read_metrics, report_table,
                                   results_table, write_metrics)
from cxr.evaluate.metrics import (CI_METHOD, CI_METHODS, METRIC_LABELS, METRICS, PATIENT_CI_METHOD, bootstrap_draws,
                                  check_inputs, child_report, child_table, confusion, expected_calibration_error,
                                  metric_values, patient_strata, task_report)
from cxr.evaluate.threshold import choose, choose_threshold, describe_stability, stability, stability_summary
from cxr.evaluate.uncertainty import describe_threshold_uncertainty, threshold_uncertainty
from cxr.io import update_markdown  # the results blocks of README.md and doc/results.md

__all__ = [n for n in dir() if not n.startswith("_")]
