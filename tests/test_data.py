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

from cxr import data
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
    assert by_path.loc["train/PNEUMONIA/person1_virus_900.jpeg", "patient_id"] == "person1"
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
    split = data.split_by_patient(index, val_fraction=0.25, seed=0)
    assert set(split["split"]) == {"train", "val", "test"}
    assert len(split) == len(index)
    # the official test is untouched, and nothing else is in it
    assert set(split.loc[split["split"] == "test", "path"]) == set(index.loc[index["official_split"] == "test", "path"])
    # no patient in train and val, no sha1 in two splits
    for column in ("patient_id", "sha1"):
        assert split[split["split"] != "test"].groupby(column)["split"].nunique().max() == 1
    assert split.groupby("sha1")["split"].nunique().max() == 1
    # person1 (bacteria + virus) in one split; the byte-identical pair person40/person41 in one split
    assert split.loc[split["patient_id"] == "person1", "split"].nunique() == 1
    pair = split[split["patient_id"].isin(["person40", "person41"])]
    assert len(pair) == 2 and pair["split"].nunique() == 1
    # roughly stratified: both labels in val, about a quarter of the pool in val
    val = split[split["split"] == "val"]
    assert set(val["label"]) == {"NORMAL", "PNEUMONIA"}
    pool = split[split["split"] != "test"]
    assert 0.1 < len(val) / len(pool) < 0.4
    assert abs(val["label"].eq("NORMAL").mean() - pool["label"].eq("NORMAL").mean()) < 0.2
    data.check_no_leakage(split)


def test_split_is_deterministic_whatever_the_row_order(indexed):
    index, _ = indexed
    reference = data.split_by_patient(index, 0.25, seed=3).set_index("path")["split"]
    for shuffle_seed in range(3):
        shuffled = index.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
        again = data.split_by_patient(shuffled, 0.25, seed=3).set_index("path")["split"]
        pd.testing.assert_series_equal(again, reference)
    others = [data.split_by_patient(index, 0.25, seed=s).set_index("path")["split"] for s in (4, 5)]
    assert any(not other.equals(reference) for other in others)  # the seed matters


def test_split_excludes_training_copies_of_test_images_and_keeps_their_rows(indexed, capsys):
    index, _ = indexed
    test_row = index[index["official_split"] == "test"].iloc[0]
    train_rows = index.index[index["official_split"] == "train"][:1]
    leaky = index.copy()
    leaky.loc[train_rows, "sha1"] = test_row["sha1"]
    split = data.split_by_patient(leaky, 0.25, seed=0)
    assert "1 training images are byte-identical to official test images; excluded" in capsys.readouterr().out
    assert len(split) == len(index)  # the inventory keeps the row ...
    excluded = split[split["split"] == "excluded"]
    assert list(excluded["path"]) == [index.loc[train_rows[0], "path"]]  # ... as excluded, with its reason
    assert list(excluded["excluded_reason"]) == ["byte-identical to an official test image"]
    assert split.loc[split["split"] != "excluded", "excluded_reason"].eq("").all()
    kept_rows = split[split["split"] != "excluded"]
    assert kept_rows.groupby("sha1")["split"].nunique().max() == 1
    data.check_no_leakage(split)  # excluded rows are ignored by the check
    leaked = index.copy()
    leaked.loc[train_rows, "patient_id"] = test_row["patient_id"]
    dropped = data.split_by_patient(leaked, 0.25, seed=0, drop_test_patients=True)
    assert "also appears in the official test" in capsys.readouterr().out  # reported, with the count
    assert len(dropped) == len(index) and dropped["split"].eq("excluded").sum() == 1
    assert dropped.loc[dropped["split"] == "excluded", "excluded_reason"].iloc[0] == "patient id also in the official test"
    assert not set(dropped.loc[dropped["split"].isin(["train", "val"]), "patient_id"]) & {test_row["patient_id"]}
    data.check_no_leakage(dropped, patients_vs_test=True)
    assert "excluded by the split" in data.exclusion_summary(dropped) and "1 images" in data.exclusion_summary(dropped)
    summary = data.split_summary(dropped)
    assert list(summary.index) == ["train", "val", "test"]  # no "excluded" row
    assert summary[("images", "total")].sum() == len(index) - 1
    assert data.split_summary(dropped, by="official_split")[("images", "total")].sum() == len(index)  # what was found
    kept = data.split_by_patient(leaked, 0.25, seed=0, drop_test_patients=False)
    assert len(kept) == len(index) and not kept["split"].eq("excluded").any() and "kept" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="patient_id"):
        data.check_no_leakage(kept, patients_vs_test=True)
    bad = data.split_by_patient(index, 0.25, seed=0)
    bad.loc[bad.index[bad["split"] == "train"][:1], "sha1"] = bad.loc[bad["split"] == "test", "sha1"].iloc[0]
    with pytest.raises(AssertionError, match="sha1"):
        data.check_no_leakage(bad)


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
    assert data.cap_per_class(index, None) is index


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


def test_interrupted_cache_build_leaves_no_trusted_cache(indexed, tree, tmp_path, monkeypatch):
    index, _ = indexed
    root, cache = tree / "chest_xray", tmp_path / "cache"
    data.build_cache(index, root, 32, "squash", cache, workers=1)
    assert data.cache_is_valid(index, 32, "squash", cache)
    calls = {"n": 0}
    real = data.images._decode_paths

    def interrupted(paths, size, policy):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(paths, size, policy)

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

        monkeypatch.setattr(data.index, "_mp_context", lambda: multiprocessing.get_context("spawn"))
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
    config = Config(source=str(archive), data_dir=str(tmp_path / "data"), image_size=32, val_fraction=0.25,
                    max_per_class=12)
    prepared = data.prepare(config, workers=1)
    out = capsys.readouterr().out
    assert "counts found differ from the Kaggle dataset" in out and "train/NORMAL/IM-0704-0001.jpeg: corrupt" in out
    index = prepared.index
    assert prepared.images.shape == (len(index), 32, 32)
    assert index.groupby(["official_split", "label"]).size().max() <= 12
    assert set(index["split"]) == {"train", "val", "test"}
    data.check_no_leakage(index)
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


def test_index_cli(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "index.csv"
    assert data.index_cli([str(tree), "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train/NORMAL/notes.txt: not an image" in printed and "8 files skipped" in printed
    index = pd.read_csv(out)
    assert {"split", "sha1", "patient_id", "excluded_reason"} <= set(index.columns)
    assert len(index) == len(data.build_index(tree / "chest_xray", workers=1)[0])  # every readable image
    assert len(pd.read_csv(tmp_path / "index-skipped.csv")) == len(EXPECTED_SKIPS)
    assert data.index_cli([str(tmp_path / "missing.zip"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


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
    split = data.split_by_patient(data.cap_per_class(index, 24), 0.15, 42)
    assert (split["split"] == "val").sum() > 0 and not split["split"].eq("excluded").any()
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
    split = data.split_by_patient(index, 0.15, 42, drop_test_patients=True)
    data.check_no_leakage(split, patients_vs_test=True)
    assert len(split) == 5840 and split["split"].value_counts().to_dict() == {"train": 4079, "excluded": 457,
                                                                              "val": 680, "test": 624}
    assert split.loc[split["split"] == "excluded", "official_split"].eq("train").all()
    assert data.check_counts(split) == data.check_counts(index)  # the count check is about what was found
    assert not any("PNEUMONIA: 3418" in line for line in data.check_counts(split))  # no "-457" false alarm
    split = data.split_by_patient(index, 0.15, 42)
    data.check_no_leakage(split)
    assert (split["split"] == "test").sum() == 624
    share = (split["split"] == "val").sum() / (split["split"] != "test").sum()
    assert 0.10 < share < 0.20
    by_label = split[split["split"] != "test"].groupby("split")["label"].apply(lambda s: s.eq("PNEUMONIA").mean())
    assert abs(by_label["train"] - by_label["val"]) < 0.03


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


def test_prepared_rows_labels_and_batch():
    index = pd.DataFrame({
        "split": ["train", "train", "val", "test", "train", "val", "test"],
        "label": ["NORMAL", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"],
        "subtype": ["normal", "virus", "bacteria", "virus", "bacteria", "normal", "normal"],
    })
    images = np.arange(7 * 2 * 2, dtype=np.uint8).reshape(7, 2, 2)
    prepared = data.Prepared(index=index, skipped=pd.DataFrame(), images=images, root=Path("."), source=Path("."))
    np.testing.assert_array_equal(prepared.rows("train"), [0, 1, 4])
    np.testing.assert_array_equal(prepared.rows("train", "subtype"), [1, 4])  # pneumonia rows only
    np.testing.assert_array_equal(prepared.rows("test", "pneumonia"), [3, 6])
    np.testing.assert_array_equal(prepared.labels("pneumonia", np.array([0, 1, 4])), [0, 1, 1])
    np.testing.assert_array_equal(prepared.labels("subtype", np.array([1, 4])), [1, 0])  # virus is positive
    assert prepared.labels("pneumonia", np.array([0])).dtype == np.float32
    batch = prepared.batch(np.array([4, 1]))
    assert batch.shape == (2, 2, 2, 1) and batch.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(batch[0, ..., 0], images[4])
    with pytest.raises(ValueError, match="unknown task"):
        prepared.rows("train", "fracture")
    with pytest.raises(ValueError, match="unknown split"):
        prepared.rows("training")


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
    split = data.split_by_patient(index, 0.15, 42)  # scikit-learn alone: "n_splits=7 cannot be greater ..."
    out = capsys.readouterr().out
    assert "validation takes 1 of 3 folds (about 33%) instead of 1 of 7 (15%)" in out
    assert split["split"].eq("val").sum() >= 2 and set(split["split"]) == {"train", "val", "test"}
    data.check_no_leakage(split)
    usual = _tiny_index({"normal": 20, "bacteria": 12, "virus": 9})
    data.split_by_patient(usual, 0.15, 42)
    assert "folds" not in capsys.readouterr().out  # enough images: the usual split, no note


def test_a_pool_that_cannot_be_split_stops_with_the_numbers():
    with pytest.raises(data.DataUnavailable, match=r"1 image\(s\) of 1 patient\(s\).*at least 2 patients"):
        data.split_by_patient(_tiny_index({"normal": 1}), 0.15, 42)
    with pytest.raises(data.DataUnavailable, match="Too few training images"):
        data.split_by_patient(_tiny_index({"normal": 1, "virus": 1}), 0.15, 42)


def test_check_trainable_names_the_missing_class():
    split = data.split_by_patient(_tiny_index({"normal": 4, "bacteria": 4, "virus": 4}), 0.15, 42)
    data.check_trainable(split, ["pneumonia", "subtype"])
    no_virus = split[~(split["subtype"].eq("virus") & split["split"].eq("val"))]
    with pytest.raises(data.DataUnavailable, match="Task 'subtype' cannot be trained.*its val split has 0 virus"):
        data.check_trainable(no_virus, ["pneumonia", "subtype"])
    data.check_trainable(no_virus, ["pneumonia"])


def test_prepared_rows_ignore_excluded_rows():
    index = pd.DataFrame({"split": ["train", "excluded", "val", "test"], "label": ["NORMAL", "PNEUMONIA"] * 2,
                          "subtype": ["normal", "virus", "normal", "bacteria"], "path": list("abcd")})
    prepared = data.Prepared(index=index, skipped=pd.DataFrame(), images=np.zeros((4, 2, 2), np.uint8),
                             root=Path("."), source=Path("."))
    np.testing.assert_array_equal(prepared.rows("train"), [0])
    assert sum(len(prepared.rows(s)) for s in ("train", "val", "test")) == 3
