"""The notebook's run log (environment, wall time, output paths, conclusions) and its headless runner."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.config import Config
from cxr.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
HEADER_ID = "cxr-run-header"


class RunLog:
    """What the notebook prints about its own run; `finish()` updates the first cell's output with the wall time."""

    def __init__(self, config: Config) -> None:
        from cxr.train import environment, precision_policy

        self.config = config
        self.start = time.perf_counter()
        self.out = config.run_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.precision = precision_policy(config)  # shown only: `train.fit` sets it
        self.env = environment()
        self._display(self._header(wall=None), update=False)

    def _header(self, wall: float | None) -> str:
        e, c = self.env, self.config
        hardware = e["gpu"] or f"CPU only ({e['cpu_count']} cores, {e['processor']})"
        versions = ", ".join(f"{k} {v}" for k, v in e["versions"].items())
        lines = [
            f"mode: {c.mode} | backbone: {c.backbone} ({c.weights or 'random'} weights) | image size: {c.image_size} px",
            f"Keras backend: {e['backend']} | hardware: {hardware} | dtype policy: {self.precision}",
            f"versions: {versions}",
            f"outputs: {self.out.as_posix()}/",
            f"wall time: {_minutes(wall)}" if wall is not None else "wall time: (running; filled in by the last cell)",
        ]
        return "\n".join(lines)

    def _display(self, text: str, update: bool) -> None:
        try:
            from IPython.display import Pretty, display, update_display

            if update:
                update_display(Pretty(text), display_id=HEADER_ID)
                return
            display(Pretty(text), display_id=HEADER_ID)
        except ImportError:
            print(text)

    def path(self, name: str) -> Path:
        """A path inside this run's output folder."""
        return self.out / name

    def figure(self, name: str) -> Path:
        """Where a figure goes: `$CXR_FIGURES_DIR` when set (`make notebook` sets `doc/figures`, the figures the
        README shows), else `<output_dir>/figures/`, so that other runs never overwrite the committed figures."""
        folder = Path(os.environ.get("CXR_FIGURES_DIR") or self.out / "figures")
        return folder / name

    def save(self, fig: Any, name: str) -> None:
        """Save a figure under `figure(name)`, atomically; shows nothing."""
        from cxr.plots import save_figure

        save_figure(fig, self.figure(name))

    def training(self, result: Any) -> None:
        """One line per stage (epochs run, the best epoch by validation log-loss, its AUROC, seconds) and the kept
        stage. The run record (configuration, versions, history, selection, timings) is `<run>/<task>_run.json`,
        written by `pipeline.run_task`."""
        for _, r in result.selection.iterrows():
            print(f"{result.task} / {r['stage']}: {int(r['epochs'])} epochs, best epoch {int(r['best_epoch'])} "
                  f"(val log-loss {r['val_loss']:.4f}, val AUROC {r['val_auroc']:.4f}), "
                  f"{result.seconds.get(r['stage'], 0.0):.0f} s")
        balance = f"; class imbalance: {result.balance}" if getattr(result, "balance", None) else ""
        features = (f"backbone features computed once in {result.seconds['features']:.0f} s; "
                    if "features" in result.seconds else "")
        print(f"{features}kept stage: {result.kept_stage} (lower best validation log-loss){balance}")

    def conclusions(self, doc: dict[str, Any], audit: pd.DataFrame | None = None, sanity: pd.DataFrame | None = None,
                    faith: Any = None) -> None:
        """The headline numbers, what the calibration and the Grad-CAM checks showed, and how often the test split
        was scored, written from the results (never typed by hand)."""
        from IPython.display import Markdown, display

        from cxr import evaluate, explain

        lines = []
        for task, t in doc["tasks"].items():
            m = t["at_threshold"]
            stage = {"finetune": "fine-tuned backbone", "head": "head on frozen features"}.get(t.get("kept_stage"),
                                                                                             None)
            lines.append(
                f"* **{evaluate.TASK_TITLES.get(task, task)}** (test, n = {t['n']}"
                + (f" images of {t['n_patients']} patients" if t.get("n_patients") else "")
                + f"; threshold {t['threshold']:.3f} from validation" + (f"; kept: {stage}" if stage else "") + "): "
                + ", ".join(f"{evaluate.METRIC_LABELS[k]} {evaluate.fmt(m[k])}"
                            for k in ("auroc", "accuracy", "sensitivity", "specificity"))
                + (" (95% patient-level intervals)." if t.get("n_patients") else ".")
            )
            if t.get("calibration"):
                lines.append("  " + evaluate.describe_calibration(t["calibration"]))
        if doc.get("test_ledger"):
            lines.append("* " + doc["test_ledger"]["description"])
        if sanity is not None and len(sanity):
            lines.append("* Grad-CAM sanity check: " + explain.describe_randomization(sanity))
        if faith is not None:
            lines.append("* Grad-CAM faithfulness: " + explain.describe_faithfulness(faith).replace("\n", " "))
        if audit is not None and len(audit):
            lines.append("* Grad-CAM shortcut audit: " + explain.describe_audit(audit))
        display(Markdown("\n".join(lines)))

    def finish(self) -> None:
        """Print the wall time and write it into the first cell's output; save the run summary."""
        wall = time.perf_counter() - self.start
        self._display(self._header(wall), update=True)
        atomic_write_text(self.out / "run_env.json",
                          json.dumps({"environment": self.env, "wall_seconds": wall, "config": self.config.to_dict()}, indent=2))
        self.wall = wall
        print(f"wall time: {_minutes(wall)}")


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_notebook(mode: str = "full", in_place: bool = False, source: str | None = None,
                 notebook: str | Path = REPO / "notebook.ipynb", output_dir: str | Path | None = None,
                 settings: dict[str, Any] | None = None) -> int:
    """Execute the notebook headless with papermill and print the headline metrics.

    The run's outputs go to the run folder (`Config.run_dir`: `output_dir`, else runs/<mode>/), and the executed
    copy with them as `notebook.ipynb`; with `in_place` the executed notebook replaces `notebook.ipynb` instead.
    `settings`: more Config fields (the CLI's `--set`), passed to the notebook's SETTINGS parameter.
    """
    import papermill as pm

    from cxr import progress
    from cxr.data import resolve_source

    settings = dict(settings or {})
    output_dir = settings.pop("output_dir", None) or output_dir
    out_dir = Config.preset(mode, output_dir=str(output_dir) if output_dir else None, **settings).run_dir
    target = Path(notebook) if in_place else REPO / out_dir / "notebook.ipynb"
    resolved = resolve_source(source, Path(REPO / "data"))  # a bad source stops here, before any folder is made
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"data: {os.path.relpath(resolved)}")
    params = {"MODE": mode, "OUTPUT_DIR": out_dir.as_posix(), "SOURCE": source, "SETTINGS": settings}
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    show_cells = progress.enabled()  # papermill's own bar of cells, in this terminal only
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in a headless run's saved outputs
    os.environ["CXR_PROGRESS"] = "0"  # cxr.progress: off in the kernel too (it inherits the environment)
    if in_place:  # the run behind the committed notebook also refreshes the README's figures
        os.environ["CXR_FIGURES_DIR"] = os.path.relpath(REPO / "doc" / "figures", REPO)
    # relative paths: papermill records them in the notebook's metadata, which must show no local absolute path
    try:
        pm.execute_notebook(os.path.relpath(notebook), os.path.relpath(target), parameters=params,
                            cwd=os.path.relpath(REPO), progress_bar=show_cells, log_output=False)
    except pm.PapermillExecutionError as error:  # one line: where it stopped and why; the details are in the copy
        from cxr import UserError

        value = " ".join(str(error.evalue).split())[:300]
        raise UserError(f"the notebook stopped in cell {error.exec_count}: {error.ename}: {value} "
                        f"(the executed copy with the traceback: {os.path.relpath(target)})") from None
    metrics = REPO / out_dir / "metrics.json"
    print(f"executed notebook: {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
    if metrics.is_file():
        from cxr.evaluate import results_table

        print(results_table(json.loads(metrics.read_text())).to_string())
    if "sample" in Path(str(resolved)).name:
        print("\nThis ran on the small bundled sample. For the full dataset, set up Kaggle credentials "
              "(see README, 'Getting the data') or download the archive and set CXR_DATA=/path/to/archive.zip.")
    return 0
