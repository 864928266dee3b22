"""The pneumonia classifier: a linear chain image -> to_float -> to_backbone -> backbone -> pool -> dropout -> logit -> prob.

The model takes one grayscale uint8 channel and converts it itself to what the backbone expects; it holds NO
augmentation, so the saved model is exactly what evaluation and prediction run. `training_model` wraps it for
fine-tuning with one `cxr.augment.XRayAugment` layer after `to_float`, sharing every other layer object. Backbones
(`cxr.backbones`, one registry entry per family): "efficientnet_lite0" (ImageNet weights converted offline from the
pip package, see `cxr.lite`; also lite1, lite2), any keras.applications class, or "tiny_cnn".
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
    from keras import layers

from cxr import backbones
from cxr.augment import XRayAugment
from cxr.config import PRIMARY_TASK, AugmentSettings
from cxr.io import atomic_folder

LAYER_ORDER = ("image", "to_float", "to_backbone", "backbone", "pool", "dropout", "logit", "prob")
BACKBONE, LOGIT = "backbone", "logit"  # where the explanation code cuts the chain (members of LAYER_ORDER)


# ---------------------------------------------------------------------------------------------------------------
# Backbones and their input conversion


def backbone_names() -> list[str]:
    """Every backbone name `build_model` accepts (`cxr.backbones.names`)."""
    return backbones.names()


def input_transform(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each of shape (3,), such that the backbone input channel c is `gray * scale[c] + offset[c]`.

    From the backbone's family in `cxr.backbones`: efficientnet_lite0/1/2: (x - 127) / 128. tiny_cnn: x / 255.
    keras.applications: read off the application's own `preprocess_input` (modes "torch", "caffe" (BGR means),
    "tf", or none for models with built-in rescaling such as EfficientNet/EfficientNetV2/ConvNeXt) by probing it
    with gray values, and checked to be affine.
    """
    return backbones.input_transform(backbone)


def build_backbone(name: str, input_shape: tuple, weights: str | None = "imagenet",
                   drop_connect_rate: float = 0.0) -> keras.Model:
    """The feature extractor named "backbone": (B, H, W, 3) in the backbone's own input scale -> (B, h, w, C), built
    by its family in `cxr.backbones`.

    drop_connect_rate: stochastic depth of efficientnet_lite0/1/2 in training (0: off); other backbones keep their own.

    weights: "imagenet", a local weights file, or None (random, explicit). If ImageNet weights cannot be had,
    raises RuntimeError naming the options; never falls back to random weights.
    """
    return backbones.build(name, input_shape, weights, drop_connect_rate)


def _to_backbone_layer(backbone: str) -> layers.Conv2D:
    """Frozen 1x1 conv turning 1 channel (0..255) into the 3 channels the backbone expects."""
    scale, offset = input_transform(backbone)
    return layers.Conv2D(3, 1, use_bias=True, trainable=False, name="to_backbone",
                         kernel_initializer=keras.initializers.Constant(scale.reshape(1, 1, 1, 3).tolist()),
                         bias_initializer=keras.initializers.Constant(offset.tolist()))


def augmentation(settings: AugmentSettings) -> keras.layers.Layer:
    """The training augmentation of a run's augmentation section (`Config.augment`) on float 0..255 grayscale: one
    `XRayAugment` layer named "augment" (one affine warp per image + intensity changes; identity at inference),
    followed by a horizontal flip only if `settings.horizontal_flip` (off by default: chest anatomy is not
    left-right symmetric)."""
    aug = XRayAugment.from_settings(settings, name="augment")
    if not settings.horizontal_flip:
        return aug
    return keras.Sequential([aug, layers.RandomFlip("horizontal", seed=settings.seed + 5)], name="augment")


@keras.saving.register_keras_serializable(package="cxr")
class MaskedFloat(keras.layers.Layer):
    """uint8 image (B, H, W, 1) -> float with the given zones (top, bottom, left, right fractions of the image) set
    to 0: the model's "to_float" layer when `config.marker_zones` is on, so the masking is part of the saved model
    and every caller (training, scoring, Grad-CAM, predict) gets the same. The zones' pixels follow
    `cxr.data.markers.mask_zones` exactly."""

    def __init__(self, zones: Sequence[Sequence[float]] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.zones = tuple(tuple(float(v) for v in zone) for zone in zones)

    def build(self, input_shape):
        from cxr.data.markers import mask_zones

        h, w = int(input_shape[1]), int(input_shape[2])
        self._mask = mask_zones(np.ones((h, w), np.float32), self.zones)[None, :, :, None]

    def call(self, x):
        return keras.ops.cast(x, self.compute_dtype) * keras.ops.cast(self._mask, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "zones": [list(z) for z in self.zones]}


def _to_float(config) -> keras.layers.Layer:
    """The model's first layer: uint8 -> float, with the marker zones masked when `config.marker_zones`."""
    if getattr(config, "marker_zones", False):
        from cxr.data.markers import ZONES

        return MaskedFloat(ZONES, name="to_float")
    return layers.Rescaling(1.0, name="to_float")


def build_model(config, name: str = PRIMARY_TASK) -> keras.Model:
    """Image (S, S, 1) uint8 -> probability of the positive class (PNEUMONIA, or virus for the subtype task).

    A linear chain of named layers (`LAYER_ORDER`): image, to_float, to_backbone, backbone, pool, dropout, logit
    (pre-sigmoid), prob (sigmoid, float32). No augmentation: see `training_model`.
    """
    size = config.image_size
    inputs = keras.Input((size, size, 1), dtype="uint8", name="image")
    x = _to_float(config)(inputs)  # uint8 -> float (compute dtype), marker zones masked if asked
    x = _to_backbone_layer(config.backbone)(x)
    x = build_backbone(config.backbone, (size, size, 3), config.weights, config.stochastic_depth)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    x = layers.Dense(1, name="logit")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="prob")(x)
    return keras.Model(inputs, outputs, name=name)


def training_model(model: keras.Model, settings: AugmentSettings) -> keras.Model:
    """image -> to_float -> augment (`augmentation(settings)`, a run's `Config.augment`) -> to_backbone -> ... ->
    prob: the model trained in fine-tuning. Every layer but "augment" is the SAME object as in `model`, so training
    it trains `model`."""
    inputs = keras.Input(model.input.shape[1:], dtype="uint8", name="image")
    x = model.get_layer("to_float")(inputs)
    x = augmentation(settings)(x)
    for name in LAYER_ORDER[2:]:
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"{model.name}_train")


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning


_BLOCK = re.compile(r"^((?:[a-z]+\d+_)?block_?\d+[a-z]?)(?:_|$)")


def backbone_blocks(backbone: keras.Model) -> list[list[layers.Layer]]:
    """The backbone's layers grouped into blocks, TOP block first.

    Blocks are recognised by the Keras naming (block6a_..., conv5_block16_..., block_16_...). Layers after the last
    block (head conv, final BN) belong to the top block; layers before the first block form the stem (last group).
    Models without such names give one group per layer that has weights.
    """
    groups: list[tuple[str, list]] = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        m = _BLOCK.match(layer.name)
        if m and (not groups or groups[-1][0] != m.group(1)):
            groups.append((m.group(1), [layer]))
        elif groups:
            groups[-1][1].append(layer)
        else:
            groups.append(("stem", [layer]))
    if len(groups) <= 1:  # no block naming: one group per weighted layer
        groups = [(l.name, [l]) for l in backbone.layers if l.weights]
    return [g for _, g in reversed(groups)]


def set_trainable(model: keras.Model, n_top_blocks: int) -> None:
    """Unfreeze the top `n_top_blocks` backbone blocks (0: whole backbone frozen; negative: every block, the stem
    included); BatchNorm stays frozen.

    Frozen BatchNormalization layers run in inference mode in Keras 3. The head stays trainable and
    `to_backbone` stays frozen.
    """
    backbone = model.get_layer("backbone")
    backbone.trainable = True  # sets all sublayers; then freeze selectively
    for layer in backbone.layers:
        layer.trainable = False
    groups = backbone_blocks(backbone)
    for group in groups if n_top_blocks < 0 else groups[:n_top_blocks]:
        for layer in group:
            layer.trainable = not isinstance(layer, layers.BatchNormalization)
    if n_top_blocks == 0:
        backbone.trainable = False
    model.get_layer("to_backbone").trainable = False
    for name in ("dropout", "logit", "prob"):
        model.get_layer(name).trainable = True


def feature_model(model: keras.Model) -> keras.Model:
    """image -> pooled backbone features (no augmentation), sharing the model's layers."""
    x = model.get_layer("to_float")(model.input)
    for name in ("to_backbone", "backbone", "pool"):
        x = model.get_layer(name)(x)
    return keras.Model(model.input, x, name=f"{model.name}_features")


def head_model(model: keras.Model) -> keras.Model:
    """pooled features -> probability, with the SAME dropout/logit/prob layer objects as `model`."""
    inputs = keras.Input((model.get_layer("pool").output.shape[-1],), name="features")
    x = inputs
    for name in ("dropout", "logit", "prob"):
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


ENSEMBLE = "average"  # the layer that averages the members' probabilities in `ensemble_model`


def ensemble_model(members: list[keras.Model], name: str = PRIMARY_TASK) -> keras.Model:
    """image -> [each member's probability] -> their mean: the fold ensemble as ONE model (saved, loaded,
    predicted and explained as such). The members are the chains of `build_model`, nested whole; one member gives
    a model whose output is that member's."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    inputs = keras.Input(members[0].input.shape[1:], dtype="uint8", name="image")
    probs = [m(inputs) for m in members]
    out = layers.Average(name=ENSEMBLE, dtype="float32")(probs) if len(probs) > 1 else probs[0]
    return keras.Model(inputs, out, name=name)


def members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble (`ensemble_model`), or [model] for a single chain."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if nested and all(BACKBONE in [l.name for l in m.layers] for m in nested) and BACKBONE not in \
            [l.name for l in model.layers]:
        return nested
    return [model]


def count_params(model: keras.Model) -> dict[str, int]:
    """Parameter counts of one member (the chain): total, backbone, head; and `members`, how many the model holds
    (an ensemble holds `members` x total)."""
    parts = members(model)
    one = parts[0]
    total = int(one.count_params())
    backbone = int(one.get_layer(BACKBONE).count_params())
    return {"total": total, "backbone": backbone, "head": int(one.get_layer(LOGIT).count_params()),
            "members": len(parts), "ensemble_total": total * len(parts)}


# ---------------------------------------------------------------------------------------------------------------
# Saving


def save_model(model: keras.Model, directory: str | Path, config, threshold: float, class_names,
               extra: dict[str, Any] | None = None) -> Path:
    """Save `model.keras` + `model.json` (config, threshold, class names, versions) into `directory`, atomically.

    Both files are written to a temporary folder beside `directory`, which then replaces it.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    meta = {"config": config_dict, "threshold": float(threshold), "class_names": list(class_names),
            "keras_version": keras.__version__, "backend": keras.backend.backend(), "model_name": model.name,
            **(extra or {})}
    with atomic_folder(directory) as tmp:
        model.save(tmp / "model.keras")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2))
    return directory


MAX_IMAGE_SIZE = 2048  # a model.json asking for larger inputs is damaged or foreign (a 23 GiB batch, not a model)


def check_model_meta(meta: Any, where: Path) -> dict[str, Any]:
    """`meta` (a parsed model.json) checked field by field: a dict with config.image_size (int, 32..MAX_IMAGE_SIZE),
    config.resize_policy (one of RESIZE_POLICIES), config.batch_size (None or int >= 1), config.reencode_quality
    (None or absent, or int 1..95), threshold (a number in [0, 1]), class_names (two strings) and calibration (None
    or a dict). Returns it; raises `ValueError` with one line naming the file and the field otherwise."""
    import math

    from cxr.config import RESIZE_POLICIES

    def bad(field: str, what: str, value: Any) -> ValueError:
        shown = repr(value)
        return ValueError(f"{where}: {field} {what}, not {shown[:60] + ('...' if len(shown) > 60 else '')}")

    if not isinstance(meta, dict):
        raise bad("the document", "must be a JSON object", meta)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise bad("config", "must be an object (the training Config)", config)
    size = config.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= MAX_IMAGE_SIZE:
        raise bad("config.image_size", f"must be an integer from 32 to {MAX_IMAGE_SIZE}", size)
    if config.get("resize_policy") not in RESIZE_POLICIES:
        raise bad("config.resize_policy", f"must be one of {RESIZE_POLICIES}", config.get("resize_policy"))
    batch = config.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096):
        raise bad("config.batch_size", "must be null or an integer from 1 to 4096", batch)
    quality = config.get("reencode_quality")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95):
        raise bad("config.reencode_quality", "must be null or an integer from 1 to 95", quality)
    threshold = meta.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0.0 <= threshold <= 1.0:
        raise bad("threshold", "must be a number from 0 to 1", threshold)
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) and n for n in names)):
        raise bad("class_names", "must be a list of two names", names)
    if meta.get("calibration") is not None and not isinstance(meta["calibration"], dict):
        raise bad("calibration", "must be null or an object", meta["calibration"])
    return meta


def load_model(directory: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """Load a model saved by `save_model` (Keras safe mode) and its metadata. `directory`: the model folder
    (holding model.keras and model.json) or its model.keras file. A wrong path, a model.json that is not valid
    (`check_model_meta`) or that does not fit the model (its input size), or a file Keras cannot read raises
    `cxr.UserError` with one line saying what to pass; the full cause is chained (`--debug` shows it).

    Models saved before the augmentation moved out of the model (an "augment" Sequential of Keras Random* layers
    after "to_float") load as they are: those layers are identities at inference, so they predict the same.
    """
    import zipfile

    from cxr import UserError

    path = Path(directory)
    directory = path.parent if path.suffix == ".keras" else path
    hint = "pass a model folder written by training (runs/<run>/pneumonia) or its model.keras file"
    if not path.exists():
        raise UserError(f"no saved model at {path}: {hint}.")
    for f in ("model.keras", "model.json"):
        if not (directory / f).is_file():
            raise UserError(f"{directory} is not a saved model folder ({f} missing): {hint}.")
    try:
        meta = check_model_meta(json.loads((directory / "model.json").read_text()), directory / "model.json")
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        what = str(error) if str(error).startswith(str(directory)) else \
            f"{directory / 'model.json'} is not valid JSON ({' '.join(str(error).split())[:120]})"
        raise UserError(f"{what}: the model's record is damaged or foreign; {hint}.") from error
    keras_file = directory / "model.keras"
    if not zipfile.is_zipfile(keras_file):
        raise UserError(f"{keras_file} is damaged or incomplete ({keras_file.stat().st_size} bytes, not a Keras "
                        f"archive; an interrupted copy?): copy it again or retrain; {hint}.")
    try:
        model = keras.saving.load_model(keras_file, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001  (a damaged or foreign file: one clear line, the cause chained)
        message = " ".join(str(error).split())
        short = message if len(message) <= 300 else message[:300] + " ... (--debug shows the whole message)"
        saved = f"; saved with Keras {meta.get('keras_version', '?')}, backend {meta.get('backend', '?')}"
        raise UserError(f"cannot load the model in {directory} with Keras {keras.__version__} "
                        f"({type(error).__name__}: {short}{saved}): {hint}, or retrain it with this version "
                        "of cxr.") from error
    size = meta["config"]["image_size"]
    shape = tuple(model.input_shape[1:3]) if model.input_shape and len(model.input_shape) == 4 else None
    if shape is not None and None not in shape and shape != (size, size):
        raise UserError(f"{directory / 'model.json'}: config.image_size {size} does not fit the model, whose input "
                        f"is {shape[0]}x{shape[1]}: the record belongs to another model; {hint}.")
    return model, meta
