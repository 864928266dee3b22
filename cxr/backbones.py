"""The backbone registry: every family of feature extractors `cxr.model` can put in its chain is ONE `Family` entry
in `FAMILIES` (its names, its builder, its input transform, whether it has ImageNet weights).

Families: EfficientNet-Lite0/1/2 (`cxr.lite`: ImageNet weights converted offline from the pip packages), the
"tiny_cnn" of the tests and smoke runs (random), and every `keras.applications` class (ImageNet weights from the
Keras cache or a download). `doc/add_a_backbone.md` adds a family step by step.

Block naming (fine-tuning `cxr.model.set_trainable` and layer-wise decay `cxr.optim`): `cxr.model.backbone_blocks`
groups a backbone's layers by the Keras names `block6a_...`, `conv5_block16_...`, `block_16_...`; a family whose layers
are named otherwise gets one group per layer that has weights. Nothing else in the registry is about blocks.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
    from keras import layers

from cxr import lite

Transform = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Family:
    """One family of backbones.

    names: the backbone names it answers to (`Config.backbone`), a tuple or a function returning them, in the order
        `names()` lists them.
    build: (name, input_shape (H, W, 3), weights, drop_connect_rate) -> a functional `keras.Model` named "backbone"
        taking (B, H, W, 3) in the backbone's own input scale to a feature map (B, h, w, C). `weights` is None
        (random), "imagenet" (only if `imagenet`) or an existing local file; if ImageNet weights cannot be had it
        raises RuntimeError naming the options (never falls back to random weights). drop_connect_rate: stochastic
        depth in training, for families that have it (others ignore it).
    transform: name -> (scale, offset), each of shape (3,): the backbone's input channel c is
        `gray * scale[c] + offset[c]` for gray in 0..255 (the frozen 1x1 conv "to_backbone" in `cxr.model`).
    imagenet: whether the family has ImageNet weights; if not, weights="imagenet" (the Config default) warns and
        builds random weights.
    """

    label: str
    names: Sequence[str] | Callable[[], Sequence[str]]
    build: Callable[[str, tuple, str | None, float], keras.Model]
    transform: Callable[[str], Transform]
    imagenet: bool = True

    def all_names(self) -> tuple[str, ...]:
        """Every name of the family."""
        return tuple(self.names() if callable(self.names) else self.names)


# ---------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 (cxr.lite)


def _lite_build(name: str, input_shape: tuple, weights: str | None, drop_connect_rate: float) -> keras.Model:
    variant = lite.get_variant(name)
    try:
        return lite.efficientnet_lite(variant, input_shape, weights=weights, name="backbone",
                                      drop_connect_rate=drop_connect_rate)
    except (FileNotFoundError, ValueError) as err:
        raise RuntimeError(f"{variant.title} weights {weights!r} unavailable: {err}. Options: install "
                           f"{variant.package}, pass a local weights file, or weights=None "
                           "(random).") from err


def _lite_transform(name: str) -> Transform:
    """(x - 127) / 128 (`cxr.lite.MEAN`, `cxr.lite.STD`)."""
    return 1.0 / np.array(lite.STD), -np.array(lite.MEAN) / np.array(lite.STD)


# ---------------------------------------------------------------------------------------------------------------
# tiny_cnn (tests and smoke runs)


def tiny_cnn(input_shape: tuple) -> keras.Model:
    """A small random CNN (three conv blocks) for tests and smoke runs."""
    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((8, 16, 32), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name="backbone")


def _tiny_build(name: str, input_shape: tuple, weights: str | None, drop_connect_rate: float) -> keras.Model:
    model = tiny_cnn(input_shape)
    if weights is not None:
        model.load_weights(weights)
    return model


def _tiny_transform(name: str) -> Transform:
    """x / 255."""
    return np.full(3, 1 / 255.0), np.zeros(3)


# ---------------------------------------------------------------------------------------------------------------
# keras.applications


def _application(name: str):
    """The `keras.applications` constructor called `name`, or None."""
    fn = getattr(keras.applications, name, None)
    return fn if callable(fn) and name[:1].isupper() else None


def _application_names() -> list[str]:
    return sorted(n for n in dir(keras.applications) if _application(n) is not None)


def _application_build(name: str, input_shape: tuple, weights: str | None,
                       drop_connect_rate: float) -> keras.Model:
    try:
        app = _application(name)(include_top=False, weights=weights, input_shape=input_shape)
    except Exception as err:  # download failure, bad file, unsupported shape
        if weights != "imagenet":
            raise
        raise RuntimeError(
            f"ImageNet weights for {name} could not be loaded ({type(err).__name__}: {err}). Options: make them "
            f"available in the Keras cache (~/.keras/models, or $KERAS_HOME/models) with network access once, pass "
            f"a local weights file (weights=PATH), use backbone='efficientnet_lite0' (offline ImageNet weights), "
            f"or weights=None for random initialisation.") from err
    return keras.Model(app.inputs, app.output, name="backbone")  # one tensor: `outputs` (a list) fed the pool a list


def _application_transform(name: str) -> Transform:
    """Read off the application's own `preprocess_input` (modes "torch", "caffe" (BGR means), "tf", or none for
    models with built-in rescaling such as EfficientNet/EfficientNetV2/ConvNeXt) by probing it with gray values, and
    checked to be affine."""
    preprocess = sys.modules[_application(name).__module__].preprocess_input
    probe = np.array([0.0, 255.0, 100.0], dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 1, 3), np.float32)
    out = np.asarray(keras.ops.convert_to_numpy(preprocess(probe.copy())), dtype=np.float64).reshape(3, 3)
    offset, scale = out[0], (out[1] - out[0]) / 255.0
    if not np.allclose(out[2], offset + 100.0 * scale, rtol=1e-5, atol=1e-5):
        raise ValueError(f"{name}: preprocess_input is not a per-channel affine map; cannot convert gray input")
    return scale, offset


# ---------------------------------------------------------------------------------------------------------------
# The registry


FAMILIES: list[Family] = [
    Family("EfficientNet-Lite (offline ImageNet weights, cxr.lite)", lambda: lite.BACKBONES, _lite_build,
           _lite_transform),
    Family("tiny CNN (random; tests and smoke runs)", ("tiny_cnn",), _tiny_build, _tiny_transform, imagenet=False),
    Family("keras.applications", _application_names, _application_build, _application_transform),
]


def names() -> list[str]:
    """Every backbone name the registry knows, family by family."""
    return [name for family in FAMILIES for name in family.all_names()]


def family(name: str) -> Family:
    """The family that builds backbone `name`; ValueError listing every name if none does."""
    for fam in FAMILIES:
        if name in fam.all_names():
            return fam
    raise ValueError(f"unknown backbone {name!r}; choose one of {names()}")


def register(fam: Family) -> Family:
    """Add a family at the end of `FAMILIES` (for a family defined outside this module); a name that another family
    already has is refused (ValueError)."""
    taken = sorted(set(fam.all_names()) & set(names()))
    if taken:
        raise ValueError(f"backbone names {taken} are already registered; choose other names")
    FAMILIES.append(fam)
    return fam


def input_transform(name: str) -> Transform:
    """(scale, offset) of backbone `name` (see `Family.transform`)."""
    return family(name).transform(name)


def build(name: str, input_shape: tuple, weights: str | None = "imagenet",
          drop_connect_rate: float = 0.0) -> keras.Model:
    """Backbone `name` built by its family (see `Family.build`), with the checks every family shares: a weights file
    that does not exist (FileNotFoundError), "imagenet" for a family without (warns, random), and the model's
    name ("backbone", where `cxr.model` and the explanation code find it)."""
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights!r} not found; use 'imagenet', a local file or None")
    fam = family(name)
    if weights == "imagenet" and not fam.imagenet:  # random by definition; say so rather than fail the default config
        warnings.warn(f"{name} has no ImageNet weights: random initialisation (weights='imagenet' ignored)")
        weights = None
    model = fam.build(name, input_shape, weights, drop_connect_rate)
    if model.name != "backbone":
        raise ValueError(f"the {fam.label} builder returned a model named {model.name!r}; it must be 'backbone'")
    return model
