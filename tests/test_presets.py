"""The named override sets (presets, ablation candidates, the tests' tiny configurations) give exactly the
Configs they gave before they shared one registry; the config hash of the saved runs and the committed ablation
document read the same.

The expected values are LITERAL copies of the dicts the code held before issue 24 (`config.PRESETS`,
`ablation.BASE` / `ablation.CANDIDATES`, `tests/test_train.py::tiny_config`, `tests/test_model.py::_config`), so a
change to a registered value shows up here."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from cxr import ablation
from cxr.config import Config
from cxr.evaluate import ledger

SMOKE = dict(max_per_class=24, image_size=96, batch_size=16, head_epochs=3, finetune_epochs=1, n_folds=2,
             n_bootstrap=200, gradcam_examples=1, explain_images=4)
BASE = {"aug_resample": 0.0, "aug_border": 0.0, "aug_contrast": 0.10, "aug_brightness": 0.10, "aug_gamma": 0.15,
        "backbone": "efficientnet_lite0"}
RESAMPLE = {"aug_resample": 0.5}
INTENSITY = {"aug_contrast": 0.3, "aug_brightness": 0.2, "aug_gamma": 0.5}
BORDER = {"aug_border": 0.12}
CANDIDATES = {
    "today": ("today's recipe: EfficientNet-Lite0, affine + intensity (+-10-15%)", {}),
    "resample": ("+ resampling path (rescale with random filters, blur / sharpen, JPEG), p = 0.5", RESAMPLE),
    "resample_lr": ("+ resampling path, fine-tuning peak learning rate 1e-4 instead of 3e-4",
                    {**RESAMPLE, "finetune_lr": 1e-4}),
    "resample_intensity": ("+ resampling path, wider intensity (contrast +-30%, brightness +-20%, gamma +-50%)",
                           {**RESAMPLE, **INTENSITY}),
    "resample_border": ("+ resampling path, border masking (each side up to 12%)", {**RESAMPLE, **BORDER}),
    "all_augment": ("+ resampling path, wider intensity, border masking", {**RESAMPLE, **INTENSITY, **BORDER}),
    "lite1": ("EfficientNet-Lite1, with the resampling path", {**RESAMPLE, "backbone": "efficientnet_lite1"}),
    "lite2": ("EfficientNet-Lite2, with the resampling path", {**RESAMPLE, "backbone": "efficientnet_lite2"}),
}
TINY = dict(backbone="tiny_cnn", weights=None, image_size=32, batch_size=8, head_epochs=10, head_lr=1e-2,
            finetune_epochs=3, finetune_lr=1e-2, n_bootstrap=50, mixed_precision="off", n_folds=3,
            class_balance="none", aug_rotation=0.0, aug_scale=0.0, aug_shift=0.0, aug_shear=0.0,
            aug_brightness=0.0, aug_contrast=0.0, aug_gamma=0.0, aug_noise=0.0)
V3 = dict(reencode_quality=75, wise_ft_alpha=0.5)  # protocol version 3 (cxr/presets.py, doc/protocol.md)
TINY_MODEL = dict(backbone="tiny_cnn", weights=None, image_size=32, seed=1, marker_zones=False)


def same(a: Config, b: Config) -> None:
    assert type(a) is type(b) is Config
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert a == b


def test_presets_give_the_configs_they_gave():
    same(Config.preset("full"), Config(**V3))
    same(Config.preset("smoke"), Config(mode="smoke", **SMOKE, **V3))
    same(Config.preset("smoke", seed=7, weights=None),
         Config(mode="smoke", **{**SMOKE, **V3, "seed": 7, "weights": None}))
    same(Config.preset("full", batch_size=16), Config(batch_size=16, **V3))


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_every_ablation_candidate_gives_the_config_it_gave(name):
    description, changes = CANDIDATES[name]
    for start in (Config(), Config.preset("smoke"), Config(aug_resample=0.9, finetune_lr=5e-4)):
        same(ablation.candidate_config(start, name), start.replace(**{**BASE, **changes}))
    assert list(ablation.CANDIDATES) == list(CANDIDATES)  # the order `python -m cxr ablation` runs them in
    candidate = ablation.CANDIDATES[name]
    assert (candidate.description, dict(candidate.values)) == (description, changes)
    assert list(candidate.values) == list(changes)  # the order written into <name>.json
    same(Config.preset(name), Config().replace(**{**BASE, **changes}))


def test_the_tests_tiny_configurations_are_the_ones_they_were():
    from test_model import _config
    from test_train import tiny_config

    same(tiny_config(), Config(**TINY))
    same(tiny_config(head_epochs=2, output_dir="x", aug_resample=0.0), Config(**{**TINY, "head_epochs": 2,
                                                                                   "output_dir": "x",
                                                                                   "aug_resample": 0.0}))
    same(_config(), Config.preset("smoke").replace(**TINY_MODEL))
    same(_config(horizontal_flip=True), Config.preset("smoke").replace(**TINY_MODEL, horizontal_flip=True))


def test_the_config_hash_of_saved_runs_and_the_ledger_is_unchanged():
    assert ledger.config_hash(Config()) == "3c22cd2e6e48"
    assert ledger.config_hash(Config.preset("full").replace(reencode_quality=None, wise_ft_alpha=None)) == "3c22cd2e6e48"
    assert ledger.config_hash(Config.preset("smoke").replace(reencode_quality=None, wise_ft_alpha=None)) == "cc85b9b2c59a"
    # protocol version 3's presets (doc/protocol.md): new hashes, and the v2 run's config keeps its own
    assert ledger.config_hash(Config.preset("full")) == "7c47c7a8f6ef"
    assert ledger.config_hash(Config.preset("smoke")) == "8e40ca69456a"
    assert ledger.config_hash(Config().to_dict()) == "3c22cd2e6e48"


def test_the_committed_ablation_document_loads_and_reads_the_same():
    doc = ablation.load()

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    assert digest(ablation.describe(doc)) == "0bd04c1017b426938fd849d3e11bdf3253c73a02fc5e06843465c0ba1a76712f"
    assert digest(ablation.describe(doc, "head")) == "f725a431238c11c51939332954182f31528a2f43d00361b14b96fe16c6394d41"
    assert digest(ablation.table(doc).to_csv()) == "e94ae631c47f5abd68a8b03fb5519440b2747b93ef8e2af37d5387a8f5495400"
    for name, result in doc["results"].items():  # what each candidate recorded is what the registry says today
        assert result["description"] == CANDIDATES[name][0] and result["changes"] == CANDIDATES[name][1]
