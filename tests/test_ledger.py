"""The test-access ledger: appends, configuration hash, torn lines, git commit (or None), counts and text."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from cxr import reporting
from cxr.evaluate import ledger
from cxr.config import Config

SUMMARY = {"auroc": 0.95, "sensitivity": 0.97, "specificity": 0.61, "n": 624}


@pytest.fixture(autouse=True)
def _no_git_above_tmp(tmp_path, monkeypatch):
    """git must not find a repository above tmp_path (should the temporary folder lie inside one)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


def test_two_appends_give_two_rows(tmp_path):
    first = ledger.record_test_access(tmp_path, "pneumonia", {"lr": 1e-3}, SUMMARY, note="first", repo=tmp_path)
    ledger.record_test_access(tmp_path, "subtype", {"lr": 1e-3}, {"auroc": np.float32(0.5), "ece": np.nan},
                              repo=tmp_path)
    lines = (tmp_path / "test_ledger.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 2 and all(line.endswith("\n") for line in lines)
    assert json.loads(lines[0]) == first
    frame = ledger.read_ledger(tmp_path)
    assert list(frame.columns) == ledger.LEDGER_COLUMNS
    assert frame["task"].tolist() == ["pneumonia", "subtype"]
    assert frame["note"].tolist() == ["first", ""]
    assert frame["summary"].iloc[0] == SUMMARY
    assert frame["summary"].iloc[1] == {"auroc": 0.5, "ece": None}  # numpy to Python, NaN to null
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["time"].iloc[0] <= frame["time"].iloc[1]
    assert first["config_hash"] == ledger.config_hash({"lr": 1e-3})
    assert frame.attrs["skipped_lines"] == 0
    assert ledger.count_test_accesses(tmp_path) == 2
    assert ledger.count_test_accesses(tmp_path / "test_ledger.jsonl", task="subtype") == 1


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"lr": 0.001, "epochs": 10, "model": {"backbone": "lite0", "dropout": 0.2}}
    b = {"model": {"dropout": 0.2, "backbone": "lite0"}, "epochs": 10, "lr": 0.001}
    h = ledger.config_hash(a)
    assert len(h) == 12 and int(h, 16) >= 0
    assert ledger.config_hash(b) == h
    assert ledger.config_hash({**a, "epochs": 11}) != h
    assert ledger.config_hash({**a, "model": {"backbone": "lite0", "dropout": 0.3}}) != h
    assert ledger.config_hash(Config()) == ledger.config_hash(json.loads(json.dumps(Config().__dict__)))
    assert ledger.config_hash(Config()) != ledger.config_hash(Config(seed=1))


def test_torn_last_line_is_skipped_counted_and_not_glued_to_the_next(tmp_path):
    for task in ("pneumonia", "subtype"):
        ledger.record_test_access(tmp_path, task, {"a": 1}, SUMMARY, repo=tmp_path)
    path = tmp_path / "test_ledger.jsonl"
    with open(path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"time": "2026-11-25T03:00:00.000+00:00", "commit": null, "config_h')
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        frame = ledger.read_ledger(path)
    assert len(frame) == 2 and frame.attrs["skipped_lines"] == 1
    with pytest.warns(UserWarning):
        assert ledger.count_test_accesses(path) == 2
    # the next append starts on a new line: readable, and the torn line is still the only one skipped
    ledger.record_test_access(tmp_path, "pneumonia", {"a": 1}, SUMMARY, note="after crash", repo=tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        frame = ledger.read_ledger(path)
    assert frame["note"].tolist() == ["", "", "after crash"]
    assert "1 unreadable ledger line(s)" in reporting.describe_ledger(tmp_path)


def test_outside_git_the_commit_is_none(tmp_path, monkeypatch):
    entry = ledger.record_test_access(tmp_path / "run", "pneumonia", {}, SUMMARY, repo=tmp_path)
    assert entry["commit"] is None
    assert ledger.read_ledger(tmp_path / "run")["commit"].isna().all()
    assert entry["dirty_paths"] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert ledger.git_commit() is None
    assert ledger.record_test_access(tmp_path / "run", "pneumonia", {}, SUMMARY)["commit"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_commit_is_short_hash_and_dirty_when_tracked_files_change(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org",
                               "-c", "commit.gpgsign=false", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    (tmp_path / "untracked.txt").write_text("x\n")  # untracked files do not make the tree dirty
    assert ledger.git_commit(tmp_path) == head
    assert ledger.dirty_paths(tmp_path) == []
    (tmp_path / "a.txt").write_text("two\n")
    assert ledger.git_commit(tmp_path) == head + "-dirty"
    assert ledger.dirty_paths(tmp_path) == ["a.txt"]
    entry = ledger.record_test_access(tmp_path / "runs" / "r1", "pneumonia", {}, SUMMARY, repo=tmp_path)
    assert entry["commit"] == head + "-dirty" and entry["dirty_paths"] == ["a.txt"]
    assert "uncommitted changes to a.txt." in reporting.describe_ledger(tmp_path / "runs" / "r1")
    # a notebook executed in place is said as such
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "notebook.ipynb").write_text("{}\n")
    git("add", "notebook.ipynb")
    git("commit", "-q", "-m", "nb")
    (tmp_path / "notebook.ipynb").write_text('{"cells": []}\n')
    ledger.record_test_access(tmp_path / "runs" / "r2", "pneumonia", {}, SUMMARY, repo=tmp_path)
    assert ("1 of the scorings ran on a work tree with uncommitted changes to notebook.ipynb only (the notebook "
            "being executed in place)") in reporting.describe_ledger(tmp_path / "runs" / "r2")
    assert ledger.dirty_paths(tmp_path / "runs") is not None  # inside the work tree


def test_counts_filter_by_task_and_config(tmp_path):
    for config, task in [({"seed": 1}, "pneumonia"), ({"seed": 1}, "subtype"), ({"seed": 2}, "pneumonia")]:
        ledger.record_test_access(tmp_path, task, config, SUMMARY, repo=tmp_path)
    h1 = ledger.config_hash({"seed": 1})
    assert ledger.count_test_accesses(tmp_path) == 3
    assert ledger.count_test_accesses(tmp_path, task="pneumonia") == 2
    assert ledger.count_test_accesses(tmp_path, config_hash=h1) == 2
    assert ledger.count_test_accesses(tmp_path, task="pneumonia", config_hash=h1) == 1
    assert ledger.count_test_accesses(tmp_path / "elsewhere") == 0  # no ledger: never scored


def test_describe_ledger_from_the_entries(tmp_path):
    assert reporting.describe_ledger(tmp_path) == ("The test split of this run has not been scored "
                                                "(no entry in its test-access ledger).")
    ledger.record_test_access(tmp_path, "pneumonia", {"seed": 1}, SUMMARY, repo=tmp_path)
    once = reporting.describe_ledger(tmp_path)
    assert once.startswith("The test split of this run was scored 1 time (pneumonia: 1) on ")
    ledger.record_test_access(tmp_path, "subtype", {"seed": 1}, SUMMARY, repo=tmp_path)
    ledger.record_test_access(tmp_path, "pneumonia", {"seed": 2}, SUMMARY, repo=tmp_path)
    text = reporting.describe_ledger(tmp_path)
    assert text.startswith("The test split of this run was scored 3 times (pneumonia: 2, subtype: 1) between ")
    assert "under 2 configuration(s)" in text and "3 outside a git checkout" in text
    assert "scored 2 times" in reporting.describe_ledger(tmp_path, task="pneumonia")


def test_metric_summary_of_a_task_report():
    report = {"threshold": 0.42, "n": 624, "n_positive": 390,
              "at_threshold": {"auroc": {"value": 0.95, "ci_low": 0.93, "ci_high": 0.97},
                               "sensitivity": {"value": 0.98, "ci_low": 0.96, "ci_high": 0.99},
                               "ece": {"value": float("nan"), "ci_low": None, "ci_high": None}}}
    assert ledger.metric_summary(report) == {"threshold": 0.42, "n": 624, "n_positive": 390, "auroc": 0.95,
                                             "sensitivity": 0.98, "ece": None}
