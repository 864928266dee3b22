"""Warmup + cosine schedule, layer-wise AdamW and the multipliers down a backbone."""
from __future__ import annotations

import numpy as np
import pytest

import keras
from keras import ops

from cxr.optim import LayerwiseAdamW, layerwise_multipliers, warmup_cosine

pytestmark = pytest.mark.backend


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def _variables(names=("a", "b")) -> list[keras.Variable]:
    init = np.array([[0.5, -1.0], [2.0, 0.25]], dtype="float32")
    return [keras.Variable(init, name=n) for n in names]


def _step(optimizer, variables, steps: int = 1) -> list[np.ndarray]:
    grads = [ops.convert_to_tensor(np.array([[0.3, -0.2], [0.1, 0.4]], "float32") * (i + 1))
             for i in range(len(variables))]
    for _ in range(steps):
        optimizer.apply(grads, variables)
    return [_np(v) for v in variables]


def test_warmup_is_linear_then_cosine_decays_to_the_final_fraction():
    schedule = warmup_cosine(1e-3, total_steps=100, warmup_steps=10, final_fraction=0.01)
    lr = np.array([float(_np(schedule(step))) for step in range(0, 121)])
    np.testing.assert_allclose(lr[:11], np.linspace(0, 1e-3, 11), rtol=1e-5, atol=1e-12)
    assert np.all(np.diff(lr[10:101]) < 0)  # decays throughout
    np.testing.assert_allclose(lr[55], 1e-3 * (0.01 + 0.99 * 0.5), rtol=1e-5)  # half way: the cosine's midpoint
    np.testing.assert_allclose(lr[100:], 1e-5, rtol=1e-4)  # and stays at the floor
    no_warmup = warmup_cosine(1e-3, total_steps=100, warmup_steps=0)
    assert float(_np(no_warmup(0))) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        warmup_cosine(1e-3, total_steps=10, warmup_steps=10)


def test_multiplier_zero_freezes_a_variable_while_another_moves():
    a, b = _variables()
    start = [_np(a), _np(b)]
    optimizer = LayerwiseAdamW({a.path: 0.0}, learning_rate=0.01, weight_decay=0.1)
    after = _step(optimizer, [a, b], steps=2)
    np.testing.assert_array_equal(after[0], start[0])
    assert np.abs(after[1] - start[1]).min() > 1e-3


def test_multiplier_one_is_plain_adamw_and_a_half_is_adamw_at_half_the_rate():
    hyper = dict(weight_decay=0.1, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    plain = _step(keras.optimizers.AdamW(learning_rate=0.01, **hyper), _variables(), steps=3)
    ours = _step(LayerwiseAdamW({}, learning_rate=0.01, **hyper), _variables(), steps=3)
    # torch swaps the exact class keras.optimizers.AdamW for a fused version: equal up to float rounding
    np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-7)
    half = _step(keras.optimizers.AdamW(learning_rate=0.005, **hyper), _variables(), steps=3)
    a, b = _variables()
    mixed = _step(LayerwiseAdamW({a.path: 0.5}, learning_rate=0.01, **hyper), [a, b], steps=3)
    np.testing.assert_allclose(mixed[0], half[0], rtol=1e-6, atol=1e-7)  # step AND weight decay scaled
    np.testing.assert_allclose(mixed[1], plain[1], rtol=1e-6, atol=1e-7)
    assert np.abs(mixed[0] - plain[0]).max() > 1e-3


def _tiny_classifier() -> keras.Model:
    from cxr.model import build_backbone

    inputs = keras.Input((16, 16, 3))
    x = build_backbone("tiny_cnn", (16, 16, 3), weights=None)(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="logit")(x))


def test_multipliers_decrease_down_the_backbone():
    model = _tiny_classifier()
    multipliers = layerwise_multipliers(model, decay=0.5)
    assert set(multipliers) == {v.path for v in model.weights}
    assert multipliers[model.get_layer("logit").kernel.path] == 1.0
    backbone = model.get_layer("backbone")
    per_block = [multipliers[backbone.get_layer(f"block{i}_conv").kernel.path] for i in (3, 2, 1)]
    assert per_block == [1.0, 0.5, 0.25]
    in_order = [multipliers[v.path] for layer in backbone.layers for v in layer.weights]  # bottom to top
    assert np.all(np.diff(in_order) >= 0) and in_order[0] < in_order[-1]


def test_fit_applies_the_multipliers():
    """Through model.fit (compiled train step; JAX: stateless_apply): a zero-multiplier layer stays put."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="tanh", name="low")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="top")(hidden))
    low = model.get_layer("low").kernel
    optimizer = LayerwiseAdamW({low.path: 0.0}, learning_rate=warmup_cosine(1e-2, 8, 2), weight_decay=0.05)
    model.compile(optimizer, "mse")
    start_low, start_top = _np(low), _np(model.get_layer("top").kernel)
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, shuffle=False)
    np.testing.assert_array_equal(_np(low), start_low)
    assert np.abs(_np(model.get_layer("top").kernel) - start_top).max() > 1e-3
    assert int(_np(optimizer.iterations)) == 8


def test_config_round_trip():
    optimizer = LayerwiseAdamW({"x/kernel": 0.3}, learning_rate=warmup_cosine(1e-3, 50, 5), weight_decay=0.02)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, LayerwiseAdamW)
    assert restored.multipliers == {"x/kernel": 0.3} and restored.weight_decay == pytest.approx(0.02)
    assert restored.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]  # the schedule
