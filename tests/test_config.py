"""Configuration: presets, overrides (None included), unknown names and values, `--set` parsing, run folders."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxr.__main__ import main
from cxr.config import TASKS, Config, parse_settings


def test_preset_keeps_explicit_none_overrides():
    assert Config.preset("full").weights == "imagenet"
    assert Config.preset("full", weights=None).weights is None
    assert Config.preset("smoke", max_per_class=None).max_per_class is None
    assert Config.preset("smoke").max_per_class == 24


def test_unknown_mode_field_or_value_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        Config.preset("fast")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['wieghts'\]"):
        Config.preset("full", wieghts=None)
    with pytest.raises(ValueError, match="mixed_precision"):
        Config.preset("full", mixed_precision="yes")
    with pytest.raises(ValueError, match="unknown mode"):
        Config(mode="tiny")


def test_set_values_are_parsed_by_the_field_type():
    got = parse_settings(["seed=7", "aug_resample=0.5", "exclude_test_patients=false", "weights=none",
                          "max_per_class=10", "backbone=EfficientNetB0", "horizontal_flip=yes", "source=none",
                          "finetune_tasks=pneumonia, subtype"])
    assert got == {"seed": 7, "aug_resample": 0.5, "exclude_test_patients": False, "weights": None,
                   "max_per_class": 10, "backbone": "EfficientNetB0", "horizontal_flip": True, "source": None,
                   "finetune_tasks": ("pneumonia", "subtype")}
    assert isinstance(got["seed"], int) and isinstance(got["aug_resample"], float)
    assert parse_settings(["finetune_tasks=pneumonia"]) == {"finetune_tasks": ("pneumonia",)}
    assert parse_settings(["max-per-class=none"]) == {"max_per_class": None}
    for bad, message in (("seed=seven", "not a valid int"), ("horizontal_flip=maybe", "not a valid bool"),
                         ("image_size=none", "not a valid int"), ("nosuch=1", "unknown setting"),
                         ("seed", "key=value"), ("val_fraction=0.2", "unknown setting")):
        with pytest.raises(ValueError, match=message):
            parse_settings([bad])
    with pytest.raises(ValueError, match="finetune_tasks"):
        Config(finetune_tasks=("pneumonia", "fracture"))


def test_config_is_the_single_source_of_defaults_and_saves_what_it_holds(tmp_path):
    """Config round-trips through config.json (tuples included); the split seed is its own setting."""
    c = Config.preset("smoke", seed=7, finetune_tasks=("pneumonia",))
    c.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == c
    assert c.split_seed == Config().split_seed and c.seed == 7  # --set seed leaves the folds alone
    assert Config.preset("smoke").n_folds == 2 and Config().n_folds >= 3


def test_one_rule_for_run_folders():
    assert Config.preset("smoke").run_dir == Path("runs/smoke")
    assert Config.preset("full").run_dir == Path("runs/full")
    assert Config.preset("full", output_dir="elsewhere").run_dir == Path("elsewhere")


def test_cli_rejects_a_bad_set_with_one_line(capsys):
    assert main(["results", "--set", "bogus=1"]) == 2
    assert "unknown setting" in capsys.readouterr().err


def test_task_table_names_the_classes():
    assert TASKS["pneumonia"].class_names == ("NORMAL", "PNEUMONIA")
    assert TASKS["subtype"].class_names == ("bacteria", "virus")
    assert all(t.positive == t.class_names[1] for t in TASKS.values())


def test_every_field_belongs_to_exactly_one_section_or_the_general_list():
    """A new Config field must be placed: in one section (`cxr.config.Section`) or in GENERAL_FIELDS."""
    import dataclasses
    import typing

    from cxr import config as C

    views = {name: view.section for name, view in vars(Config).items() if isinstance(view, C._View)}
    assert set(views) == {"data", "model", "augment", "training", "optimizer", "operating", "bootstrap", "explain"}
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    owners: dict[str, list[str]] = {name: [] for name in fields}
    for view, section in views.items():
        for name, source in section.config_fields().items():
            assert source in fields, (view, name, source)
            assert {f.name: f.type for f in dataclasses.fields(section)}[name] == fields[source]  # the same type
            if source not in C.GENERAL_FIELDS:
                owners[source].append(view)
    assert not set(C.GENERAL_FIELDS) - set(fields)
    placed = {name: views for name, views in owners.items() if name not in C.GENERAL_FIELDS}
    assert all(len(v) == 1 for v in placed.values()), {k: v for k, v in placed.items() if len(v) != 1}
    assert typing.get_type_hints(C.AugmentSettings)["rotation"] is float


def test_sections_are_read_only_views_of_the_flat_fields():
    import dataclasses

    from cxr.config import AugmentSettings, BootstrapSettings

    c = Config.preset("smoke", aug_rotation=7.0, seed=3)
    assert c.augment == AugmentSettings.of(c) and c.augment.rotation == 7.0 and c.augment.seed == 3
    assert c.augment.resample == c.aug_resample and c.augment.horizontal_flip is False
    assert c.bootstrap == BootstrapSettings(n_bootstrap=200, ci_level=0.95, seed=3)
    assert c.bootstrap.as_kwargs() == {"n_bootstrap": 200, "ci_level": 0.95, "seed": 3}
    assert c.training.finetune_tasks == ("pneumonia",) and c.optimizer.finetune_lr == c.finetune_lr
    assert c.data.image_size == 96 and c.model.backbone == c.backbone and c.explain.explain_images == 4
    assert c.operating.threshold_policy == "sensitivity" and c.operating.calibration == "platt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.augment.rotation = 1.0  # type: ignore[misc]
    assert "augment" not in c.to_dict() and Config.from_dict(c.to_dict()) == c  # not fields: the record stays flat


def test_every_named_set_is_registered_once_with_config_fields_only():
    import dataclasses

    from cxr import presets

    assert presets.MODES == ("full", "smoke")
    assert list(presets.overrides_in("ablation"))[0] == "today"
    for name, s in presets.OVERRIDES.items():
        assert s.name == name and s.description and s.group in presets.GROUPS
        Config.preset(name)  # every set builds a valid Config
    with pytest.raises(TypeError):
        presets.OVERRIDES["smoke"].values["seed"] = 1  # type: ignore[index]
    assert Config.preset("tiny_model").mode == "smoke" and Config.preset("tiny").mode == "full"
    fields = {f.name for f in dataclasses.fields(Config)} - {"mode"}
    assert all(set(s.values) <= fields for s in presets.OVERRIDES.values())  # also checked on import
    with pytest.raises(ValueError, match="a base not defined before it"):
        presets._registry(presets.Overrides("bad", "a base that is not there", "test", {}, base="nosuch"))


def test_reencode_quality_is_off_by_default_checked_parsed_and_kept_out_of_older_hashes():
    from cxr.evaluate import ledger

    assert Config().reencode_quality is None and Config().data.reencode_quality is None
    assert Config(reencode_quality=75).data.reencode_quality == 75
    assert parse_settings(["reencode_quality=75"]) == {"reencode_quality": 75}
    assert parse_settings(["reencode_quality=none"]) == {"reencode_quality": None}
    for bad in (0, 96, 100, True, 75.0, "75"):
        with pytest.raises(ValueError, match="reencode_quality"):
            Config(reencode_quality=bad)
    older = {k: v for k, v in Config().to_dict().items() if k != "reencode_quality"}  # a config.json before it
    assert Config.from_dict(older) == Config()
    assert ledger.config_hash(older) == ledger.config_hash(Config()) == ledger.config_hash(Config().to_dict())
    assert ledger.config_hash(Config(reencode_quality=75)) != ledger.config_hash(Config())  # on, it counts
