"""cxr: pediatric pneumonia on chest X-rays — data, model, training, honest evaluation and Grad-CAM (Keras 3)."""
import contextlib as _contextlib
import logging as _logging
import os as _os

# TensorFlow's C++ start-up chatter (no GPU found, CPU features) is noise in notebooks and CLI output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _NoRetracingNotice(_logging.Filter):
    """Drop TensorFlow's "triggered tf.function retracing" notices: several models and input sizes in one process
    are by design here, and the notices are noise in notebooks and CLI output. (A filter, not a level: TensorFlow
    resets the logger's level to INFO in interactive sessions such as Jupyter.)"""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "tf.function retracing" not in record.getMessage()


_logging.getLogger("tensorflow").addFilter(_NoRetracingNotice())

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user (a path, a setting, a dataset): the message says what is wrong and what to do, in one
    line. The CLI prints it without a traceback (`--debug` or CXR_DEBUG=1 shows one); so does Jupyter/IPython."""

    def _render_traceback_(self) -> list[str]:
        """IPython (Jupyter, papermill) shows this instead of a traceback: the one line that says what to do."""
        if _os.environ.get("CXR_DEBUG", "").strip().lower() in ("1", "true", "yes"):
            raise NotImplementedError  # IPython then shows the full traceback
        return [f"{type(self).__name__}: {self}"]


def ensure_writable(folder: str | _os.PathLike, what: str = "output folder") -> None:
    """Raise `UserError` unless `folder` exists as a writable folder or can be created (checked before any work,
    so that a run never stops half-way for want of a place to write)."""
    from pathlib import Path

    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"cannot write the {what} {folder}: {existing} is a file; choose another path.")
    if not _os.access(existing, _os.W_OK | _os.X_OK):
        raise UserError(f"cannot write the {what} {folder}: no write permission in {existing}; choose another path.")


@_contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to /dev/null for a moment: TensorFlow's C++ start-up lines (oneDNN, CUDA stub, absl)
    bypass TF_CPP_MIN_LOG_LEVEL and would land in notebooks and CLI output as noise."""
    import sys

    try:
        sys.stderr.flush()
        saved = _os.dup(2)
    except OSError:  # no real file descriptor 2 (embedded interpreters): nothing to hide
        yield
        return
    devnull = _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(devnull, 2)
    _os.close(devnull)
    try:
        yield
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)



def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type (for run records and benchmarks)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
