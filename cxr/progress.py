"""Live progress in interactive sessions (Jupyter, IPython, a terminal), and none anywhere else.

`enabled()` decides; `bar(...)` is a tqdm bar that is disabled when progress is off; `keras_callbacks(desc)` gives
Keras `fit`/`predict` a bar of epochs and steps with the latest validation metrics. Headless runs (papermill,
`make run`, CI, pytest) set or detect what turns progress off, so saved notebooks and logs hold no bars.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

_OFF = ("", "0", "false", "no", "off")


def _interactive() -> bool:
    """True in a Jupyter/IPython session or when stderr is a terminal."""
    shell = sys.modules.get("IPython")
    if shell is not None:
        try:
            ip = shell.get_ipython()
        except Exception:  # noqa: BLE001
            ip = None
        if ip is not None:
            return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def enabled() -> bool:
    """Whether to show progress: off when CXR_PROGRESS=0 or TQDM_DISABLE is set (the headless runner
    `cxr.reporting.run_notebook` sets both, so papermill runs and `make run` show none), in CI ($CI) and under pytest;
    on when CXR_PROGRESS=1; otherwise on in an interactive session (Jupyter, IPython, a terminal)."""
    env = os.environ
    setting = env.get("CXR_PROGRESS")
    if setting is not None and setting.strip().lower() in _OFF:
        return False
    if env.get("TQDM_DISABLE", "").strip().lower() not in _OFF:
        return False
    if setting is not None and setting.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if env.get("CI") or "PYTEST_CURRENT_TEST" in env:
        return False
    return _interactive()


def _tqdm() -> Any:
    """tqdm.auto (widgets in Jupyter) when ipywidgets is importable, else the plain text tqdm."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm
    return tqdm


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "") -> Any:
    """A tqdm progress bar (cleared when done), disabled when `enabled()` is False."""
    return _tqdm()(iterable, total=total, desc=desc, leave=False, disable=not enabled(), dynamic_ncols=True)


def keras_callbacks(desc: str) -> list:
    """[a Keras callback showing epochs and steps with the latest validation metrics] for `fit` (steps only for
    `predict`), or [] when progress is off. Pass it with `verbose=0`."""
    if not enabled():
        return []
    import keras

    class TqdmProgress(keras.callbacks.Callback):
        """Epochs (outer bar, with the latest val_* metrics) and the steps of the current epoch (inner bar)."""

        def __init__(self) -> None:
            super().__init__()
            self.epochs = self.steps = None

        def _steps(self, title: str) -> None:
            if self.steps is not None:
                self.steps.close()
            self.steps = bar(total=self.params.get("steps"), desc=title)

        def on_train_begin(self, logs=None):
            self.epochs = bar(total=self.params.get("epochs"), desc=f"{desc}: epochs")

        def on_epoch_begin(self, epoch, logs=None):
            self._steps(f"{desc}: epoch {epoch + 1}")

        def on_train_batch_end(self, batch, logs=None):
            if self.steps is not None:
                self.steps.update(1)

        def on_epoch_end(self, epoch, logs=None):
            shown = {k: f"{float(v):.4f}" for k, v in (logs or {}).items() if k.startswith("val_")}
            if self.epochs is not None:
                self.epochs.set_postfix(shown, refresh=False)
                self.epochs.update(1)

        def on_train_end(self, logs=None):
            for b in (self.steps, self.epochs):
                if b is not None:
                    b.close()
            self.epochs = self.steps = None

        def on_predict_begin(self, logs=None):
            self._steps(desc)

        def on_predict_batch_end(self, batch, logs=None):
            if self.steps is not None:
                self.steps.update(1)

        def on_predict_end(self, logs=None):
            if self.steps is not None:
                self.steps.close()
                self.steps = None

    return [TqdmProgress()]
