"""The command line as a user meets it: every bad input answered by one line on stderr, a non-zero exit code, no
traceback and nothing half-written; a small dataset of the user's own; predict on a model folder or its file; the
README's numbers equal the committed metrics document."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from cxr import UserError
from cxr.__main__ import main

# ----------------------------------------------------------------------------------------------------------------
# Tiny datasets in the Kaggle layout, built here
# ----------------------------------------------------------------------------------------------------------------


def jpeg(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def put(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def small_dataset(base: Path, normal: int = 4, bacteria: int = 4, virus: int = 2, test: int = 2,
                  junk: bool = True) -> Path:
    """base/chest_xray/{train,test}/{NORMAL,PNEUMONIA}: a handful of patients per class (one image each), and
    the junk of real folders: .DS_Store, a text file named .jpeg, an empty file."""
    root = base / "chest_xray"
    seed = 0
    for i in range(normal):
        seed += 1
        put(root / f"train/NORMAL/IM-{i:04d}-0001.jpeg", jpeg(seed))
    for i in range(bacteria):
        seed += 1
        put(root / f"train/PNEUMONIA/person{i}_bacteria_{seed}.jpeg", jpeg(seed))
    for i in range(virus):
        seed += 1
        put(root / f"train/PNEUMONIA/person{100 + i}_virus_{seed}.jpeg", jpeg(seed))
    for i in range(test):
        seed += 1
        put(root / f"test/NORMAL/IM-{500 + i:04d}-0001.jpeg", jpeg(seed))
        seed += 1
        put(root / f"test/PNEUMONIA/person{500 + i}_bacteria_{seed}.jpeg", jpeg(seed))
    if junk:
        put(root / "train/NORMAL/.DS_Store", b"\x00\x00\x00\x01Bud1")
        put(root / "train/NORMAL/IM-0900-0001.jpeg", b"radiology notes, not an image\n")
        put(root / "train/PNEUMONIA/person900_virus_1.jpeg", b"")
    return base


def junk_dataset(base: Path) -> Path:
    root = base / "chest_xray"
    for split in ("train", "test"):
        put(root / split / "NORMAL" / ".DS_Store", b"\x00\x00\x00\x01Bud1")
        put(root / split / "PNEUMONIA" / "person1_virus_1.jpeg", b"not an image")
        put(root / split / "NORMAL" / "IM-0001-0001.jpeg", b"")
    return base


def empty_dataset(base: Path) -> Path:
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (base / "chest_xray" / split / label).mkdir(parents=True)
    return base


# ----------------------------------------------------------------------------------------------------------------
# Every bad input: exit code, one line on stderr, no traceback, nothing half-written
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `python -m cxr ARGS` in-process in an empty working folder; (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    for var in ("CXR_DATA", "CXR_DEBUG", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def written(folder: Path) -> list[str]:
    """What a failed command must not leave: indexes, caches, model folders, metrics, run folders."""
    bad = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if (p.name in ("index.csv", "metrics.json", "model.keras") or p.name.startswith("images-")
                or rel.startswith("runs") or rel.startswith("out/")):
            bad.append(rel)
    return bad


def setup_case(name: str, tmp: Path) -> list[str]:
    """The command line of each bad-input case, with whatever it needs built under `tmp`."""
    if name == "missing source":
        return ["index", tmp / "missing.zip", "--out", tmp / "out" / "index.csv"]
    if name == "random folder":
        put(tmp / "photos" / "holiday.txt", b"hello")
        put(tmp / "photos" / "sub" / "a.jpeg", jpeg(1))
        return ["index", tmp / "photos", "--out", tmp / "out" / "index.csv"]
    if name == "zip of something else":
        with zipfile.ZipFile(tmp / "other.zip", "w") as zf:
            zf.writestr("docs/readme.txt", "not x-rays")
        return ["index", tmp / "other.zip", "--out", tmp / "out" / "index.csv"]
    if name == "not a zip":
        put(tmp / "data.tar", b"not a zip")
        return ["index", tmp / "data.tar", "--out", tmp / "out" / "index.csv"]
    if name == "empty dataset":
        return ["train", "--source", empty_dataset(tmp / "empty"), "--set", "data_dir=data", "--run", tmp / "runs/x"]
    if name == "all-junk dataset":
        return ["index", junk_dataset(tmp / "junk"), "--out", tmp / "out" / "index.csv"]
    if name == "too few images to split":
        source = small_dataset(tmp / "tiny", normal=1, bacteria=0, virus=0, test=1)
        return ["index", source, "--out", tmp / "out" / "index.csv"]
    if name == "too few to train":
        source = small_dataset(tmp / "few", normal=1, bacteria=1, virus=0, test=1, junk=False)
        put(source / "chest_xray/train/PNEUMONIA/person0_bacteria_99.jpeg", jpeg(99))  # 2 images, 1 patient
        return ["train", "--source", source, "--tasks", "pneumonia", "--set", "backbone=tiny_cnn",
                "--run", tmp / "runs/x"]
    if name == "unknown backbone":
        return ["train", "--source", small_dataset(tmp / "s"), "--set", "backbone=nope", "--run", tmp / "runs/x"]
    if name == "bad setting value":
        return ["train", "--set", "seed=abc", "--run", tmp / "runs/x"]
    if name == "unknown setting":
        return ["evaluate", "--set", "sead=1", "--run", tmp / "runs/x"]
    if name == "missing model path":
        put(tmp / "a.jpeg", jpeg(1))
        return ["predict", tmp / "a.jpeg", "--model", tmp / "runs/old/pneumonia/model.keras"]
    if name == "folder that is not a model":
        put(tmp / "a.jpeg", jpeg(1))
        (tmp / "somewhere").mkdir()
        return ["predict", tmp / "a.jpeg", "--model", tmp / "somewhere"]
    if name == "damaged model file":
        put(tmp / "a.jpeg", jpeg(1))
        put(tmp / "m" / "model.keras", b"garbage")
        meta = {"config": {"image_size": 32, "resize_policy": "squash", "batch_size": 8}, "threshold": 0.5,
                "class_names": ["NORMAL", "PNEUMONIA"]}
        put(tmp / "m" / "model.json", json.dumps(meta).encode())
        return ["predict", tmp / "a.jpeg", "--model", tmp / "m" / "model.keras"]
    if name == "foreign model record":
        put(tmp / "a.jpeg", jpeg(1))
        put(tmp / "m" / "model.keras", b"garbage")
        put(tmp / "m" / "model.json", b"{}")
        return ["predict", tmp / "a.jpeg", "--model", tmp / "m"]
    if name == "output folder is a file":
        put(tmp / "blocker", b"a file where a folder should be")
        return ["index", small_dataset(tmp / "s"), "--out", tmp / "blocker" / "index.csv"]
    if name == "run folder cannot be written":
        put(tmp / "blocker", b"a file where a folder should be")
        return ["train", "--source", small_dataset(tmp / "s"), "--set", "backbone=tiny_cnn", "--run",
                tmp / "blocker" / "run"]
    if name == "kaggle credentials missing":
        return ["train", "--source", "kaggle", "--run", tmp / "runs/x"]
    if name == "kaggle credentials refused":
        return ["train", "--source", "kaggle", "--run", tmp / "runs/x"]
    if name == "no metrics document":
        return ["results", "--run", tmp / "runs/none"]
    if name == "markdown without a results block":
        from cxr.evaluate import SCHEMA_VERSION

        put(tmp / "runs/r/metrics.json", json.dumps({"schema_version": SCHEMA_VERSION, "tasks": {}}).encode())
        put(tmp / "notes.md", b"# notes\n")
        return ["results", "--run", tmp / "runs/r", "--update", tmp / "notes.md"]
    if name == "not a run folder":
        return ["evaluate", "--run", tmp / "nothing-here"]
    if name == "notebook with a missing source":
        return ["notebook", "--mode", "smoke", "--source", tmp / "missing.zip", "--run", tmp / "runs/nb"]
    raise KeyError(name)


CASES = {  # name: a pattern the one line must match (what is wrong and what to do)
    "missing source": r"missing\.zip does not exist: pass the Kaggle zip",
    "random folder": r"Not a chest X-ray dataset: no train/ and test/ folders .*expected the Kaggle layout",
    "zip of something else": r"Not a chest X-ray dataset: no train/ and test/ folders in the archive",
    "not a zip": r"neither a folder nor a zip archive: pass",
    "empty dataset": r"No readable images under .*expected JPEG or PNG images in train/NORMAL",
    "all-junk dataset": r"No readable images under .*6 files skipped",
    "too few images to split": r"Too few training images for cross-validation: 1 image\(s\) of 1 child.*at least 2 "
                               r"children",
    "too few to train": r"Task 'pneumonia' cannot be trained on this data: its (train|training part of fold \d) has "
                        r".*add children",
    "unknown backbone": r"unknown backbone 'nope': choose one of efficientnet_lite0, efficientnet_lite1, "
                        r"efficientnet_lite2, tiny_cnn",
    "bad setting value": r"--set seed=abc: not a valid int",
    "unknown setting": r"unknown setting\(s\) \['sead'\]",
    "missing model path": r"no saved model at .*model\.keras: pass a model folder .* or its model\.keras file",
    "folder that is not a model": r"somewhere is not a saved model folder \(model\.keras missing\)",
    "damaged model file": r"model\.keras is damaged or incomplete \(7 bytes, not a Keras archive.*: copy it again",
    "foreign model record": r"m/model\.json: config must be an object .*damaged or foreign; pass a model folder",
    "output folder is a file": r"cannot write the index folder .*blocker is a file",
    "run folder cannot be written": r"cannot write the run folder .*blocker is a file; choose another path",
    "kaggle credentials missing": r"No Kaggle credentials found: save an API token",
    "kaggle credentials refused": r"Kaggle refused the credentials in \$KAGGLE_USERNAME/\$KAGGLE_KEY",
    "no metrics document": r"no metrics file at .*metrics\.json: run the study first",
    "markdown without a results block": r"cannot update .*notes\.md: it has no <!-- results -->",
    "not a run folder": r"nothing-here is not a run folder \(no config\.json\)",
    "notebook with a missing source": r"missing\.zip \(from argument\) does not exist",
}


def fake_kaggle(monkeypatch, error: Exception) -> list[str]:
    """A stand-in for the `kaggle` client whose authentication fails with `error` (no network)."""
    calls: list[str] = []

    class KaggleApi:
        def authenticate(self):
            calls.append("authenticate")
            raise error

        def dataset_download_files(self, *args, **kwargs):  # pragma: no cover  (never reached)
            raise AssertionError("no download after a refusal")

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = KaggleApi
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    return calls


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_line(name, cli, tmp_path, monkeypatch):
    args = setup_case(name, tmp_path)
    calls = []
    if name == "kaggle credentials refused":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key-value")
        import requests  # what the kaggle 2.x client raises: an HTTPError with the response (refusal by status)

        refusal = requests.Response()
        refusal.status_code = 401
        calls = fake_kaggle(monkeypatch, requests.HTTPError("401 Client Error: Unauthorized for user someone "
                                                            "key s3cr3t-key-value", response=refusal))
    before = set(written(tmp_path))
    code, out, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 2, (name, code, err)
    assert len(lines) == 1, (name, err)
    assert lines[0].startswith("error: ") and re.search(CASES[name], lines[0]), (name, lines[0])
    assert "Traceback" not in err + out
    assert set(written(tmp_path)) == before, (name, set(written(tmp_path)) - before)  # nothing half-written
    assert "s3cr3t" not in err + out and "someone" not in err + out  # no credential value, ever
    if name == "kaggle credentials refused":
        assert calls == ["authenticate"]


def test_debug_shows_the_traceback(cli, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no saved model"):
        cli("predict", "a.jpeg", "--model", tmp_path / "nope", "--debug")
    monkeypatch.setenv("CXR_DEBUG", "1")
    with pytest.raises(UserError):
        cli("predict", "a.jpeg", "--model", tmp_path / "nope")


def test_jupyter_shows_the_one_line_too(monkeypatch):
    """IPython (Jupyter, papermill) renders a UserError as its message, not a traceback; CXR_DEBUG=1 restores it."""
    from cxr import data

    monkeypatch.delenv("CXR_DEBUG", raising=False)
    with pytest.raises(data.DataUnavailable) as error:
        data.check_source("no/such/archive.zip")
    assert error.value._render_traceback_() == ["DataUnavailable: The data source no/such/archive.zip does not exist: "
                                                "pass the Kaggle zip or its extracted folder (see README, 'Getting "
                                                "the data')."]
    monkeypatch.setenv("CXR_DEBUG", "1")
    with pytest.raises(NotImplementedError):
        error.value._render_traceback_()


def test_a_bug_still_shows_its_traceback(cli, monkeypatch):
    """Only bad input is shortened to one line; an unexpected error keeps its traceback."""
    import cxr.__main__ as cli_module

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_module, "cmd_results", broken)
    with pytest.raises(ZeroDivisionError):
        cli("results")


def test_warnings_become_one_clean_line(cli, monkeypatch):
    import cxr.__main__ as cli_module

    def noisy(args):
        warnings.warn("something odd about /home/user/file.py", UserWarning)
        warnings.warn("something odd about /home/user/file.py", UserWarning)  # shown once
        raise UserError("bad input: do this instead.")

    monkeypatch.setattr(cli_module, "cmd_results", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = cli("results")
    assert code == 2
    assert err.splitlines() == ["warning: something odd about /home/user/file.py", "error: bad input: do this instead."]


def test_real_process_stderr_is_one_line(tmp_path):
    """A real `python -m cxr` process: one line on stderr (no TensorFlow start-up noise, no warnings), exit 2."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CXR_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "cxr", "predict", "a.jpeg", "--model", str(tmp_path / "x.keras")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: no saved model at {tmp_path / 'x.keras'}: pass a model "
                                                "folder written by training (runs/<run>/pneumonia) or its model.keras "
                                                "file."]


# ----------------------------------------------------------------------------------------------------------------
# A user's own small dataset, and predict on a saved model (folder or file)
# ----------------------------------------------------------------------------------------------------------------


def test_small_dataset_with_junk_is_indexed_and_split(cli, tmp_path):
    import pandas as pd

    source = small_dataset(tmp_path / "mine")
    code, out, err = cli("index", source, "--out", tmp_path / "index.csv")
    assert code == 0, err
    assert err == ""
    index = pd.read_csv(tmp_path / "index.csv", keep_default_na=False)
    assert len(index) == 4 + 4 + 2 + 2 * 2  # every readable image, the junk left out
    assert set(index["split"]) == {"train", "test"}
    assert index.loc[index["split"] == "train", "fold"].nunique() == 4  # four children per class: 4 folds, not 4
    assert "folds instead" not in out
    skipped = pd.read_csv(tmp_path / "index-skipped.csv")
    assert len(skipped) == 3 and skipped["reason"].str.contains("junk|empty|corrupt").all()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from cxr import model as cxr_model
    from cxr.config import Config

    config = Config(backbone="tiny_cnn", weights=None, image_size=32)
    net = cxr_model.build_model(config, name="pneumonia")
    folder = tmp_path_factory.mktemp("run") / "pneumonia"
    return cxr_model.save_model(net, folder, config, threshold=0.5, class_names=("NORMAL", "PNEUMONIA"))


def test_predict_takes_the_folder_or_its_file_and_scores_the_readable_images(cli, saved_model, tmp_path):
    put(tmp_path / "a.jpeg", jpeg(1, 64))
    put(tmp_path / "broken.jpeg", b"not an image")
    for model in (saved_model, saved_model / "model.keras", saved_model.parent):  # folder, file, run folder
        code, out, err = cli("predict", tmp_path / "a.jpeg", tmp_path / "broken.jpeg", "--model", model)
        results = [json.loads(line) for line in out.splitlines()]
        assert code == 1  # one file failed
        assert 0.0 <= results[0]["probability"] <= 1.0 and results[0]["label"] in ("NORMAL", "PNEUMONIA")
        assert "error" in results[1] and "probability" not in results[1]
        assert len(err.strip().splitlines()) == 1 and "1 of 2 images could not be read" in err
    code, out, err = cli("predict", tmp_path / "a.jpeg", "--model", saved_model / "model.keras")
    assert code == 0 and err == ""


# ----------------------------------------------------------------------------------------------------------------
# The committed metrics document and the README
# ----------------------------------------------------------------------------------------------------------------


def _block(text: str, marker: str) -> str:
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    return text[text.index(begin) + len(begin):text.index(end)].strip()


def test_readme_numbers_equal_the_committed_metrics():
    """README.md and doc/results.md show exactly what `python -m cxr results` writes from doc/metrics.json."""
    from cxr import evaluate, reporting

    metrics = REPO / "doc" / "metrics.json"
    if not metrics.is_file():
        pytest.skip("doc/metrics.json not committed yet (written by `make notebook`)")
    doc = evaluate.read_metrics(metrics)
    readme = (REPO / "README.md").read_text()
    assert _block(readme, "headline") == reporting.markdown_results(doc, "doc/metrics.json", headline=True).strip()
    results = (REPO / "doc" / "results.md").read_text()
    assert _block(results, "results") == reporting.markdown_results(doc, "doc/metrics.json").strip()


def test_results_copies_the_metrics_and_reads_them_by_default(cli, tmp_path, monkeypatch):
    from cxr import evaluate, reporting

    committed = REPO / "doc" / "metrics.json"
    if not committed.is_file():
        pytest.skip("doc/metrics.json not committed yet")
    run = tmp_path / "runs" / "full"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(committed.read_text())
    (tmp_path / "doc").mkdir()
    put(tmp_path / "README.md", b"# x\n<!-- headline -->\nold\n<!-- /headline -->\n")
    code, out, err = cli("results", "--run", run, "--copy-metrics", "doc/metrics.json", "--update", "README.md")
    assert code == 0, err
    assert (tmp_path / "doc" / "metrics.json").read_text() == committed.read_text()
    doc = evaluate.read_metrics(committed)
    assert _block((tmp_path / "README.md").read_text(), "headline") == reporting.markdown_results(
        doc, "doc/metrics.json", headline=True).strip()
    code, out, _ = cli("results")  # reads doc/metrics.json by default
    assert code == 0 and reporting.markdown_results(doc, "doc/metrics.json").strip() in out
