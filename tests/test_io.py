"""cxr.io: atomic writes of files and folders, the Markdown marker-block writer."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxr import io as cxr_io


def test_atomic_write_keeps_old_content_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "result.json"
    cxr_io.atomic_write_text(target, "old")
    assert target.read_text() == "old"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cxr_io.os, "replace", broken_replace)
    with pytest.raises(OSError):
        cxr_io.atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temporary file left


def test_atomic_folder_replaces_on_success_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "model"
    with cxr_io.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with cxr_io.atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    with cxr_io.atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old folder left


def test_atomic_file_for_writers_that_want_a_file_name(tmp_path):
    target = tmp_path / "w.weights.h5"
    with cxr_io.atomic_file(target, suffix=".weights.h5") as tmp:
        assert tmp.name.endswith(".weights.h5") and not tmp.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(ValueError):
        with cxr_io.atomic_file(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.weights.h5"]


def test_update_markdown_replaces_only_the_block(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- results -->\nold\n<!-- /results -->\noutro\n")
    cxr_io.update_markdown(doc, "new table")
    assert doc.read_text() == "intro\n<!-- results -->\nnew table\n<!-- /results -->\noutro\n"
    with pytest.raises(ValueError, match="no <!-- other -->"):
        cxr_io.update_markdown(doc, "x", "other")
    cxr_io.update_markdown(doc, "bench", "other", create=True)
    assert doc.read_text().endswith("outro\n\n<!-- other -->\nbench\n<!-- /other -->\n")
    cxr_io.update_markdown(tmp_path / "new.md", "t", "x", create=True)
    assert (tmp_path / "new.md").read_text() == "<!-- x -->\nt\n<!-- /x -->\n"


def test_write_json_is_strict_and_atomic(tmp_path):
    """One writer for strict JSON: NaN and infinities become null, numpy values plain numbers, tuples lists,
    paths posix strings, frames records; the file is replaced whole."""
    import json
    from dataclasses import dataclass

    import numpy as np
    import pandas as pd

    @dataclass
    class Point:
        x: float

    obj = {"nan": float("nan"), "inf": np.float32("inf"), "int": np.int64(3), "flag": np.bool_(True),
           "tuple": (1, 2.5), "array": np.array([1.0, np.nan]), "path": Path("a") / "b", "point": Point(1.5),
           "frame": pd.DataFrame({"a": [1, 2]}), 4: "key"}
    path = cxr_io.write_json(tmp_path / "x.json", obj)
    assert json.loads(path.read_text()) == {"nan": None, "inf": None, "int": 3, "flag": True, "tuple": [1, 2.5],
                                            "array": [1.0, None], "path": "a/b", "point": {"x": 1.5},
                                            "frame": [{"a": 1}, {"a": 2}], "4": "key"}
    assert path.read_text().endswith("}\n") and [p.name for p in tmp_path.iterdir()] == ["x.json"]
