"""The notebook: its structure (one parameters cell, no definitions in cells) and a headless smoke run."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebook.ipynb"


def _cells(nb: dict, kind: str) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_one_parameters_cell_and_no_definitions_in_cells():
    nb = json.loads(NOTEBOOK.read_text())
    code = _cells(nb, "code")
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert re.search(r'^MODE = "(full|smoke)"', _source(tagged[0]), re.M)
    for cell in code:
        assert not re.search(r"^\s*(def|class|async def) ", _source(cell), re.M), _source(cell)


def test_every_code_cell_follows_a_markdown_sentence():
    nb = json.loads(NOTEBOOK.read_text())
    cells = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for before, cell in zip(cells, cells[1:]):
        if cell["cell_type"] == "code" and before["cell_type"] == "code":
            # two code cells in a row are allowed only for a figure that belongs to the cell above
            assert "log.save(" in _source(cell), _source(cell)


def _assert_clean(nb: dict) -> None:
    """No errors, no local absolute paths, no tracebacks, warnings or C++ log lines in the outputs."""
    for cell in _cells(nb, "code"):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
            assert "/work/" not in text and "/home/" not in text and "/root/" not in text, text[:300]
            assert "Traceback" not in text
            if out["output_type"] == "stream":
                stream = "".join(out.get("text", ""))
                assert "Warning" not in stream and "WARNING" not in stream, stream[:300]
                assert not re.search(r"^[IWE]\d{4} ", stream, re.M), stream[:300]  # absl/TensorFlow C++ logs
                assert "\r" not in stream, stream[:300]  # progress bars
            # no progress output of any kind: tqdm text bars, Keras' own bars, tqdm.auto widgets
            for trace in ("%|", "it/s", "img/s", "Epoch 1/", "━━"):
                assert trace not in text, (trace, text[:300])
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), "a progress widget"


def test_committed_notebook_outputs_are_clean():
    _assert_clean(json.loads(NOTEBOOK.read_text()))


@pytest.mark.slow
def test_smoke_run_executes_every_cell(tmp_path):
    """`python -m cxr notebook --mode smoke`: every cell runs, metrics and figures are written, outputs are clean."""
    from cxr.report import run_notebook

    out_rel = Path("runs") / f"pytest-smoke-{os.getpid()}"
    out = REPO / out_rel
    try:
        assert run_notebook(mode="smoke", output_dir=out_rel) == 0
        executed = json.loads((out / "notebook.ipynb").read_text())
        errors = [o for c in _cells(executed, "code") for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert not errors
        metrics = json.loads((out / "metrics.json").read_text())
        assert set(metrics["tasks"]) == {"pneumonia", "subtype"}
        for task in metrics["tasks"].values():
            assert 0.0 <= task["at_threshold"]["auroc"]["value"] <= 1.0
            assert task["at_threshold"]["auroc"]["ci_low"] <= task["at_threshold"]["auroc"]["ci_high"]
        assert metrics["protocol"]["threshold_source"] == "validation split"
        for name in ("examples.png", "gradcam_grid.png", "roc_pr_calibration.png", "learning_curves.png"):
            assert (out / "figures" / name).stat().st_size > 1000, name
        for task in ("pneumonia", "subtype"):
            assert (out / task / "model.keras").is_file()
            record = json.loads((out / f"{task}_run.json").read_text())  # configuration, versions, history
            assert record["history"] and record["config"]["mode"] == "smoke" and "keras" in record["environment"]["versions"]
        _assert_clean(executed)
        text = json.dumps(executed)
        assert str(REPO) not in text
        plain = ["".join(o["data"]["text/plain"]) for c in _cells(executed, "code") for o in c.get("outputs", [])
                 if "text/plain" in o.get("data", {})]
        headers = [text for text in plain if "Keras backend:" in text]
        assert len(headers) == 1  # the first cell's header, updated in place by the last cell
        assert "wall time:" in headers[0] and "running" not in headers[0]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_figures_go_to_the_run_folder_unless_asked(tmp_path, monkeypatch):
    """Only `make notebook` (CXR_FIGURES_DIR=doc/figures) may refresh the committed figures; `make run` may not."""
    from cxr.config import Config
    from cxr.report import RunLog

    monkeypatch.delenv("CXR_FIGURES_DIR", raising=False)
    log = RunLog(Config.preset("full", output_dir=str(tmp_path / "run")))
    assert log.figure("a.png") == tmp_path / "run" / "figures" / "a.png"
    monkeypatch.setenv("CXR_FIGURES_DIR", str(tmp_path / "doc"))
    assert log.figure("a.png") == tmp_path / "doc" / "a.png"
