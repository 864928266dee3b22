"""Grad-CAM and Grad-CAM++ for the project's models, and the checks that the maps mean something.

The model (`cxr.model.build_model`) is a linear chain image -> to_float -> augment -> to_backbone -> backbone ->
pool -> dropout -> logit -> prob, with the backbone a NESTED functional model. In Keras 3 the usual recipe
`keras.Model(model.inputs, [model.get_layer(...).output, model.output])` fails for a layer inside a nested model
(its tensors belong to the backbone's own graph, not to the outer one). So the graph is rebuilt connected:

    x --(outer layers before "backbone", training=False)--> backbone input
      --keras.Model(backbone.inputs, target.output)--> A              (the target feature map)
      --keras.Model(target.output, backbone.outputs)--> backbone out  (absent when A is the backbone output)
      --pool, dropout (training=False), logit--> pre-sigmoid logit

`replay_check` verifies that sigmoid(replayed logit) equals the model's own output.

The score that is differentiated is the PRE-SIGMOID logit z of the single output unit: P(positive) = sigmoid(z),
and z > 0 means the model leans to the positive class (PNEUMONIA; virus for the subtype task). For the
positive class (target_class=1) the score is z, for the negative class (NORMAL, target_class=0) it is -z, because
log P(1)/P(0) = z: evidence for NORMAL is exactly evidence against PNEUMONIA. Using the logit rather than the
probability avoids the vanishing gradient of a saturated sigmoid (for Grad-CAM the probability would only rescale
all weights of one image by sigmoid'(z) > 0, which the per-image normalisation removes, but in float32 that factor
underflows for confident predictions).

One base mechanism (`_cams`): activations A (B, h, w, K) and gradients dS/dA from the backend's autodiff
(TensorFlow GradientTape, jax.grad, torch.autograd), then a weighting rule -- Grad-CAM: w_k = mean over space of
dS/dA_k; Grad-CAM++: the alpha weighting of Chattopadhay et al. (2018) in the closed form used by pytorch-grad-cam
-- then one shared path: cam = relu(sum_k w_k A_k), bilinear resize to the input image size, division by the
per-image maximum. A map with no positive value (all weighted activations negative or zero) is all zeros, never
NaN. Output: numpy float32 (B, H, W) in [0, 1], 0 = no evidence, 1 = the strongest evidence in that image.

Limits: the target layer must be a "cut point" of the backbone (every path from the input to the output passes
through it); a layer inside a residual block (bypassed by a skip connection) is refused with a clear error --
name the block output (e.g. `block6d_add`) instead. The default, the last 4-D layer of the backbone, is always a
cut point. The outer model must be the linear chain above.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras

EPS = 1e-7
CELLS = ("TP", "TN", "FP", "FN")
CELL_TITLES = {"TP": "true positives", "TN": "true negatives", "FP": "false positives", "FN": "false negatives"}

# ---------------------------------------------------------------------------------------------------------------
# The connected graph


def find_target_layer(model: keras.Model) -> str:
    """Name of the last layer inside the "backbone" whose output is a 4-D feature map (B, h, w, C)."""
    backbone = model.get_layer("backbone")
    for layer in reversed(backbone.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer without a single output tensor
            continue
        if len(shape) == 4:
            return layer.name
    raise ValueError(f"backbone {backbone.name!r} has no layer with a 4-D output")


@dataclass
class _Graph:
    """The model split into: outer layers before the backbone, backbone up to A, rest of backbone, head to the logit."""

    pre: list
    features: keras.Model
    tail: keras.Model | None
    head: list
    target: str
    input_dtype: str
    input_shape: tuple

    def activations(self, x):
        for layer in self.pre:
            x = layer(x, training=False)
        return self.features(x, training=False)

    def logit(self, a):
        h = a if self.tail is None else self.tail(a, training=False)
        for layer in self.head:
            h = layer(h, training=False)
        return keras.ops.reshape(keras.ops.cast(h, "float32"), (-1,))


def _graph(model: keras.Model, layer: str | None = None) -> _Graph:
    """Rebuild the model as a connected graph around the target layer (see the module docstring)."""
    names = [l.name for l in model.layers]
    for needed in ("backbone", "logit"):
        if needed not in names:
            raise ValueError(f"model {model.name!r} has no layer named {needed!r}; expected the cxr.model chain "
                             f"image -> ... -> backbone -> pool -> dropout -> logit -> prob, got {names}")
    i_bb, i_logit = names.index("backbone"), names.index("logit")
    if i_logit < i_bb:
        raise ValueError("layer 'logit' must come after 'backbone'")
    pre = [l for l in model.layers[:i_bb] if not isinstance(l, keras.layers.InputLayer)]
    head = list(model.layers[i_bb + 1:i_logit + 1])
    backbone = model.get_layer("backbone")
    if not isinstance(backbone, keras.Model):
        raise ValueError("layer 'backbone' must be a (functional) keras.Model")
    target = layer or find_target_layer(model)
    bb_out = backbone.outputs[0]
    if target == "backbone":
        a_tensor = bb_out
    else:
        try:
            a_tensor = backbone.get_layer(target).output
        except ValueError as err:
            raise ValueError(f"no layer {target!r} inside the backbone") from err
    if len(a_tensor.shape) != 4:
        raise ValueError(f"target layer {target!r} output has shape {a_tensor.shape}; need a 4-D feature map")
    features = keras.Model(backbone.inputs, a_tensor, name="gradcam_features")
    tail = None
    if a_tensor is not bb_out:
        try:
            tail = keras.Model(a_tensor, bb_out, name="gradcam_tail")
        except ValueError as err:
            raise ValueError(f"target layer {target!r} is bypassed by a skip connection (not a cut point of the "
                             f"backbone); choose a block output or the default {find_target_layer(model)!r}") from err
    inp = model.inputs[0]
    return _Graph(pre, features, tail, head, target, str(inp.dtype), tuple(inp.shape[1:]))


def _as_batch(images, graph: _Graph) -> np.ndarray:
    """(B, H, W), (B, H, W, 1) or one (H, W) image -> (B, H, W, C) in the model's input dtype."""
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3 and len(graph.input_shape) == 3:
        x = x[..., None]
    expected = tuple(graph.input_shape)
    if x.shape[1:] != tuple(d if d is not None else s for d, s in zip(expected, x.shape[1:])):
        raise ValueError(f"images of shape {x.shape[1:]} do not fit the model input {expected}")
    if np.issubdtype(np.dtype(graph.input_dtype), np.integer) and not np.issubdtype(x.dtype, np.integer):
        x = np.clip(np.rint(x), 0, 255)
    return x.astype(graph.input_dtype)


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):  # torch tensor that requires grad
        t = t.detach()
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float32)


def _activations_and_gradients(graph: _Graph, x: np.ndarray, sign: float):
    """A (B,h,w,K), dS/dA (B,h,w,K) and S (B,) for score S = sign * logit, by the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        with torch.no_grad():  # no autograd graph through the layers below A
            a = graph.activations(keras.ops.convert_to_tensor(x))
    else:
        a = graph.activations(keras.ops.convert_to_tensor(x))
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(a)
            score = sign * graph.logit(a)
        grads = tape.gradient(score, a)  # non-scalar target: gradient of the sum; images are independent
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(a_):
            s = sign * graph.logit(a_)
            return jnp.sum(s), s

        grads, score = jax.grad(total, has_aux=True)(a)
    elif backend == "torch":
        a = a.detach().requires_grad_(True)
        with torch.enable_grad():
            score = sign * graph.logit(a)
            (grads,) = torch.autograd.grad(score.sum(), a)
    else:
        raise NotImplementedError(f"Grad-CAM has no gradient code for the {backend!r} backend")
    return _to_numpy(a), _to_numpy(grads), _to_numpy(score)


def replay_check(model: keras.Model, images, layer: str | None = None, atol: float = 1e-4,
                 batch_size: int = 32) -> float:
    """Assert that sigmoid(replayed logit) equals `model.predict(images)`; return the largest absolute difference."""
    graph = _graph(model, layer)
    x = _as_batch(images, graph)
    replay = np.concatenate([_to_numpy(keras.ops.sigmoid(graph.logit(graph.activations(
        keras.ops.convert_to_tensor(x[i:i + batch_size]))))) for i in range(0, len(x), batch_size)])
    own = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32).reshape(-1)
    diff = float(np.max(np.abs(replay - own))) if len(x) else 0.0
    if not diff <= atol:
        raise AssertionError(f"replayed graph differs from the model output by {diff:.3g} (> {atol}); "
                             "the model is not the linear chain gradcam expects")
    return diff


# ---------------------------------------------------------------------------------------------------------------
# Weighting rules (the only difference between the methods) and the shared path


def _gradcam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean over space of dS/dA_k."""
    return g.mean(axis=(1, 2))


def _gradcam_pp_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form as in pytorch-grad-cam:
    alpha = g^2 / (2 g^2 + sum_ab(A) g^3), w_k = sum_ab alpha * relu(g).

    The derivation assumes A >= 0 (post-ReLU maps); where the denominator is not positive (possible only with
    negative activations) alpha is set to 0 instead of flipping the sign of the weight."""
    g = g.astype(np.float64)
    g2 = g ** 2
    g3 = g2 * g
    sum_a = a.astype(np.float64).sum(axis=(1, 2), keepdims=True)
    denom = 2 * g2 + sum_a * g3
    alpha = np.where((g != 0) & (denom > 0), g2 / np.where(denom > 0, denom + EPS, 1.0), 0.0)
    return (np.maximum(g, 0) * alpha).sum(axis=(1, 2)).astype(np.float32)


def finish_cams(cams, size: tuple[int, int]) -> np.ndarray:
    """The shared path: relu, bilinear resize to `size` (H, W), division by the per-image maximum.

    Non-finite values become 0; a map whose maximum is not positive becomes all zeros. Returns float32 (B, H, W)
    in [0, 1].
    """
    cams = np.maximum(np.nan_to_num(np.asarray(cams, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0), 0)
    if cams.shape[1:3] != tuple(size):
        cams = _to_numpy(keras.ops.image.resize(cams[..., None], tuple(size), interpolation="bilinear"))[..., 0]
    cams = np.maximum(cams, 0)
    peak = cams.reshape(len(cams), -1).max(axis=1) if cams.size else np.zeros(len(cams), np.float32)
    ok = np.isfinite(peak) & (peak > 1e-12)
    out = np.zeros_like(cams, dtype=np.float32)
    out[ok] = cams[ok] / peak[ok, None, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _cams(model: keras.Model, images, weighting: Callable, target_class: int = 1, layer: str | None = None,
          batch_size: int = 32, check: bool = True) -> np.ndarray:
    """The base mechanism shared by Grad-CAM and Grad-CAM++ (see the module docstring)."""
    if target_class not in (0, 1):
        raise ValueError(f"target_class must be 0 (negative, e.g. NORMAL) or 1 (positive, e.g. PNEUMONIA), "
                         f"got {target_class!r}")
    graph = _graph(model, layer)
    x = _as_batch(images, graph)
    sign = 1.0 if target_class == 1 else -1.0
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        a, g, score = _activations_and_gradients(graph, batch, sign)
        if check and start == 0:
            own = _to_numpy(model(keras.ops.convert_to_tensor(batch), training=False)).reshape(-1)
            replay = 1.0 / (1.0 + np.exp(-sign * score.astype(np.float64)))
            if not np.allclose(replay, own, atol=1e-3):
                raise AssertionError(f"replayed score differs from the model output by "
                                     f"{np.max(np.abs(replay - own)):.3g}; not the linear chain gradcam expects")
        w = weighting(a, g)  # (B, K)
        cam = np.einsum("bhwk,bk->bhw", a.astype(np.float32), w.astype(np.float32))
        out.append(finish_cams(cam, x.shape[1:3]))
    if not out:
        return np.zeros((0, *x.shape[1:3]), np.float32)
    return np.concatenate(out)


def grad_cam(model: keras.Model, images, target_class: int = 1, layer: str | None = None,
             batch_size: int = 32, check: bool = True) -> np.ndarray:
    """Grad-CAM maps (B, H, W) float32 in [0, 1] for `images` (B, H, W[, 1]) as the model sees them.

    target_class 1 explains the positive class (score = logit), 0 the negative class (score = -logit).
    `layer`: a backbone layer name (default: `find_target_layer`). `check`: on the first batch, verify that the
    replayed score reproduces the model's output.
    """
    return _cams(model, images, _gradcam_weights, target_class, layer, batch_size, check)


def grad_cam_plus_plus(model: keras.Model, images, target_class: int = 1, layer: str | None = None,
                       batch_size: int = 32, check: bool = True) -> np.ndarray:
    """Grad-CAM++ maps; same base, arguments and output as `grad_cam`, different channel weights."""
    return _cams(model, images, _gradcam_pp_weights, target_class, layer, batch_size, check)


METHODS = {"gradcam": grad_cam, "gradcam++": grad_cam_plus_plus}

# ---------------------------------------------------------------------------------------------------------------
# Overlays and figures


def _gray(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a grayscale image (H, W) or (H, W, 1), got shape {img.shape}")
    return img


def overlay(image_uint8, cam, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """The grayscale image with the heatmap blended over it: RGB uint8 (H, W, 3)."""
    from matplotlib import colormaps

    img = _gray(image_uint8).astype(np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape:
        cam = finish_cams(cam[None], img.shape)[0]
    heat = colormaps[cmap](np.clip(cam, 0, 1))[..., :3] * 255.0
    rgb = np.repeat(img[..., None], 3, axis=-1)
    return np.clip((1 - alpha) * rgb + alpha * heat, 0, 255).astype(np.uint8)


def _colorbar(fig, axes, cmap: str = "jet", label: str = "Grad-CAM (per-image max = 1)"):
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.04, label=label)


def overlay_figure(image, cam, title: str = "", alpha: float = 0.4, cmap: str = "jet"):
    """Figure: the image the model saw (left) and the Grad-CAM overlay with a colour bar (right)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(_gray(image), cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("model input")
    axes[1].imshow(overlay(image, cam, alpha, cmap))
    axes[1].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    _colorbar(fig, axes[1], cmap)
    if title:
        fig.suptitle(title)
    return fig


def pick_confusion_examples(y_true, p, threshold: float, per_cell: int = 2) -> dict[str, np.ndarray]:
    """Indices of the examples per confusion cell, by a fixed rule: the most confident of each cell.

    Predicted positive means p >= threshold. TP and FP: highest p first; TN and FN: lowest p first (ties by index).
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"y_true ({len(y)}) and p ({len(p)}) differ in length")
    pred = p >= threshold
    masks = {"TP": (y == 1) & pred, "TN": (y == 0) & ~pred, "FP": (y == 0) & pred, "FN": (y == 1) & ~pred}
    out = {}
    for cell, mask in masks.items():
        idx = np.flatnonzero(mask)
        key = -p[idx] if cell in ("TP", "FP") else p[idx]
        out[cell] = idx[np.argsort(key, kind="stable")][:per_cell]
    return out


def confusion_grid(images, cams, y_true, p, threshold: float, per_cell: int = 2,
                   class_names=("NORMAL", "PNEUMONIA"), alpha: float = 0.4, cmap: str = "jet"):
    """Figure: rows TP, TN, FP, FN (chosen by `pick_confusion_examples`), `per_cell` overlays each, one colour bar."""
    import matplotlib.pyplot as plt

    picks = pick_confusion_examples(y_true, p, threshold, per_cell)
    fig, axes = plt.subplots(4, per_cell, figsize=(2.8 * per_cell + 1.2, 11), squeeze=False)
    y = np.asarray(y_true).astype(int).reshape(-1)
    for r, cell in enumerate(CELLS):
        for c in range(per_cell):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(picks[cell]):
                i = int(picks[cell][c])
                ax.imshow(overlay(images[i], cams[i], alpha, cmap))
                ax.set_title(f"{cell} #{i}: true {class_names[y[i]]}\nP({class_names[1]})={float(p[i]):.3f}",
                             fontsize=8)
            elif c == 0:
                ax.text(0.5, 0.5, f"no {CELL_TITLES[cell]}", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"Grad-CAM by confusion cell (most confident per cell, threshold {threshold:.3f})")
    _colorbar(fig, axes.ravel().tolist(), cmap)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Sanity check: cascading randomisation (Adebayo et al. 2018)


def _clone(model: keras.Model) -> keras.Model:
    """An independent copy with the same weights (the user's model is never modified)."""
    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy
    except Exception:  # a layer that clone_model cannot rebuild: round trip through a temporary file
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "clone.keras"
            model.save(path)
            return keras.saving.load_model(path, compile=False)


def _weighted_layers_top_down(model: keras.Model) -> list[tuple[str, str]]:
    """(scope, name) of every layer with weights, from the logit down to the backbone's first layer."""
    order = [("outer", "logit")]
    backbone = model.get_layer("backbone")
    order += [("backbone", l.name) for l in reversed(backbone.layers) if l.weights]
    return order


def _randomise_layer(layer, rng: np.random.Generator) -> None:
    """Re-initialise each weight at random: zero-mean normal with the original's spread (as a fresh initialiser
    would); BatchNorm scales and variances are drawn around 1 and kept positive."""
    new = []
    for v in layer.weights:
        w = np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
        std = float(w.std()) if w.size > 1 and w.std() > 0 else 0.05
        r = rng.normal(0.0, std, size=w.shape)
        if v.name in ("gamma", "moving_variance"):
            r = np.abs(1.0 + r) + 1e-3
        new.append(r.astype(np.dtype(v.dtype)))
    layer.set_weights(new)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; a constant randomised map shares no ranking (0); NaN if `a` is constant."""
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0:
        return float("nan")
    if np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomization_test(model: keras.Model, images, layers: list[str] | None = None, seed: int = 0,
                       target_class: int = 1, method: str = "gradcam", layer: str | None = None,
                       max_steps: int = 8, batch_size: int = 32) -> pd.DataFrame:
    """Cascading model-parameter randomisation: from the logit down through the backbone, on a CLONE.

    Step 0 is the trained model. Step i has every weighted layer from the top down to `layers[i-1]` randomised
    (cumulative). `layers`: cut points in top-down order ("logit" or backbone layer names); default: "logit" plus
    evenly spaced backbone layers with weights, at most `max_steps` in all, ending with the first one.
    Returns a DataFrame (step, randomised_to, n_randomised, spearman_mean, spearman_std, n_images, n_empty):
    images whose trained map is empty (no heat) are left out of the means (n_images counts those kept); a
    randomised map that is empty counts as correlation 0 (n_empty counts them). The maps are in
    `df.attrs["cams"]` (a list of (B, H, W) arrays per step) for `randomization_figure`. A trustworthy method
    gives a correlation that falls as more of the network is randomised.
    """
    cam_fn = METHODS[method]
    clone = _clone(model)
    order = _weighted_layers_top_down(clone)
    names = [n for _, n in order]
    if layers is None:
        idx = sorted(set(np.linspace(0, len(order) - 1, min(max_steps, len(order))).round().astype(int)))
    else:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"not layers with weights (top-down order {names}): {unknown}")
        idx = sorted(names.index(n) for n in layers)
    rng = np.random.default_rng(seed)
    original = cam_fn(model, images, target_class=target_class, layer=layer, batch_size=batch_size)
    n_original = int((original.reshape(len(original), -1).max(1) > 0).sum())
    rows = [dict(step=0, randomised_to="none (trained)", n_randomised=0, spearman_mean=1.0, spearman_std=0.0,
                 n_images=n_original, n_empty=len(original) - n_original)]
    cams = [original]
    backbone = clone.get_layer("backbone")
    done = 0
    for step, cut in enumerate(idx, start=1):
        for scope, name in order[done:cut + 1]:
            _randomise_layer(clone.get_layer(name) if scope == "outer" else backbone.get_layer(name), rng)
        done = cut + 1
        cam = cam_fn(clone, images, target_class=target_class, layer=layer, batch_size=batch_size, check=False)
        rho = np.array([_spearman(o, c) for o, c in zip(original, cam)])
        ok = rho[np.isfinite(rho)]
        rows.append(dict(step=step, randomised_to=names[cut], n_randomised=done,
                         spearman_mean=float(ok.mean()) if len(ok) else float("nan"),
                         spearman_std=float(ok.std()) if len(ok) else float("nan"), n_images=int(len(ok)),
                         n_empty=int((cam.reshape(len(cam), -1).max(1) == 0).sum())))
        cams.append(cam)
    df = pd.DataFrame(rows)
    df.attrs["cams"] = cams
    return df


def describe_randomization(table: pd.DataFrame, passes_below: float = 0.5) -> str:
    """Plain sentences about a `randomization_test` table: where the rank correlation goes, and whether the maps
    depend on the learned weights (every randomised step's mean |Spearman| below `passes_below`)."""
    steps = table[table["step"] > 0]
    if steps.empty:
        return "No randomisation step was run."
    first, last = steps.iloc[0], steps.iloc[-1]
    if int(first["n_images"]) == 0 or not np.isfinite(steps["spearman_mean"]).any():
        return ("The sanity check could not be assessed: every trained map was empty (no positive evidence for the "
                "target class in these images).")
    worst = float(steps["spearman_mean"].abs().max())
    verdict = ("the maps depend on the learned weights (sanity check passed)" if worst < passes_below else
               "the maps partly survive randomisation, so they reflect the input more than what the model learned "
               "(sanity check FAILED)")
    return (f"Mean rank correlation with the trained model's maps: {first['spearman_mean']:.2f} after randomising "
            f"'{first['randomised_to']}' alone, {last['spearman_mean']:.2f} with every weighted layer down to "
            f"'{last['randomised_to']}' randomised (largest |correlation| over the steps: {worst:.2f}, "
            f"{int(first['n_images'])} images): {verdict}.")


def randomization_figure(table: pd.DataFrame, images=None, n_images: int = 2, cmap: str = "jet"):
    """Figure: mean Spearman correlation per cascade step (left) and, with `images`, the maps per step."""
    import matplotlib.pyplot as plt

    cams = table.attrs.get("cams")
    show = images is not None and cams is not None
    n_images = min(n_images, len(images)) if show else 0
    ncols = len(table) if show else 0
    fig = plt.figure(figsize=(5 + 1.6 * ncols, 3.2 + 1.6 * n_images), layout="constrained")
    grid = fig.add_gridspec(max(n_images, 1), 1 + ncols, width_ratios=[3] + [1] * ncols)
    ax = fig.add_subplot(grid[:, 0])
    ax.errorbar(table["step"], table["spearman_mean"], yerr=table["spearman_std"], marker="o", capsize=3)
    ax.set_xticks(table["step"], table["randomised_to"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Spearman rank correlation with the trained map")
    ax.set_xlabel("randomised from the top down to")
    ax.set_ylim(-0.25, 1.05)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("Cascading randomisation (Adebayo et al. 2018)")
    for r in range(n_images):
        for c in range(ncols):
            a = fig.add_subplot(grid[r, 1 + c])
            a.imshow(overlay(images[r], cams[c][r], cmap=cmap))
            a.axis("off")
            if r == 0:
                a.set_title(str(table["randomised_to"].iloc[c])[:14], fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion


@dataclass
class Faithfulness:
    """Deletion/insertion curves (N, steps + 1) on `fractions` and per-image areas under them.

    Deletion: the most-heated pixels are replaced by a blurred copy of the image; a faithful map makes the score
    fall FAST (low area). Insertion: starting from the blurred image, the most-heated pixels are revealed; a
    faithful map makes the score rise FAST (high area). "random" orders the pixels by a random blocky map, the baseline.
    """

    fractions: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    auc: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> pd.DataFrame:
        """Mean area per curve: rows deletion/insertion, columns heat, random, heat_minus_random."""
        rows = {}
        for kind in ("deletion", "insertion"):
            h, r = self.auc[f"{kind}_heat"].mean(), self.auc[f"{kind}_random"].mean()
            rows[kind] = {"heat": h, "random": r, "heat_minus_random": h - r}
        return pd.DataFrame(rows).T


def describe_faithfulness(result: Faithfulness) -> str:
    """Plain sentences: heat order vs random order for deletion and insertion, with the per-image win count and a
    paired Wilcoxon signed-rank test (scipy)."""
    from scipy.stats import wilcoxon

    lines = []
    for kind, better, meaning in (("deletion", "lower", "removing the hottest regions first lowers the score faster"),
                                  ("insertion", "higher", "revealing the hottest regions first raises the score faster")):
        h, r = result.auc[f"{kind}_heat"].to_numpy(), result.auc[f"{kind}_random"].to_numpy()
        wins = int(np.sum(h < r) if kind == "deletion" else np.sum(h > r))
        diff = h - r
        p = float(wilcoxon(diff).pvalue) if len(diff) >= 6 and np.any(diff != 0) else float("nan")
        ok = (h.mean() < r.mean()) if kind == "deletion" else (h.mean() > r.mean())
        lines.append(f"{kind.capitalize()}: area {h.mean():.3f} in heat order vs {r.mean():.3f} in random order "
                     f"({better} is more faithful); heat order wins for {wins} of {len(h)} images (paired Wilcoxon "
                     f"p = {p:.2g}): " + (f"supported, {meaning} than random." if ok else
                                          f"NOT supported, {meaning.replace('faster', 'no faster')} than random."))
    return "\n".join(lines)


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(im.astype(np.float32), sigma=sigma, mode="nearest") for im in images])


def _trapezoid(y, x):
    fn = getattr(np, "trapezoid", None) or np.trapz
    return fn(y, x, axis=-1)


def deletion_insertion(model: keras.Model, images, cams, steps: int = 20, target_class: int = 1, seed: int = 0,
                       blur_sigma: float = 0.1, batch_size: int = 32, random_grid: int = 7) -> Faithfulness:
    """Deletion and insertion curves for the heat order and a random order (see `Faithfulness`).

    The score is the model's probability of `target_class`. The baseline image is the image blurred with a
    Gaussian of sigma = `blur_sigma` x image height. Ties in heat are broken at random (seeded).
    The random order comes from a random map of `random_grid` x `random_grid` blocks (the resolution of the
    last feature map at 224 px), so its masks are as smooth as the heat's: a pixel-wise random order scatters
    salt-and-pepper artefacts over the whole image, which a CNN reads as texture, and is no fair baseline.
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape != x.shape:
        raise ValueError(f"cams {cams.shape} must match the images {x.shape}")
    n, h, w = x.shape
    rng = np.random.default_rng(seed)
    flat_cam = cams.reshape(n, -1)
    tiebreak = rng.random(flat_cam.shape)
    ranks = {}
    heat_order = np.lexsort((tiebreak, -flat_cam), axis=-1)  # hottest first, ties at random
    g = max(1, int(random_grid))
    coarse = rng.random((n, g, g))
    random_map = coarse[:, (np.arange(h) * g) // h][:, :, (np.arange(w) * g) // w].reshape(n, -1)
    random_order = np.lexsort((rng.random(random_map.shape), -random_map), axis=-1)
    for name, order in (("heat", heat_order), ("random", random_order)):
        r = np.empty_like(order)
        np.put_along_axis(r, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
        ranks[name] = r.reshape(n, h, w)
    blurred = _blur(x, blur_sigma * h)
    xf = x.astype(np.float32)
    fractions = np.linspace(0, 1, steps + 1)
    dtype = x.dtype

    def prob(batch):
        batch = np.clip(np.rint(batch), 0, 255).astype(dtype) if np.issubdtype(dtype, np.integer) else batch
        p = np.asarray(model.predict(batch[..., None], batch_size=batch_size, verbose=0), np.float64).reshape(-1)
        return p if target_class == 1 else 1 - p

    names = [f"{k}_{o}" for k in ("deletion", "insertion") for o in ("heat", "random")]
    curves = {name: np.zeros((n, steps + 1)) for name in names}
    for j, f in enumerate(fractions):
        k = int(round(f * h * w))
        variants = []
        for name in names:
            kind, o = name.split("_")
            mask = ranks[o] < k
            variants.append(np.where(mask, blurred, xf) if kind == "deletion" else np.where(mask, xf, blurred))
        p = prob(np.concatenate(variants)).reshape(len(names), n)  # one call per step
        for name, row in zip(names, p):
            curves[name][:, j] = row
    auc = pd.DataFrame({name: _trapezoid(c, fractions) for name, c in curves.items()})
    return Faithfulness(fractions, curves, auc)


def deletion_insertion_figure(result: Faithfulness):
    """Figure: mean deletion and insertion curves, heat order vs random order, areas in the legend."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for o, style in (("heat", "-"), ("random", "--")):
            c = result.curves[f"{kind}_{o}"]
            ax.plot(result.fractions, c.mean(0), style, label=f"{o} order (AUC {result.auc[f'{kind}_{o}'].mean():.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'revealed'}")
        ax.set_ylabel("model probability of the target class")
        ax.set_ylim(0, 1)
        ax.set_title(f"{kind.capitalize()} ({'lower' if kind == 'deletion' else 'higher'} AUC = more faithful)")
        ax.legend()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Shortcut audit


BODY_BOX = (0.15, 0.90, 0.20, 0.80)  # (top, bottom, left, right) as fractions of the image height / width


def _region_masks(shape: tuple[int, int], border: float, body_box: tuple) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    bh, bw = int(round(border * h)), int(round(border * w))
    border_mask = np.ones((h, w), bool)
    border_mask[bh:h - bh, bw:w - bw] = False
    top, bottom, left, right = body_box
    body = np.zeros((h, w), bool)
    body[int(round(top * h)):int(round(bottom * h)), int(round(left * w)):int(round(right * w))] = True
    return border_mask, ~body


def heat_shares(cams, border: float = 0.10, body_box: tuple = BODY_BOX) -> pd.DataFrame:
    """Per image: the share of total heat in the outer `border` band and outside the central body box.

    border: width of the band as a fraction of each side (0.10: the outer 10%, 36% of the area).
    body_box: (top, bottom, left, right) fractions; default rows 15-90%, columns 20-80%, roughly the thorax in
    these paediatric films (shoulders, neck, abdomen and markers fall outside). Shares are NaN for a map with no
    heat (`empty`). `peak_in_border`: the hottest pixel lies in the band. Area shares of the regions are in
    `df.attrs` (the share a uniform map would give).
    """
    cams = np.asarray(cams, dtype=np.float64)
    border_mask, outside = _region_masks(cams.shape[1:3], border, body_box)
    total = cams.sum(axis=(1, 2))
    empty = ~(total > 0)
    safe = np.where(empty, 1.0, total)
    peaks = cams.reshape(len(cams), -1).argmax(axis=1)
    df = pd.DataFrame({
        "border_share": np.where(empty, np.nan, (cams * border_mask).sum(axis=(1, 2)) / safe),
        "outside_body_share": np.where(empty, np.nan, (cams * outside).sum(axis=(1, 2)) / safe),
        "peak_in_border": ~empty & border_mask.ravel()[peaks],
        "peak_outside_body": ~empty & outside.ravel()[peaks],
        "empty": empty,
    })
    df.attrs.update(border_area=float(border_mask.mean()), outside_body_area=float(outside.mean()),
                    border=border, body_box=tuple(body_box))
    return df


def shortcut_audit(cams, y_true, y_pred, class_names=("NORMAL", "PNEUMONIA"), border: float = 0.10,
                   body_box: tuple = BODY_BOX) -> pd.DataFrame:
    """`heat_shares` summarised by true class and correct/incorrect, plus an "all" row.

    Columns: n, n_empty, mean and median border share, mean outside-body share, rate of peaks in the border, and
    the area shares a uniform map would give (heat spread evenly) for comparison.
    """
    shares = heat_shares(cams, border, body_box)
    y = np.asarray(y_true).astype(int).reshape(-1)
    yp = np.asarray(y_pred).astype(int).reshape(-1)
    shares["class"] = [class_names[i] for i in y]
    shares["outcome"] = np.where(y == yp, "correct", "incorrect")

    def summarise(g: pd.DataFrame) -> dict:
        return {"n": len(g), "n_empty": int(g["empty"].sum()),
                "border_share_mean": g["border_share"].mean(), "border_share_median": g["border_share"].median(),
                "outside_body_share_mean": g["outside_body_share"].mean(),
                "peak_in_border_rate": g["peak_in_border"].mean() if len(g) else np.nan}

    rows = [{"class": c, "outcome": o, **summarise(g)} for (c, o), g in shares.groupby(["class", "outcome"])]
    rows.append({"class": "all", "outcome": "all", **summarise(shares)})
    out = pd.DataFrame(rows)
    out["border_area"] = shares.attrs["border_area"]
    out["outside_body_area"] = shares.attrs["outside_body_area"]
    return out


def describe_audit(audit: pd.DataFrame) -> str:
    """One plain sentence about the "all" row: heat share in the border vs the share a uniform map would have."""
    row = audit[audit["class"] == "all"].iloc[0]
    ratio = row["border_share_mean"] / row["border_area"] if row["border_area"] else float("nan")
    verdict = ("more than" if ratio > 1.1 else "less than" if ratio < 0.9 else "about the same as")
    return (f"Over {int(row['n'])} images, {100 * row['border_share_mean']:.1f}% of the Grad-CAM heat lies in the "
            f"outer border band, which covers {100 * row['border_area']:.0f}% of the image: {verdict} a uniform map; "
            f"{100 * row['outside_body_share_mean']:.1f}% lies outside the central body box "
            f"({100 * row['outside_body_area']:.0f}% of the area); the hottest pixel is in the border for "
            f"{100 * row['peak_in_border_rate']:.1f}% of the images.")


def shortcut_figure(audit: pd.DataFrame):
    """Figure: mean border and outside-body heat share per (class, outcome), with the uniform-map area shares."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{c}\n{o}" for c, o in zip(audit["class"], audit["outcome"])]
    pos = np.arange(len(audit))
    ax.bar(pos - 0.2, audit["border_share_mean"], 0.4, label="border band")
    ax.bar(pos + 0.2, audit["outside_body_share_mean"], 0.4, label="outside body box")
    ax.axhline(audit["border_area"].iloc[0], color="C0", ls="--", lw=1, label="border area (uniform map)")
    ax.axhline(audit["outside_body_area"].iloc[0], color="C1", ls="--", lw=1, label="outside-body area (uniform map)")
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("share of Grad-CAM heat")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Shortcut audit: where the heat falls")
    return fig
