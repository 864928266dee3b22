"""The class activation map (CAM) mechanism and its two methods, Grad-CAM and Grad-CAM++.

The model (`cxr.model.build_model`) is a linear chain image -> to_float -> to_backbone -> backbone -> pool -> dropout
-> logit -> prob (models saved before issue 12 also carry an "augment" layer before to_backbone; whatever sits before
"backbone" is replayed with training=False), with the backbone a NESTED functional model. In Keras 3 the usual recipe
`keras.Model(model.inputs, [model.get_layer(...).output, model.output])` fails for a layer inside a nested model
(its tensors belong to the backbone's own graph, not to the outer one). So the graph is rebuilt connected:

    x --(outer layers before "backbone", training=False)--> backbone input
      --keras.Model(backbone.inputs, target.output)--> A              (the target feature map)
      --keras.Model(target.output, backbone.outputs)--> backbone out  (absent when A is the backbone output)
      --pool, dropout (training=False), logit--> pre-sigmoid logit

`replay_check` verifies that sigmoid(replayed logit) equals the model's own output (the CAM functions run the same
check on their first batch).

The score that is differentiated is the PRE-SIGMOID logit z of the single output unit: P(positive) = sigmoid(z),
and z > 0 means the model leans to the positive class (PNEUMONIA; virus for the subtype task). For the
positive class (target_class=1) the score is z, for the negative class (NORMAL, target_class=0) it is -z, because
log P(1)/P(0) = z: evidence for NORMAL is exactly evidence against PNEUMONIA. Using the logit rather than the
probability avoids the vanishing gradient of a saturated sigmoid (for Grad-CAM the probability would only rescale
all weights of one image by sigmoid'(z) > 0, which the per-image normalisation removes, but in float32 that factor
underflows for confident predictions).

One base mechanism (`cams`): activations A (B, h, w, K) and gradients dS/dA from the backend's autodiff
(TensorFlow GradientTape, jax.grad, torch.autograd), computed by ONE compiled function of (weights, images) per
(model, target layer, batch size) (`cam_function`, `CamFunction`): the variable values are arguments bound with
`keras.StatelessScope` (as `Layer.stateless_call` does), compiled with `jax.jit` under JAX and `tf.function` under
TensorFlow (eager under torch); batches are padded to the batch size and the padded outputs dropped, so the number
of images never triggers a new compilation, and the randomisation test runs its randomised weight values through
the same function. Then a weighting rule (a short function of (A, dS/dA) -> (B, K) weights; a new method is a new
rule) -- Grad-CAM: w_k = mean over space of dS/dA_k; Grad-CAM++: the alpha weighting of Chattopadhay et al.
(2018) in the closed form used by pytorch-grad-cam -- then one shared path: cam = relu(sum_k w_k A_k), bilinear
resize to the input image size, division by the per-image maximum. A map with no positive value (all weighted
activations negative or zero) is all zeros, never NaN. Output: numpy float32 (B, H, W) in [0, 1], 0 = no evidence, 1 = the strongest evidence in that image.

Limits: the target layer must be a "cut point" of the backbone (every path from the input to the output passes
through it); a layer inside a residual block (bypassed by a skip connection) is refused with a clear error --
name the block output (e.g. `block6d_add`) instead. The default, the last 4-D layer of the backbone, is always a
cut point. The outer model must be the linear chain above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras

from cxr.model import BACKBONE, LOGIT

EPS = 1e-7

# ---------------------------------------------------------------------------------------------------------------
# The connected graph


def find_target_layer(model: keras.Model) -> str:
    """Name of the last layer inside the "backbone" whose output is a 4-D feature map (B, h, w, C)."""
    backbone = model.get_layer(BACKBONE)
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
    for needed in (BACKBONE, LOGIT):
        if needed not in names:
            raise ValueError(f"model {model.name!r} has no layer named {needed!r}; expected the cxr.model chain "
                             f"image -> ... -> backbone -> pool -> dropout -> logit -> prob, got {names}")
    i_bb, i_logit = names.index(BACKBONE), names.index(LOGIT)
    if i_logit < i_bb:
        raise ValueError(f"layer {LOGIT!r} must come after {BACKBONE!r}")
    pre = [l for l in model.layers[:i_bb] if not isinstance(l, keras.layers.InputLayer)]
    head = list(model.layers[i_bb + 1:i_logit + 1])
    backbone = model.get_layer(BACKBONE)
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"layer {BACKBONE!r} must be a (functional) keras.Model")
    target = layer or find_target_layer(model)
    bb_out = backbone.outputs[0]
    if target == BACKBONE:
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


def image_batch(images) -> np.ndarray:
    """THE image shape of every explain function: a batch (B, H, W) or (B, H, W, 1), or one (H, W) image ->
    (B, H, W), dtype kept. Anything else is a ValueError that names the shape."""
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"images must be grey-level, (B, H, W) or (B, H, W, 1); got shape {np.shape(images)}")
    return x


def _model_input(images, graph: _Graph) -> np.ndarray:
    """Images in any shape `image_batch` takes -> (B, H, W, 1) (or (B, H, W) for a model without a channel axis)
    in the model's input dtype."""
    x = image_batch(images)
    if len(graph.input_shape) == 3:
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


def _activations_and_gradients(graph: _Graph, x):
    """A (B,h,w,K), dz/dA (B,h,w,K) and z (B,) for the pre-sigmoid logit z, by the backend's autodiff (traced or
    eager code: it runs inside the compiled function of `CamFunction`). The gradient flows through the head only."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = graph.activations(x)
        with tf.GradientTape() as tape:
            tape.watch(a)
            z = graph.logit(a)
        return a, tape.gradient(z, a), z  # non-scalar target: gradient of the sum; images are independent
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        a = graph.activations(x)

        def total(a_):
            z_ = graph.logit(a_)
            return jnp.sum(z_), z_

        g, z = jax.grad(total, has_aux=True)(a)
        return a, g, z
    if backend == "torch":
        import torch

        with torch.no_grad():  # no autograd graph through the layers below A
            a = graph.activations(x)
        a = a.detach().requires_grad_(True)
        with torch.enable_grad():
            z = graph.logit(a)
            (g,) = torch.autograd.grad(z.sum(), a)
        return a, g, z.detach()
    raise NotImplementedError(f"Grad-CAM has no gradient code for the {backend!r} backend")


def _compile(fn: Callable) -> Callable:
    """jax.jit under JAX, tf.function under TensorFlow (weights are arguments, so new values reuse the trace),
    eager under torch."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    return fn


class CamFunction:
    """One compiled function of (weights, images) -> (A, dz/dA, z) for a model, target layer and batch size.

    `weights` are the values of `model.variables` (same order), passed as ARGUMENTS and bound to the variables
    with `keras.StatelessScope` (what `Layer.stateless_call` does), so randomised weight values run through the
    same compiled function without rebuilding or cloning the model. Compiled with `jax.jit` (JAX) or `tf.function`
    (TensorFlow); eager under torch. Shapes are fixed: every batch is padded to `batch_size` (zeros) and the padded
    outputs are dropped, so N and 2N images compile the same single function. `prob(weights, x)`, the model's own
    output under the same weights, is compiled likewise (for the replay check). Get one with `cam_function`.
    """

    def __init__(self, model: keras.Model, layer: str | None, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.graph = _graph(model, layer)
        self.model = model
        self.variables = list(model.variables)
        self.batch_size = int(batch_size)
        self.traces = 0  # times the Python body ran: once when compiled (JAX, TensorFlow), every call on torch
        self._cam = _compile(self._cam_fn)
        self._prob = _compile(self._prob_fn)

    def _scope(self, weights):
        return keras.StatelessScope(state_mapping=list(zip(self.variables, weights)))

    def _cam_fn(self, weights, x):
        self.traces += 1
        with self._scope(weights):
            return _activations_and_gradients(self.graph, x)

    def _prob_fn(self, weights, x):
        with self._scope(weights):
            return self.model(x, training=False)

    def weights(self, values=None) -> list:
        """Backend tensors for `values` (a list in the order of `self.variables`, i.e. `model.variables`; default:
        the variables' current values)."""
        if values is None:
            return [keras.ops.convert_to_tensor(v) for v in self.variables]
        values = list(values)
        if len(values) != len(self.variables):
            raise ValueError(f"{len(values)} weight values for {len(self.variables)} model variables")
        return [keras.ops.convert_to_tensor(np.asarray(w) if not hasattr(w, "shape") else w, dtype=v.dtype)
                for w, v in zip(values, self.variables)]

    def batches(self, x: np.ndarray):
        """(n_real, padded batch) for consecutive slices of `x`; every padded batch has `batch_size` images."""
        for start in range(0, len(x), self.batch_size):
            batch = x[start:start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
            yield n, batch

    def __call__(self, weights: list, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, dz/dA, z) as float32 numpy for one padded batch (no outputs dropped here)."""
        a, g, z = self._cam(weights, keras.ops.convert_to_tensor(batch))
        return _to_numpy(a), _to_numpy(g), _to_numpy(z)

    def prob(self, weights: list, batch: np.ndarray) -> np.ndarray:
        """The model's own output (B,) under `weights`."""
        return _to_numpy(self._prob(weights, keras.ops.convert_to_tensor(batch))).reshape(-1)


def cam_function(model: keras.Model, layer: str | None = None, *, batch_size: int) -> CamFunction:
    """The `CamFunction` of (model, layer, batch size), built once and cached on the model."""
    cache = getattr(model, "_cxr_cam_functions", None)
    if cache is None:
        cache = {}
        object.__setattr__(model, "_cxr_cam_functions", cache)  # bypass Keras attribute tracking
    key = (layer or find_target_layer(model), int(batch_size))
    fn = cache.get(key)
    if fn is None or [id(v) for v in fn.variables] != [id(v) for v in model.variables]:  # built, or stale
        fn = cache[key] = CamFunction(model, layer, batch_size)
    return fn


def _replay_error(own: np.ndarray, logit: np.ndarray) -> float:
    """Largest |sigmoid(replayed logit) - the model's own output|."""
    replay = 1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))
    return float(np.max(np.abs(replay - own))) if len(own) else 0.0


def _assert_replay(diff: float, atol: float) -> None:
    if not diff <= atol:
        raise AssertionError(f"replayed graph differs from the model output by {diff:.3g} (> {atol}); "
                             "the model is not the linear chain the CAM code expects")


def replay_check(model: keras.Model, images, layer: str | None = None, atol: float = 1e-4, *,
                 batch_size: int) -> float:
    """Assert that sigmoid(replayed logit) equals the model's output on `images`; return the largest difference."""
    fn = cam_function(model, layer, batch_size=batch_size)
    x = _model_input(images, fn.graph)
    weights = fn.weights()
    diff = 0.0
    for n, batch in fn.batches(x):
        _, _, z = fn(weights, batch)
        diff = max(diff, _replay_error(fn.prob(weights, batch)[:n], z[:n]))
    _assert_replay(diff, atol)
    return diff


# ---------------------------------------------------------------------------------------------------------------
# Weighting rules (the only difference between the methods) and the shared path


def gradcam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean over space of dS/dA_k."""
    return g.mean(axis=(1, 2))


def gradcam_pp_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
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


NORMALIZE = ("image", "none")


def finish_cams(cams, size: tuple[int, int], normalize: str = "image") -> np.ndarray:
    """The shared path: relu, bilinear resize to `size` (H, W), then with `normalize="image"` division by the
    per-image maximum (float32 in [0, 1]; a map whose maximum is not positive becomes all zeros), with "none" the
    raw non-negative values (the score's units; comparable across images, e.g. for one colour scale over a
    figure). Non-finite values become 0."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, not {normalize!r}")
    cams = np.maximum(np.nan_to_num(np.asarray(cams, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0), 0)
    if cams.shape[1:3] != tuple(size):
        cams = _to_numpy(keras.ops.image.resize(cams[..., None], tuple(size), interpolation="bilinear"))[..., 0]
    cams = np.maximum(cams, 0)
    if normalize == "none":
        return cams.astype(np.float32)
    peak = cams.reshape(len(cams), -1).max(axis=1) if cams.size else np.zeros(len(cams), np.float32)
    ok = np.isfinite(peak) & (peak > 1e-12)
    out = np.zeros_like(cams, dtype=np.float32)
    out[ok] = cams[ok] / peak[ok, None, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _signs(target_class, n: int) -> np.ndarray:
    """+1 (explain the positive class) or -1 (the negative class) per image, from an int or a 0/1 array."""
    t = np.broadcast_to(np.asarray(target_class), (n,)) if np.ndim(target_class) == 0 else np.asarray(target_class)
    if t.shape != (n,) or not np.isin(t, (0, 1)).all():
        raise ValueError(f"target_class must be 0 (negative, e.g. NORMAL), 1 (positive, e.g. PNEUMONIA) or one of "
                         f"them per image, got {target_class!r}")
    return np.where(t == 1, 1.0, -1.0).astype(np.float32)


def cams(model: keras.Model, images, weighting: Callable, target_class=1, layer: str | None = None, *,
         batch_size: int, check: bool = True, weights: list | None = None, normalize: str = "image") -> np.ndarray:
    """THE base mechanism: maps (B, H, W) float32 with channel weights from `weighting(A, dS/dA)`, for `images`
    (B, H, W) or (B, H, W, 1) (`image_batch`).

    Grad-CAM and Grad-CAM++ are this with their rule; see the module docstring for the score and the shared path.
    `target_class`: 1 explains the positive class, 0 the negative one; an array gives one class per image (e.g.
    the predicted class). Runs the model's cached compiled `CamFunction` (see `cam_function`) with batches of
    `batch_size` (the run's, `Config.batch_size`). `weights`: values for `model.variables` to use instead of the
    current ones (e.g. randomised); the model is not modified. `check`: on the first batch, assert that the
    replayed score reproduces the model's output (under the same weights). `normalize`: see `finish_cams`.

    An ENSEMBLE (`cxr.model.ensemble_model`) is explained as the mean of its members' raw maps, each member's
    map explaining that member's own logit, then normalised."""
    from cxr.model import members

    parts = members(model)
    if len(parts) > 1:
        if weights is not None:
            raise ValueError("weights= is for a single model; pass a member of the ensemble")
        raw = np.mean([cams(m, images, weighting, target_class, layer, batch_size=batch_size, check=check,
                            normalize="none") for m in parts], axis=0)
        return finish_cams(raw, raw.shape[1:3], normalize) if len(raw) else raw
    fn = cam_function(model, layer, batch_size=batch_size)
    x = _model_input(images, fn.graph)
    signs = _signs(target_class, len(x))  # S = sign * z: dS/dA = sign * dz/dA, exactly
    w_args = fn.weights(weights)
    out = []
    for i, (n, batch) in enumerate(fn.batches(x)):
        a, g, z = fn(w_args, batch)
        sign = np.ones(len(batch), np.float32)
        sign[:n] = signs[i * fn.batch_size:i * fn.batch_size + n]
        g = sign[:, None, None, None] * g
        if check and i == 0:
            _assert_replay(_replay_error(fn.prob(w_args, batch)[:n], z[:n]), atol=1e-3)
        w = weighting(a, g)  # (B, K)
        cam = np.einsum("bhwk,bk->bhw", a.astype(np.float32), w.astype(np.float32))
        out.append(finish_cams(cam, x.shape[1:3], normalize)[:n])  # finished on the full batch, then cut
    if not out:
        return np.zeros((0, *x.shape[1:3]), np.float32)
    return np.concatenate(out)


def grad_cam(model: keras.Model, images, target_class=1, layer: str | None = None, *, batch_size: int,
             check: bool = True, weights: list | None = None, normalize: str = "image") -> np.ndarray:
    """Grad-CAM maps (B, H, W) float32 for `images` ((B, H, W) or (B, H, W, 1): `image_batch`) as the model sees them (in [0, 1] per image
    with normalize="image", raw with "none").

    target_class 1 explains the positive class (score = logit), 0 the negative class (score = -logit), an array
    one class per image. `layer`: a backbone layer name (default: `find_target_layer`). `check`: on the first
    batch, verify that the replayed score reproduces the model's output. `weights`: values for `model.variables`
    to use instead of the current ones (the model is not modified; the same compiled function runs).
    """
    return cams(model, images, gradcam_weights, target_class, layer, batch_size=batch_size, check=check,
                weights=weights, normalize=normalize)


def grad_cam_plus_plus(model: keras.Model, images, target_class=1, layer: str | None = None, *,
                       batch_size: int, check: bool = True, weights: list | None = None,
                       normalize: str = "image") -> np.ndarray:
    """Grad-CAM++ maps; same base, arguments and output as `grad_cam`, different channel weights."""
    return cams(model, images, gradcam_pp_weights, target_class, layer, batch_size=batch_size, check=check,
                weights=weights, normalize=normalize)


METHODS = {"gradcam": grad_cam, "gradcam++": grad_cam_plus_plus}
