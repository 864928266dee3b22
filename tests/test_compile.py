"""Compiled, fixed-shape training and prediction: padding never changes an output or a metric; under JAX the
models are XLA-compiled and the number of compilations does not grow with the number of batches."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

keras = pytest.importorskip("keras")
from cxr import model as M, train  # noqa: E402
from test_train import toy_data, tiny_config  # noqa: E402

pytestmark = pytest.mark.backend
jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA compilation is asserted under JAX")


def test_padding_never_changes_an_output_or_a_metric():
    model = M.build_model(tiny_config())
    images = np.random.default_rng(0).integers(0, 256, (13, 32, 32), dtype=np.uint8)
    y = np.array([0, 1] * 6 + [1])
    full = np.asarray(model.predict(images[:, :, :, None], batch_size=13, verbose=0), "float64").reshape(-1)
    for batch in (4, 5, 8, 13, 16):
        padded = train.predict_proba(model, images, batch_size=batch)
        assert padded.shape == (13,)
        np.testing.assert_allclose(padded, full, rtol=1e-5, atol=1e-6)
        assert roc_auc_score(y, padded) == pytest.approx(roc_auc_score(y, full))
        assert log_loss(y, padded) == pytest.approx(log_loss(y, full), rel=1e-6)
    batches = train.PredictBatches(images, 5)
    assert len(batches) == 3 and {batches[i].shape for i in range(3)} == {(5, 32, 32, 1)}


@jax_only
def test_models_are_jit_compiled_under_jax():
    model = M.build_model(tiny_config())
    trainer = M.training_model(model, tiny_config(aug_rotation=10.0, aug_noise=3.0).augment)
    trainer.compile(optimizer="adam", loss="binary_crossentropy", jit_compile="auto")
    assert trainer.jit_compile is True and model.jit_compile is True
    assert M.feature_model(model).jit_compile is True and M.head_model(model).jit_compile is True


_COMPILES: list[str] = []


def _count_compiles() -> None:
    import jax

    if not getattr(_count_compiles, "registered", False):
        def listener(event: str, duration: float, **kwargs) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                _COMPILES.append(event)

        jax.monitoring.register_event_duration_secs_listener(listener)
        _count_compiles.registered = True


def _compiles_of_a_run(n: int) -> int:
    prepared = toy_data(n=n, seed=4)
    cfg = tiny_config(head_epochs=2, finetune_epochs=2, aug_rotation=10.0, aug_noise=3.0,
                      warmup_fraction=0.25)  # a warmup phase in both runs (the same eager schedule ops)
    start = len(_COMPILES)
    result = train.fit(cfg, prepared)
    train.predict_split(result.model, prepared, "pneumonia", "test", batch_size=cfg.batch_size)
    return len(_COMPILES) - start


@jax_only
def test_compilations_are_bounded_and_independent_of_the_number_of_batches():
    _count_compiles()
    _compiles_of_a_run(16)  # warm-up: small eager ops (the learning-rate schedule) JAX compiles once per process
    few, many = _compiles_of_a_run(16), _compiles_of_a_run(32)  # 2 vs 4 training batches per epoch and fold
    assert few == many
    assert 0 < few <= 80  # a handful per model, mode and fold, not one per batch


_DP_RUN = """
import sys
sys.path.insert(0, "tests")
from test_train import toy_data, tiny_config
from cxr import train
prepared = toy_data(n=16, seed=6)
r = train.fit(tiny_config(head_epochs=2, finetune_epochs=2, dropout=0.0), prepared)
print("RESULT", r.devices, r.batch_size, *r.history["oof_loss"].round(6))
"""


@jax_only
def test_fit_runs_data_parallel_with_the_same_losses_as_one_device():
    """Two simulated CPU devices (keras.distribution.DataParallel) give the held-out losses of one device."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    def run(extra: dict[str, str]) -> list[str]:
        env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), **extra}
        out = subprocess.run([sys.executable, "-c", _DP_RUN], capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1:]

    one = run({})
    two = run({"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "CXR_DATA_PARALLEL": "cpu"})
    assert one[:2] == ["1", "8"] and two[:2] == ["2", "8"]
    np.testing.assert_allclose(np.array(two[2:], float), np.array(one[2:], float), rtol=1e-3, atol=1e-4)
