"""What a user's run meets besides good data: a second run into the same folder, a killed earlier run's leftovers,
a hand-edited or foreign model.json, a damaged model.keras, two images with one name, a full disk, and the GPU
presets of the cards Kaggle, Colab and a lab have."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from cxr import UserError, io as cxr_io, pipeline
from cxr.__main__ import _ledger_line, _user_message, main
from cxr.config import Config
from cxr.predict import overlay_names, predict_files

# ----------------------------------------------------------------------------------------------------------------
# The run folder is one run's
# ----------------------------------------------------------------------------------------------------------------

HOLD = "import sys, time; from cxr.io import lock_folder; lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_locked_run_folder_gets_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(UserError, match="being written by another run"):
            pipeline.start_run(Config(output_dir=str(run)))
        code = main(["train", "--mode", "smoke", "--run", str(run), "--source", str(tmp_path / "nowhere")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"process {holder.pid}" in err, err
        assert not (run / "config.json").exists()  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # the system drops a killed process's lock: the folder is free again, and this process may take it twice
    assert cxr_io.lock_folder(run) == run / ".lock"
    assert cxr_io.lock_folder(run) == run / ".lock"
    cxr_io.unlock_folder(run)


def test_taking_the_run_folder_sweeps_what_a_killed_run_left(tmp_path):
    run = tmp_path / "run"
    (run / ".pneumonia.tmp-abc123").mkdir(parents=True)  # a model save killed half-way
    (run / ".pneumonia.tmp-abc123" / "model.keras").write_bytes(b"x" * 100)
    (run / "figures").mkdir()
    (run / "figures" / ".roc.png.k2j3.tmp").write_bytes(b"half a png")
    (run / "metrics.json").write_text("{}")
    try:
        pipeline.lock_run(run)
        assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [".lock", "figures", "metrics.json"]
    finally:
        cxr_io.unlock_folder(run)


def test_sweep_leaves_a_live_writers_young_temporaries(tmp_path):
    young = tmp_path / ".a.json.x.tmp"
    old = tmp_path / ".b.json.y.tmp"
    young.write_text("1")
    old.write_text("2")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert cxr_io.sweep_stale(tmp_path) == [old]
    assert young.exists() and not old.exists()


def test_the_last_line_counts_the_ledger_not_the_intention(tmp_path):
    from cxr.evaluate import ledger

    doc = {}
    assert "scored 0 times" in _ledger_line(tmp_path, doc) and "never" in _ledger_line(tmp_path, doc)
    for _ in range(2):  # a killed and re-run train scores the test twice
        ledger.record_test_access(tmp_path, "pneumonia", {"a": 1}, {"auroc": 0.9})
    ledger.record_test_access(tmp_path, "subtype", {"a": 1}, {"auroc": 0.8})
    line = _ledger_line(tmp_path, doc)
    assert "scored 3 times" in line and "pneumonia 2x" in line and "subtype 1x" in line


# ----------------------------------------------------------------------------------------------------------------
# Disk errors name their path
# ----------------------------------------------------------------------------------------------------------------


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr(cxr_io.os, "fsync", full)
    target = tmp_path / "runs" / "x" / "metrics.json"
    with pytest.raises(OSError) as caught:
        cxr_io.atomic_write_text(target, "{}")
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert _user_message(caught.value) == f"cannot write {target}: No space left on device; choose another " \
                                          "output path or free space."
    assert list(target.parent.iterdir()) == []  # no temporary left behind
    with pytest.raises(OSError) as caught:
        with cxr_io.atomic_folder(tmp_path / "model") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(tmp_path / "model")


# ----------------------------------------------------------------------------------------------------------------
# model.json and model.keras as users hand them over
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from cxr import model as cxr_model

    config = Config(backbone="tiny_cnn", weights=None, image_size=32, batch_size=4)
    net = cxr_model.build_model(config, name="pneumonia")
    folder = tmp_path_factory.mktemp("run") / "pneumonia"
    return cxr_model.save_model(net, folder, config, threshold=0.5, class_names=("NORMAL", "PNEUMONIA"))


def _edited(model_dir: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    text = edit(meta)
    (folder / "model.json").write_text(text if isinstance(text, str) else json.dumps(meta))
    return folder


@pytest.mark.parametrize("edit, words", [
    (lambda m: "", "not valid JSON"),
    (lambda m: "[1, 2]", "must be a JSON object"),
    (lambda m: m["config"].update(image_size=13000), "config.image_size must be an integer"),
    (lambda m: m["config"].update(image_size=64), "does not fit the model, whose input is 32x32"),
    (lambda m: m.update(threshold="0.5"), "threshold must be a number from 0 to 1"),
    (lambda m: m.update(threshold=float("nan")), "threshold must be a number from 0 to 1"),
    (lambda m: m["config"].update(resize_policy="crop"), "config.resize_policy must be one of"),
    (lambda m: m.update(class_names=["NORMAL"]), "class_names must be a list of two names"),
    (lambda m: m["config"].update(batch_size=0), "config.batch_size must be null or an integer"),
])
def test_a_bad_model_json_is_one_line_naming_the_field(model_dir, tmp_path, capsys, edit, words):
    folder = _edited(model_dir, tmp_path, edit)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(image)
    assert main(["predict", str(image), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "model.json" in err, err


def test_a_truncated_model_keras_says_damaged_not_missing_and_debug_shows_the_cause(model_dir, tmp_path, capsys):
    folder = tmp_path / "cut"
    shutil.copytree(model_dir, folder)
    data = (folder / "model.keras").read_bytes()
    (folder / "model.keras").write_bytes(data[: len(data) // 2])
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(image)
    assert main(["predict", str(image), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "damaged or incomplete" in err and "not found" not in err.lower() and err.count("\n") == 1, err
    # a file that is a zip but no Keras model: the loader's reason, whole under --debug (chained)
    import zipfile

    with zipfile.ZipFile(folder / "model.keras", "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Nothing" * 80, "config": {}}))
    assert main(["predict", str(image), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load the model") and err.count("\n") == 1
    with pytest.raises(UserError) as caught:
        main(["predict", str(image), "--model", str(folder), "--debug"])
    assert caught.value.__cause__ is not None  # the whole reason travels with the error


def test_two_images_with_one_name_get_two_overlays(model_dir, tmp_path):
    paths = []
    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "1.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "overlays"
    results = predict_files(model_dir, paths, gradcam_dir=out)
    assert len({r["gradcam"] for r in results}) == 2 and len(list(out.glob("*.png"))) == 2
    assert overlay_names(["a/x.png", "b/x.png", "c.png"]) == ["a__x_gradcam.png", "b__x_gradcam.png",
                                                              "c_gradcam.png"]
    names = overlay_names(["x.png", "x.jpg", "/x.tif"])
    assert len(set(names)) == 3


# ----------------------------------------------------------------------------------------------------------------
# GPU presets
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, memory, batch, precision", [
    ("Tesla T4", 14.7, 64, "float16"),  # Colab, Kaggle: no bfloat16 units
    ("Tesla P100-PCIE-16GB", None, 64, "float16"),  # Kaggle; memory read from the name
    ("Tesla V100-SXM2-32GB", None, 128, "float16"),
    ("NVIDIA L4", 22.0, 128, "on"),
    ("NVIDIA A100-SXM4-40GB", None, 256, "on"),
    ("NVIDIA H100 80GB HBM3", 79.1, 256, "on"),
    ("NVIDIA GeForce RTX 2080 Ti", 10.8, 64, "float16"),
    ("NVIDIA GeForce RTX 4090", 23.6, 128, "on"),
    (None, None, 128, "on"),  # a GPU the backend does not name: the default
])
def test_the_gpu_preset_follows_the_card(name, memory, batch, precision):
    from cxr.train.device import gpu_preset

    preset = gpu_preset(name, memory)
    assert (preset["batch_per_device"], preset["mixed_precision"]) == (batch, precision)


def test_float16_is_a_precision_setting_with_its_keras_policy():
    from cxr import train

    assert train.precision_policy(Config(mixed_precision="float16")) == "mixed_float16"
    assert train.resolve(Config(mixed_precision="float16")).mixed_precision == "float16"
    with pytest.raises(ValueError, match="float16"):
        Config(mixed_precision="half")
