"""A test-access ledger: one JSON line each time test labels are scored, so that a reader can count them.

`record_test_access` appends {time, commit, dirty_paths, config_hash, task, split, summary, note} to
`<run_dir>/test_ledger.jsonl`; `read_ledger` and `count_test_accesses` read it back (`cxr.reporting.describe_ledger`
says it in words). An append is one write of one whole line, flushed and fsynced; a line torn by a crash is skipped
on reading, with a warning that counts it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.config import HASH_OMITTED_WHEN_NONE
from cxr.io import to_json

LEDGER_NAME = "test_ledger.jsonl"
LEDGER_COLUMNS = ["time", "commit", "dirty_paths", "config_hash", "task", "split", "summary", "note"]
REPO_ROOT = Path(__file__).resolve().parents[2]  # the repository (cxr/evaluate/ledger.py)
SUMMARY_METRICS = ("auroc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "brier", "ece")


def config_hash(config: Any) -> str:
    """The first 12 hex digits of the sha256 of the configuration's canonical JSON (sorted keys, no spaces).

    Key order does not matter, every value does. A `Config` dataclass is hashed as its fields, less those of
    `HASH_OMITTED_WHEN_NONE` while they are None (fields added later, off by default: a Config that predates them
    keeps its recorded hash; set, they count).
    """
    data = to_json(config)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not (k in HASH_OMITTED_WHEN_NONE and v is None)}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # a status check takes no lock
    except (OSError, subprocess.SubprocessError):  # git missing, not runnable, hanging
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(repo: str | Path | None = None) -> str | None:
    """The short commit hash of `repo` (default: the checkout holding this package), with "-dirty" when tracked
    files differ from it; None outside a git work tree or without git."""
    repo = Path(repo) if repo is not None else REPO_ROOT
    if not repo.is_dir() or _git(repo, "rev-parse", "--is-inside-work-tree") != "true":
        return None
    commit = _git(repo, "rev-parse", "--short", "HEAD")
    if not commit:
        return None  # a repository without commits
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return commit + ("-dirty" if status else "")


def dirty_paths(repo: str | Path | None = None) -> list[str] | None:
    """The tracked files of `repo` that differ from its commit (`git diff --name-only HEAD`, untracked files
    left out), sorted, relative to the repository's top; [] for a clean work tree, None outside a git work tree or
    without git. A notebook executed in place (`make notebook`) makes its own file one of them while it runs."""
    repo = Path(repo) if repo is not None else REPO_ROOT
    if not repo.is_dir() or _git(repo, "rev-parse", "--is-inside-work-tree") != "true":
        return None
    changed = _git(repo, "diff", "--name-only", "HEAD")  # staged or not, against the commit
    if changed is None:
        return None
    return sorted(line for line in changed.splitlines() if line.strip())


def ledger_path(run_dir_or_file: str | Path) -> Path:
    """The ledger of a run folder (`<run_dir>/test_ledger.jsonl`); a path to a .jsonl file is taken as it is."""
    path = Path(run_dir_or_file)
    return path if path.suffix == ".jsonl" else path / LEDGER_NAME


def metric_summary(task_report: dict[str, Any]) -> dict[str, Any]:
    """A few numbers of a `cxr.evaluate.task_report` (a task entry of metrics.json) for the ledger:
    threshold, n, n_positive and the main metrics' values at the threshold."""
    at = task_report.get("at_threshold", {})
    out = {k: task_report.get(k) for k in ("threshold", "n", "n_positive")}
    out.update({m: (at[m]["value"] if isinstance(at.get(m), dict) else at.get(m)) for m in SUMMARY_METRICS if m in at})
    return to_json(out)


def record_test_access(run_dir: str | Path, task: str, config: Any, summary: dict[str, Any], note: str = "",
                       split: str = "test", repo: str | Path | None = None) -> dict[str, Any]:
    """Append one line to `<run_dir>/test_ledger.jsonl` for one scoring of `task` on the test labels, and return it.

    The line holds: time (UTC, ISO 8601), commit (`git_commit(repo)`, None outside git), dirty_paths (the
    tracked files with uncommitted changes, `dirty_paths(repo)`), config_hash
    (`config_hash(config)`), task, split, summary (a few numbers, e.g. `metric_summary(report)`) and note.
    The line is written with one call on a file opened for appending, then flushed and fsynced. When an earlier
    crash left the last line without its newline, a newline is written first, so the torn line stays alone
    (and is skipped by `read_ledger`) instead of swallowing this one.
    """
    entry = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "commit": git_commit(repo),
        "dirty_paths": dirty_paths(repo),
        "config_hash": config_hash(config),
        "task": str(task),
        "split": str(split),
        "summary": to_json(dict(summary)),
        "note": str(note),
    }
    line = json.dumps(entry, allow_nan=False, ensure_ascii=False) + "\n"
    path = ledger_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
        data = line.encode("utf-8")
        written = os.write(fd, data)
        while written < len(data):  # os.write may write less; finish the line
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read_ledger(path: str | Path) -> pd.DataFrame:
    """Every readable entry of a ledger (a run folder or the .jsonl file), one row each, oldest first.

    Columns: time (UTC datetimes), commit, config_hash, task, split, summary (dict), note. A missing ledger is an
    empty table (no test access recorded). Lines that are not whole JSON entries (a line torn by a crash) are
    skipped with one warning that counts them; the count is also in `frame.attrs["skipped_lines"]`.
    """
    path = ledger_path(path)
    rows, skipped = [], 0
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if not isinstance(entry, dict) or not {"time", "task", "config_hash"} <= set(entry):
                    skipped += 1
                    continue
                rows.append({c: entry.get(c) for c in LEDGER_COLUMNS})
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} unreadable line(s) (torn by a crash?)", stacklevel=2)
    frame = pd.DataFrame(rows, columns=LEDGER_COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    frame.attrs["skipped_lines"] = skipped
    return frame


def _select(frame: pd.DataFrame, task: str | None, config_hash: str | None, split: str | None) -> pd.DataFrame:
    keep = np.ones(len(frame), bool)
    if task is not None:
        keep &= (frame["task"] == task).to_numpy()
    if config_hash is not None:
        keep &= (frame["config_hash"] == config_hash).to_numpy()
    if split is not None:
        keep &= (frame["split"].fillna("test") == split).to_numpy()
    return frame[keep]


def count_test_accesses(path: str | Path, task: str | None = None, config_hash: str | None = None,
                        split: str | None = "test") -> int:
    """How many times the test labels were scored according to the ledger, optionally for one task and/or
    one configuration hash (unreadable lines are not counted; `read_ledger` warns about them)."""
    return len(_select(read_ledger(path), task, config_hash, split))
