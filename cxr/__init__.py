"""cxr: pediatric pneumonia on chest X-rays — data, model, training, honest evaluation and Grad-CAM (Keras 3)."""
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


class _QuietStderr:
    """Send file descriptor 2 to /dev/null for a moment: TensorFlow's C++ start-up lines (oneDNN, CUDA stub, absl)
    bypass TF_CPP_MIN_LOG_LEVEL and would land in notebooks and CLI output as noise."""

    def __enter__(self) -> None:
        import sys

        try:
            sys.stderr.flush()
            self._saved = _os.dup(2)
            devnull = _os.open(_os.devnull, _os.O_WRONLY)
            _os.dup2(devnull, 2)
            _os.close(devnull)
        except OSError:  # no real file descriptor 2 (embedded interpreters): nothing to hide
            self._saved = None

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            _os.dup2(self._saved, 2)
            _os.close(self._saved)


def quiet_stderr() -> _QuietStderr:
    """Context manager hiding what C++ libraries write straight to file descriptor 2."""
    return _QuietStderr()

