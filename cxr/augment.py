"""Training-time augmentation for grayscale chest X-rays, in two places:

- `resample_batch` (numpy and Pillow, where training batches are drawn, `cxr.train.TrainBatches`): a random
  resampling path per image, standing in for the many ways an X-ray reaches 224 px in other hands (down and back
  up by a random factor with random filters, mild blur or sharpening, JPEG re-compression), so that the score
  does not depend on how an image was resized;
- `XRayAugment` (a Keras layer in the training wrapper of the model, `cxr.model.training_model`): one affine
  warp per image plus intensity changes and border masking.

`XRayAugment` composes rotation, isotropic scale, shift and shear into ONE affine transform per image (a single
resampling, so no blur piles up from chained warps), then changes brightness, contrast, gamma and adds gaussian
noise. It is written in `keras.ops` and `keras.random` only, draws from its own `SeedGenerator`, and has no Python
control flow on tensor values, so it compiles under `jax.jit`, `tf.function(jit_compile=True)` and torch; at
inference (`training=False`) it returns its input unchanged.

Geometry follows `keras.ops.image.affine_transform`: a row `[a0, a1, a2, b0, b1, b2, c0, c1]` maps an OUTPUT pixel
`(x, y)` (x = column, y = row, pixel centres at integers) to the INPUT point `(a0 x + a1 y + a2, b0 x + b1 y + b2)`.
The warp itself is a bilinear sampler in `keras.ops` with that same convention (tested against
`keras.ops.image.affine_transform`): TensorFlow's `affine_transform` kernel (ImageProjectiveTransformV3) has no XLA
kernel, so a model using it could not be compiled with `jit_compile=True` on TensorFlow.
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import keras
import numpy as np
from keras import ops
from PIL import Image, ImageFilter

from cxr.config import AugmentSettings

# Pillow's resampling filters, each a different "pipeline" a user's image may have gone through
RESAMPLE_FILTERS = (Image.Resampling.NEAREST, Image.Resampling.BOX, Image.Resampling.BILINEAR,
                    Image.Resampling.HAMMING, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def resample_path(image: np.ndarray, rng: np.random.Generator, min_scale: float = 0.4) -> np.ndarray:
    """One random resampling path of a uint8 (S, S) image, returned at the same size:

    down to a random size in [min_scale, 1) x S with a random Pillow filter and back up to S with another
    (probability 0.7); then a Gaussian blur of radius U(0.3, 1.2) px or an unsharp mask of radius U(0.5, 2) px and
    strength U(50, 150)% (probability 0.5, half each); then JPEG re-compression at quality U(30, 95)
    (probability 0.5)."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    size = img.size
    if rng.random() < 0.7:
        side = max(8, int(round(size[0] * rng.uniform(min_scale, 1.0))))
        down, up = rng.choice(len(RESAMPLE_FILTERS), 2)
        img = img.resize((side, side), RESAMPLE_FILTERS[down]).resize(size, RESAMPLE_FILTERS[up])
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
        else:
            img = img.filter(ImageFilter.UnsharpMask(radius=float(rng.uniform(0.5, 2.0)),
                                                     percent=int(rng.integers(50, 151)), threshold=0))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(rng.integers(30, 96)))
        img = Image.open(io.BytesIO(buffer.getvalue()))
    return np.asarray(img.convert("L"), dtype=np.uint8)


def resample_batch(images: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """A copy of a uint8 batch (n, S, S[, 1]) in which each image goes through `resample_path` with `probability`."""
    out = np.array(images, dtype=np.uint8, copy=True)
    for i in np.flatnonzero(rng.random(len(out)) < probability):
        out[i] = resample_path(out[i].reshape(out.shape[1], out.shape[2]), rng).reshape(out[i].shape)
    return out


def affine_matrices(rotation_rad, scale, shift_xy, shear, height: int, width: int):
    """Transform rows (B, 8) for `keras.ops.image.affine_transform` (output -> input coordinates).

    The forward map (input -> output) about the image centre c = ((width - 1) / 2, (height - 1) / 2) is
    `p_out = c + t + s * R(rotation) @ S(shear) @ (p_in - c)` with t = (shift_x * width, shift_y * height),
    R a rotation that turns the image COUNTER-clockwise on screen for a positive angle (x right, y down, as
    `keras.layers.RandomRotation`), S = [[1, tan(shear)], [0, 1]] a horizontal shear. The rows hold its inverse.

    rotation_rad, scale, shear: shape (B,) (scalars are taken as B = 1); shift_xy: (B, 2) fractions of the size.
    """
    rot = ops.reshape(ops.cast(rotation_rad, "float32"), (-1,))
    s = ops.reshape(ops.cast(scale, "float32"), (-1,))
    k = ops.tan(ops.reshape(ops.cast(shear, "float32"), (-1,)))
    shift = ops.reshape(ops.cast(shift_xy, "float32"), (-1, 2))
    cos, sin = ops.cos(rot), ops.sin(rot)
    # forward A = s * R @ S with R = [[cos, sin], [-sin, cos]] (y points down) and S = [[1, k], [0, 1]]
    a, b = s * cos, s * (cos * k + sin)
    c, d = -s * sin, s * (cos - sin * k)
    det = a * d - b * c  # = s**2
    i00, i01, i10, i11 = d / det, -b / det, -c / det, a / det
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    ox, oy = cx + shift[:, 0] * width, cy + shift[:, 1] * height  # where the centre goes
    zero = ops.zeros_like(i00)
    return ops.stack([i00, i01, cx - (i00 * ox + i01 * oy),
                      i10, i11, cy - (i10 * ox + i11 * oy), zero, zero], axis=1)


def affine_sample(images, transforms):
    """Warp (B, H, W, C) float images by (B, 8) rows (the `affine_transform` convention), bilinear, fill 0.

    Same result as `keras.ops.image.affine_transform(images, transforms, "bilinear", "constant", 0)`, written with
    gathers in `keras.ops` so that it also compiles with XLA on TensorFlow.
    """
    shape = ops.shape(images)
    batch, height, width, channels = shape[0], images.shape[1], images.shape[2], images.shape[3]
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij")
    t = ops.cast(transforms, "float32")[:, :, None, None]  # (B, 8, 1, 1)
    src_x = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]  # (B, H, W) input column of each output pixel
    src_y = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    x0, y0 = ops.floor(src_x), ops.floor(src_y)
    fx, fy = src_x - x0, src_y - y0
    flat = ops.reshape(images, (-1, channels))
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    out = None
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)  # corners outside read fill 0
        index = (base + ops.cast(ops.clip(yi, 0, height - 1), "int32") * width
                 + ops.cast(ops.clip(xi, 0, width - 1), "int32"))
        values = ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0), shape)
        term = values * ops.expand_dims(weight * ops.cast(inside, "float32"), -1)
        out = term if out is None else out + term
    return out


def _range(value, name: str) -> tuple[float, float]:
    """A float v > 0 -> (1 - v, 1 + v); 0 or None -> (1, 1) (off); a pair -> itself."""
    if value is None or (not isinstance(value, (tuple, list)) and float(value) == 0.0):
        return (1.0, 1.0)
    if isinstance(value, (tuple, list)):
        lo, hi = float(value[0]), float(value[1])
    else:
        lo, hi = 1.0 - float(value), 1.0 + float(value)
    if not 0.0 < lo <= hi:
        raise ValueError(f"{name} range must satisfy 0 < low <= high, got {value!r}")
    return (lo, hi)


@keras.saving.register_keras_serializable(package="cxr")
class XRayAugment(keras.layers.Layer):
    """Random affine warp + intensity changes for float images (B, H, W, C) in 0..255; identity at inference.

    Per image, in training: rotation ~ U(-rotation, rotation) degrees, scale ~ U(scale) (isotropic),
    shift ~ U(-shift, shift) of the width and height, shear ~ U(-shear, shear) degrees, composed into one
    transform about the centre (bilinear, fill 0); then gamma x -> 255 (x / 255) ** g with log g ~ U(+-log(1 +
    gamma)), contrast (x - mean) * f + mean with f ~ U(1 +- contrast) about the image mean, brightness x + 255 b with
    b ~ U(+-brightness), gaussian noise of standard deviation `noise` (in 0..255 units), a clip to 0..255, and
    border masking: each of the four sides blacked out, with probability 1/2, over U(0, border) of the size.
    Every argument set to 0 switches its change off. `scale` is a (low, high) pair or a float v for (1-v, 1+v).
    Computes in float32 and returns the input dtype; channels_last only.
    """

    def __init__(self, rotation: float = 10.0, scale: float | Sequence[float] = (0.9, 1.1), shift: float = 0.05,
                 shear: float = 3.0, brightness: float = 0.1, contrast: float = 0.1, gamma: float = 0.15,
                 noise: float = 0.02 * 255, border: float = 0.0, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.rotation = float(rotation)
        self.scale = _range(scale, "scale")
        self.shift = float(shift)
        self.shear = float(shear)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.gamma = float(gamma)
        self.noise = float(noise)
        self.border = float(border)
        self.seed = seed
        for name in ("rotation", "shift", "shear", "brightness", "contrast", "gamma", "noise", "border"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.contrast >= 1:
            raise ValueError(f"contrast must lie in [0, 1), got {self.contrast}")
        if self.border >= 0.5:
            raise ValueError(f"border must lie in [0, 0.5), got {self.border}")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights depend on the input shape (the seed state is created above)

    @classmethod
    def from_settings(cls, settings: AugmentSettings, **kwargs: Any) -> "XRayAugment":
        """The layer of a run's augmentation section (`Config.augment`: its warp, intensity, noise and border
        settings and its seed; the flip and the resampling path are applied elsewhere). `kwargs`: Layer arguments
        such as `name`."""
        return cls(rotation=settings.rotation, scale=settings.scale, shift=settings.shift, shear=settings.shear,
                   brightness=settings.brightness, contrast=settings.contrast, gamma=settings.gamma,
                   noise=settings.noise, border=settings.border, seed=settings.seed, **kwargs)

    @property
    def geometric(self) -> bool:
        """Whether any geometric change is on."""
        return bool(self.rotation or self.shift or self.shear or self.scale != (1.0, 1.0))

    def _uniform(self, shape, low: float, high: float):
        return keras.random.uniform(shape, minval=low, maxval=high, dtype="float32", seed=self.seed_generator)

    def random_transforms(self, batch_size, height: int, width: int):
        """(B, 8) random transform rows for one batch (advances the seed generator)."""
        deg = math.pi / 180.0
        b = (batch_size,)
        rotation = self._uniform(b, -self.rotation * deg, self.rotation * deg) if self.rotation else ops.zeros(b)
        scale = self._uniform(b, *self.scale) if self.scale != (1.0, 1.0) else ops.ones(b)
        shift = self._uniform((batch_size, 2), -self.shift, self.shift) if self.shift else ops.zeros((batch_size, 2))
        shear = self._uniform(b, -self.shear * deg, self.shear * deg) if self.shear else ops.zeros(b)
        return affine_matrices(rotation, scale, shift, shear, height, width)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        x = ops.cast(inputs, "float32")
        batch = ops.shape(x)[0]
        per_image = (batch, 1, 1, 1)
        if self.geometric:
            x = affine_sample(x, self.random_transforms(batch, x.shape[1], x.shape[2]))
        x = ops.clip(x, 0.0, 255.0)
        if self.gamma:
            log_g = math.log1p(self.gamma)
            g = ops.exp(self._uniform(per_image, -log_g, log_g))
            x = 255.0 * ops.power(x / 255.0, g)
        if self.contrast:
            f = self._uniform(per_image, 1.0 - self.contrast, 1.0 + self.contrast)
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            x = (x - mean) * f + mean
        if self.brightness:
            x = x + 255.0 * self._uniform(per_image, -self.brightness, self.brightness)
        if self.noise:
            x = x + self.noise * keras.random.normal(ops.shape(x), dtype="float32", seed=self.seed_generator)
        x = ops.clip(x, 0.0, 255.0)
        if self.border:
            x = x * self._border_mask(batch, x.shape[1], x.shape[2])
        return ops.cast(x, keras.backend.standardize_dtype(inputs.dtype))

    def _border_mask(self, batch, height: int, width: int):
        """(B, H, W, 1) float mask: 0 in the bands blacked out (each side with probability 1/2, U(0, border) wide)."""
        on = ops.cast(self._uniform((batch, 4), 0.0, 1.0) < 0.5, "float32")
        w = on * self._uniform((batch, 4), 0.0, self.border)  # left, right, top, bottom, fractions of the size
        xs = (ops.arange(width, dtype="float32") + 0.5) / width
        ys = (ops.arange(height, dtype="float32") + 0.5) / height
        inside_x = (xs[None, :] >= w[:, 0:1]) & (xs[None, :] <= 1.0 - w[:, 1:2])  # (B, W)
        inside_y = (ys[None, :] >= w[:, 2:3]) & (ys[None, :] <= 1.0 - w[:, 3:4])  # (B, H)
        mask = ops.cast(inside_y, "float32")[:, :, None] * ops.cast(inside_x, "float32")[:, None, :]
        return mask[..., None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(rotation=self.rotation, scale=list(self.scale), shift=self.shift, shear=self.shear,
                      brightness=self.brightness, contrast=self.contrast, gamma=self.gamma, noise=self.noise,
                      border=self.border, seed=self.seed)
        return config
