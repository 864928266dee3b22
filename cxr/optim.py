"""Optimisation for fine-tuning: warmup + cosine learning rate, and AdamW with layer-wise learning-rate decay.

`LayerwiseAdamW` scales the learning rate of each variable by a multiplier keyed by the variable's `path`
(`layerwise_multipliers` gives 1 to the head and the top backbone block and decay**k to the k-th block below).
The decoupled weight decay is scaled by the same multiplier, so a variable with multiplier 0 does not move at all.

It overrides `update_step`, which every backend calls for every variable of a subclass: the base
`_backend_update_step` loops over `update_step` (JAX, also inside `stateless_apply`), TensorFlow calls it through
`distribution.extended.update`, and torch only swaps EXACT built-in classes for its fused `_parallel_update_step`
versions (`TorchOptimizer.__new__` looks `cls` up in a dict), so a subclass keeps the per-variable loop.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int,
                  final_fraction: float = 0.01) -> keras.optimizers.schedules.CosineDecay:
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to `peak_lr * final_fraction`.

    `total_steps` counts both phases (optimizer steps, i.e. batches); the rate stays at its final value after.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if peak_lr <= 0 or not 0 <= final_fraction <= 1:
        raise ValueError(f"need peak_lr > 0 and 0 <= final_fraction <= 1, got {peak_lr} and {final_fraction}")
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, decay_steps=total_steps, alpha=final_fraction)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total_steps - warmup_steps, alpha=final_fraction,
                                                  warmup_target=peak_lr, warmup_steps=warmup_steps)


@keras.saving.register_keras_serializable(package="cxr")
class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate (and decoupled weight decay) is multiplied per variable by `multipliers[path]`.

    multipliers: {variable.path: factor}; variables not named get 1.0, so with no multipliers (or all 1.0) the
    updates are those of `keras.optimizers.AdamW`. A factor of 0 freezes the variable (no step, no decay).
    Every other argument is AdamW's.
    """

    def __init__(self, multipliers: dict[str, float] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.multipliers = {str(k): float(v) for k, v in (multipliers or {}).items()}
        if any(v < 0 for v in self.multipliers.values()):
            raise ValueError("learning-rate multipliers must be >= 0")
        self._lr_multipliers: list[float] = []

    def build(self, variables):
        super().build(variables)
        # By position in the optimizer's variable list: under TensorFlow `update_step` receives the backend
        # tf.Variable, which has no Keras `path`, but `_get_variable_index` maps it back.
        self._lr_multipliers = [self.multipliers.get(v.path, 1.0) for v in self._trainable_variables]

    def multiplier(self, variable) -> float:
        """The learning-rate multiplier of a variable the optimizer was built with."""
        return self._lr_multipliers[self._get_variable_index(variable)]

    def _apply_weight_decay(self, variables):
        """Done per variable in `update_step`, with the variable's multiplier."""
        return

    def update_step(self, gradient, variable, learning_rate):
        factor = self.multiplier(variable)
        if factor == 0.0:
            return
        if factor != 1.0:
            learning_rate = learning_rate * factor
        if self.weight_decay is not None and self._use_weight_decay(variable):
            # exactly the base class' decoupled decay, variable - variable * wd * lr, at the scaled rate
            lr = ops.cast(learning_rate, variable.dtype)
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign(variable, variable - variable * wd * lr)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["multipliers"] = dict(self.multipliers)
        return config


def layerwise_multipliers(model: keras.Model, decay: float, backbone_layer: str = "backbone") -> dict[str, float]:
    """{variable.path: multiplier} for every weight of `model`: 1.0 outside the backbone (head) and for the TOP
    backbone block, decay**k for the k-th block below it (blocks from `cxr.model.backbone_blocks`, stem last)."""
    from cxr.model import backbone_blocks

    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    multipliers = {v.path: 1.0 for v in model.weights}
    for k, block in enumerate(backbone_blocks(model.get_layer(backbone_layer))):
        for layer in block:
            for v in layer.weights:
                multipliers[v.path] = decay ** k
    return multipliers
