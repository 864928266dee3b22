"""Words written from numbers: every sentence, reading and Markdown block the study shows, each from what a numbers
module returned (`cxr.data`, `cxr.evaluate`, `cxr.explain`), never typed by hand and never computing a number
that a result holds. The numbers modules do not import this package; the orchestration does (`cxr.pipeline`,
`cxr.__main__`, the notebook).

- `data`: the data audit and the marker audit in words (`describe_patient_ids`, `describe_near_duplicates`,
  `describe_balance`, `describe_children`, `describe_sizes`, `describe_markers`);
- `evaluation`: the operating point's stability and uncertainty, calibration, PPV/NPV and net benefit, the errors,
  the trivial baseline, the test-access ledger, a task's test report and the comparison with the previous run;
- `shift`: the shift checks and the resize-path check in words;
- `explanation`: the Grad-CAM cases, checks, regions and the stamp counterfactual in words; the metrics document's
  `explanation` block (`where_summary`);
- `document`: the Markdown blocks of README.md, doc/results.md, data/README.md and the notebook's first screen
  (`markdown_results`, `markdown_data`, `headline_markdown`), and the writer of the notebook's marked cells;
- `run`: the notebook's run log (`RunLog`), its readings and tables (`read_out`, `table`), the protocol, training
  and folds in words, the conclusions, and the headless runner (`run_notebook`).

The names used are re-exported here (`reporting.describe_balance`, `reporting.read_out`, ...).
"""
from cxr.reporting import comparison, data, document, evaluation, explanation, run, shift  # noqa: F401  (the modules)
from cxr.reporting.comparison import describe_previous_run  # noqa: F401
from cxr.reporting.data import (describe_balance, describe_children, describe_markers,  # noqa: F401
                                describe_near_duplicates, describe_patient_ids, describe_sizes)
from cxr.reporting.document import (SUMMARY_MARKER, TASK_TITLES, calibration_warning,  # noqa: F401
                                    development_access_sentence, headline_findings, headline_markdown, markdown_data,
                                    markdown_results, update_notebook)
from cxr.reporting.evaluation import (describe_baseline, describe_calibration, describe_comparison,  # noqa: F401
                                      describe_decision_curve, describe_errors, describe_ledger,
                                      describe_net_benefit_table, describe_prevalence, describe_report,
                                      describe_stability, describe_threshold_uncertainty)
from cxr.reporting.explanation import (CELL_WORDS, REGION_WORDS, describe_audit, describe_case_regions,  # noqa: F401
                                       describe_cases, describe_counterfactual, describe_faithfulness,
                                       describe_randomization, describe_where, where_summary)
from cxr.reporting.run import (RunLog, conclusions, describe_folds, describe_protocol,  # noqa: F401
                               describe_test_access, describe_training, read_out, run_notebook, table)
from cxr.reporting.shift import describe_raw_sample, describe_resize_diagnosis, describe_shift  # noqa: F401

__all__ = [n for n in dir() if not n.startswith("_")]
