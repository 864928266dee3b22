"""The index: one row per decodable image (path, official split, label, subtype, patient id, size, mode, format,
sha1, perceptual hash), every other file listed with the reason it was skipped, and the count check against the
Kaggle archive. Index files are written with a sidecar record (row count, sha256) and verified when read back: a cut
or changed index is never used as if it were whole."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxr.config import CLASS_NAMES, OFFICIAL_SPLITS
from cxr.data.audit import perceptual_hash
from cxr.data.images import DICOM_SUFFIXES, ImageRejected, read_image
from cxr.data.names import patient_id, subtype as subtype_of  # noqa: F401  (re-exported)
from cxr.data.parallel import parallel_map
from cxr.data.sources import INDEX_VERSION, DataUnavailable, _is_macosx
from cxr.io import atomic_write_bytes, atomic_write_text

# Image counts of the Kaggle archive, per (official split, label).
KAGGLE_COUNTS = {
    ("train", "NORMAL"): 1341,
    ("train", "PNEUMONIA"): 3875,
    ("val", "NORMAL"): 8,
    ("val", "PNEUMONIA"): 8,
    ("test", "NORMAL"): 234,
    ("test", "PNEUMONIA"): 390,
}
INDEX_COLUMNS = ["path", "official_split", "label", "subtype", "patient_id", "width", "height", "mode", "format", "sha1",
                 "phash"]
SKIPPED_COLUMNS = ["path", "reason"]
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", *DICOM_SUFFIXES}
SCAN_FORMAT = "c"  # the cached scan's layout: "c" = with its checksum records (part of the file names)
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


def _inspect_file(abs_path: str) -> dict[str, Any]:
    """sha1, size (as displayed), mode, format and perceptual hash of one file, fully decoded by `read_image` (the
    decoder training and prediction use: EXIF orientation, DICOM, the checks of `ImageRejected`) to catch corrupt,
    truncated and unusable images; or a skip reason."""
    suffix = Path(abs_path).suffix.lower()
    try:
        data = Path(abs_path).read_bytes()
    except OSError as error:
        return {"reason": f"unreadable: {error}"}
    if not data:
        return {"reason": "empty file"}
    try:
        gray, info = read_image(io.BytesIO(data), name=abs_path, draft=64)  # draft: decodes every block, faster
        phash = perceptual_hash(gray)
    except ImageRejected as error:
        return {"reason": error.reason}
    except UnidentifiedImageError:
        if suffix in IMAGE_EXTENSIONS:
            return {"reason": f"corrupt: not a decodable image despite the {suffix} extension"}
        return {"reason": f"not an image ({suffix or 'no extension'})"}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
        return {"reason": f"{kind}: {error}"}
    return {**info, "sha1": hashlib.sha1(data).hexdigest(), "phash": phash}


def _inspect_chunk(paths: list[str]) -> list[dict[str, Any]]:
    return [_inspect_file(p) for p in paths]


def build_index(root: str | Path, workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index every image under root/{train,val,test}/{NORMAL,PNEUMONIA}/ and list every other file with a reason.

    Returns (index, skipped). index: one row per decodable image, sorted by path; path is relative to `root`
    (posix). Any decodable format is kept (a PNG named .jpeg too: the `format` column says PNG). skipped: path and
    reason for junk, empty, non-image, corrupt and truncated files, unknown folders and the nested duplicate.
    """
    root = Path(root)
    candidates: list[tuple[str, str, str]] = []  # (relative path, split, label)
    skipped: list[dict[str, str]] = []
    labels = {name.lower(): name for name in CLASS_NAMES}

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def skip_tree(p: Path, reason: str) -> None:
        skipped.append({"path": rel(p) + "/", "reason": reason})

    def is_junk(p: Path) -> bool:
        return p.name.lower() in JUNK_NAMES or _is_macosx([p.name])

    for top in sorted(root.iterdir()):
        if top.is_dir() and top.name.lower() in OFFICIAL_SPLITS:
            for sub in sorted(top.iterdir()):
                if sub.is_dir() and sub.name.lower() in labels:
                    for f in sorted(sub.rglob("*")):
                        if f.is_dir():
                            continue
                        if is_junk(f):
                            skipped.append({"path": rel(f), "reason": f"junk file ({f.name})"})
                        elif f.parent != sub:
                            skipped.append({"path": rel(f), "reason": "inside a sub-folder of a class folder"})
                        else:
                            candidates.append((rel(f), top.name.lower(), labels[sub.name.lower()]))
                elif sub.is_dir():
                    skip_tree(sub, f"unknown class folder {sub.name!r} (expected NORMAL or PNEUMONIA)")
                else:
                    reason = f"junk file ({sub.name})" if is_junk(sub) else "file outside the class folders"
                    skipped.append({"path": rel(sub), "reason": reason})
        elif top.is_dir():
            if _is_macosx([top.name]):
                skip_tree(top, "macOS resource forks (__MACOSX)")
            elif {"train", "test"} <= {p.name.lower() for p in top.iterdir() if p.is_dir()}:
                skip_tree(top, "nested duplicate of the dataset (ignored)")
            else:
                skip_tree(top, "folder outside train/val/test")
        elif not top.name.startswith(".extracted"):
            reason = f"junk file ({top.name})" if is_junk(top) else "file outside train/val/test"
            skipped.append({"path": rel(top), "reason": reason})

    abs_paths = [str(root / p) for p, _, _ in candidates]
    inspected = [row for part in parallel_map(_inspect_chunk, abs_paths, workers, "index") for row in part]
    rows = []
    for (path, split, label), info in zip(candidates, inspected):
        if "reason" in info:
            skipped.append({"path": path, "reason": info["reason"]})
            continue
        name = Path(path).name
        rows.append({"path": path, "official_split": split, "label": label, "subtype": subtype_of(name, label),
                     "patient_id": patient_id(name, label), **info})
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values("path", ignore_index=True)
    index[["width", "height"]] = index[["width", "height"]].astype("int64")
    skipped_frame = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).sort_values("path", ignore_index=True)
    return index, skipped_frame


def count_table(index: pd.DataFrame) -> pd.DataFrame:
    """Images per official split (rows) and label (columns)."""
    table = pd.crosstab(index["official_split"], index["label"])
    return table.reindex(index=[s for s in OFFICIAL_SPLITS if s in table.index], columns=list(CLASS_NAMES), fill_value=0)


def check_counts(index: pd.DataFrame) -> list[str]:
    """Differences from the known Kaggle counts (5,856 images), one line each; empty when all match. Not fatal."""
    got = index.groupby(["official_split", "label"]).size().to_dict()
    lines = []
    for key, expected in KAGGLE_COUNTS.items():
        n = int(got.get(key, 0))
        if n != expected:
            lines.append(f"{key[0]}/{key[1]}: {n} images, the Kaggle dataset has {expected} ({n - expected:+d})")
    for key, n in got.items():
        if key not in KAGGLE_COUNTS:
            lines.append(f"{key[0]}/{key[1]}: {n} images, not in the Kaggle dataset")
    if lines:
        lines.append(f"total: {len(index)} images, the Kaggle dataset has {sum(KAGGLE_COUNTS.values())}")
    return lines


def _tree_fingerprint(root: Path) -> str:
    """Hash of (path, size, mtime) of every file under root: changes when any file does."""
    digest = hashlib.sha1(str(root.resolve()).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            digest.update(f"{os.path.join(dirpath, name)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_checked_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write `frame` as CSV (no index column) atomically, then its record `<name>.json` (row count and sha256 of
    the bytes), which `read_checked_csv` verifies."""
    path = Path(path)
    payload = frame.to_csv(index=False).encode()
    atomic_write_bytes(path, payload)
    atomic_write_text(_record_path(path), json.dumps({"rows": int(len(frame)),
                                                      "sha256": hashlib.sha256(payload).hexdigest()}) + "\n")
    return path


def read_checked_csv(path: str | Path) -> pd.DataFrame:
    """A CSV written by `write_checked_csv`, every value a string (empty for missing), after checking it against
    its record: `DataUnavailable` (one line) when the file or its record is missing or they disagree (a file cut
    at a line boundary has too few rows, one cut mid-line or edited does not match the checksum)."""
    path = Path(path)
    try:
        record = json.loads(_record_path(path).read_text())
        rows, checksum = int(record["rows"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataUnavailable(f"{path} has no readable checksum record ({_record_path(path).name}): write it again "
                              "with the command that made it") from None
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise DataUnavailable(f"cannot read {path} ({error}); write it again with the command that made it") from None
    if hashlib.sha256(payload).hexdigest() != checksum:
        lines = max(0, payload.count(b"\n") - 1)  # less the header
        raise DataUnavailable(f"{path} does not match its checksum record (cut or changed since it was written: "
                              f"{lines} lines of rows, the record says {rows} rows); write it again")
    frame = pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=False)
    if len(frame) != rows:
        raise DataUnavailable(f"{path} has {len(frame)} rows, its checksum record says {rows}; write it again")
    return frame


def cached_index(root: str | Path, cache_dir: str | Path,
                 workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`build_index(root)`, reused from cache_dir while no file under root changed (size, mtime) and the cached
    files match their checksum records (`read_checked_csv`); a damaged cached scan is rebuilt (said in one line)."""
    root, cache_dir = Path(root), Path(cache_dir)
    key = f"{INDEX_VERSION}{SCAN_FORMAT}-{_tree_fingerprint(root)[:16]}"
    index_path, skipped_path = cache_dir / f"scan-{key}.csv", cache_dir / f"scan-{key}-skipped.csv"
    if index_path.is_file() or skipped_path.is_file():
        try:
            skipped = read_checked_csv(skipped_path)
            index = read_checked_csv(index_path)
            if list(index.columns) != INDEX_COLUMNS or list(skipped.columns) != SKIPPED_COLUMNS:
                raise DataUnavailable(f"{index_path} does not have the columns of this version")
            index[["width", "height"]] = index[["width", "height"]].astype("int64")
            return index, skipped
        except (DataUnavailable, ValueError) as error:
            print(f"Data: the cached scan index is damaged ({str(error).splitlines()[0]}): rebuilding it")
    index, skipped = build_index(root, workers=workers)
    write_checked_csv(skipped_path, skipped)  # index last: its record's presence means both are complete
    write_checked_csv(index_path, index)
    return index, skipped
