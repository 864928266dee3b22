"""Configuration of one study run: a frozen dataclass with `smoke` and `full` presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SUBTYPE_NAMES = ("bacteria", "virus")


@dataclass(frozen=True)
class Config:
    """Every choice of a run. Change it with `dataclasses.replace` or `Config.preset(mode, **overrides)`."""

    mode: str = "full"
    # data
    source: str | None = None  # zip or folder; None: $CXR_DATA, ../shared copy, Kaggle, bundled sample
    data_dir: str = "data"  # where downloads, extractions and caches live
    image_size: int = 224
    resize_policy: str = "squash"  # "squash" (stretch to a square) or "letterbox" (pad to a square)
    val_fraction: float = 0.15  # share of training patients held out for validation
    seed: int = 42
    # Kaggle file names reuse patient ids in train and test: drop training images whose id is also in the official
    # test (the test is never changed), so that no patient id appears in two splits.
    exclude_test_patients: bool = True
    max_per_class: int | None = None  # cap images per (split, class); smoke mode only
    # model
    backbone: str = "efficientnet_lite0"  # or any keras.applications name, e.g. "EfficientNetB0"
    weights: str | None = "imagenet"  # "imagenet", a local weights file, or None (random, explicit)
    dropout: float = 0.2
    horizontal_flip: bool = False  # chest anatomy is not left-right symmetric
    rotation: float = 0.03  # fraction of a full turn (about 11 degrees)
    zoom: float = 0.10
    translation: float = 0.05
    contrast: float = 0.10
    brightness: float = 0.10
    # training
    batch_size: int = 32
    head_epochs: int = 30  # stage 1: head on frozen, cached backbone features
    head_lr: float = 1e-3
    finetune_epochs: int = 4  # stage 2: top blocks unfrozen, augmentation on
    finetune_blocks: int = 2  # how many top backbone blocks to unfreeze
    finetune_lr: float = 1e-4
    patience: int = 5  # early stopping on validation AUROC
    mixed_precision: str = "auto"  # "auto" (on GPU only), "on", "off"
    # evaluation
    threshold_policy: str = "youden"  # "youden" or "sensitivity"
    target_sensitivity: float = 0.95
    n_bootstrap: int = 2000
    ci_level: float = 0.95
    # explanation
    gradcam_examples: int = 2  # per confusion cell (TP, TN, FP, FN)
    explain_images: int = 32  # test images for the randomisation and deletion/insertion checks
    output_dir: str = "runs/latest"

    @staticmethod
    def preset(mode: str, **overrides: Any) -> "Config":
        """The `smoke` (CI, minutes on a CPU) or `full` (the real study) configuration."""
        if mode not in PRESETS:
            raise ValueError(f"unknown mode {mode!r}; choose one of {sorted(PRESETS)}")
        values = {**PRESETS[mode], **{k: v for k, v in overrides.items() if v is not None}}
        return Config(mode=mode, **values)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from cxr.data import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def load(path: str | Path) -> "Config":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(Config)}
        return Config(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if self.resize_policy not in ("squash", "letterbox"):
            raise ValueError(f"resize_policy must be 'squash' or 'letterbox', not {self.resize_policy!r}")
        if self.threshold_policy not in ("youden", "sensitivity"):
            raise ValueError(f"threshold_policy must be 'youden' or 'sensitivity', not {self.threshold_policy!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must lie in (0, 1)")


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "smoke": dict(
        max_per_class=24,
        image_size=96,
        batch_size=16,
        head_epochs=3,
        finetune_epochs=1,
        finetune_blocks=1,
        patience=2,
        n_bootstrap=200,
        gradcam_examples=1,
        explain_images=4,
        output_dir="runs/smoke",
    ),
}
