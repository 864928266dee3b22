"""This run against the previous committed run, paired on the same test images, in words (the numbers:
`cxr.pipeline.tasks.previous_run_comparison`, in metrics.json under "previous_run")."""
from __future__ import annotations

from typing import Any

from cxr.config import TASKS


def _calls(m: dict[str, Any], who: str) -> str:
    if not m["a_only"] + m["b_only"]:
        return f"the same calls on all {m['n']} {who}"
    return (f"{m['a_only']} {who} called positive by this run only and {m['b_only']} by the previous run only "
            f"(McNemar p = {m['p_value']:.2g})")


def describe_previous_run(block: dict[str, Any] | None) -> str:
    """One sentence per task: the paired AUROC difference with its patient-clustered interval, and McNemar's test
    on the normals' (class 0) and the positives' calls, each run at its own threshold."""
    if not block:
        return "No previous run's test predictions were found, so there is no paired comparison."
    parts = []
    for task, c in block.get("tasks", {}).items():
        a = c["auroc"]
        names = TASKS[task].class_names if task in TASKS else ("class 0", "class 1")
        parts.append(
            f"**{TASKS[task].title if task in TASKS else task}** ({c['n']} test images both runs scored): AUROC "
            f"this run minus the previous {a['difference']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}] "
            f"(paired, children resampled, p = {a['p_value']:.2g}); at the thresholds {c['threshold']:.3f} and "
            f"{c['threshold_before']:.3f}: {_calls(c['normals'], names[0].lower() + ' images')}; "
            f"{_calls(c['positives'], names[1].lower() + ' images')}.")
    for task, why in block.get("skipped", {}).items():
        parts.append(f"{task}: not compared ({why}).")
    return (f"Paired against {block['name']} on the same images: " + " ".join(parts)
            + " A paired test asks whether the two runs differ on these images; it says nothing about other "
              "hospitals, and this test split was scored by both runs, so it is not independent of either.")
