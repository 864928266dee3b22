"""Where a run computes: the accelerator, the dtype policy, the batch size, data parallelism, and the record of
versions and hardware."""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Iterator

from cxr import cpu_model, quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
import numpy as np
import pandas as pd

from cxr import distribute
from cxr.config import Config

CPU_BATCH, GPU_BATCH_PER_DEVICE = 32, 128  # the GPU figure when the card's memory is unknown

# The GPU presets, resolved from the card the backend sees (`gpu_preset`): (least memory in GiB, batch per device).
# The recipe is the same everywhere; only the step's batch and the dtype change. A 16 GB T4 or P100 (Kaggle, Colab)
# takes 64 images of 224 px per step with the whole EfficientNet-Lite0 unfrozen, an 80 GB H100 256.
GPU_PROFILES = ((40.0, 256), (20.0, 128), (0.0, 64))
# cards without bfloat16 units (before Ampere): mixed_float16 there (Keras adds loss scaling), bfloat16 elsewhere
NO_BFLOAT16 = r"(^|[^A-Z0-9])(T4|P100|P40|P4|V100|K80|K40|M60|TITAN [VX]|RTX 20\d\d|GTX)([^0-9]|$)"


def gpu_preset(name: str | None, memory_gib: float | None) -> dict[str, Any]:
    """The GPU preset of a card: its batch per device (by memory, `GPU_PROFILES`; from a size in the name such as
    "80GB" when the backend tells none; `GPU_BATCH_PER_DEVICE` when neither) and its dtype ("float16" on cards
    without bfloat16, `NO_BFLOAT16`; "on", i.e. bfloat16, otherwise)."""
    import re

    text = (name or "").upper()
    if memory_gib is None:
        found = re.search(r"(\d+)\s*GB", text)
        memory_gib = float(found.group(1)) if found else None
    batch = GPU_BATCH_PER_DEVICE if memory_gib is None else next(b for gib, b in GPU_PROFILES if memory_gib >= gib)
    old = re.search(NO_BFLOAT16, text) is not None
    return {"batch_per_device": batch, "mixed_precision": "float16" if old else "on", "gpu": name,
            "memory_gib": memory_gib}


def _gpu_memory_gib() -> float | None:
    """Memory of the first GPU in GiB as the backend reports it (JAX, torch), or None."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            limit = (gpus[0].memory_stats() or {}).get("bytes_limit") if gpus else None
            return limit / 2**30 if limit else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001  (a hint for the preset, not a requirement)
        return None
    return None


def accelerator() -> str:
    """'gpu' or 'cpu': what the active Keras backend computes on."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        with quiet_stderr():  # "Could not find cuda drivers" and friends
            return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return "cpu"


def precision_policy(config: Config) -> str:
    """The Keras dtype policy a run of `config` trains with: "mixed_bfloat16" on a GPU (every backend) when
    `config.mixed_precision` is "auto", or always when "on"; "float32" otherwise (CPU: bfloat16 is slow there)."""
    wanted = config.mixed_precision
    if wanted == "auto":
        wanted = gpu_preset(_gpu_name(), _gpu_memory_gib())["mixed_precision"] if accelerator() != "cpu" else "off"
    return {"on": "mixed_bfloat16", "float16": "mixed_float16"}.get(wanted, "float32")


def setup_precision(config: Config) -> str:
    """Set Keras' GLOBAL dtype policy to `precision_policy(config)` and return it (for scripts such as the bench;
    `fit` uses `precision_scope`, which restores the previous policy)."""
    policy = precision_policy(config)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def precision_scope(policy: str) -> Iterator[str]:
    """The global dtype policy is `policy` inside the block and what it was before after it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def resolve(config: Config) -> Config:
    """`config` with every machine-dependent setting made explicit, ONCE per run: the batch size of every step
    (training, scoring, Grad-CAM, predict; `batch_size`) and the dtype policy (`mixed_precision` "on" or "off").
    The run folder's config.json and each model.json record the resolved values."""
    dist = distribute.data_parallel()
    precision = {"mixed_bfloat16": "on", "mixed_float16": "float16"}.get(precision_policy(config), "off")
    return config.replace(batch_size=batch_size(config, distribute.device_count(dist)), mixed_precision=precision)


def batch_size(config: Config, n_devices: int = 1) -> int:
    """The batch size of every step (training, scoring, prediction) of a run: `config.batch_size`, or, when it
    is None, 32 on a CPU and the GPU preset's batch per device (`gpu_preset`) times the devices. It must be a
    multiple of the device count (data parallel)."""
    if config.batch_size is not None:
        size = int(config.batch_size)
    elif accelerator() == "cpu":
        size = CPU_BATCH * n_devices
    else:
        size = gpu_preset(_gpu_name(), _gpu_memory_gib())["batch_per_device"] * n_devices
    if size % n_devices:
        raise ValueError(f"batch_size {size} is not a multiple of the {n_devices} devices")
    return size


def environment() -> dict[str, Any]:
    """Versions and hardware of this run, for the record."""
    import sys

    import PIL
    import scipy
    import sklearn

    versions = {
        "python": sys.version.split()[0], "keras": keras.__version__, "numpy": np.__version__,
        "pandas": pd.__version__, "scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
        "pillow": PIL.__version__,
    }
    backend = keras.backend.backend()
    for name in {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(backend, []):
        versions[name] = __import__(name).__version__
    return {
        "backend": backend, "accelerator": accelerator(), "gpu": _gpu_name(),
        "devices": distribute.device_count(distribute.data_parallel()),
        "platform": platform.platform(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def _gpu_name() -> str | None:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return gpus[0].device_kind if gpus else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
    except Exception:  # a record, not a requirement
        return None
    return None
