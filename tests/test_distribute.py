"""Data parallel: the same losses as one device on a toy model (JAX, two simulated CPU devices); batch helpers."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras

from cxr.distribute import data_parallel, device_count

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import numpy as np
import keras
from cxr.distribute import data_parallel, device_count, distributed

def train(distribution, batch_size):
    with distributed(distribution):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(48, 6)).astype("float32")
        y = (x @ rng.normal(size=(6, 1))).astype("float32")
        losses = []
        record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(float(logs["loss"])))
        model.fit(x, y, batch_size=batch_size, epochs=3, shuffle=False, verbose=0, callbacks=[record])
        devices = len(model.layers[0].kernel.value.sharding.device_set)
        return losses, [w.tolist() for w in model.get_weights()], devices

dist = data_parallel("cpu")
batch_size = 4 * device_count(dist)  # the same global batch of 8 on one device and on two
single = train(None, batch_size)
parallel = train(dist, batch_size)
auto = repr(data_parallel())
import os
os.environ["CXR_DATA_PARALLEL"] = "cpu"  # a run asks for every CPU device through the environment
from_env, explicit = device_count(data_parallel()), repr(data_parallel(["cpu:0"]))  # an explicit list wins
print("RESULT " + json.dumps({"auto": auto, "n": device_count(dist), "single": single, "env": from_env,
                              "explicit": explicit, "parallel": parallel,
                              "after": repr(keras.distribution.distribution())}))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_data_parallel_matches_one_device_on_two_cpu_devices():
    import numpy as np

    env = {**{k: v for k, v in os.environ.items() if k != "CXR_DATA_PARALLEL"}, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(REPO),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["auto"] == "None"  # CPU devices are used only when asked for
    assert result["env"] == 2 and result["explicit"] == "None"  # CXR_DATA_PARALLEL asks; explicit devices win
    assert result["n"] == 2 and result["after"] == "None"  # the scope is left as it was found
    (single_losses, single_weights, single_devices) = result["single"]
    (parallel_losses, parallel_weights, parallel_devices) = result["parallel"]
    assert single_devices == 1 and parallel_devices == 2  # the variables really live on both devices
    assert len(single_losses) == len(parallel_losses) == 3 * 6  # 3 epochs of 6 batches of 8
    assert single_losses[-1] < 0.5 * single_losses[0]  # it trains
    np.testing.assert_allclose(parallel_losses, single_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(parallel_weights, single_weights):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_device_count():
    assert device_count(None) == 1


def test_the_environment_asks_for_data_parallelism_where_no_devices_are_given(monkeypatch):
    """`data_parallel()` reads CXR_DATA_PARALLEL (the one function of that name; `cxr.train` calls it); outside
    JAX it trains on one device and says so only when devices were asked for."""
    import warnings

    from cxr import train

    assert not hasattr(train, "data_parallel") and not hasattr(train.device, "data_parallel")
    monkeypatch.delenv("CXR_DATA_PARALLEL", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = data_parallel()
    if keras.backend.backend() == "jax":
        pytest.skip("the JAX case runs in the subprocess above")
    assert none is None
    monkeypatch.setenv("CXR_DATA_PARALLEL", "cpu")
    with pytest.warns(UserWarning, match="JAX only"):
        assert data_parallel() is None
