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
