"""Resize robustness at scale (protocol v2, item 6): every original available (`raw-sample/` and `originals/`)
scored beside its 224-px copy, the summary with Wilson intervals and the two targets, met or missed; and what
separates the copies from the originals as resized here."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import reporting
from cxr.data import sources
from cxr.evaluate import shift
from cxr.evaluate.metrics import wilson_bounds


def _table(n_pos: int = 100, n_neg: int = 100, flips_pos: int = 0, flips_neg: int = 0,
           misses: int = 2) -> pd.DataFrame:
    """A made-up `raw_sample_agreement` table at threshold 0.5: `misses` pneumonia images below it on both
    versions, `flips_pos` pneumonia images called on the copy and missed on the original, `flips_neg` normals
    called normal on the copy and pneumonia on the original."""
    p_copy = np.r_[np.full(n_pos, 0.9), np.full(n_neg, 0.1)]
    p_orig = p_copy.copy()
    p_copy[:misses] = p_orig[:misses] = 0.3
    p_orig[misses:misses + flips_pos] = 0.4
    p_orig[n_pos:n_pos + flips_neg] = 0.7
    n = n_pos + n_neg
    return pd.DataFrame({"source": ["originals"] * n, "path": [f"x/{i}.jpeg" for i in range(n)],
                         "label": ["PNEUMONIA"] * n_pos + ["NORMAL"] * n_neg, "fold": 0, "p_copy": p_copy,
                         "p_original": p_orig, "delta": p_orig - p_copy,
                         "agree": (p_copy >= 0.5) == (p_orig >= 0.5)})


def test_the_summary_gives_wilson_intervals_and_meets_both_targets():
    summary = shift.resize_summary(_table(flips_neg=2), 0.5, 0.95).set_index("measure")
    agree = summary.loc["agreement of the calls"]
    assert agree["n"] == 200 and agree["value"] == pytest.approx(0.99)
    assert (agree["ci_low"], agree["ci_high"]) == pytest.approx(wilson_bounds(0.99, 200, 0.95))
    # Wilson 95% interval of 99 of 100, worked by hand: [0.9455, 0.9982]
    one = shift.resize_summary(_table(50, 50, flips_neg=1), 0.5, 0.95).set_index("measure")
    assert one.loc["agreement of the calls", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.9455, 0.9982],
                                                                                              abs=2e-4)
    assert summary.loc["sensitivity, copies", "value"] == summary.loc["sensitivity, originals", "value"] == 0.98
    assert summary.loc["sensitivity, originals", "n"] == 100
    assert summary.loc["specificity, copies", "value"] == 1.0
    assert summary.loc["specificity, originals", "value"] == pytest.approx(0.98)
    assert summary.loc["specificity, originals", "ci_high"] < 1.0 <= summary.loc["specificity, copies", "ci_high"]
    assert summary.loc["mean probability change, NORMAL", "value"] == pytest.approx(2 * 0.6 / 100)
    assert summary.loc["mean probability change, PNEUMONIA", "value"] == 0.0
    assert bool(agree["met"]) and bool(summary.loc["sensitivity difference (originals - copies)", "met"])
    assert summary["met"].isna().sum() == 6  # the rows without a target say nothing about one
    wider = shift.resize_summary(_table(flips_neg=2), 0.5, 0.99).set_index("measure")
    assert wider.loc["agreement of the calls", "ci_low"] < agree["ci_low"]
    text = reporting.describe_raw_sample(_table(flips_neg=2), 0.5)
    assert "agreement at least 98%: met (99.0%)" in text
    assert "within 0.01 of the copies': met (difference +0.000)" in text and "missed" not in text
    assert "200 from originals/" in text


def test_the_summary_says_when_the_targets_are_missed():
    table = _table(flips_pos=3)
    summary = shift.resize_summary(table, 0.5, 0.95).set_index("measure")
    assert summary.loc["agreement of the calls", "value"] == pytest.approx(0.985)  # 197 of 200: met
    gap = summary.loc["sensitivity difference (originals - copies)"]
    assert gap["value"] == pytest.approx(-0.03) and not gap["met"]
    text = reporting.describe_raw_sample(table, 0.5)
    assert "agreement at least 98%: met" in text and "within 0.01 of the copies': missed (difference -0.030)" in text
    worse = shift.resize_summary(_table(flips_pos=3, flips_neg=2), 0.5, 0.95).set_index("measure")
    assert worse.loc["agreement of the calls", "value"] == pytest.approx(0.975)
    assert not worse.loc["agreement of the calls", "met"]
    assert "agreement at least 98%: missed (97.5%)" in reporting.describe_raw_sample(_table(flips_pos=3, flips_neg=2), 0.5)
    edge = shift.resize_summary(_table(flips_pos=1), 0.5, 0.95).set_index("measure")  # exactly one point: within
    assert edge.loc["sensitivity difference (originals - copies)", "met"]
    assert shift.resize_summary(_table().iloc[:0], 0.5).empty
    assert "could not run" in reporting.describe_raw_sample(_table().iloc[:0], 0.5)


def test_the_summary_recomputes_the_calls_at_its_threshold():
    table = _table()  # every pneumonia image at 0.9 or 0.3, every normal at 0.1
    summary = shift.resize_summary(table, 0.95, 0.95).set_index("measure")
    assert summary.loc["sensitivity, copies", "value"] == 0.0 and summary.loc["specificity, copies", "value"] == 1.0


def _fake_shared(root: Path) -> Path:
    for name in ("raw-sample", "originals"):
        folder = root / "shared" / "data" / name / "NORMAL"
        folder.mkdir(parents=True)
        (folder / "a.jpeg").write_bytes(b"x")
    return root / "shared" / "data"


def test_originals_dir_finds_the_folder_beside_the_shared_copy_and_honours_cxr_hide_shared(tmp_path, monkeypatch):
    data = _fake_shared(tmp_path)
    monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "shared")  # none of the candidates but REPO_ROOT's parent holds shared/data
    monkeypatch.delenv("CXR_HIDE_SHARED", raising=False)
    assert sources.originals_dir() == data / "originals"
    assert sources.raw_sample_dir() == data / "raw-sample"
    monkeypatch.setenv("CXR_HIDE_SHARED", "1")
    assert sources.originals_dir() is None and sources.raw_sample_dir() is None
    monkeypatch.delenv("CXR_HIDE_SHARED")
    (data / "originals" / "NORMAL" / "a.jpeg").unlink()  # a folder without JPEGs is no folder of originals
    assert sources.originals_dir() is None


def test_originals_dir_finds_the_330_shared_originals(shared_data, monkeypatch):
    monkeypatch.delenv("CXR_HIDE_SHARED", raising=False)
    folder = sources.originals_dir()
    assert folder is not None and folder.resolve() == (shared_data / "originals").resolve()
    files = sorted(folder.glob("*/*.jpeg"))
    assert len(files) == 330
    raw = {p.name for p in sources.raw_sample_dir().glob("*/*.jpeg")}
    assert len(raw) == 24 and not raw & {p.name for p in files}


def _jpeg(path: Path, level: int, size: int = 96) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(level)
    Image.fromarray(np.clip(rng.normal(level, 20, (size, size)), 0, 255).astype(np.uint8)).save(path, quality=95)


def test_raw_sample_agreement_takes_several_folders_names_each_source_and_counts_the_skips(tmp_path, monkeypatch):
    """Originals from two folders, each scored by its fold's (made-up) model: the member's index is added to the
    mean grey level, so the test sees which model scored what; a file with no copy in the data and an unreadable
    one are skipped and counted, and a name already seen in the first folder is not scored twice."""
    from cxr import train

    _jpeg(tmp_path / "raw-sample" / "NORMAL" / "a.jpeg", 60)
    _jpeg(tmp_path / "originals" / "PNEUMONIA" / "b.jpeg", 200)
    _jpeg(tmp_path / "originals" / "NORMAL" / "a.jpeg", 250)  # the same name as in raw-sample/: taken once
    _jpeg(tmp_path / "originals" / "NORMAL" / "stranger.jpeg", 90)  # no copy in the data
    (tmp_path / "originals" / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    index = pd.DataFrame({"path": ["train/NORMAL/a.jpeg", "train/PNEUMONIA/b.jpeg", "train/NORMAL/broken.jpeg"],
                          "label": ["NORMAL", "PNEUMONIA", "NORMAL"], "split": "train", "fold": [0, 1, 0]})
    prepared = SimpleNamespace(index=index, images=np.full((3, 32, 32), 51, np.uint8))
    config = SimpleNamespace(image_size=32, resize_policy="squash", batch_size=4)
    monkeypatch.setattr(train, "predict_proba", lambda m, x, b: np.asarray(x, float).mean(axis=(1, 2)) / 255 + m / 10)
    result = SimpleNamespace(members=[0, 1], model=None)
    table = shift.raw_sample_agreement(result, prepared, config, 0.5,
                                       [tmp_path / "raw-sample", None, tmp_path / "originals"])
    assert table["source"].tolist() == ["raw-sample", "originals"]
    assert table["path"].tolist() == ["NORMAL/a.jpeg", "PNEUMONIA/b.jpeg"]
    np.testing.assert_allclose(table["p_copy"], [0.2, 0.3])  # 51 / 255, plus the fold member's 0 or 0.1
    np.testing.assert_allclose(table["p_original"], [60 / 255, 200 / 255 + 0.1], atol=0.02)
    assert table["agree"].tolist() == [True, False]
    assert table.attrs["skipped"] == {"no copy in the data": 1, "unreadable or refused": 1}
    text = reporting.describe_raw_sample(table, 0.5)
    assert "1 of 2" in text and "1 from raw-sample/, 1 from originals/" in text
    assert "Skipped: 1 (no copy in the data), 1 (unreadable or refused)." in text
    one = shift.raw_sample_agreement(result, prepared, config, 0.5, tmp_path / "raw-sample")  # one folder: as before
    assert one["path"].tolist() == ["NORMAL/a.jpeg"]
    assert shift.raw_sample_agreement(result, prepared, config, 0.5, []).empty


def test_resize_diagnosis_sees_a_blurred_darker_copy():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (3, 64, 64)).astype(np.uint8)
    from PIL import ImageFilter

    blurred = np.stack([np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(1.0))) for a in originals])
    copies = np.clip(blurred.astype(int) - 10, 0, 255).astype(np.uint8)
    diagnosis = shift.resize_diagnosis(copies, originals)
    assert list(diagnosis.columns) == ["mean_difference", "std_ratio", "sharpness_ratio", "high_frequency_ratio"]
    assert (diagnosis["mean_difference"].between(9, 11)).all()
    assert (diagnosis["std_ratio"] > 1).all() and (diagnosis["sharpness_ratio"] > 1.5).all()
    assert (diagnosis["high_frequency_ratio"] > diagnosis["sharpness_ratio"]).all()  # blur takes most at the top
    same = shift.resize_diagnosis(originals, originals)
    np.testing.assert_allclose(same.to_numpy(), [[0, 1, 1, 1]] * 3)
    text = reporting.describe_resize_diagnosis(diagnosis)
    assert "mean gradient (Sobel, edge strength) " in text and "times (higher in 100% of the images)" in text
    assert "above 0.25 cycles per pixel" in text
    with pytest.raises(ValueError, match="same shape"):
        shift.resize_diagnosis(copies[:2], originals)


def test_the_shared_copies_differ_from_the_originals_resized_here(shared_data):
    """The 24 raw-sample originals against their 224-px copies, as measured: the same brightness and contrast,
    slightly weaker edges (mean gradient) and more energy at the finest scale than the copies, in nearly every
    image."""
    from cxr import data

    raw = sorted((shared_data / "raw-sample").glob("*/*.jpeg"))
    with zipfile.ZipFile(shared_data / data.SHARED_ZIP_NAME) as zf:
        copies = np.stack([data.load_image(io.BytesIO(zf.read(f"chest_xray/train/{p.parent.name}/{p.name}")), 224)
                           for p in raw])
    originals = np.stack([data.load_image(p, 224) for p in raw])
    diagnosis = shift.resize_diagnosis(copies, originals)
    assert len(diagnosis) == 24
    assert diagnosis["mean_difference"].abs().median() < 0.5 and diagnosis["std_ratio"].between(0.99, 1.01).all()
    assert (diagnosis["sharpness_ratio"] < 1).mean() >= 0.9 and (diagnosis["high_frequency_ratio"] > 1).mean() >= 0.9
