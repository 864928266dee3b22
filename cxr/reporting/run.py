"""The notebook's run log (what this run is and how it differs from the design, figures shown inline and saved,
wall time), its readings and tables (`read_out`, `table`), the protocol, the training and the folds in words, the
conclusions written from the metrics document, and the headless runner of the notebook (`run_notebook`)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.config import PRIMARY_TASK, TASKS, Config
from cxr.io import write_json
from cxr.reporting.document import TASK_TITLES, calibration_warning, headline_findings

REPO = Path(__file__).resolve().parents[2]  # the repository (cxr/reporting/run.py)
HEADER_ID = "cxr-run-header"
TEST_ACCESS = REPO / "doc" / "test_access.json"  # the development history of test access (committed, by hand)
SHARED_COPY = "a 224-px copy of the Kaggle archive (every image squashed to 224 x 224 by a third party)"


def _relative(path: Any) -> str:
    """A path as the reader should see it: relative to the working folder when inside it, else its name."""
    try:
        return os.path.relpath(Path(path))
    except ValueError:
        return Path(path).name


def _drop_injected_parameters(path: Path) -> None:
    """Remove papermill's "injected-parameters" cell from the executed notebook at `path` (atomically). Used for the
    committed notebook, whose parameters cell already holds the full run's values (MODE = "full", SETTINGS = {})."""
    import nbformat

    from cxr.io import atomic_write_text

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    atomic_write_text(path, nbformat.writes(nb))


def _kernel_path(path: Path) -> str:
    """`path` as the notebook's kernel (working folder: the repository) must see it: relative to the repository
    when inside it, else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(REPO.resolve()).as_posix()
    except ValueError:
        return str(path)


class RunLog:
    """What the notebook prints about its own run. The header (first cell) says what ran where and how this run
    differs from the design; `show` displays a figure inline AND saves it; `finish()` fills in the wall time."""

    def __init__(self, config: Config, source: Path | None = None) -> None:
        from cxr.train import environment

        self.config = config
        self.start = time.perf_counter()
        self.out = config.run_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.env = environment()
        self.source = source
        self.wall: float | None = None
        self._display(self._header(wall=None), update=False)

    def design_notes(self) -> list[str]:
        """How this run differs from the design (a GPU, the Kaggle originals, every task fine-tuned), in words."""
        c, e = self.config, self.env
        notes = []
        if e["accelerator"] == "cpu":
            others = [t for t in TASKS if t not in c.finetune_tasks]
            notes.append(f"ran on a CPU; the intended setting is a GPU. The full preset is sized to fit about an hour "
                         f"on 2 CPU cores: {c.n_folds} folds, at most {c.finetune_epochs} fine-tuning epochs"
                         + (f", and the {', '.join(others)} task keeps the head on frozen features "
                            f"(`--set finetune_tasks=pneumonia,subtype` fine-tunes it too)" if others else ""))
        if self.source is not None:
            name = Path(self.source).name
            what = (SHARED_COPY if "224" in name else "the bundled 104-image sample (smoke runs only)"
                    if "sample" in name else "the Kaggle archive (original resolution)")
            notes.append(f"data: {_relative(self.source)}, {what}")
        if c.mode != "full":
            notes.append(f"mode {c.mode!r}: a tiny subset at {c.image_size} px to check that every cell runs; its "
                         "numbers mean nothing")
        notes.append(describe_test_access(self.out))
        return notes

    def _header(self, wall: float | None) -> str:
        e, c = self.env, self.config
        hardware = e["gpu"] or f"CPU only ({e['cpu_count']} cores, {e['processor']})"
        versions = ", ".join(f"{k} {v}" for k, v in e["versions"].items())
        precision = {"on": "mixed_bfloat16", "float16": "mixed_float16"}.get(c.mixed_precision, "float32")
        lines = [
            f"mode: {c.mode} | backbone: {c.backbone} ({c.weights or 'random'} weights) | image size: {c.image_size} px"
            f" | {c.n_folds}-fold cross-validation | fine-tuning: {c.finetune_epochs} epochs at most",
            f"Keras backend: {e['backend']} | hardware: {hardware} | dtype policy: {precision} | batch size: "
            f"{c.batch_size}",
            *[f"note: {n}" for n in self.design_notes()],
            f"versions: {versions}",
            f"outputs: {self.out.as_posix()}/",
            f"wall time: {_minutes(wall)}" if wall is not None else "wall time: (running; filled in by the last cell)",
        ]
        return "\n".join(lines)

    def _display(self, text: str, update: bool) -> None:
        try:
            from IPython.display import Pretty, display, update_display
        except ImportError:
            print(text)
            return
        if update:
            update_display(Pretty(text), display_id=HEADER_ID)
        else:
            display(Pretty(text), display_id=HEADER_ID)

    def note_data(self, prepared: Any) -> None:
        """Add where the data came from (`prepared.source`) to the header shown at the top of the notebook."""
        self.source = prepared.source
        self._display(self._header(self.wall), update=True)

    def path(self, name: str) -> Path:
        """A path inside this run's output folder."""
        return self.out / name

    def figure(self, name: str) -> Path:
        """Where a figure goes: `$CXR_FIGURES_DIR` when set (`make notebook` sets `doc/figures`, the figures the
        README shows), else `<output_dir>/figures/`, so that other runs never overwrite the committed figures."""
        folder = Path(os.environ.get("CXR_FIGURES_DIR") or self.out / "figures")
        return folder / name

    def show(self, fig: Any, name: str) -> None:
        """Display `fig` inline (Jupyter, papermill and the saved notebook alike: one PNG output) and save the
        same PNG under `figure(name)`, atomically; the figure is then closed (so it is shown once)."""
        import matplotlib.pyplot as plt

        from cxr.io import atomic_write_bytes
        from cxr.plots import png_bytes

        data = png_bytes(fig)
        plt.close(fig)
        try:
            from IPython import get_ipython
            from IPython.display import Image, display

            if get_ipython() is not None:
                display(Image(data=data, format="png"))
        except ImportError:
            pass
        atomic_write_bytes(self.figure(name), data)

    def finish(self) -> None:
        """Write the wall time into the first cell's output and save the run summary (run_env.json)."""
        self.wall = time.perf_counter() - self.start
        self._display(self._header(self.wall), update=True)
        write_json(self.out / "run_env.json", {"environment": self.env, "wall_seconds": self.wall,
                                               "config": self.config.to_dict()})
        print(f"wall time: {_minutes(self.wall)}")


def describe_test_access(run_dir: Path) -> str:
    """One sentence: how often this run scored the test split, and the development history (doc/test_access.json)."""
    from cxr.evaluate import ledger

    n = ledger.count_test_accesses(run_dir / ledger.LEDGER_NAME)
    text = (f"test split: scored {n} time(s) so far by this run (each scoring is a line of "
            f"{ledger.LEDGER_NAME}; the study scores it once per task and once for the trivial baseline)")
    if TEST_ACCESS.is_file():
        history = json.loads(TEST_ACCESS.read_text())
        text += (f"; it is a development test set: scored {history['development_scorings']} times during "
                 f"development before the committed run, with {history.get('rules_changed_after_test', 'some')} "
                 f"rules changed after a test number was seen ({history['summary']} doc/test_access.json)")
    return text


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def read_out(text: str) -> None:
    """A reading of a figure or a table for the notebook's reader: shown as Markdown under it."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def table(frame: pd.DataFrame | pd.Series, digits: int = 3) -> None:
    """Show a table in the notebook, in the order of the cell's other outputs: floats at `digits` decimals (no
    negative zero), every column in full, NaN as an empty cell (printed outside IPython)."""
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    if frame.empty:  # nothing to show (the reading above says why)
        return
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            shown = frame.round(digits)
            numeric = shown.select_dtypes(include="floating").columns
            shown[numeric] = shown[numeric] + 0.0  # -0.0004 rounds to -0.0: shown as 0.0
            with pd.option_context("display.max_colwidth", None):  # the HTML shows every cell in full too
                display(shown.astype(object).where(shown.notna(), ""))
            return
    except ImportError:
        pass
    with pd.option_context("display.max_colwidth", None, "display.width", 250, "display.precision", digits):
        print(frame.to_string())


@contextlib.contextmanager
def _quiet_papermill():
    """Papermill and the kernel machinery without the lines a newcomer reads as failures: the kernel client's
    warning about TCP without encryption (a local kernel), papermill's notes on parameters it cannot type, and
    asyncio's "Task was destroyed but it is pending" at shutdown. Real errors still surface (the notebook's
    stopping cell is reported as an error)."""
    names = ("papermill", "papermill.translators", "traitlets", "asyncio", "jupyter_client")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without encryption.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            yield
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)


def run_notebook(mode: str = "full", in_place: bool = False, settings: dict[str, Any] | None = None,
                 notebook: str | Path = REPO / "notebook.ipynb") -> int:
    """Execute the notebook headless with papermill and print the headline metrics.

    `settings`: Config fields (the CLI's `--set`, `--source`, `--run`), passed to the notebook's SETTINGS
    parameter; the run's outputs go to its run folder (`Config.run_dir`: `output_dir`, else runs/<mode>/), and the
    executed copy with them as `notebook.ipynb`; with `in_place` the executed notebook replaces `notebook.ipynb`.
    """
    import papermill as pm

    from cxr import UserError, progress
    from cxr.data import resolve_source

    settings = dict(settings or {})
    source = settings.get("source")
    if source and str(source).lower() != "kaggle" and Path(str(source)).expanduser().exists():
        # the kernel runs in the repository: a path is handed over relative to it when it lies inside it (the
        # executed notebook then holds no local absolute path), absolute otherwise (it works from any folder)
        settings["source"] = _kernel_path(Path(str(source)).expanduser())
    config = Config.preset(mode, **settings)
    out_dir = config.run_dir
    if not out_dir.is_absolute():
        out_dir = Path(os.path.relpath(REPO / out_dir))
    target = Path(notebook) if in_place else out_dir / "notebook.ipynb"
    given = config.source if config.source is None or Path(config.source).is_absolute() or \
        str(config.source).lower() == "kaggle" else str(REPO / config.source)
    resolved = resolve_source(given, Path(config.data_dir))  # a bad source stops here, before any folder
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"data: {_relative(resolved)}")
    params = {"MODE": mode, "SETTINGS": {**settings, "output_dir": _kernel_path(out_dir.absolute())}}
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are displayed explicitly (RunLog.show), never twice
    show_cells = progress.enabled()  # papermill's own bar of cells, in this terminal only
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in a headless run's saved outputs
    os.environ["CXR_PROGRESS"] = "0"  # cxr.progress: off in the kernel too (it inherits the environment)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # the debugger's frozen-modules note
    if in_place:  # the run behind the committed notebook also refreshes the README's figures
        os.environ["CXR_FIGURES_DIR"] = os.path.relpath(REPO / "doc" / "figures")
    # relative paths: papermill records them in the notebook's metadata, which must show no local absolute path
    try:
        with _quiet_papermill():
            pm.execute_notebook(os.path.relpath(notebook), os.path.relpath(target), parameters=params,
                                cwd=os.path.relpath(REPO), progress_bar=show_cells, log_output=False,
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])  # not its TCP note
    except pm.PapermillExecutionError as error:  # one line: where it stopped and why; the details are in the copy
        value = " ".join(str(error.evalue).split())[:300]
        raise UserError(f"the notebook stopped in cell {error.exec_count}: {error.ename}: {value} "
                        f"(the executed copy with the traceback: {os.path.relpath(target)})") from None
    if in_place:  # the committed notebook keeps its own parameters cell: papermill's injected copy would override
        _drop_injected_parameters(target)  # the MODE a person sets in Jupyter, Colab or Kaggle
    metrics = out_dir / "metrics.json"
    print(f"executed notebook: {_relative(target)}")
    if metrics.is_file():
        from cxr.evaluate import results_table

        print(results_table(json.loads(metrics.read_text())).to_string())
    if "sample" in Path(str(resolved)).name:
        print("\nThis ran on the small bundled sample. For the full dataset, set up Kaggle credentials "
              "(see README, 'Getting the data') or download the archive and set CXR_DATA=/path/to/archive.zip.")
    return 0


def describe_protocol(config: Config) -> str:
    """The protocol's fixed choices, read off the run's Config sections (so the text cannot drift from what ran)."""
    d, m, a, t = config.data, config.model, config.augment, config.training
    o, op, b = config.optimizer, config.operating, config.bootstrap
    aug = [f"affine (rotation +-{a.rotation:g} deg, scale +-{a.scale:.0%}, shift +-{a.shift:.0%}, "
           f"shear +-{a.shear:g} deg)",
           f"intensity (contrast +-{a.contrast:.0%}, brightness +-{a.brightness:.0%}, gamma "
           f"+-{a.gamma:.0%}, noise {a.noise:g} grey levels)"]
    if a.resample:
        aug.append(f"the resampling path with probability {a.resample:g}")
    if a.border:
        aug.append(f"border masking up to {a.border:.0%} per side")
    rules = {"sensitivity": f"the highest threshold whose out-of-fold sensitivity reaches {op.target_sensitivity:.2f}",
             "specificity": f"the lowest threshold whose out-of-fold specificity reaches {op.target_specificity:.2f}",
             "plateau": f"the middle of the thresholds whose Youden J is within {op.threshold_tolerance} of the best",
             "youden": "the maximum of Youden's J", "calibrated": "0.5 after calibration"}
    folds = ("contiguous ID blocks of every file-name family, as the official test is cut" if d.fold_scheme == "blocks"
             else f"folds seeded by split_seed {d.split_seed}")
    markers = ("the two corner zones of the burned-in stamp masked in the model's first layer (training, scoring, "
               "Grad-CAM and predict alike); " if m.marker_zones else "")
    copies = "test images byte-identical to another test image counted once; " if d.dedupe_test else ""
    canonical = (f", every image re-encoded as JPEG quality {d.reencode_quality} after the resize (copies and "
                 "originals alike)" if d.reencode_quality is not None else "")
    wise = (f"; then WiSE-FT, the fold's head-stage and last fine-tuned weights mixed at alpha {t.wise_ft_alpha:g}"
            if t.wise_ft_alpha is not None else "")
    return (f"**Recipe**: {m.backbone} ({m.weights or 'random'} weights) at {d.image_size} px{canonical}; {markers}"
            f"{d.n_folds}-fold cross-validation of the training children ({folds}); per fold a head "
            f"on frozen features (at most {t.head_epochs} epochs) then the whole backbone fine-tuned (at most "
            f"{t.finetune_epochs} epochs, lr {o.finetune_lr:g}, layer decay {o.layer_decay:g}, weight decay "
            f"{o.weight_decay:g}) for {', '.join(t.finetune_tasks) or 'no task'}{wise}; augmentation: {'; '.join(aug)}. "
            f"**Choices on the pooled out-of-fold predictions**: class balance ({t.class_balance}), each stage's "
            f"epoch and the kept stage by log-loss; {op.calibration} calibration. **Operating points**: pneumonia vs "
            f"normal, {rules[op.threshold_policy]} (a screening aid must not miss pneumonia), with a minimum "
            f"specificity of {op.min_specificity:.2f} reported as met or missed, never tuned; bacterial vs viral, "
            f"{rules[op.subtype_threshold_policy]} (it keeps the bacterial sensitivity: a missed bacterial pneumonia "
            f"withholds antibiotics), and no operating point when the viral sensitivity then falls below "
            f"{op.subtype_min_sensitivity:.2f}. **Final model**: the ensemble of the {d.n_folds} fold models (mean "
            f"probability). **Test** (a development test set, reused before; `doc/test_access.json`): {copies}scored "
            f"once per task in this run and once for the trivial baseline; {b.ci_level:.0%} patient-level "
            f"intervals from {b.n_bootstrap} bootstrap resamples, and the interval that re-chooses the threshold.")


def describe_folds(result: Any) -> str:
    """One sentence on the spread of the kept models across folds (each on the children it never saw)."""
    from cxr.train import loss_auroc

    per = [loss_auroc(g["y"].to_numpy(), g["p"].to_numpy()) for _, g in result.oof.groupby("fold")]
    losses, aurocs = [l for l, _ in per], [a for _, a in per]
    return (f"Across the {len(per)} folds, each model on the children it never saw: log-loss "
            f"{min(losses):.3f}-{max(losses):.3f}, AUROC {min(aurocs):.3f}-{max(aurocs):.3f}. This spread, not a set "
            "of training seeds, is the study's measure of how much the result depends on the training run.")


def describe_training(outcome: Any) -> str:
    """What cross-validation chose for a task, in words from its numbers."""

    r = outcome.result
    sel = r.selection.set_index("stage")
    head = sel.loc["head"]
    text = (f"**{outcome.task}**: {r.n_folds} folds over {len(r.oof):,} training images. Head stage: class balance "
            f"{r.balance!r}, epoch {int(head['best_epoch'])} (pooled OOF log-loss {head['selection_loss']:.4f} after "
            f"cross-fitted recalibration, {head['oof_loss']:.4f} raw; AUROC {head['oof_auroc']:.4f}). ")
    if "finetune" in sel.index:
        ft = sel.loc["finetune"]
        text += (f"Fine-tuning: epoch {int(ft['best_epoch'])} of {int(ft['epochs'])} (OOF log-loss "
                 f"{ft['selection_loss']:.4f} recalibrated, {ft['oof_loss']:.4f} raw; AUROC {ft['oof_auroc']:.4f}). ")
    else:
        text += "The backbone was not fine-tuned for this task (finetune_tasks). "
    if "wise-ft" in sel.index:
        w = sel.loc["wise-ft"]
        text += (f"WiSE-FT (head and last fine-tuning epoch mixed): OOF log-loss {w['selection_loss']:.4f} "
                 f"recalibrated, {w['oof_loss']:.4f} raw; AUROC {w['oof_auroc']:.4f}. ")
    kept = {"finetune": "the fine-tuned backbone", "head": "the head on frozen features",
            "wise-ft": "the WiSE-FT mix of head and fine-tuned weights"}[r.kept_stage]
    sens = float((outcome.oof.p[outcome.oof.y == 1] >= outcome.threshold).mean())
    spec = float((outcome.oof.p[outcome.oof.y == 0] < outcome.threshold).mean())
    seconds = ", ".join(f"{k} {v / 60:.1f} min" for k, v in r.seconds.items())
    op = outcome.report["operating_point"]
    if op.get("fits", True):
        point = f"Threshold {outcome.threshold:.3f} ({op['policy']}), where the OOF"
    else:  # the rule did not fit out of fold: the task is reported at 0.5, with no operating point
        point = (f"No operating point: the {op['policy']} rule does not fit out of fold, so the task is reported at "
                 f"{outcome.threshold:.3f}, where the OOF")
    return text + f"Kept: {kept}. {point} sensitivity is {sens:.3f} and specificity {spec:.3f}. Time: {seconds}."


def conclusions(doc: dict[str, Any], sanity: pd.DataFrame | None = None, faith: Any = None,
                audit: pd.DataFrame | None = None) -> str:
    """At most ten short bullets written from the results (never typed by hand), one number-bearing fact each:
    each task's test numbers, the out-of-fold vs test gap, the marker, where the Grad-CAM heat lies, what not to
    rely on (calibration, once), the trivial baseline, how often the test split was scored, and the verdicts of
    the Grad-CAM checks (`describe_randomization`, `describe_faithfulness` and `describe_where` give the detail)."""
    from cxr import evaluate
    from cxr.evaluate import document
    from cxr.reporting.explanation import checks_summary, heat_summary

    lines = []
    for i, (task, t) in enumerate(doc["tasks"].items()):
        m = t["at_threshold"]
        lines.append(f"* **{TASK_TITLES.get(task, task)}** (test: {t['n']} images"
                     + (f", {t['n_patients']} children" if t.get("n_patients") else "")
                     + f"; threshold {t['threshold']:.3f}): "
                     + ", ".join(f"{evaluate.METRIC_LABELS[k]} {evaluate.fmt(m[k])}"
                                 for k in ("auroc", "sensitivity", "specificity"))
                     + (" (95% patient-level intervals)." if i == 0 else "."))
    main = doc["tasks"].get(PRIMARY_TASK)
    if main is not None:
        findings = headline_findings(doc, main)
        if audit is not None and len(audit):  # this run's maps, whatever the document holds
            findings = [f for f in findings if not f.startswith("- Grad-CAM:")]
            findings.append("- Grad-CAM: " + heat_summary(audit.to_dict(orient="records")))
        lines += ["* " + f[2:] for f in findings]
        warning = calibration_warning(main.get("calibration"))
        if warning:
            lines.append("* " + warning)
    base = doc.get("baseline")
    if base and base.get("test"):
        lines.append(f"* **Trivial baseline** (six image statistics): AUROC {base['oof_auroc']:.3f} out of fold, "
                     f"{evaluate.fmt(base['test']['at_threshold']['auroc'])} on test.")
    run = doc.get("test_ledger", {}).get("scorings")
    history = document.development_access()
    if run is not None or history:
        lines.append("* The test split is a reused development test set"
                     + (f": {history['development_scorings']} scorings before this run (`doc/test_access.json`)"
                        if history else "")
                     + (f"{',' if history else ':'} {run} by this run (its ledger)" if run is not None else "") + ".")
    checks = checks_summary(sanity, faith)
    if checks:
        lines.append(f"* Grad-CAM checks: {checks}.")
    return "\n".join(lines[:10])
