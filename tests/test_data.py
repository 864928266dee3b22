"""Tests of cxr.data on a synthetic dataset tree (real JPEGs and every kind of junk), and on ../shared/data."""
from __future__ import annotations

import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import data, reporting
from cxr.config import Config

# ----------------------------------------------------------------------------------------------------------------
# A synthetic dataset in the Kaggle layout
# ----------------------------------------------------------------------------------------------------------------


def xray(seed: int, w: int = 64, h: int = 48) -> np.ndarray:
    """A distinct smooth grayscale picture (every seed gives different JPEG bytes)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = 120 + 60 * np.sin(x / (3 + seed % 5) + seed) + 40 * np.cos(y / (2 + seed % 7)) + rng.normal(0, 8, (h, w))
    return np.clip(a, 0, 255).astype(np.uint8)


def jpeg_bytes(a: np.ndarray, mode: str = "L", quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


N_NORMAL, N_PERSON = 16, 16  # training patients per class


def make_tree(base: Path) -> Path:
    """base/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA} + nested duplicate + __MACOSX + junk; returns base."""
    root = base / "chest_xray"
    seed = 0

    def img(rel: str, **kw) -> None:
        nonlocal seed
        seed += 1
        write(root / rel, jpeg_bytes(xray(seed), **kw))

    for p in range(1, N_NORMAL + 1):  # 1 to 3 images per patient
        for k in range(1, 1 + 1 + p % 3):
            img(f"train/NORMAL/IM-{p:04d}-{k:04d}.jpeg")
    img("train/NORMAL/NORMAL2-IM-0500-0001.jpeg")
    img("train/NORMAL/NORMAL2-IM-0500-0002.jpeg")
    img("train/NORMAL/IM-0600-0001-0001.jpeg")  # the suffixed Kaggle form
    img("train/NORMAL/IM-0601-0001.JPEG")  # upper-case extension
    img("train/NORMAL/IM-0602-0001.jpeg", mode="RGB")  # an RGB JPEG
    n = 0
    for p in range(1, N_PERSON + 1):
        for k in range(1 + p % 3):
            n += 1
            img(f"train/PNEUMONIA/person{p}_{'bacteria' if p % 2 else 'virus'}_{n}.jpeg")
    img("train/PNEUMONIA/person1_virus_900.jpeg")  # patient 1 has bacteria and virus images
    dup = jpeg_bytes(xray(999))  # byte-identical images of two different "patients"
    write(root / "train/PNEUMONIA/person40_bacteria_901.jpeg", dup)
    write(root / "train/PNEUMONIA/person41_bacteria_902.jpeg", dup)
    img("val/NORMAL/NORMAL2-IM-1427-0001.jpeg")
    img("val/PNEUMONIA/person1946_bacteria_4874.jpeg")
    for p in range(1, 5):
        img(f"test/NORMAL/IM-{100 + p:04d}-0001.jpeg")
        img(f"test/PNEUMONIA/person{200 + p}_virus_{300 + p}.jpeg")
    # files that are not kept
    png = png_bytes(Image.fromarray(xray(777)))
    write(root / "train/NORMAL/IM-0700-0001.jpeg", png)  # a PNG named .jpeg: decodable, kept
    sixteen = (xray(778).astype(np.uint16) * 16)  # 12-bit values in a 16-bit PNG
    write(root / "train/NORMAL/IM-0701-0001.png", png_bytes(Image.fromarray(sixteen)))
    write(root / "train/NORMAL/IM-0702-0001.jpeg", jpeg_bytes(xray(779), mode="CMYK"))
    write(root / "train/NORMAL/IM-0703-0001.jpeg", b"")  # empty
    write(root / "train/NORMAL/IM-0704-0001.jpeg", np.random.default_rng(5).bytes(3000))  # corrupt
    full = jpeg_bytes(xray(780, 400, 300))
    write(root / "train/PNEUMONIA/person50_bacteria_950.jpeg", full[: len(full) // 2])  # truncated
    write(root / "train/NORMAL/notes.txt", b"radiologist notes, not an image\n")
    write(root / "train/NORMAL/.DS_Store", b"\x00\x00\x00\x01Bud1")
    write(root / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(root / "train/.DS_Store", b"\x00\x00\x00\x01Bud1")
    shutil.copytree(root / "test", root / "chest_xray" / "test")  # the nested duplicate
    shutil.copytree(root / "train" / "NORMAL", root / "chest_xray" / "train" / "NORMAL")
    write(base / "__MACOSX/chest_xray/train/NORMAL/._IM-0001-0001.jpeg", b"\x00\x05\x16\x07 resource fork")
    return base


EXPECTED_SKIPS = {
    ".DS_Store": "junk file",
    "train/.DS_Store": "junk file",
    "train/NORMAL/.DS_Store": "junk file",
    "chest_xray/": "nested duplicate",
    "train/NORMAL/IM-0703-0001.jpeg": "empty file",
    "train/NORMAL/IM-0704-0001.jpeg": "corrupt",
    "train/PNEUMONIA/person50_bacteria_950.jpeg": "truncated",
    "train/NORMAL/notes.txt": "not an image",
}


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture(scope="module")
def indexed(tree) -> tuple[pd.DataFrame, pd.DataFrame]:
    return data.build_index(tree / "chest_xray", workers=1)


# ----------------------------------------------------------------------------------------------------------------
# Download, source resolution
# ----------------------------------------------------------------------------------------------------------------


def test_download_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    already_imported = "kaggle" in sys.modules
    assert data.kaggle_credentials() is None
    with pytest.raises(data.DataUnavailable, match="kaggle.json") as error:
        data.download(tmp_path / "dl")
    assert "CXR_DATA" in str(error.value)
    assert already_imported or "kaggle" not in sys.modules  # importing the client without credentials would end the process
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert data.kaggle_credentials() == "$KAGGLE_USERNAME/$KAGGLE_KEY"


def test_download_reuses_a_verified_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    zip_path = tmp_path / data.KAGGLE_ZIP_NAME
    shutil.copy(data.SAMPLE_ZIP, zip_path)
    with pytest.raises(data.DataUnavailable):  # no marker: not a verified download
        data.download(tmp_path)
    (tmp_path / (data.KAGGLE_ZIP_NAME + ".json")).write_text(json.dumps({"size": zip_path.stat().st_size}))
    assert data.download(tmp_path) == zip_path  # no credentials needed for the verified copy


def test_resolve_source_order(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setattr(data.sources, "_shared_candidates", lambda: [])
    monkeypatch.delenv("CXR_DATA", raising=False)
    assert data.resolve_source(None, tmp_path) == data.SAMPLE_ZIP
    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.setenv("CXR_DATA", str(folder))
    assert data.resolve_source(None, tmp_path) == folder
    explicit = tmp_path / "other.zip"
    shutil.copy(data.SAMPLE_ZIP, explicit)
    assert data.resolve_source(explicit, tmp_path) == explicit
    with pytest.raises(data.DataUnavailable, match="does not exist"):
        data.resolve_source(tmp_path / "missing.zip", tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------


def test_extract_kaggle_zip_leaves_out_nested_duplicate_and_macosx(tree, tmp_path):
    archive = zip_folder(tree, tmp_path / "archive.zip")
    root = data.extract(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "chest_xray"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train", "val"]
    assert not (root / "chest_xray").exists() and not (tmp_path / "out" / "__MACOSX").exists()
    assert (root / "train/NORMAL/IM-0601-0001.JPEG").is_file()
    marker = tmp_path / "out" / ".extracted.json"
    before = marker.stat().st_mtime_ns
    assert data.extract(archive, tmp_path / "out") == root  # reused, not extracted again
    assert marker.stat().st_mtime_ns == before


def test_extract_flat_zip_and_folders(tree, tmp_path):
    flat = zip_folder(tree / "chest_xray" / "test", tmp_path / "flat-test.zip")
    with pytest.raises(data.DataUnavailable, match="train/ and test/"):
        data.extract(flat, tmp_path / "flat")
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as zf:  # train/ and test/ at the top of the zip
        for path in sorted((tree / "chest_xray").rglob("*")):
            rel = path.relative_to(tree / "chest_xray").as_posix()
            if rel.split("/")[0] in ("train", "test"):
                zf.write(path, rel)
    assert data.extract(tmp_path / "flat.zip", tmp_path / "flat") == tmp_path / "flat"
    assert data.extract(tree, tmp_path / "unused") == tree / "chest_xray"  # the outer copy, not the nested one
    not_zip = tmp_path / "data.tar"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(data.DataUnavailable, match="neither a folder nor a zip"):
        data.extract(not_zip, tmp_path / "x")


# ----------------------------------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------------------------------


def test_index_columns_and_values(indexed):
    index, _ = indexed
    assert list(index.columns) == data.INDEX_COLUMNS
    assert index["path"].is_monotonic_increasing and index["path"].is_unique
    assert set(index["official_split"]) == {"train", "val", "test"}
    assert set(index["label"]) == {"NORMAL", "PNEUMONIA"}
    by_path = index.set_index("path")
    assert by_path.loc["train/PNEUMONIA/person1_virus_900.jpeg", "patient_id"] == "person1_virus"
    assert by_path.loc["train/PNEUMONIA/person1_bacteria_1.jpeg", "patient_id"] == "person1_bacteria"
    assert by_path.loc["train/PNEUMONIA/person1_virus_900.jpeg", "subtype"] == "virus"
    assert by_path.loc["train/PNEUMONIA/person3_bacteria_6.jpeg", "subtype"] == "bacteria"
    assert by_path.loc["train/NORMAL/NORMAL2-IM-0500-0002.jpeg", "patient_id"] == "NORMAL2-IM-0500"
    assert by_path.loc["train/NORMAL/IM-0600-0001-0001.jpeg", "patient_id"] == "IM-0600"
    assert by_path.loc["train/NORMAL/IM-0001-0002.jpeg", "subtype"] == "normal"
    assert tuple(by_path.loc["train/NORMAL/IM-0001-0001.jpeg", ["width", "height", "mode"]]) == (64, 48, "L")
    assert by_path.loc["train/NORMAL/IM-0602-0001.jpeg", "mode"] == "RGB"
    assert "train/NORMAL/IM-0601-0001.JPEG" in by_path.index  # upper-case extension kept
    assert by_path.loc["train/NORMAL/IM-0700-0001.jpeg", "format"] == "PNG"  # PNG named .jpeg: kept, noted
    assert by_path.loc["train/NORMAL/IM-0701-0001.png", "mode"].startswith("I")  # 16-bit kept
    assert by_path.loc["train/NORMAL/IM-0702-0001.jpeg", "mode"] == "CMYK"
    assert index["sha1"].str.fullmatch(r"[0-9a-f]{40}").all()
    assert index["phash"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert not index["path"].str.contains("chest_xray|__MACOSX|DS_Store").any()


def test_every_skip_is_listed_with_its_reason(indexed):
    index, skipped = indexed
    assert list(skipped.columns) == ["path", "reason"]
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    assert set(reasons) == set(EXPECTED_SKIPS)
    for path, reason in EXPECTED_SKIPS.items():
        assert reasons[path].startswith(reason), (path, reasons[path])
    assert not set(skipped["path"]) & set(index["path"])


def test_count_check_reports_differences(indexed):
    index, _ = indexed
    lines = data.check_counts(index)
    assert any(line.startswith("test/NORMAL: 4 images, the Kaggle dataset has 234") for line in lines)
    fake = pd.DataFrame([{"official_split": s, "label": l} for (s, l), n in data.KAGGLE_COUNTS.items()
                         for _ in range(n)])
    assert data.check_counts(fake) == []


# ----------------------------------------------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------------------------------------------


def test_split_invariants(indexed):
    index, _ = indexed
    split = data.split_by_patient(index, n_folds=3, seed=0)
    assert set(split["split"]) == {"train", "test"}
    assert len(split) == len(index)
    # the official test is untouched, and nothing else is in it; the training children (train + val) are in folds
    test = split["split"] == "test"
    assert set(split.loc[test, "path"]) == set(index.loc[index["official_split"] == "test", "path"])
    assert split.loc[test, "fold"].eq(-1).all() and set(split.loc[~test, "fold"]) == {0, 1, 2}
    assert set(split.loc[~test, "official_split"]) == {"train", "val"}
    # no child and no sha1 in two folds
    for column in ("patient_id", "sha1"):
        assert split[~test].groupby(column)["fold"].nunique().max() == 1
    assert split.groupby("sha1")["split"].nunique().max() == 1
    # the byte-identical pair person40/person41 (two "children") in one fold
    pair = split[split["patient_id"].isin(["person40_bacteria", "person41_bacteria"])]
    assert len(pair) == 2 and pair["fold"].nunique() == 1
    # roughly stratified: both labels in every fold, each fold about a third of the pool
    pool = split[~test]
    for fold, rows in pool.groupby("fold"):
        assert set(rows["label"]) == {"NORMAL", "PNEUMONIA"}, fold
        assert 0.2 < len(rows) / len(pool) < 0.47
    data.check_no_leakage(split)


def test_split_is_deterministic_whatever_the_row_order(indexed):
    index, _ = indexed
    reference = data.split_by_patient(index, 3, seed=3).set_index("path")["fold"]
    for shuffle_seed in range(3):
        shuffled = index.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
        again = data.split_by_patient(shuffled, 3, seed=3).set_index("path")["fold"]
        pd.testing.assert_series_equal(again, reference)
    others = [data.split_by_patient(index, 3, seed=s).set_index("path")["fold"] for s in (4, 5)]
    assert any(not other.equals(reference) for other in others)  # the seed matters


def test_split_excludes_training_copies_of_test_images_and_keeps_their_rows(indexed, capsys):
    index, _ = indexed
    test_row = index[index["official_split"] == "test"].iloc[0]
    train_rows = index.index[index["official_split"] == "train"][:1]
    leaky = index.copy()
    leaky.loc[train_rows, "sha1"] = test_row["sha1"]
    split = data.split_by_patient(leaky, 3, seed=0)
    assert "1 training images are byte-identical to official test images; excluded" in capsys.readouterr().out
    assert len(split) == len(index)  # the inventory keeps the row ...
    excluded = split[split["split"] == "excluded"]
    assert list(excluded["path"]) == [index.loc[train_rows[0], "path"]]  # ... as excluded, with its reason
    assert list(excluded["excluded_reason"]) == ["byte-identical to an official test image"]
    assert excluded["fold"].eq(-1).all()
    assert split.loc[split["split"] != "excluded", "excluded_reason"].eq("").all()
    kept_rows = split[split["split"] != "excluded"]
    assert kept_rows.groupby("sha1")["split"].nunique().max() == 1
    data.check_no_leakage(split)  # excluded rows are ignored by the check
    leaked = index.copy()
    leaked.loc[train_rows, "patient_id"] = test_row["patient_id"]
    dropped = data.split_by_patient(leaked, 3, seed=0, drop_test_patients=True)
    assert "also appears in the official test" in capsys.readouterr().out  # reported, with the count
    assert len(dropped) == len(index) and dropped["split"].eq("excluded").sum() == 1
    assert dropped.loc[dropped["split"] == "excluded", "excluded_reason"].iloc[0] == "patient id also in the official test"
    assert not set(dropped.loc[dropped["split"] == "train", "patient_id"]) & {test_row["patient_id"]}
    data.check_no_leakage(dropped, patients_vs_test=True)
    assert "excluded by the split" in data.exclusion_summary(dropped) and "1 images" in data.exclusion_summary(dropped)
    summary = data.split_summary(dropped)
    assert list(summary.index) == ["train", "test"]  # no "excluded" row
    assert summary[("images", "total")].sum() == len(index) - 1
    assert data.split_summary(dropped, by="official_split")[("images", "total")].sum() == len(index)  # what was found
    assert data.split_summary(dropped, by="fold")[("images", "total")].sum() == (dropped["split"] == "train").sum()
    kept = data.split_by_patient(leaked, 3, seed=0, drop_test_patients=False)
    assert len(kept) == len(index) and not kept["split"].eq("excluded").any() and "kept" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="patient_id"):
        data.check_no_leakage(kept, patients_vs_test=True)
    bad = data.split_by_patient(index, 3, seed=0)
    bad.loc[bad.index[bad["split"] == "train"][:1], "sha1"] = bad.loc[bad["split"] == "test", "sha1"].iloc[0]
    with pytest.raises(AssertionError, match="sha1"):
        data.check_no_leakage(bad)
    across = data.split_by_patient(index, 3, seed=0)
    train = across.index[across["split"] == "train"]
    other = train[across.loc[train, "fold"] != across.loc[train[0], "fold"]][0]
    across.loc[other, "patient_id"] = across.loc[train[0], "patient_id"]  # one child in two folds
    with pytest.raises(AssertionError, match="patient_id"):
        data.check_no_leakage(across)


def test_near_duplicates_are_grouped_and_copies_of_test_images_excluded(tree, indexed, capsys):
    """A re-compressed copy of a test image in training is excluded; a brightened, re-compressed copy of a
    training image lands in its original's fold; unrelated images are not paired."""
    from cxr.data import audit

    index, _ = indexed
    base = index.copy()
    assert audit.near_duplicate_pairs(base, 30)["byte_identical"].all()  # only the byte-identical pair
    test_path = base.loc[base["official_split"] == "test", "path"].iloc[0]
    train_path = base.loc[base["official_split"] == "train", "path"].iloc[5]
    other_path = base.loc[base["label"].eq("PNEUMONIA") & base["official_split"].eq("train"), "path"].iloc[-1]

    def hash_of(path: str, change) -> str:
        pixels = np.asarray(Image.open(tree / "chest_xray" / path).convert("L"))
        return audit.perceptual_hash(Image.open(io.BytesIO(jpeg_bytes(change(pixels), quality=90))))

    near = base.copy()
    near.loc[near["path"] == other_path, "phash"] = hash_of(test_path, lambda a: a)  # a re-compressed test image
    shifted_path = base.loc[base["label"].eq("NORMAL") & base["official_split"].eq("train"), "path"].iloc[-3]
    near.loc[near["path"] == shifted_path, "phash"] = hash_of(train_path, lambda a: np.clip(a.astype(int) + 6, 0, 255)
                                                              .astype(np.uint8))  # brighter and re-compressed
    pairs = audit.near_duplicate_pairs(near, 30)
    found = {frozenset((a, b)) for a, b in zip(pairs["path_a"], pairs["path_b"])}
    assert frozenset((other_path, test_path)) in found and frozenset((shifted_path, train_path)) in found
    split = data.split_by_patient(near, 3, seed=0, near=pairs).set_index("path")
    assert "near duplicates of official test images; excluded" in capsys.readouterr().out
    assert split.loc[other_path, "split"] == "excluded"
    assert split.loc[other_path, "excluded_reason"] == "near duplicate of an official test image"
    assert split.loc[shifted_path, "fold"] == split.loc[train_path, "fold"]
    data.check_no_leakage(split.reset_index(), near=pairs)
    moved = split.reset_index()
    row = moved.index[moved["path"] == shifted_path][0]
    moved.loc[row, "fold"] = (moved.loc[row, "fold"] + 1) % 3
    with pytest.raises(AssertionError, match="near-duplicate"):
        data.check_no_leakage(moved, near=pairs)


def test_cap_per_class_takes_whole_patients_deterministically(indexed):
    index, _ = indexed
    capped = data.cap_per_class(index, 6, seed=1)
    counts = capped.groupby(["official_split", "label"]).size()
    assert counts.max() <= 6 and counts[("train", "NORMAL")] == 6
    assert counts[("test", "NORMAL")] == 4  # smaller groups are kept whole
    for pid, group in capped.groupby("patient_id"):
        full = index[(index["patient_id"] == pid) & index["official_split"].isin(group["official_split"])]
        assert len(group) == len(full)  # whole patients
    shuffled = index.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(data.cap_per_class(shuffled, 6, seed=1), capped)
    assert data.cap_per_class(index, None, seed=1) is index


# ----------------------------------------------------------------------------------------------------------------
# Decoding and resizing
# ----------------------------------------------------------------------------------------------------------------


def test_resize_policies():
    wide = Image.new("L", (200, 100), 255)
    squashed = data.resize(wide, 64, "squash")
    assert squashed.shape == (64, 64) and squashed.dtype == np.uint8 and squashed.min() == 255
    boxed = data.resize(wide, 64, "letterbox")
    assert boxed.shape == (64, 64)
    assert (boxed[:15] == 0).all() and (boxed[-15:] == 0).all()  # black bands above and below
    assert (boxed[18:46] == 255).all()  # the image, full width, in the middle
    tall = data.resize(Image.new("L", (50, 200), 255), 64, "letterbox")
    assert (tall[:, :23] == 0).all() and (tall[:, -23:] == 0).all() and (tall[:, 26:38] == 255).all()
    rgb = Image.new("RGB", (64, 64), (255, 0, 0))
    assert data.resize(rgb, 32, "squash").shape == (32, 32)
    with pytest.raises(ValueError, match="policy"):
        data.resize(wide, 64, "crop")


def test_sixteen_bit_and_cmyk_are_converted_properly(tree):
    root = tree / "chest_xray"
    sixteen = data.load_image(root / "train/NORMAL/IM-0701-0001.png", 64, "squash")  # 64 x 48 source
    expected = np.asarray(Image.fromarray(xray(778)).resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(sixteen.astype(int) - expected).max() <= 2  # 12-bit scaled by 255/4095, not clipped at 255
    cmyk = data.load_image(root / "train/NORMAL/IM-0702-0001.jpeg", 64, "squash")
    assert np.corrcoef(cmyk.ravel(), expected_for(779).ravel())[0, 1] > 0.98
    assert abs(float(cmyk.mean()) - float(expected_for(779).mean())) < 10


def expected_for(seed: int) -> np.ndarray:
    return np.asarray(Image.fromarray(xray(seed)).resize((64, 64), Image.Resampling.BILINEAR))


def test_draft_mode_decodes_large_jpeg_to_the_same_picture(tmp_path):
    big = np.asarray(Image.fromarray(xray(42, 2000, 1600)).resize((2000, 1600)))
    path = tmp_path / "big.jpeg"
    path.write_bytes(jpeg_bytes(big, mode="RGB"))
    with Image.open(path) as img:
        img.draft("L", (224, 224))
        assert img.size == (500, 400) and img.mode == "L"  # libjpeg decodes at 1/4 scale
    fast = data.load_image(path, 224, "squash")
    with Image.open(path) as img:
        slow = data.resize(img.convert("L"), 224, "squash")
    assert fast.shape == slow.shape == (224, 224)
    assert np.abs(fast.astype(int) - slow).mean() < 3
    assert data.load_image(path, 224, "letterbox")[:20].max() == 0  # 5:4 image: black bands on top


# ----------------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------------


def kept(index: pd.DataFrame) -> pd.DataFrame:
    return index.reset_index(drop=True)


def test_cache_is_built_reused_and_invalidated(indexed, tree, tmp_path, monkeypatch):
    index, _ = indexed
    root, cache = tree / "chest_xray", tmp_path / "cache"
    images = data.build_cache(index, root, 32, "squash", cache, workers=1)
    assert images.shape == (len(index), 32, 32) and images.dtype == np.uint8
    row = int(index.index[index["path"] == "train/NORMAL/IM-0003-0001.jpeg"][0])
    np.testing.assert_array_equal(images[row], data.load_image(root / index["path"][row], 32, "squash"))
    manifest = cache / "images-32-squash.json"
    stamp = (manifest.stat().st_mtime_ns, (cache / "images-32-squash.npy").stat().st_mtime_ns)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(data.images, "_decode_paths", no_decoding)
    again = data.build_cache(index, root, 32, "squash", cache, workers=1)
    np.testing.assert_array_equal(again, images)
    assert (manifest.stat().st_mtime_ns, (cache / "images-32-squash.npy").stat().st_mtime_ns) == stamp
    # stale: another size, another policy, another index -> rebuilt
    for size, policy, sub in ((24, "squash", index), (32, "letterbox", index), (32, "squash", index.iloc[:-3])):
        assert not data.cache_is_valid(kept(sub), size, policy, cache)
        with pytest.raises(AssertionError, match="reused"):
            data.build_cache(kept(sub), root, size, policy, cache, workers=1)
    changed = index.copy()
    changed.loc[0, "sha1"] = "0" * 40  # same paths, different content
    assert not data.cache_is_valid(changed, 32, "squash", cache)
    monkeypatch.undo()
    smaller = data.build_cache(kept(index.iloc[:-3]), root, 32, "squash", cache, workers=1)
    assert smaller.shape[0] == len(index) - 3
    assert json.loads(manifest.read_text())["count"] == len(index) - 3
    (cache / "images-32-squash.npy").write_bytes(b"garbage")  # a damaged array is not trusted
    assert not data.cache_is_valid(kept(index.iloc[:-3]), 32, "squash", cache)


def test_the_cache_is_keyed_by_the_reencode_quality(indexed, tree, tmp_path, monkeypatch):
    """None (today), then 75: rebuilt, each row `canonical(load_image(...), 75)`; 75 again: reused. A manifest
    written before the setting existed (no key) is still valid for None, not for 75."""
    from cxr.data.images import canonical

    index, _ = indexed
    root, cache = tree / "chest_xray", tmp_path / "cache"
    manifest = cache / "images-32-squash.json"
    plain = np.array(data.build_cache(index, root, 32, "squash", cache, workers=1))
    assert json.loads(manifest.read_text())["reencode_quality"] is None
    assert not data.cache_is_valid(index, 32, "squash", cache, reencode_quality=75)
    coded = np.array(data.build_cache(index, root, 32, "squash", cache, workers=1, reencode_quality=75))
    assert json.loads(manifest.read_text())["reencode_quality"] == 75
    assert (coded != plain).any()
    for row in (0, len(index) - 1):
        np.testing.assert_array_equal(coded[row], canonical(data.load_image(root / index["path"][row], 32), 75))
        np.testing.assert_array_equal(coded[row], data.load_image(root / index["path"][row], 32, "squash", 75))
    assert not data.cache_is_valid(index, 32, "squash", cache)  # off again: stale
    stamp = manifest.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(data.images, "_decode_paths", no_decoding)
    np.testing.assert_array_equal(data.build_cache(index, root, 32, "squash", cache, workers=1,
                                                   reencode_quality=75), coded)
    assert manifest.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    data.build_cache(index, root, 32, "squash", cache, workers=1)
    older = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "reencode_quality"}
    manifest.write_text(json.dumps(older))  # as written before the setting existed
    assert data.cache_is_valid(index, 32, "squash", cache)
    assert not data.cache_is_valid(index, 32, "squash", cache, reencode_quality=75)


def test_interrupted_cache_build_leaves_no_trusted_cache(indexed, tree, tmp_path, monkeypatch):
    index, _ = indexed
    root, cache = tree / "chest_xray", tmp_path / "cache"
    data.build_cache(index, root, 32, "squash", cache, workers=1)
    assert data.cache_is_valid(index, 32, "squash", cache)
    calls = {"n": 0}
    real = data.images._decode_paths

    def interrupted(paths, size, policy, *quality):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(paths, size, policy, *quality)

    monkeypatch.setattr(data.images, "_decode_paths", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.build_cache(index, root, 32, "squash", cache, workers=1, force=True)
    assert calls["n"] == 2
    assert not data.cache_is_valid(index, 32, "squash", cache)  # neither the old nor a partial cache
    assert sorted(p.name for p in cache.iterdir()) == ["images-32-squash.npy"]  # no temporary file left
    monkeypatch.undo()
    # a file that became unreadable since indexing: a clear error naming it, no trusted cache
    broken = tmp_path / "root"
    shutil.copytree(root / "train", broken / "train")
    (broken / "train/NORMAL/IM-0002-0001.jpeg").write_bytes(b"broken")
    sub = kept(index[index["official_split"] == "train"])
    with pytest.raises(data.DataUnavailable, match="IM-0002-0001.jpeg"):
        data.build_cache(sub, broken, 32, "squash", tmp_path / "cache2", workers=1)
    assert not data.cache_is_valid(sub, 32, "squash", tmp_path / "cache2")


@pytest.mark.parametrize("start_method", ["default", "spawn"])
def test_parallel_cache_equals_serial(tmp_path, monkeypatch, start_method):
    if start_method == "spawn":  # what runs when TensorFlow/JAX/torch is already imported
        import multiprocessing

        from cxr.data import parallel

        monkeypatch.setattr(parallel, "_mp_context", lambda: multiprocessing.get_context("spawn"))
    root = tmp_path / "many"
    for i in range(140):
        write(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.jpeg", jpeg_bytes(xray(i, 80, 60)))
    (root / "test" / "NORMAL").mkdir(parents=True)
    index, _ = data.build_index(root, workers=2)
    assert len(index) == 140
    parallel = data.build_cache(index, root, 40, "letterbox", tmp_path / "c2", workers=2)
    serial = data.build_cache(index, root, 40, "letterbox", tmp_path / "c1", workers=1)
    np.testing.assert_array_equal(parallel, serial)


# ----------------------------------------------------------------------------------------------------------------
# prepare, the CLI and the bundled sample
# ----------------------------------------------------------------------------------------------------------------


def test_prepare_on_a_kaggle_style_zip(tree, tmp_path, capsys):
    archive = zip_folder(tree, tmp_path / "archive.zip")
    config = Config(source=str(archive), data_dir=str(tmp_path / "data"), image_size=32, n_folds=2,
                    max_per_class=12)
    prepared = data.prepare(config, workers=1)
    out = capsys.readouterr().out
    assert "counts found differ from the Kaggle dataset" in out and "train/NORMAL/IM-0704-0001.jpeg: corrupt" in out
    index = prepared.index
    assert prepared.images.shape == (len(index), 32, 32)
    assert index.groupby(["official_split", "label"]).size().max() <= 12
    assert set(index["split"]) == {"train", "test"} and set(index.loc[index["split"] == "train", "fold"]) == {0, 1}
    data.check_no_leakage(index, near=prepared.near_duplicates)
    saved = pd.read_csv(tmp_path / "data" / "index.csv", dtype=str, keep_default_na=False)
    # index.csv: every readable image; the ones over the smoke cap are excluded with their reason
    assert len(saved) == len(data.build_index(prepared.root, workers=1)[0])
    assert list(saved["path"]) == list(prepared.inventory["path"])
    over = saved[saved["split"] == "excluded"]
    assert len(over) == len(prepared.excluded) > 0 and over["excluded_reason"].str.startswith("over max_per_class=12").all()
    assert list(saved.loc[saved["split"] != "excluded", "path"]) == list(index["path"])
    # the nested duplicate and top-level junk are not even extracted (the extraction message counts them)
    assert "left out 1 in __MACOSX/, 53 beside chest_xray/{train,val,test}/ (nested duplicate, junk)" in out
    assert set(pd.read_csv(tmp_path / "data" / "skipped.csv")["path"]) == set(EXPECTED_SKIPS) - {".DS_Store",
                                                                                                 "chest_xray/"}
    row = 5
    np.testing.assert_array_equal(prepared.images[row],
                                  data.load_image(prepared.root / index["path"][row], 32, "squash"))
    again = data.prepare(config, workers=1, verbose=False)  # everything reused
    pd.testing.assert_frame_equal(again.index, index)
    np.testing.assert_array_equal(again.images, prepared.images)
    refolded = data.prepare(config.replace(seed=7), workers=1, verbose=False)  # the training seed: same folds
    pd.testing.assert_frame_equal(refolded.index, index)
    other = data.prepare(config.replace(split_seed=7), workers=1, verbose=False)  # the split seed: other folds
    assert not other.index["fold"].equals(index["fold"])


def test_bundled_sample(tmp_path):
    assert data.SAMPLE_ZIP.stat().st_size < 1_000_000
    root = data.extract(data.SAMPLE_ZIP, tmp_path / "sample")
    index, skipped = data.build_index(root, workers=1)
    assert skipped.empty
    counts = index.groupby(["official_split", "subtype"]).size().to_dict()
    assert counts == {("test", "bacteria"): 6, ("test", "normal"): 12, ("test", "virus"): 6,
                      ("train", "bacteria"): 20, ("train", "normal"): 40, ("train", "virus"): 20}
    assert not set(index.loc[index["official_split"] == "test", "patient_id"]) & set(
        index.loc[index["official_split"] == "train", "patient_id"])
    split = data.split_by_patient(data.cap_per_class(index, 24, seed=42), 2, 42)
    assert split.loc[split["split"] == "train", "fold"].nunique() == 2 and not split["split"].eq("excluded").any()
    assert index[["width", "height"]].eq(224).all().all()


# ----------------------------------------------------------------------------------------------------------------
# ../shared/data (skipped when absent)
# ----------------------------------------------------------------------------------------------------------------


def test_shared_zip_index_and_split(shared_data, tmp_path):
    root = data.extract(shared_data / "chest-xray-pneumonia-224.zip", tmp_path / "shared")
    index, skipped = data.build_index(root)
    assert len(index) == 5840
    assert set(index["official_split"]) == {"train", "test"}  # no val/ in this copy
    assert data.count_table(index).to_dict() == {"NORMAL": {"train": 1341, "test": 234},
                                                "PNEUMONIA": {"train": 3875, "test": 390}}
    assert len(data.check_counts(index)) == 3  # val/NORMAL, val/PNEUMONIA, total
    assert set(skipped["path"]) == {"train/.DS_Store", "test/.DS_Store"}
    duplicated = index[index["sha1"].duplicated(keep=False)]
    assert duplicated["sha1"].nunique() >= 20  # the byte-identical groups the README mentions
    # children: pneumonia numbers are counted per subtype, so no training child is also a test child
    evidence = data.audit.patient_id_evidence(index)
    assert evidence["train_in_test_same_subtype"] == {"bacteria": 0, "virus": 0}
    assert evidence["train_in_test_other_subtype"] == {"bacteria_to_virus": 107, "virus_to_bacteria": 63}
    assert evidence["train_bacteria_virus_coincidences"] == 808
    assert 700 < evidence["chance_uniform"] < 820 and 700 < evidence["chance_by_density"] < 900
    near = data.audit.near_duplicate_pairs(index, Config().near_duplicate_bits)
    summary = data.audit.near_duplicate_summary(index, near, Config().near_duplicate_bits)
    assert summary["near_pairs"] == 0 and summary["byte_identical_pairs"] == len(near) >= 30
    assert summary["closest_distinct_distance"] > Config().near_duplicate_bits
    split = data.split_by_patient(index, 4, 42, drop_test_patients=True, near=near)
    data.check_no_leakage(split, patients_vs_test=True, near=near)
    assert len(split) == 5840 and split["split"].value_counts().to_dict() == {"train": 5216, "test": 624}
    folds = split.loc[split["split"] == "train", "fold"].value_counts()
    assert len(folds) == 4 and folds.max() - folds.min() < 60
    share = split[split["split"] == "train"].groupby("fold")["label"].apply(lambda s: s.eq("PNEUMONIA").mean())
    assert share.max() - share.min() < 0.02
    assert data.check_counts(split) == data.check_counts(index)  # the count check is about what was found


def test_shared_raw_originals_match_the_224_copies(shared_data):
    raw = sorted((shared_data / "raw-sample").rglob("*.jpeg"))
    if not raw:
        pytest.skip("raw-sample/ not present")
    with zipfile.ZipFile(shared_data / "chest-xray-pneumonia-224.zip") as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        for path in raw:
            original = data.load_image(path, 224, "squash")
            with Image.open(path) as img:
                assert max(img.size) >= 900  # really full resolution
            copy = data.load_image(io.BytesIO(zf.read(names[path.name])), 224, "squash")
            r = np.corrcoef(original.ravel().astype(float), copy.ravel().astype(float))[0, 1]
            assert r > 0.97, (path.name, r)


def test_prepared_rows_folds_labels_and_batch():
    index = pd.DataFrame({
        "split": ["train", "train", "train", "test", "train", "train", "test"],
        "fold": [0, 1, 0, -1, 1, 0, -1],
        "label": ["NORMAL", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"],
        "subtype": ["normal", "virus", "bacteria", "virus", "bacteria", "normal", "normal"],
        "patient_id": ["a", "b", "c", "d", "e", "a", "f"],
    })
    images = np.arange(7 * 2 * 2, dtype=np.uint8).reshape(7, 2, 2)
    prepared = data.Prepared(index=index, skipped=pd.DataFrame(), images=images, root=Path("."), source=Path("."))
    np.testing.assert_array_equal(prepared.rows("train"), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(prepared.rows("train", "subtype"), [1, 2, 4])  # pneumonia rows only
    np.testing.assert_array_equal(prepared.rows("test", "pneumonia"), [3, 6])
    np.testing.assert_array_equal(prepared.folds(np.array([0, 1, 3])), [0, 1, -1])
    np.testing.assert_array_equal(prepared.groups(np.array([5, 6])), ["a", "f"])
    np.testing.assert_array_equal(prepared.labels("pneumonia", np.array([0, 1, 4])), [0, 1, 1])
    np.testing.assert_array_equal(prepared.labels("subtype", np.array([1, 4])), [1, 0])  # virus is positive
    assert prepared.labels("pneumonia", np.array([0])).dtype == np.float32
    batch = prepared.batch(np.array([4, 1]))
    assert batch.shape == (2, 2, 2, 1) and batch.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(batch[0, ..., 0], images[4])
    with pytest.raises(ValueError, match="unknown task"):
        prepared.rows("train", "fracture")
    with pytest.raises(ValueError, match="unknown split"):
        prepared.rows("val")


# ----------------------------------------------------------------------------------------------------------------
# Children, near duplicates and the flow (cxr.data.audit)
# ----------------------------------------------------------------------------------------------------------------


def test_patient_id_rule_on_file_names():
    """Bacterial and viral numbers of the same N are different children; normals keep their file-name id."""
    pid = data.patient_id
    assert pid("person5_bacteria_12.jpeg", "PNEUMONIA") == "person5_bacteria"
    assert pid("person5_virus_13.jpeg", "PNEUMONIA") == "person5_virus"
    assert pid("person5_bacteria_12.jpeg", "PNEUMONIA") != pid("person5_virus_13.jpeg", "PNEUMONIA")
    assert pid("person5_bacteria_14.jpeg", "PNEUMONIA") == pid("person5_bacteria_12.jpeg", "PNEUMONIA")
    assert pid("PERSON7_Virus_1.JPEG", "PNEUMONIA") == "person7_virus"
    assert pid("IM-0115-0001.jpeg", "NORMAL") == "IM-0115"
    assert pid("NORMAL2-IM-0102-0002.jpeg", "NORMAL") == "NORMAL2-IM-0102"
    assert pid("IM-0600-0001-0001.jpeg", "NORMAL") == "IM-0600"
    assert pid("scan.png", "NORMAL") == "NORMAL/scan"  # no recognised id: one image, one child


def test_patient_id_evidence_counts_numbers_per_subtype():
    rows = [("train", "bacteria", n) for n in (1, 2, 3, 4)] + [("train", "virus", n) for n in (3, 4, 5)]
    rows += [("test", "virus", 1), ("test", "bacteria", 5), ("test", "bacteria", 9)]
    index = pd.DataFrame({"official_split": [r[0] for r in rows], "subtype": [r[1] for r in rows],
                          "label": "PNEUMONIA", "path": [f"{r[0]}/PNEUMONIA/person{r[2]}_{r[1]}_{i}.jpeg" for i, r in enumerate(rows)]})
    e = data.audit.patient_id_evidence(index, bin_width=5)
    assert e["numbers"] == {"train/bacteria": 4, "train/virus": 3, "test/bacteria": 2, "test/virus": 1}
    assert e["train_in_test_same_subtype"] == {"bacteria": 0, "virus": 0}
    assert e["train_in_test_other_subtype"] == {"bacteria_to_virus": 1, "virus_to_bacteria": 1}
    assert e["train_bacteria_virus_coincidences"] == 2
    assert e["chance_uniform"] == pytest.approx(4 * 3 / 5)
    # training children whose number reappears in test (bacteria 1, virus 5) would be excluded by merged ids
    assert e["merged_ids_would_exclude"] == 2 and e["pneumonia_training_images"] == 7
    assert "counted per subtype" in reporting.describe_patient_ids(e)


def _smooth(seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.normal(128, 50, (12, 12))
    return np.clip(np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize((size, size),
                                                                                      Image.Resampling.BICUBIC)),
                   0, 255).astype(np.uint8)


def test_perceptual_hash_finds_shifted_and_recompressed_copies_not_unrelated_images():
    from cxr.data import audit

    image = _smooth(1)
    h = audit.perceptual_hash(Image.fromarray(image))
    assert len(h) == 64 and int(h, 16) & 1 == 0  # 256 bits, the last always 0

    def distance(other: np.ndarray) -> int:
        bits = audit.hash_bits([h, audit.perceptual_hash(Image.fromarray(other))])
        return int(audit.hamming_distances(bits)[0, 1])

    recompressed = np.asarray(Image.open(io.BytesIO(jpeg_bytes(image, quality=30))))
    limit = Config().near_duplicate_bits
    assert distance(recompressed) <= limit
    assert distance(np.roll(image, 2, axis=1)) <= limit
    assert distance(np.clip(image.astype(int) + 20, 0, 255).astype(np.uint8)) <= limit
    unrelated = [distance(_smooth(seed)) for seed in range(2, 12)]
    assert min(unrelated) > 2 * limit, unrelated


def test_flow_counts_add_up(indexed):
    index, skipped = indexed
    split = data.split_by_patient(index, 3, seed=0)
    split.loc[split.index[split["split"] == "train"][:2], ["split", "excluded_reason"]] = ["excluded", "a reason"]
    flow = data.audit.flow_counts(split, skipped).set_index("stage")
    assert flow.loc["readable images", "images"] == len(index)
    assert flow.loc["unreadable (skipped)", "images"] == 3  # empty, corrupt, truncated
    assert flow.loc["files found (image files)", "images"] == len(index) + 3
    assert flow.loc["excluded: a reason", "images"] == 2
    end = flow.loc[["training (cross-validated)", "official test"], "images"].sum()
    assert end + 2 == len(index)
    assert "3 folds" in flow.loc["training (cross-validated)", "detail"]


# ----------------------------------------------------------------------------------------------------------------
# Small datasets
# ----------------------------------------------------------------------------------------------------------------


def _tiny_index(per_subtype: dict[str, int], test: int = 2) -> pd.DataFrame:
    rows, n = [], 0
    for subtype, count in per_subtype.items():
        label = "NORMAL" if subtype == "normal" else "PNEUMONIA"
        for i in range(count):
            n += 1
            rows.append({"path": f"train/{label}/{subtype}{i}.jpeg", "official_split": "train", "label": label,
                         "subtype": subtype, "patient_id": f"{subtype}{i}", "sha1": f"{n:040x}"})
    for i in range(test):
        for label, subtype in (("NORMAL", "normal"), ("PNEUMONIA", "bacteria")):
            n += 1
            rows.append({"path": f"test/{label}/t{subtype}{i}.jpeg", "official_split": "test", "label": label,
                         "subtype": subtype, "patient_id": f"t{subtype}{i}", "sha1": f"{n:040x}"})
    return pd.DataFrame(rows)


def test_small_pool_is_split_into_fewer_folds_and_says_so(capsys):
    index = _tiny_index({"normal": 3, "bacteria": 3, "virus": 2})
    split = data.split_by_patient(index, 5, 42)  # scikit-learn alone: "n_splits=5 cannot be greater ..."
    out = capsys.readouterr().out
    assert "3 cross-validation folds instead of 5" in out
    assert split.loc[split["split"] == "train", "fold"].nunique() == 3 and set(split["split"]) == {"train", "test"}
    data.check_no_leakage(split)
    usual = _tiny_index({"normal": 20, "bacteria": 12, "virus": 9})
    data.split_by_patient(usual, 4, 42)
    assert "folds instead" not in capsys.readouterr().out  # enough images: the usual folds, no note


def test_a_pool_that_cannot_be_split_stops_with_the_numbers():
    with pytest.raises(data.DataUnavailable, match=r"1 image\(s\) of 1 child\(ren\).*at least 2 children"):
        data.split_by_patient(_tiny_index({"normal": 1}), 4, 42)
    with pytest.raises(data.DataUnavailable, match="Too few training images"):
        data.split_by_patient(_tiny_index({"normal": 1, "virus": 1}), 4, 42)


def test_check_trainable_names_the_missing_class():
    split = data.split_by_patient(_tiny_index({"normal": 6, "bacteria": 6, "virus": 6}), 2, 42)
    data.check_trainable(split, ["pneumonia", "subtype"])
    no_virus = split[~split["subtype"].eq("virus") | split["fold"].eq(0)]  # viral images of fold 0 only
    with pytest.raises(data.DataUnavailable, match="Task 'subtype' cannot be trained.*training part of fold 0 has "
                                                   "0 virus"):
        data.check_trainable(no_virus, ["pneumonia", "subtype"])
    data.check_trainable(no_virus, ["pneumonia"])
    no_test = split[split["split"].ne("test")]
    with pytest.raises(data.DataUnavailable, match="no test images"):
        data.check_trainable(no_test, ["pneumonia"])


def test_prepared_rows_ignore_excluded_rows():
    index = pd.DataFrame({"split": ["train", "excluded", "train", "test"], "label": ["NORMAL", "PNEUMONIA"] * 2,
                          "subtype": ["normal", "virus", "normal", "bacteria"], "path": list("abcd"),
                          "fold": [0, -1, 1, -1]})
    prepared = data.Prepared(index=index, skipped=pd.DataFrame(), images=np.zeros((4, 2, 2), np.uint8),
                             root=Path("."), source=Path("."))
    np.testing.assert_array_equal(prepared.rows("train"), [0, 2])
    assert sum(len(prepared.rows(s)) for s in ("train", "test")) == 3


def test_children_sharing_an_image_are_one_resampling_unit():
    """NORMAL2-IM-0095 and -0096 of the official test are the same bytes under two child ids: the bootstrap must
    draw them as one unit, and a byte-identical pair of one child stays that child's."""
    index = pd.DataFrame({
        "path": ["test/NORMAL/NORMAL2-IM-0095-0001.jpeg", "test/NORMAL/NORMAL2-IM-0096-0001.jpeg",
                 "test/NORMAL/IM-0001-0001.jpeg", "test/NORMAL/IM-0001-0002.jpeg", "test/NORMAL/IM-0002-0001.jpeg"],
        "patient_id": ["NORMAL2-IM-0095", "NORMAL2-IM-0096", "IM-0001", "IM-0001", "IM-0002"],
        "sha1": ["same", "same", "a", "a", "b"], "split": ["test"] * 5, "label": ["NORMAL"] * 5})
    prepared = data.Prepared(index=index, skipped=pd.DataFrame(), images=np.zeros((5, 8, 8), np.uint8), root=None,
                             source=None)
    units = prepared.groups(np.arange(5))
    assert list(units) == ["NORMAL2-IM-0095", "NORMAL2-IM-0095", "IM-0001", "IM-0001", "IM-0002"]
    assert list(prepared.groups(np.array([4, 1]))) == ["IM-0002", "NORMAL2-IM-0095"]
