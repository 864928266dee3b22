"""Grad-CAM as ONE compiled function of (weights, images): same numbers as before, no recompilation.

The reference maps in fixtures/cam_reference.npz were computed with the previous (eager, clone-per-step)
implementation on `_tiny_model`, whose weights are drawn by numpy so they are identical on every backend (the three
backends agreed to 6e-7 on those maps). Runs under every Keras backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import keras
from keras import layers

from cxr import explain

pytestmark = pytest.mark.backend
SIZE = 16
REFERENCE = Path(__file__).parent / "fixtures" / "cam_reference.npz"


def _tiny_model(augment: bool = True) -> keras.Model:
    """The cxr chain with a 3-conv backbone (one BatchNorm), weights drawn by numpy: identical on every backend."""
    inputs = keras.Input((SIZE, SIZE, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    if augment:  # models saved before issue 12 still carry it
        x = keras.Sequential([layers.RandomFlip("horizontal", seed=1)], name="augment")(x)
    x = layers.Rescaling(1 / 255.0, name="to_backbone")(x)
    b_in = keras.Input((SIZE, SIZE, 1))
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(b_in)
    h = layers.Conv2D(8, 3, strides=2, padding="same", name="conv2")(h)
    h = layers.BatchNormalization(name="bn2")(h)
    h = layers.ReLU(name="relu2")(h)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3")(h)
    x = keras.Model(b_in, h, name="backbone")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    x = layers.Dense(1, name="logit")(x)
    model = keras.Model(inputs, layers.Activation("sigmoid", dtype="float32", name="prob")(x), name="tiny")
    rng = np.random.default_rng(0)
    values = [rng.uniform(0.5, 1.5, w.shape) if w.name in ("gamma", "moving_variance") else
              rng.normal(0, 0.3, w.shape) for w in model.weights]
    model.set_weights([v.astype("float32") for v in values])
    return model


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (n, SIZE, SIZE, 1)).astype(np.uint8)


def _outputs(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for m in ("gradcam", "gradcam++"):
        for c in (0, 1):
            out[f"{m}_{c}"] = explain.METHODS[m](model, x, target_class=c, batch_size=4)  # 6 images: one padded batch
    out["gradcam_conv2"] = explain.grad_cam(model, x, layer="conv2", batch_size=4)
    table = explain.randomization_test(model, x, seed=0, batch_size=4)
    out["rand_spearman"] = table["spearman_mean"].to_numpy()
    out["rand_cams"] = np.stack(table.attrs["cams"])
    return out


@pytest.mark.parametrize("augment", [True, False], ids=["old chain with augment", "new chain"])
def test_equals_the_previous_implementation(augment):
    ref = np.load(REFERENCE)
    model = _tiny_model(augment)
    before = [w.copy() for w in model.get_weights()]
    new = _outputs(model, _images())
    for key in ref.files:
        tol = 1e-3 if key == "rand_spearman" else 1e-5  # Spearman: near-ties in ranks move with float round-off
        np.testing.assert_allclose(new[key], ref[key], atol=tol, err_msg=key)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the model is untouched


def test_weights_are_arguments_not_captured():
    model, x = _tiny_model(), _images(5)
    fn = explain.cam_function(model, batch_size=4)
    assert explain.cam_function(model, batch_size=4) is fn  # cached per (model, layer, batch size)
    assert explain.cam_function(model, batch_size=8) is not fn
    zeros = [np.zeros(v.shape, v.dtype) for v in model.variables]
    logit_kernel = next(i for i, v in enumerate(model.variables) if v.path.endswith("logit/kernel"))
    zeros[logit_kernel][:] = 1.0  # logit = sum of pooled features of an all-zero backbone = 0
    _, g, z = fn(fn.weights(zeros), next(fn.batches(x))[1])
    assert np.all(z == 0) and np.allclose(g, 1.0 / g[0, ..., 0].size)  # d(mean pool)/dA
    _, _, z_own = fn(fn.weights(), next(fn.batches(x))[1])
    assert np.any(z_own != 0)  # the same function, the model's own weights
    # a map from given values equals the map of a model that holds them
    other = _tiny_model()
    other.set_weights([w * 0.5 for w in other.get_weights()])
    np.testing.assert_allclose(explain.grad_cam(model, x, weights=[keras.ops.convert_to_numpy(v)
                                                                   for v in other.variables], batch_size=4),
                               explain.grad_cam(other, x, batch_size=4), atol=1e-6)


def test_padding_drops_the_padded_outputs():
    model, x = _tiny_model(), _images(7)
    full = explain.grad_cam(model, x, batch_size=4)  # batches of 4 and 3 (+1 padded)
    assert full.shape == (7, SIZE, SIZE)
    np.testing.assert_allclose(full, explain.grad_cam(model, x, batch_size=7), atol=1e-6)
    assert explain.grad_cam(model, x[:0], batch_size=4).shape == (0, SIZE, SIZE)


def test_one_trace_for_batches_classes_methods_and_randomised_weights():
    model, x = _tiny_model(), _images(10)
    explain.grad_cam(model, x[:5], batch_size=4)
    explain.grad_cam(model, x, target_class=0, batch_size=4)
    explain.grad_cam_plus_plus(model, x[:3], batch_size=4)
    explain.randomization_test(model, x[:6], seed=0, batch_size=4)
    traces = explain.cam_function(model, batch_size=4).traces
    if keras.backend.backend() == "torch":  # eager: the body runs once per batch
        assert traces == 2 + 3 + 1 + 6 * 2
    else:  # jax.jit / tf.function: traced once, every later call reuses it
        assert traces == 1


# ---------------------------------------------------------------------------------------------------------------
# Compilation counts under JAX

_COMPILES = []


def _count_compiles():
    """Number of XLA backend compilations since the listener was registered (JAX only)."""
    import jax

    if not getattr(_count_compiles, "registered", False):
        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                _COMPILES.append(event)

        jax.monitoring.register_event_duration_secs_listener(listener)
        _count_compiles.registered = True
    return len(_COMPILES)


@pytest.fixture
def jax_only():
    if keras.backend.backend() != "jax":
        pytest.skip("XLA compilation counts are a JAX matter")


def test_jax_grad_cam_compiles_once_for_any_number_of_batches(jax_only):
    model = _tiny_model(augment=False)
    start = _count_compiles()
    explain.grad_cam(model, _images(5), batch_size=4)  # 2 batches, the second padded from 1 image
    first = _count_compiles() - start
    assert 1 <= first <= 12  # the CAM function, the model-output check, the resize
    start = _count_compiles()
    explain.grad_cam(model, _images(10), batch_size=4)  # 3 batches, the last padded from 2 images
    explain.grad_cam(model, _images(12), target_class=0, batch_size=4)  # the other class: same function
    explain.grad_cam_plus_plus(model, _images(3), batch_size=4)  # another weighting rule: same function
    assert _count_compiles() - start == 0


def test_jax_randomisation_test_does_not_recompile_per_layer(jax_only):
    x = _images(6)
    explain.grad_cam(_tiny_model(augment=False), x, batch_size=4)  # warm the eager helpers (resize)
    model = _tiny_model(augment=False)
    start = _count_compiles()
    explain.grad_cam(model, x, batch_size=4)
    one_map = _count_compiles() - start  # this model's CAM function and check, compiled once
    start = _count_compiles()
    table = explain.randomization_test(model, x, seed=0, batch_size=4)
    assert list(table["randomised_to"])[1:] == ["logit", "conv3", "bn2", "conv2", "conv1"]
    assert _count_compiles() - start == 0  # five randomised weight sets, not one compilation more
    fresh = _tiny_model(augment=False)
    start = _count_compiles()
    explain.randomization_test(fresh, x, seed=0, batch_size=4)
    assert _count_compiles() - start == one_map  # a cold cascade costs what one map costs
