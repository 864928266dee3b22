"""The first screen (README's <!-- summary --> block, `headline_markdown`), the committed per-image predictions
(`cxr results --copy-predictions`), the notebook's marked cell, `reporting.conclusions` and `reporting.table`."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO
from cxr import reporting
from cxr.__main__ import main
from cxr.evaluate import document as D
from cxr.evaluate.predictions import write_predictions

METRICS = REPO / "doc" / "metrics.json"
PREDICTIONS = REPO / "doc" / "predictions.csv"
NUMBER = r"(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\]"


def _doc() -> dict:
    return json.loads(METRICS.read_text())


def _block(text: str, marker: str) -> str:
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    assert begin in text and end in text, f"no {begin} block"
    return text[text.index(begin) + len(begin): text.index(end)].strip()


def _interval(text: str, label: str) -> tuple[float, float, float]:
    found = re.search(rf"{label} {NUMBER}", text)
    assert found, f"no '{label} value [low, high]' in {text!r}"
    return tuple(float(x) for x in found.groups())


def _same(printed: tuple[float, ...], m: dict) -> None:
    """Numbers printed at 3 decimals equal the document's value and interval at that precision."""
    assert printed == tuple(round(m[k], 3) for k in ("value", "ci_low", "ci_high"))


# ---------------------------------------------------------------------------------------------------------------
# README's first screen
# ---------------------------------------------------------------------------------------------------------------

def test_readme_summary_is_what_the_command_writes():
    """The block cannot go stale: it is `headline_markdown` of doc/metrics.json, character for character."""
    block = _block((REPO / "README.md").read_text(), reporting.SUMMARY_MARKER)
    assert block == reporting.headline_markdown(_doc()).strip()


def test_readme_summary_sits_under_the_title():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ")
    assert lines.index(f"<!-- {reporting.SUMMARY_MARKER} -->") <= 3


def test_readme_summary_numbers_equal_the_metrics():
    """Each number of the block, parsed back out of README, equals doc/metrics.json at the printed precision."""
    doc = _doc()
    t = doc["tasks"]["pneumonia"]
    block = _block((REPO / "README.md").read_text(), reporting.SUMMARY_MARKER)
    first, second = block.splitlines()[:2]
    assert f"({t['n']} images, {t['n_patients']} children)" in first
    assert f"threshold {t['threshold']:.3f}" in first
    _same(_interval(first, "AUROC"), t["at_threshold"]["auroc"])
    _same(_interval(first, "sensitivity"), t["at_threshold"]["sensitivity"])
    _same(_interval(first, "specificity"), t["at_threshold"]["specificity"])
    assert second.startswith("At threshold 0.5:")
    _same(_interval(second, "sensitivity"), t["at_0.5"]["sensitivity"])
    _same(_interval(second, "specificity"), t["at_0.5"]["specificity"])
    cm = t["confusion_matrix"]
    assert f"{cm[0][1]} of the {cm[0][1] + cm[1][0]} test errors" in block
    after = t["calibration"]["test"]["ci"]["after"]["intercept"]
    assert f"calibration intercept {after['value']:.2f} [{after['ci_low']:.2f}, {after['ci_high']:.2f}]" in block
    history = json.loads((REPO / "doc" / "test_access.json").read_text())
    assert f"scored {history['development_scorings']} times during development" in block
    assert f"{doc['test_ledger']['scorings']} times by this run" in block


def test_headline_is_short_and_never_says_scored_once():
    text = reporting.headline_markdown(_doc())
    assert len(text.splitlines()) <= 12
    assert "development test set" in text and "scored once" not in text.lower()


def test_headline_targets_with_and_without_a_minimum_specificity():
    doc = _doc()
    doc["tasks"]["pneumonia"]["operating_point"].pop("min_specificity", None)  # a document of protocol v1
    doc["protocol"].pop("min_specificity", None)
    assert "no specificity minimum declared" in reporting.headline_markdown(doc)
    spec = doc["tasks"]["pneumonia"]["at_threshold"]["specificity"]
    for minimum in (spec["value"] - 0.05, spec["value"] + 0.05):
        verdict = "met" if spec["value"] >= minimum else "missed"
        d = copy.deepcopy(doc)
        d["tasks"]["pneumonia"]["operating_point"]["min_specificity"] = round(minimum, 2)
        text = reporting.headline_markdown(d)
        assert f"specificity minimum {round(minimum, 2):.2f} {verdict} on test ({spec['value']:.3f}" in text
    d = copy.deepcopy(doc)  # the runs since protocol v2 keep the out-of-fold value at the threshold
    d["tasks"]["pneumonia"]["operating_point"]["targets"] = [{"metric": "specificity", "oof": 0.9612}]
    assert "Specificity 0.961 out of fold (training children), " in reporting.headline_markdown(d)


def test_headline_findings_follow_the_document():
    doc = _doc()
    doc.pop("markers", None)
    doc.pop("explanation", None)
    text = reporting.headline_markdown(doc)
    assert "Burned-in marker" not in text and "Grad-CAM" not in text  # neither block is in this document
    d = copy.deepcopy(doc)
    d["data"]["markers"] = {"summary": "the stamp sits on 176 training pneumonia images and 1 training normal."}
    d["explanation"] = "the heat lies mostly outside the lungs."
    text = reporting.headline_markdown(d)
    assert "- Burned-in marker: the stamp sits on 176" in text and "- Grad-CAM: the heat lies" in text
    assert len(text.splitlines()) <= 12


def test_calibration_warning_only_when_far_from_ideal():
    cal = copy.deepcopy(_doc()["tasks"]["pneumonia"]["calibration"])
    assert reporting.calibration_warning(cal).startswith("Do not read the Platt-calibrated probability as a risk")
    for when in ("before", "after"):
        cal["test"][when].update(intercept=0.05, slope=0.97)
        cal["test"]["ci"][when] = {"intercept": {"ci_low": -0.2, "ci_high": 0.3},
                                   "slope": {"ci_low": 0.8, "ci_high": 1.1}}
    assert reporting.calibration_warning(cal) is None
    assert reporting.calibration_warning(None) is None


# ---------------------------------------------------------------------------------------------------------------
# The committed predictions
# ---------------------------------------------------------------------------------------------------------------

def _rescore(frame: pd.DataFrame) -> dict[str, float]:
    y, called = frame["y"].to_numpy(), frame["called"].to_numpy()
    return {"auroc": roc_auc_score(y, frame["probability"]),
            "sensitivity": called[y == 1].mean(), "specificity": 1 - called[y == 0].mean()}


def test_committed_predictions_rescore_to_the_metrics():
    if not PREDICTIONS.is_file():
        pytest.skip("doc/predictions.csv is not committed yet: `make notebook` (the final run) writes it")
    assert PREDICTIONS.stat().st_size < 1_000_000
    frame = pd.read_csv(PREDICTIONS, dtype={"child": str, "path": str})
    assert list(frame.columns) == list(D.PREDICTION_COLUMNS)
    doc = _doc()
    for task, t in doc["tasks"].items():
        test = frame[(frame["task"] == task) & (frame["split"] == "test")]
        assert len(test) == t["n"], task
        assert (frame[frame["task"] == task]["split"] == "oof").any(), f"{task}: no out-of-fold rows"
        for metric, value in _rescore(test).items():
            assert round(value, 3) == round(t["at_threshold"][metric]["value"], 3), (task, metric)


def _fake_run(folder: Path, n: int = 40) -> Path:
    """A run folder with predictions_<task>.csv for both tasks (tiny, made up), as the pipeline writes them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for task in ("pneumonia", "subtype"):
        rows = []
        for split in ("oof", "test"):
            y = np.arange(n) % 2
            p = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
            rows.append(pd.DataFrame({
                "path": [f"/abs/chest_xray/{split}/{'B' if v else 'A'}/img{i}.jpeg" for i, v in enumerate(y)],
                "split": split, "task": task, "label": np.where(y, "PNEUMONIA", "NORMAL"), "y": y,
                "subtype": np.where(y, "bacteria", "normal"), "patient_id": [f"c{i // 2}" for i in range(n)],
                "family": "person", "probability": p, "calibrated_probability": p ** 1.1, "threshold": 0.5,
                "threshold_on": "raw", "decision": (p >= 0.5).astype(int),
                "predicted": np.where(p >= 0.5, "PNEUMONIA", "NORMAL"), "correct": (p >= 0.5) == y}))
        write_predictions(pd.concat(rows, ignore_index=True), folder / f"predictions_{task}.csv")
    return folder


def test_committed_predictions_table(tmp_path):
    run = _fake_run(tmp_path / "run")
    table = D.committed_predictions(run)
    assert list(table.columns) == list(D.PREDICTION_COLUMNS) and len(table) == 4 * 40
    assert table["path"].iloc[0] == "img0.jpeg"  # the file name only, no folder of this machine
    original = pd.read_csv(run / "predictions_pneumonia.csv")
    assert np.allclose(table["probability"].iloc[:80], original["probability"], atol=5e-7)
    assert (table["probability"] == table["probability"].round(6)).all()
    assert (table["called"].iloc[:80].to_numpy() == original["decision"].to_numpy()).all()
    with pytest.raises(ValueError, match="no predictions in"):
        D.committed_predictions(tmp_path / "empty")


def test_cli_copies_predictions_and_updates_a_notebook(tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path / "runs" / "full")
    (run / "metrics.json").write_text(METRICS.read_text())
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", "<!-- summary -->\n", "old\n",
                                                                        "<!-- /summary -->\n", "after\n"]},
                    {"cell_type": "code", "execution_count": 1, "metadata": {}, "source": ["print(1)"],
                     "outputs": [{"name": "stdout", "output_type": "stream", "text": ["<!-- summary --> x\n"]}]}],
          "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "notebook.ipynb").write_text(json.dumps(nb, indent=1))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "doc").write_text("a file where the folder should be")
    code = main(["results", "--run", str(run), "--copy-predictions", "doc/predictions.csv", "--update",
                 "notebook.ipynb"])
    out = capsys.readouterr()
    assert code == 2 and "predictions folder" in out.err  # doc is a file: one line, nothing written
    assert json.loads((tmp_path / "notebook.ipynb").read_text()) == nb
    (tmp_path / "doc").unlink()
    assert main(["results", "--run", str(run), "--copy-predictions", "doc/predictions.csv", "--update",
                 "notebook.ipynb"]) == 0
    written = pd.read_csv(tmp_path / "doc" / "predictions.csv")
    assert list(written.columns) == list(D.PREDICTION_COLUMNS) and len(written) == 160
    new = json.loads((tmp_path / "notebook.ipynb").read_text())
    source = "".join(new["cells"][0]["source"])
    headline = reporting.headline_markdown(_doc())
    assert source == "# Title\n<!-- summary -->\n" + headline + "\n<!-- /summary -->\nafter\n"
    assert new["cells"][1] == nb["cells"][1] and new["metadata"] == nb["metadata"]  # outputs untouched
    assert main(["results", "--copy-predictions", "doc/p.csv"]) == 2  # needs --run
    assert "needs the run folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# reporting.conclusions and reporting.table
# ---------------------------------------------------------------------------------------------------------------

def test_conclusions_are_few_short_and_from_the_numbers():
    doc = _doc()
    text = reporting.conclusions(doc)
    bullets = text.splitlines()
    assert 1 <= len(bullets) <= 10 and all(b.startswith("* ") for b in bullets)
    assert sum("calibration" in b for b in bullets) == 1  # the calibration reading once, not per task
    assert all(len(b) < 400 for b in bullets)
    t = doc["tasks"]["pneumonia"]["at_threshold"]
    assert f"Specificity {D.fmt(t['specificity'])}" in text
    assert "development test set" in text and "scored once" not in text.lower()


def test_table_shows_long_cells_whole(capsys, monkeypatch):
    cell = "x" * 190 + " the end."
    frame = pd.DataFrame({"protocol": [cell], "value": [0.12345]})
    reporting.table(frame)  # outside IPython: printed text
    assert cell in capsys.readouterr().out
    shown = []

    class Shell:  # a stand-in IPython shell: display renders the HTML as Jupyter would, inside the call
        pass

    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj._repr_html_()))
    reporting.table(frame)
    assert len(shown) == 1 and cell in shown[0] and "0.123" in shown[0]


def test_table_shows_no_negative_zero(monkeypatch):
    frame = pd.DataFrame({"AUROC - kept": [-0.0004, 0.0, -0.002], "epoch": [50, 3, 3]})
    shown = []

    class Shell:
        pass

    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    reporting.table(frame)
    cells = shown[0]
    assert [str(v) for v in cells["AUROC - kept"]] == ["0.0", "0.0", "-0.002"]  # the tiny difference is not "-0.0"
    assert [str(v) for v in cells["epoch"]] == ["50", "3", "3"]  # integers stay integers
