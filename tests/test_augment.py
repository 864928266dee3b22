"""XRayAugment: geometry of the affine rows, identity at inference, randomness, compilation, serialisation."""
from __future__ import annotations

import math

import numpy as np
import pytest

import keras
from keras import ops

from cxr.augment import XRayAugment, affine_matrices, affine_sample

pytestmark = pytest.mark.backend

OFF = dict(rotation=0, scale=0, shift=0, shear=0, brightness=0, contrast=0, gamma=0, noise=0)


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def _rows(rotation_deg, scale, shift_xy, shear_deg, height, width) -> np.ndarray:
    return _np(affine_matrices(np.array([math.radians(rotation_deg)]), np.array([scale]), np.array([shift_xy]),
                               np.array([math.radians(shear_deg)]), height, width))


def _centroid(image: np.ndarray) -> np.ndarray:
    """Intensity centroid (x, y) of a (H, W) or (H, W, 1) image."""
    image = np.asarray(image, np.float64).reshape(image.shape[0], image.shape[1])
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
    return np.array([(xs * image).sum(), (ys * image).sum()]) / image.sum()


def _forward(row: np.ndarray, point) -> np.ndarray:
    """Where the input point goes: invert the output->input row as a 3x3 matrix."""
    m = np.array([row[:3], row[3:6], [0.0, 0.0, 1.0]])
    return (np.linalg.inv(m) @ np.array([point[0], point[1], 1.0]))[:2]


def _warp_both(image: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """The image warped by Keras' own affine_transform and by the layer's sampler."""
    x = image[None].astype("float32")
    t = rows.astype("float32")
    ref = ops.image.affine_transform(x, t.copy(), interpolation="bilinear", fill_mode="constant", fill_value=0,
                                     data_format="channels_last")
    return [_np(ref)[0], _np(affine_sample(x, t.copy()))[0]]


def test_zero_parameters_give_the_identity_row():
    np.testing.assert_allclose(_rows(0, 1, (0, 0), 0, 20, 30)[0], [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6)


def test_a_bright_pixel_moves_where_the_matrix_says():
    """90 degrees counter-clockwise about the centre (16, 16), then 10% of the width to the right."""
    image = np.zeros((33, 33, 1))
    image[16, 24] = 255.0  # 8 px right of the centre
    row = _rows(90, 1.0, (0.1, 0.0), 0, 33, 33)[0]
    expected = np.array([16 + 3.3, 16 - 8])  # rotated to 8 px above the centre (y points down), shifted 3.3 px
    np.testing.assert_allclose(_forward(row, (24, 16)), expected, atol=1e-4)
    for out in _warp_both(image, row[None]):
        assert np.linalg.norm(_centroid(out) - expected) < 1.0
        assert np.unravel_index(out[..., 0].argmax(), out.shape[:2]) in {(8, 19), (8, 20)}


def test_a_blob_follows_a_composed_transform():
    """Rotation, scale, shift and shear together: the blob's centroid lands where the forward map puts it."""
    height, width = 48, 40
    ys, xs = np.mgrid[:height, :width]
    point = (26.0, 17.0)
    image = (255 * np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 1.5 ** 2)))[..., None]
    row = _rows(-25, 1.15, (-0.05, 0.08), 6, height, width)[0]
    expected = _forward(row, point)
    assert np.linalg.norm(expected - np.array(point)) > 5  # the test moves the point a real distance
    for out in _warp_both(image, row[None]):
        assert np.linalg.norm(_centroid(out) - expected) < 1.0


def test_sampler_matches_keras_affine_transform():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (3, 24, 28, 1)).astype("float32")
    rows = _np(affine_matrices(rng.uniform(-0.6, 0.6, 3), rng.uniform(0.8, 1.25, 3), rng.uniform(-0.2, 0.2, (3, 2)),
                               rng.uniform(-0.1, 0.1, 3), 24, 28)).astype("float32")
    ref = _np(ops.image.affine_transform(x, rows.copy(), fill_mode="constant", data_format="channels_last"))
    np.testing.assert_allclose(_np(affine_sample(x, rows.copy())), ref, atol=0.02)


def test_identity_at_inference():
    x = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    layer = XRayAugment(seed=0)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)
    np.testing.assert_array_equal(_np(layer(x)), x)


def test_training_output_is_finite_in_range_and_differs_per_image():
    x = np.repeat(np.random.default_rng(2).uniform(0, 255, (1, 24, 24, 1)).astype("float32"), 3, axis=0)
    y = XRayAugment(seed=0)(x, training=True)
    assert tuple(y.shape) == x.shape and keras.backend.standardize_dtype(y.dtype) == "float32"
    y = _np(y)
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 255
    assert np.abs(y - x).mean() > 1.0  # it augments
    assert np.abs(y[0] - y[1]).mean() > 1.0  # one transform per image, not one per batch
    half = XRayAugment(seed=0, dtype="mixed_bfloat16")(ops.cast(x, "bfloat16"), training=True)
    assert keras.backend.standardize_dtype(half.dtype) == "bfloat16"  # float32 inside, the compute dtype out


def test_every_change_can_be_switched_off():
    x = np.random.default_rng(3).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(_np(XRayAugment(**OFF, seed=0)(x, training=True)), x)
    x = np.full((2, 32, 32, 1), 100.0, "float32")
    noisy = _np(XRayAugment(**{**OFF, "noise": 5.0}, seed=0)(x, training=True)) - 100
    assert abs(noisy.mean()) < 0.5 and 4.5 < noisy.std() < 5.5
    bright = _np(XRayAugment(**{**OFF, "brightness": 0.1}, seed=0)(x, training=True)) - 100
    assert np.ptp(bright[0]) < 1e-3 and 0 < np.abs(bright).max() <= 25.5 + 1e-3  # one offset per image


def test_seeded_reproducibility():
    x = np.random.default_rng(4).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    a, b = XRayAugment(seed=7), XRayAugment(seed=7)
    first = _np(a(x, training=True))
    np.testing.assert_array_equal(first, _np(b(x, training=True)))
    assert np.abs(_np(a(x, training=True)) - first).mean() > 1.0  # the seed generator advances


def test_compiles_on_this_backend():
    """Traced and compiled: jax.jit (stateless_call), tf.function(jit_compile=True), torch eager."""
    x = np.random.default_rng(5).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    layer = XRayAugment(seed=0)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def step(state, images):
            return layer.stateless_call([], state, images, training=True)

        state = [v.value for v in layer.non_trainable_variables]
        y1, state = step(state, x)
        y2, state = step(state, x)
    elif backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda images: layer(images, training=True), jit_compile=True,
                           input_signature=[tf.TensorSpec((None, 16, 16, 1), tf.float32)])
        y1, y2 = step(x), step(x)
    else:
        y1, y2 = layer(x, training=True), layer(x, training=True)
    y1, y2 = _np(y1), _np(y2)
    assert y1.shape == x.shape and np.isfinite(y1).all()
    assert np.abs(y1 - y2).mean() > 1.0  # state carried between compiled calls


def _tiny_model(augment: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input((16, 16, 1))
    x = augment(inputs)
    x = keras.layers.Conv2D(2, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(x))


def test_model_is_jit_compiled_under_jax():
    if keras.backend.backend() != "jax":
        pytest.skip("jit_compile='auto' resolves to XLA only under JAX here (TF: off on CPU; torch: eager)")
    model = _tiny_model(XRayAugment(seed=0))
    model.compile("adam", "binary_crossentropy", jit_compile="auto")
    assert model.jit_compile is True
    x = np.random.default_rng(6).uniform(0, 255, (8, 16, 16, 1)).astype("float32")
    model.fit(x, np.arange(8) % 2, batch_size=4, epochs=1, verbose=0)
    old = _tiny_model(keras.layers.RandomRotation(0.03, seed=0))
    old.compile("adam", "binary_crossentropy", jit_compile="auto")
    assert old.jit_compile is False  # the layer this replaces forces eager execution


def test_model_fits_with_xla_on_tensorflow():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow-specific: jit_compile=True")
    model = _tiny_model(XRayAugment(seed=0))
    model.compile("adam", "binary_crossentropy", jit_compile=True)
    assert model.jit_compile is True
    x = np.random.default_rng(6).uniform(0, 255, (8, 16, 16, 1)).astype("float32")
    history = model.fit(x, np.arange(8) % 2, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_save_and_load_round_trip(tmp_path):
    layer = XRayAugment(rotation=7, scale=(0.95, 1.2), shift=0.02, shear=0, gamma=0.2, noise=3.0, seed=11,
                        name="augment")
    model = _tiny_model(layer)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    restored = loaded.get_layer("augment")
    assert type(restored) is XRayAugment
    assert restored.get_config() == layer.get_config()
    assert restored.scale == (0.95, 1.2) and restored.shear == 0.0
    x = np.random.default_rng(7).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(_np(loaded.predict(x, verbose=0)), _np(model.predict(x, verbose=0)), rtol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        XRayAugment(scale=(1.2, 0.8))
    with pytest.raises(ValueError):
        XRayAugment(rotation=-1)


def test_the_layer_takes_a_runs_augmentation_section_whole():
    """`XRayAugment.from_settings(config.augment)` is the layer built field by field from the flat Config."""
    from cxr.config import Config

    cfg = Config.preset("smoke", aug_border=0.1, aug_rotation=7.0, seed=5)
    layer = XRayAugment.from_settings(cfg.augment, name="augment")
    by_field = XRayAugment(rotation=cfg.aug_rotation, scale=cfg.aug_scale, shift=cfg.aug_shift, shear=cfg.aug_shear,
                           brightness=cfg.aug_brightness, contrast=cfg.aug_contrast, gamma=cfg.aug_gamma,
                           noise=cfg.aug_noise, border=cfg.aug_border, seed=cfg.seed, name="augment")
    assert layer.get_config() == by_field.get_config()
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(_np(layer(x, training=True)), _np(by_field(x, training=True)))
