"""The notebook: its structure (one parameters cell, no definitions in cells) and a headless smoke run."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO, SHARED_HIDDEN

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
        if cell["cell_type"] == "code":
            assert before["cell_type"] == "markdown", _source(cell)


def _figures_shown(nb: dict) -> list[tuple[str, int, int]]:
    """(source, figures the cell builds, PNG outputs it has) for every code cell that builds a figure: each
    `log.show(` displays one figure inline."""
    out = []
    for cell in _cells(nb, "code"):
        built = _source(cell).count("log.show(")
        if built:
            shown = sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
            out.append((_source(cell), built, shown))
    return out


def _assert_every_figure_inline(nb: dict) -> None:
    figures = _figures_shown(nb)
    assert sum(built for _, built, _ in figures) >= 20
    for source, built, shown in figures:
        assert shown == built, (built, shown, source[:200])
    gradcam = [f for f in figures if "gradcam_pairs" in f[0]]
    assert len(gradcam) == 3 and all(shown == 1 for _, _, shown in gradcam)  # right calls, errors, near threshold


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


def test_committed_notebook_shows_every_figure_and_stays_small():
    """What a reader on GitHub sees: every figure the cells build is embedded, the file under 5 MB."""
    nb = json.loads(NOTEBOOK.read_text())
    if not any(c.get("outputs") for c in _cells(nb, "code")):
        pytest.skip("notebook.ipynb has no outputs yet (written by `make notebook`)")
    _assert_every_figure_inline(nb)
    assert NOTEBOOK.stat().st_size < 5_000_000


@pytest.mark.slow
def test_smoke_run_executes_every_cell_shows_every_figure_and_its_run_folder_is_a_cli_run(tmp_path):
    """`python -m cxr notebook --mode smoke --set source=... --run DIR` (the --set path of every Config field):
    every cell runs, every figure is inline, outputs are clean, and the run folder is a `python -m cxr train`
    run's (the same files, config and ledger, `test_study_steps.assert_same_study`), which `python -m cxr evaluate
    --run DIR` re-scores."""
    from cxr.__main__ import main
    from test_study_steps import assert_same_study
    from cxr.data import SAMPLE_ZIP

    out_rel = Path("runs") / f"pytest-smoke-{os.getpid()}"
    out = REPO / out_rel
    cli_rel = Path("runs") / f"pytest-smoke-cli-{os.getpid()}"
    cli = Path.cwd() / cli_rel
    shared = REPO.parent / "shared" / "data" / "chest-xray-pneumonia-224.zip"
    source = shared if shared.is_file() and not SHARED_HIDDEN else SAMPLE_ZIP
    try:
        assert main(["notebook", "--mode", "smoke", "--set", f"source={source}", "--run", str(out_rel)]) == 0
        executed = json.loads((out / "notebook.ipynb").read_text())
        errors = [o for c in _cells(executed, "code") for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert not errors
        _assert_every_figure_inline(executed)
        metrics = json.loads((out / "metrics.json").read_text())
        assert set(metrics["tasks"]) == {"pneumonia", "subtype"}
        for task in metrics["tasks"].values():
            assert 0.0 <= task["at_threshold"]["auroc"]["value"] <= 1.0
            assert task["at_threshold"]["auroc"]["ci_low"] <= task["at_threshold"]["auroc"]["ci_high"]
        assert metrics["protocol"]["threshold_source"] == "out-of-fold predictions"
        assert {"data", "baseline", "shift", "markers", "explanation"} <= set(metrics)
        assert metrics["test_ledger"]["scorings"] == 3
        assert metrics["protocol"]["fold_scheme"] == "blocks" and metrics["protocol"]["marker_zones"]
        for name in ("examples.png", "gradcam_right.png", "gradcam_errors.png", "roc_pr_calibration.png",
                     "selection.png", "flow.png"):
            assert (out / "figures" / name).stat().st_size > 1000, name
        for task in ("pneumonia", "subtype"):
            assert (out / task / "model.keras").is_file()
            record = json.loads((out / f"{task}_run.json").read_text())  # configuration, versions, history
            assert record["history"] and record["config"]["mode"] == "smoke" and "keras" in record["environment"]["versions"]
        # the same folder shape as `python -m cxr train`: config.json (resolved), index.csv, predictions, ledger
        config = json.loads((out / "config.json").read_text())
        # a source inside the checkout reaches the kernel (working folder: the repository) relative to it
        inside = source.resolve().is_relative_to(REPO.resolve())
        expected = source.resolve().relative_to(REPO.resolve()).as_posix() if inside else str(source.resolve())
        assert config["source"] == expected and config["batch_size"] == 16
        for name in ("index.csv", "predictions_pneumonia.csv", "predictions_subtype.csv", "test_ledger.jsonl"):
            assert (out / name).is_file(), name
        _assert_clean(executed)
        text = json.dumps(executed)
        assert str(REPO) not in text
        plain = ["".join(o["data"]["text/plain"]) for c in _cells(executed, "code") for o in c.get("outputs", [])
                 if "text/plain" in o.get("data", {})]
        headers = [text for text in plain if "Keras backend:" in text]
        assert len(headers) == 1  # the first cell's header, updated in place by the last cell
        assert "wall time:" in headers[0] and "running" not in headers[0] and "note: test split" in headers[0]
        # `python -m cxr train` on the same data runs the same steps in the same order (pipeline.STEPS)
        assert main(["train", "--mode", "smoke", "--source", str(source), "--run", str(cli_rel)]) == 0
        assert_same_study(cli, out)
        assert main(["evaluate", "--mode", "smoke", "--run", str(out_rel), "--tasks", "pneumonia"]) == 0
        assert json.loads((out / "metrics.json").read_text())["test_ledger"]["scorings"] == 4
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cli, ignore_errors=True)


def test_figures_go_to_the_run_folder_unless_asked(tmp_path, monkeypatch):
    """Only `make notebook` (CXR_FIGURES_DIR=doc/figures) may refresh the committed figures; `make run` may not."""
    from cxr.config import Config
    from cxr.reporting import RunLog

    monkeypatch.delenv("CXR_FIGURES_DIR", raising=False)
    log = RunLog(Config.preset("full", output_dir=str(tmp_path / "run")))
    assert log.figure("a.png") == tmp_path / "run" / "figures" / "a.png"
    monkeypatch.setenv("CXR_FIGURES_DIR", str(tmp_path / "doc"))
    assert log.figure("a.png") == tmp_path / "doc" / "a.png"


def test_the_committed_notebook_has_no_injected_parameters_and_make_notebook_drops_them(tmp_path):
    """A person's MODE in the parameters cell must hold in Jupyter, Colab and Kaggle: the committed notebook has no
    papermill "injected-parameters" cell after it, and `make notebook` (run_notebook in place) removes the one
    papermill adds."""
    import nbformat

    from cxr.reporting.run import _drop_injected_parameters

    nb = json.loads(NOTEBOOK.read_text())
    assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    made = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("MODE = 'full'", metadata={"tags": ["parameters"]}),
                                           nbformat.v4.new_code_cell("MODE = 'full'",
                                                                     metadata={"tags": ["injected-parameters"]}),
                                           nbformat.v4.new_code_cell("print(MODE)")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(made, path)
    _drop_injected_parameters(path)
    kept = nbformat.read(path, as_version=4).cells
    assert [c.source for c in kept] == ["MODE = 'full'", "print(MODE)"]
    assert kept[0].metadata["tags"] == ["parameters"]
