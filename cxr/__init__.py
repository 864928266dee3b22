"""cxr: pediatric pneumonia on chest X-rays — data, model, training, honest evaluation and Grad-CAM (Keras 3)."""
import logging as _logging
import os as _os

# TensorFlow's C++ start-up chatter (no GPU found, CPU features) is noise in notebooks and CLI output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# tf.function retracing notices (one model, several input sizes) are noise in notebooks and CLI output.
_logging.getLogger("tensorflow").setLevel(_logging.ERROR)

__version__ = "0.1.0"
