"""Configuration of one study run (a flat frozen dataclass; its named override sets, the `smoke` and `full` modes
among them, are `cxr.presets`'), its sections (read-only views of its fields that the code reading them takes
whole) and the fixed facts every layer shares: the class names, the splits and the task table. The bottom of the
package with `cxr.io` and `cxr.presets`, which import nothing of it."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.io import atomic_write_text
from cxr.presets import MODES, OVERRIDES, Overrides, overrides_in  # noqa: F401  (re-exported)

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
OFFICIAL_SPLITS = ("train", "val", "test")  # the folders of the Kaggle archive
SPLITS = ("train", "test")  # the study's: the training children (cross-validated in folds) and the official test
RESIZE_POLICIES = ("squash", "letterbox")
HASH_OMITTED_WHEN_NONE = ("reencode_quality", "wise_ft_alpha")  # fields added after config hashes were recorded: left out of
# `cxr.evaluate.ledger.config_hash` while None (off), so that a Config that predates them keeps its hash
CLASS_BALANCE = ("auto", "weights", "sampling", "none")


@dataclass(frozen=True)
class Task:
    """One binary classification task over the index: which rows take part, where its label is, its names, and
    whether it is the study's primary task (exactly one is: `primary_task`)."""

    rows: str  # "all", or a value of the `label` column: only the rows with that label take part
    column: str  # the index column holding the task's label
    positive: str  # the value of `column` that is class 1
    class_names: tuple[str, str]  # (class 0, class 1), as saved with the model and shown in figures
    title: str  # how tables and text name the task ("Pneumonia vs normal")
    primary: bool = False  # the main task: the headline, the comparison with the literature, the default task
    kept_class: int = 1  # the class whose sensitivity the operating rule keeps (its clinical polarity): 1 for
    # pneumonia (a missed pneumonia sends a sick child home), 0 for bacterial vs viral (a missed bacterial
    # pneumonia withholds antibiotics)


TASKS: dict[str, Task] = {
    "pneumonia": Task(rows="all", column="label", positive="PNEUMONIA", class_names=("NORMAL", "PNEUMONIA"),
                      title="Pneumonia vs normal", primary=True),
    "subtype": Task(rows="PNEUMONIA", column="subtype", positive="virus", class_names=("bacteria", "virus"),
                    title="Bacterial vs viral pneumonia", kept_class=0),
}


def task(name: str) -> Task:
    """The task called `name`, or a clear error listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def primary_task() -> str:
    """The name of the study's primary task (the one `Task` of `TASKS` with `primary`): "pneumonia"."""
    names = [name for name, t in TASKS.items() if t.primary]
    if len(names) != 1:
        raise ValueError(f"exactly one task of TASKS must be primary, not {names}")
    return names[0]


PRIMARY_TASK = primary_task()  # "pneumonia": the default task wherever a function takes one

THRESHOLD_POLICIES = ("plateau", "youden", "sensitivity", "specificity", "calibrated")
CALIBRATIONS = ("temperature", "platt", "none")


# ---------------------------------------------------------------------------------------------------------------
# Sections: read-only views of the flat Config, each taken whole by the code that reads it. The flat fields stay
# the one record (their names are `--set`'s, config.json's and the config hash's); a section is built from them.

GENERAL_FIELDS = ("mode", "seed", "output_dir")  # the run's name, its training randomness, its folder: owned by no
# section (a section may carry `seed`)
S = typing.TypeVar("S", bound="Section")


class Section:
    """Base of the sections: `RENAMED` maps a section field to its Config field where the names differ."""

    RENAMED: typing.ClassVar[dict[str, str]] = {}

    @classmethod
    def config_fields(cls) -> dict[str, str]:
        """{section field: the Config field it is read from}."""
        return {f.name: cls.RENAMED.get(f.name, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def of(cls: type[S], config: "Config") -> S:
        """The section of `config`."""
        return cls(**{name: getattr(config, source) for name, source in cls.config_fields().items()})


class _View(typing.Generic[S]):
    """`Config.<section>`: the section built from the instance's flat fields (not a dataclass field)."""

    def __init__(self, section: type[S]):
        self.section = section

    @typing.overload
    def __get__(self, config: None, owner: type) -> "_View[S]": ...
    @typing.overload
    def __get__(self, config: "Config", owner: type) -> S: ...

    def __get__(self, config: "Config | None", owner: type) -> "S | _View[S]":
        return self if config is None else self.section.of(config)


@dataclass(frozen=True)
class DataSettings(Section):
    """Where the images come from, their size, the folds, the exclusions (`cxr.data`)."""

    source: str | None
    data_dir: str
    image_size: int
    resize_policy: str
    n_folds: int
    split_seed: int
    fold_scheme: str
    exclude_test_patients: bool
    dedupe_test: bool
    near_duplicate_bits: int
    max_per_class: int | None
    reencode_quality: int | None


@dataclass(frozen=True)
class ModelSettings(Section):
    """The network (`cxr.model.build_model`), besides the image size of `DataSettings`."""

    backbone: str
    weights: str | None
    dropout: float
    stochastic_depth: float
    marker_zones: bool


@dataclass(frozen=True)
class AugmentSettings(Section):
    """The training augmentation (`cxr.augment`): the `aug_*` fields without their prefix, the flip, the seed."""

    RENAMED: typing.ClassVar[dict[str, str]] = {name: f"aug_{name}" for name in (
        "rotation", "scale", "shift", "shear", "brightness", "contrast", "gamma", "noise", "border", "resample")}
    horizontal_flip: bool
    rotation: float
    scale: float
    shift: float
    shear: float
    brightness: float
    contrast: float
    gamma: float
    noise: float
    border: float
    resample: float
    seed: int


@dataclass(frozen=True)
class TrainSettings(Section):
    """The two training stages, the batch and the dtype (`cxr.train`); the optimizer is `OptimizerSettings`."""

    seed: int
    batch_size: int | None
    head_epochs: int
    head_lr: float
    class_balance: str
    finetune_epochs: int
    finetune_tasks: tuple[str, ...]
    finetune_blocks: int
    wise_ft_alpha: float | None
    mixed_precision: str


@dataclass(frozen=True)
class OptimizerSettings(Section):
    """AdamW of the fine-tuning stage with layer-wise decay, warmup then cosine (`cxr.train.finetune_optimizer`)."""

    finetune_lr: float
    weight_decay: float
    layer_decay: float
    warmup_fraction: float
    final_lr_fraction: float


@dataclass(frozen=True)
class OperatingSettings(Section):
    """Each task's operating rule and its targets, and the calibration shipped with the model."""

    threshold_policy: str
    target_sensitivity: float
    min_specificity: float
    subtype_threshold_policy: str
    target_specificity: float
    subtype_min_sensitivity: float
    threshold_tolerance: float
    calibration: str


@dataclass(frozen=True)
class BootstrapSettings(Section):
    """The settings of every interval: resamples, level, seed."""

    n_bootstrap: int
    ci_level: float
    seed: int

    def as_kwargs(self) -> dict[str, Any]:
        """{n_bootstrap, ci_level, seed}: the keyword arguments of the reports and intervals."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExplainSettings(Section):
    """How many cases the explanation shows and checks (`cxr.explain`)."""

    gradcam_examples: int
    explain_images: int


@dataclass(frozen=True)
class Config:
    """Every choice of a run, and the ONLY place where a default is written: functions below take values.
    Change it with `replace` or `Config.preset(name, **changes)` (a named set of `cxr.presets`); read a part of it
    whole through its sections (`config.augment`, `config.training`, ...: `Section`)."""

    mode: str = "full"
    # data
    source: str | None = None  # zip or folder; None: $CXR_DATA, ../shared copy, Kaggle, bundled sample
    data_dir: str = "data"  # where downloads, extractions and caches live
    image_size: int = 224
    resize_policy: str = "squash"  # "squash" (stretch to a square) or "letterbox" (pad to a square)
    n_folds: int = 4  # the training children are split into this many patient-grouped folds (cross-validation)
    split_seed: int = 42  # the folds (and the smoke-mode cap); separate from the training seed
    fold_scheme: str = "blocks"  # how the training children are cut into folds: "blocks" (contiguous ID blocks of
    # every file-name family, periods of time, as the official test is cut: `cxr.data.split.block_folds`;
    # protocol v2) or "random" (StratifiedGroupKFold seeded by split_seed; protocol v1)
    # Kaggle file names reuse patient ids in train and test: drop training images whose id is also in the official
    # test (the test is never changed), so that no patient id appears in two splits.
    exclude_test_patients: bool = True
    dedupe_test: bool = True  # (protocol v2; v1: False) a test image byte-identical to another test image of the
    # same class is counted once (the first path kept, the others excluded with their reason)
    near_duplicate_bits: int = 30  # images whose perceptual hashes differ in at most this many of 255 bits are
    # treated as copies (one group, one split; a training image near a test image is excluded)
    max_per_class: int | None = None  # cap images per (split, class); smoke mode only
    reencode_quality: int | None = None  # None: off (protocol v2); 1..95: JPEG re-encode every image after the resize
    # model
    backbone: str = "efficientnet_lite0"  # or efficientnet_lite1/2, any keras.applications name ("EfficientNetB0")
    weights: str | None = "imagenet"  # "imagenet", a local weights file, or None (random, explicit)
    dropout: float = 0.2
    stochastic_depth: float = 0.0  # efficientnet_lite* drop-connect rate in training; 0: off (the blocks are
    # ImageNet-trained with it, but fine-tuning for a few epochs on a few thousand images does better without noise)
    # augmentation, training only (`cxr.augment`): one affine warp per image + intensity changes in the model's
    # training wrapper, and the resampling path (rescale, blur / sharpen, JPEG) where batches are drawn
    horizontal_flip: bool = False  # chest anatomy is not left-right symmetric
    marker_zones: bool = True  # (protocol v2; v1: False) black out the corner zones where burned-in markers lie (`cxr.data.markers.ZONES`:
    # the acquisition stamp's bold "R" and "KV" text) in every image, in the model's first layer, so training,
    # scoring, Grad-CAM and predict apply it alike
    aug_rotation: float = 10.0  # degrees, uniform in +-
    aug_scale: float = 0.10  # isotropic scale, uniform in 1 +- aug_scale
    aug_shift: float = 0.05  # fraction of the width / height, uniform in +-
    aug_shear: float = 3.0  # degrees, uniform in +-
    aug_brightness: float = 0.20  # + 255 * U(+-aug_brightness)
    aug_contrast: float = 0.30  # factor U(1 +- aug_contrast) about the image mean
    aug_gamma: float = 0.50  # gamma with log g uniform in +-log(1 + aug_gamma)
    aug_noise: float = 3.0  # gaussian noise, standard deviation in grey levels (0..255)
    aug_border: float = 0.0  # border masking: each side blacked out with probability 1/2 over U(0, aug_border) of
    # the size (0: off); against markers and collimation edges as shortcuts
    aug_resample: float = 0.5  # probability that an image goes through a random resampling path (down and back up
    # with random filters, blur or sharpening, JPEG re-compression; 0: off): the score should not depend on how
    # an image was resized
    # training (`cxr.train`): stage 1 = head on cached frozen features, stage 2 = backbone fine-tuning, in every fold
    seed: int = 42  # training randomness (initialisation, batches, augmentation); not the split (`split_seed`)
    batch_size: int | None = None  # per step, all devices together; None: 32 on a CPU, on a GPU by its memory
    # (`cxr.train.device.GPU_PROFILES`: 64 per 16 GB T4/P100, 128 per 24-32 GB card, 256 per 40-80 GB A100/H100; resolved once
    # by `cxr.train.resolve`, then used by training, scoring, Grad-CAM and predict alike)
    head_epochs: int = 50  # stage 1 at most; the epoch is chosen on the pooled out-of-fold log-loss
    head_lr: float = 1e-3
    class_balance: str = "auto"  # "weights" (balanced class weights), "sampling" (balanced batches), "none", or
    # "auto": the three compared on the head stage by out-of-fold log-loss, the winner used for both stages
    finetune_epochs: int = 3  # stage 2 at most (the epoch is chosen on the pooled out-of-fold log-loss); 0: head only
    finetune_tasks: tuple[str, ...] = ("pneumonia",)  # the tasks whose backbone is fine-tuned; the others keep the
    # head on frozen ImageNet features. The full preset fits a 2-core CPU in about an hour this way; on a GPU,
    # `--set finetune_tasks=pneumonia,subtype` fine-tunes the bacterial-vs-viral task too (doc/protocol.md)
    finetune_blocks: int = -1  # top backbone blocks unfrozen in stage 2; -1: the whole backbone (BatchNorm frozen)
    wise_ft_alpha: float | None = None  # None: off (protocol v2); in [0, 1]: the WiSE-FT stage of `cxr.train.fit`,
    # each fold's head-stage and last fine-tuning weights mixed (1 - alpha) * head + alpha * fine-tuned, kept when its
    # pooled OOF selection loss is the lowest of the three stages (protocol v3: 0.5, fixed before it was measured)
    finetune_lr: float = 3e-4  # peak learning rate (AdamW) of the top block and the head
    weight_decay: float = 0.02  # AdamW decoupled weight decay (kernels only)
    layer_decay: float = 0.8  # learning rate x layer_decay**k for the k-th block below the top
    warmup_fraction: float = 0.1  # linear warmup over this share of the stage's steps, then cosine decay
    final_lr_fraction: float = 0.01  # the cosine ends at finetune_lr * final_lr_fraction
    mixed_precision: str = "auto"  # "auto" (on a GPU: mixed_bfloat16 where it has bfloat16 units, Ampere and
    # later, mixed_float16 on older ones such as T4, P100, V100; float32 on a CPU), "on" (bfloat16), "float16", "off"
    # evaluation: every choice on the out-of-fold predictions of the training children, the test scored once per task in a run
    # the operating point (cxr.evaluate.threshold): "sensitivity" (the highest threshold that keeps
    # `target_sensitivity`), "plateau" (the middle of the thresholds whose Youden J is within `threshold_tolerance`
    # of the best), "youden", or "calibrated" (0.5 after the model's calibration)
    threshold_policy: str = "sensitivity"  # the primary task's rule
    target_sensitivity: float = 0.95
    min_specificity: float = 0.70  # co-primary target of the primary task (WHO-style target product profile):
    # reported as met or missed on the out-of-fold, cross-fitted and test predictions, never tuned for
    # the second task (bacterial vs viral, `Task.kept_class` 0): "specificity" keeps class 0's sensitivity, the
    # bacterial one, at `target_specificity` (the lowest threshold whose out-of-fold specificity reaches it); when
    # the viral sensitivity (class 1) is then below `subtype_min_sensitivity` on the out-of-fold predictions, no
    # threshold serves both and the task is reported without an operating point (at 0.5 only)
    subtype_threshold_policy: str = "specificity"
    target_specificity: float = 0.90
    subtype_min_sensitivity: float = 0.50
    threshold_tolerance: float = 0.05
    calibration: str = "platt"  # fitted on the out-of-fold predictions, saved with the model: "platt",
    # "temperature" or "none"
    n_bootstrap: int = 2000
    ci_level: float = 0.95
    # explanation
    gradcam_examples: int = 2  # per confusion cell (TP, TN, FP, FN)
    explain_images: int = 32  # test images for the randomisation and deletion/insertion checks
    output_dir: str | None = None  # the run folder; None: runs/<mode> (see `run_dir`)

    # the sections, read-only views of the fields above (not fields: the record, the hash and `--set` stay flat)
    data = _View(DataSettings)
    model = _View(ModelSettings)
    augment = _View(AugmentSettings)
    training = _View(TrainSettings)
    optimizer = _View(OptimizerSettings)
    operating = _View(OperatingSettings)
    bootstrap = _View(BootstrapSettings)
    explain = _View(ExplainSettings)

    @property
    def run_dir(self) -> Path:
        """THE rule for run folders (train, evaluate, notebook, predict): `output_dir`, else runs/<mode>."""
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.mode

    @staticmethod
    def preset(name: str, **changes: Any) -> "Config":
        """The Config of the named override set `name` (`OVERRIDES`: the modes `smoke`, CI in minutes on a CPU, and
        `full`, the real study; an ablation candidate; a test configuration), with `changes` on top. Its mode is
        the mode at the root of its bases ("full" when there is none).

        Every change counts, None included (`preset("full", weights=None)` gives random weights); an unknown
        name or field is an error."""
        if name not in OVERRIDES:
            raise ValueError(f"unknown mode {name!r}; choose one of {sorted(MODES)} or a named set of "
                             f"{sorted(set(OVERRIDES) - set(MODES))}")
        _check_names(changes)
        return Config(mode=OVERRIDES[name].mode, **{**OVERRIDES[name].resolved(), **changes})

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Config":
        """A Config from `to_dict` output read back from JSON (config.json, model.json): fields this version does
        not know are ignored, lists become tuples again."""
        known = {f.name for f in dataclasses.fields(Config)}
        return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    @staticmethod
    def load(path: str | Path) -> "Config":
        """A Config saved by `save`."""
        return Config.from_dict(json.loads(Path(path).read_text()))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {sorted(MODES)}")
        if self.mixed_precision not in ("auto", "on", "float16", "off"):
            raise ValueError(f"mixed_precision must be 'auto', 'on', 'float16' or 'off', not {self.mixed_precision!r}")
        if self.resize_policy not in RESIZE_POLICIES:
            raise ValueError(f"resize_policy must be 'squash' or 'letterbox', not {self.resize_policy!r}")
        for name in ("threshold_policy", "subtype_threshold_policy"):
            if getattr(self, name) not in THRESHOLD_POLICIES:
                raise ValueError(f"{name} must be one of {THRESHOLD_POLICIES}, not {getattr(self, name)!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {self.calibration!r}")
        if self.threshold_policy == "calibrated" and self.calibration == "none":
            raise ValueError("threshold_policy 'calibrated' needs a calibration ('platt' or 'temperature')")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, not {self.n_folds!r}")
        if self.fold_scheme not in ("random", "blocks"):
            raise ValueError(f"fold_scheme must be 'random' or 'blocks', not {self.fold_scheme!r}")
        unknown = sorted(set(self.finetune_tasks) - set(TASKS))
        if isinstance(self.finetune_tasks, str) or unknown:
            raise ValueError(f"finetune_tasks must be a tuple of task names from {sorted(TASKS)}, not "
                             f"{self.finetune_tasks!r}")
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {CLASS_BALANCE}, not {self.class_balance!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be None (auto) or >= 1")
        for name in ("target_sensitivity", "target_specificity", "min_specificity", "subtype_min_sensitivity"):
            if not 0.0 <= getattr(self, name) <= 1.0 or (name.startswith("target") and getattr(self, name) == 0.0):
                raise ValueError(f"{name} must lie in (0, 1]" if name.startswith("target") else
                                 f"{name} must lie in [0, 1]")
        q = self.reencode_quality
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 95):
            raise ValueError(f"reencode_quality must be None (off) or an integer JPEG quality 1..95, not {q!r}")
        a = self.wise_ft_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
            raise ValueError(f"wise_ft_alpha must be None (off) or a number in [0, 1], not {a!r}")
        if not 0.0 <= self.aug_resample <= 1.0 or not 0.0 <= self.aug_border < 0.5:
            raise ValueError("aug_resample must lie in [0, 1] and aug_border in [0, 0.5)")


def _check_names(values: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(Config)} - {"mode"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the settings are {sorted(known)}")


def _parse_value(text: str, kind: Any, name: str) -> Any:
    """`text` as a value of the type `kind` (int, float, bool, str, a tuple of str given comma-separated, or an
    Optional / union of them)."""
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if type(None) in options and text.strip().lower() in ("none", "null", ""):
        return None
    for option in (o for o in options if o is not type(None)):
        if option is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            continue
        try:
            return option(text)
        except (TypeError, ValueError):
            continue
    raise ValueError(f"--set {name}={text}: not a valid {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")


def parse_settings(items: list[str] | None) -> dict[str, Any]:
    """`["key=value", ...]` (the CLI's repeatable `--set`) -> {field: value}, each value parsed by the type of its
    Config field (int, float, bool, str, None for an optional field). Unknown names and bad values are errors."""
    hints = typing.get_type_hints(Config)
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        name, text = item.split("=", 1)
        name = name.strip().replace("-", "_")
        _check_names({name: None})
        out[name] = _parse_value(text, hints[name], name)
    return out


for _set in OVERRIDES.values():  # every named set changes Config fields only
    _check_names(dict(_set.values))
