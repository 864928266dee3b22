"""Every named set of Config changes, in one registry: the modes (`full`, `smoke`), the ablation's candidate
recipes and the test suite's configurations.

`Config.preset(name, **changes)` builds the Config of any set, `cxr.ablation.candidate_config` applies a candidate
to a given Config, and the tests take theirs from here. The values are plain field names and values (checked
against the Config's fields when `cxr.config` is imported); this module imports nothing of the package, so the
Config can read it without a cycle.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Mapping

GROUPS = ("mode", "ablation", "base", "test")


@dataclass(frozen=True)
class Overrides:
    """A named set of Config changes. `group`: "mode" (a preset whose name is the Config's `mode`), "ablation"
    (a candidate recipe of `cxr.ablation`, in the order it runs), "base" (a building block of other sets) or
    "test" (a configuration of the test suite). `values` are the set's own changes (read-only), `base` the set
    applied before them (`resolved`)."""

    name: str
    description: str
    group: str
    values: Mapping[str, Any]
    base: str | None = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"override set {self.name!r}: group must be one of {GROUPS}, not {self.group!r}")
        object.__setattr__(self, "values", types.MappingProxyType(dict(self.values)))

    def resolved(self) -> dict[str, Any]:
        """Every change of the set: its base's (resolved), then its own."""
        return {**(OVERRIDES[self.base].resolved() if self.base else {}), **self.values}

    @property
    def mode(self) -> str:
        """The mode of a Config of this set: the mode set at the root of its bases, else "full"."""
        root = self
        while root.base:
            root = OVERRIDES[root.base]
        return root.name if root.group == "mode" else "full"


def _registry(*sets: Overrides) -> dict[str, Overrides]:
    out: dict[str, Overrides] = {}
    for s in sets:
        if s.name in out or (s.base is not None and s.base not in out):
            raise ValueError(f"override set {s.name!r}: a name used twice or a base not defined before it")
        out[s.name] = s
    return out


_RESAMPLE = {"aug_resample": 0.5}
_INTENSITY = {"aug_contrast": 0.3, "aug_brightness": 0.2, "aug_gamma": 0.5}
_BORDER = {"aug_border": 0.12}
_ABLATION = "ablation_base"
# protocol version 3 (doc/protocol.md), declared before the test split was scored again: both measured on the block
# folds of the training children only (bench/resize_gap.py, bench/wise_ft.py)
_V3 = {"reencode_quality": 75, "wise_ft_alpha": 0.5}

OVERRIDES: dict[str, Overrides] = _registry(
    Overrides("full", "the real study (protocol version 3): every default, plus the canonical JPEG re-encode of "
              "every image and the WiSE-FT stage", "mode", _V3),
    Overrides("smoke", "CI and the smoke notebook, minutes on a CPU (protocol version 3's settings)", "mode", dict(
        **_V3, max_per_class=24, image_size=96, batch_size=16, head_epochs=3, finetune_epochs=1, n_folds=2, n_bootstrap=200,
        gradcam_examples=1, explain_images=4)),
    # the ablation (doc/ablation.json): each candidate on top of the recipe before it
    Overrides(_ABLATION, "the recipe before the ablation: no resampling path, no border masking, narrow intensity "
              "changes", "base", {"aug_resample": 0.0, "aug_border": 0.0, "aug_contrast": 0.10, "aug_brightness": 0.10,
                                  "aug_gamma": 0.15, "backbone": "efficientnet_lite0"}),
    Overrides("today", "today's recipe: EfficientNet-Lite0, affine + intensity (+-10-15%)", "ablation", {}, _ABLATION),
    Overrides("resample", "+ resampling path (rescale with random filters, blur / sharpen, JPEG), p = 0.5",
              "ablation", _RESAMPLE, _ABLATION),
    Overrides("resample_lr", "+ resampling path, fine-tuning peak learning rate 1e-4 instead of 3e-4", "ablation",
              {**_RESAMPLE, "finetune_lr": 1e-4}, _ABLATION),
    Overrides("resample_intensity", "+ resampling path, wider intensity (contrast +-30%, brightness +-20%, gamma "
              "+-50%)", "ablation", {**_RESAMPLE, **_INTENSITY}, _ABLATION),
    Overrides("resample_border", "+ resampling path, border masking (each side up to 12%)", "ablation",
              {**_RESAMPLE, **_BORDER}, _ABLATION),
    Overrides("all_augment", "+ resampling path, wider intensity, border masking", "ablation",
              {**_RESAMPLE, **_INTENSITY, **_BORDER}, _ABLATION),
    Overrides("lite1", "EfficientNet-Lite1, with the resampling path", "ablation",
              {**_RESAMPLE, "backbone": "efficientnet_lite1"}, _ABLATION),
    Overrides("lite2", "EfficientNet-Lite2, with the resampling path", "ablation",
              {**_RESAMPLE, "backbone": "efficientnet_lite2"}, _ABLATION),
    # the test suite's
    Overrides("no_warp", "the augmentation layer an identity: no affine warp, intensity change or noise (the "
              "resampling path and border masking keep their values)", "base", dict(
                  aug_rotation=0.0, aug_scale=0.0, aug_shift=0.0, aug_shear=0.0, aug_brightness=0.0,
                  aug_contrast=0.0, aug_gamma=0.0, aug_noise=0.0)),
    Overrides("tiny", "tests/test_train.py's training: a tiny CNN of random weights on 32-px images, 3 folds, 10 "
              "head epochs and 3 of fine-tuning at learning rate 1e-2, no class balance, float32, 50 resamples",
              "test", dict(backbone="tiny_cnn", weights=None, image_size=32, batch_size=8, head_epochs=10,
                           head_lr=1e-2, finetune_epochs=3, finetune_lr=1e-2, n_bootstrap=50, mixed_precision="off",
                           n_folds=3, class_balance="none"), "no_warp"),
    Overrides("tiny_model", "tests/test_model.py's chain: the smoke preset with a tiny CNN of random weights on "
              "32-px images, seed 1, the marker zones not masked", "test", dict(
                  backbone="tiny_cnn", weights=None, image_size=32, seed=1, marker_zones=False), "smoke"),
)
MODES = tuple(name for name, s in OVERRIDES.items() if s.group == "mode")  # ("full", "smoke"): `Config.mode`


def overrides_in(group: str) -> dict[str, Overrides]:
    """The named sets of one group ("mode", "ablation", "base", "test"), in registry order."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; choose one of {GROUPS}")
    return {name: s for name, s in OVERRIDES.items() if s.group == group}
