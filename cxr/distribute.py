"""Data-parallel training over several devices with `keras.distribution.DataParallel` (JAX).

Usage, around model building AND fit/evaluate/predict (variables are laid out when they are created, batches are
split when they are fed):

    dist = data_parallel()                       # None on a single device; $CXR_DATA_PARALLEL may ask for more
    with distributed(dist):
        model = build_model(config)
        model.fit(...)            # batches of the run's batch size, a multiple of device_count(dist)

Under TensorFlow and PyTorch the backend's own strategies (tf.distribute, torch DDP) are not wired in: one device
is used, and `data_parallel` returns None.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Sequence

import keras

ENV = "CXR_DATA_PARALLEL"  # a device type ("cpu", "gpu"): every device of it, where no devices are given


def data_parallel(devices: str | Sequence[str] | None = None) -> keras.distribution.Distribution | None:
    """A `keras.distribution.DataParallel` over several devices under JAX, else None (train on one device). The one
    place a run's data parallelism is decided (`cxr.train.fit`, `cxr.train.resolve`, the run record).

    devices: None: the device type in the environment variable CXR_DATA_PARALLEL (`ENV`) when it is set, e.g.
    simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`) in tests; otherwise the
    accelerators (GPU/TPU) JAX sees, used when there are two or more; CPU devices are never picked automatically.
    A device type ("cpu", "gpu", "tpu"): every device of that type. A list of device names such as ["cpu:0",
    "cpu:1"]: those. With fewer than two devices the result is None. Under TensorFlow and PyTorch their standard
    strategies are not wired in: always None (with a warning if devices were asked for).
    """
    if devices is None:
        devices = os.environ.get(ENV) or None
    if keras.backend.backend() != "jax":
        if devices is not None:
            warnings.warn(f"data parallelism is wired for JAX only; the {keras.backend.backend()} backend trains "
                          "on one device")
        return None
    if devices is None:
        found = keras.distribution.list_devices()  # GPUs/TPUs when there are any, else the CPU devices
        if not found or found[0].split(":")[0].lower() == "cpu":
            return None
    elif isinstance(devices, str):
        found = keras.distribution.list_devices(devices)
    else:
        found = list(devices)
    if len(found) < 2:
        return None
    return keras.distribution.DataParallel(devices=found)


def device_count(distribution: keras.distribution.Distribution | None) -> int:
    """How many devices share each batch: the size of the distribution's device mesh, 1 for None."""
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


@contextlib.contextmanager
def distributed(distribution: keras.distribution.Distribution | None) -> Iterator:
    """Make `distribution` the current one inside the block (the previous one is restored after); None: no-op."""
    if distribution is None:
        yield None
        return
    with distribution.scope():
        yield distribution
