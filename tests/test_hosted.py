"""The notebook's first cell on Colab and Kaggle, once cxr is importable (`cxr.hosted.setup`): nothing on a local
machine; the clone as working folder; Kaggle credentials from Colab's secrets; the attached Kaggle dataset."""
from __future__ import annotations

import os
import sys
import types

import pytest

from cxr import hosted
from cxr.data import sources


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hosted, "KAGGLE_WORKING", tmp_path / "no-kaggle")
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for var in ("KAGGLE_KEY", "KAGGLE_USERNAME", "CXR_DATA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_a_local_session_is_left_alone(local, capsys):
    assert hosted.setup(local / "REPO") == [] and capsys.readouterr().out == ""
    assert os.getcwd() == str(local)


def test_the_clone_becomes_the_working_folder(local):
    clone = local / "REPO"
    clone.mkdir()
    (clone / "notebook.ipynb").write_text("{}")
    assert hosted.setup(clone) == [f"working folder: {clone}"] and os.getcwd() == str(clone)
    assert hosted.setup(clone) == []  # run again: already there


def test_colab_secrets_reach_the_kaggle_client(local, monkeypatch):
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=lambda name: {"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k3y"}[name])
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    said = hosted.setup()
    assert said == ["Kaggle credentials: from the notebook's secrets (the full data is downloaded)"]
    assert os.environ["KAGGLE_USERNAME"] == "me" and os.environ["KAGGLE_KEY"] == "k3y"
    monkeypatch.delenv("KAGGLE_KEY")

    def refused(name):
        raise PermissionError("access not granted")

    colab.userdata = types.SimpleNamespace(get=refused)
    assert "no Kaggle credentials in the notebook's secrets (PermissionError)" in hosted.setup()[0]
    assert "KAGGLE_KEY" not in os.environ


def test_kaggle_says_whether_the_dataset_is_attached(local, monkeypatch):
    monkeypatch.setattr(hosted, "KAGGLE_WORKING", local)
    monkeypatch.setattr(sources, "KAGGLE_INPUT_DIRS", (local / "input",))
    assert "no chest-xray-pneumonia dataset attached" in hosted.setup()[0]
    root = local / "input" / sources.KAGGLE_SLUG / "chest_xray"
    for split in ("train", "test"):
        (root / split / "NORMAL").mkdir(parents=True)
    assert hosted.setup() == [f"data: the attached Kaggle dataset {root}"]
