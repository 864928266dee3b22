"""Data layer: get the chest X-ray dataset, index it, split it by patient and cache decoded images.

The pipeline, as `prepare(config)` runs it:

1. `resolve_source`: where the data comes from (argument, $CXR_DATA, ../shared copy, Kaggle, bundled sample).
2. `extract`: unzip (or take a folder as is) and find the dataset root, the folder holding train/ and test/.
3. `build_index`: one row per decodable image (path, official split, label, subtype, patient, size, mode, sha1);
   every file that is not kept is listed in `skipped` with the reason.
4. `split_by_patient`: re-split the official train (+ val) into train/val, grouped by patient and identical bytes,
   stratified by subtype; the official test is never changed.
5. `build_cache`: decode every image once to a uint8 (N, S, S) grayscale array with `load_image`, in parallel,
   into an `.npy` memory map with a manifest; reused while valid, rebuilt when stale, written atomically.

`resize` is the one resize function: training, evaluation and prediction all go through it.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm  # text bars everywhere (no ipywidgets needed); TQDM_DISABLE=1 turns them off

from cxr.config import CLASS_NAMES, KAGGLE_DATASET, Config

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SAMPLE_ZIP = PACKAGE_DIR / "sample" / "chest-xray-sample.zip"
SHARED_ZIP_NAME = "chest-xray-pneumonia-224.zip"
KAGGLE_ZIP_NAME = "chest-xray-pneumonia.zip"

SPLITS = ("train", "val", "test")
RESIZE_POLICIES = ("squash", "letterbox")
# Image counts of the Kaggle archive, per (official split, label).
KAGGLE_COUNTS = {
    ("train", "NORMAL"): 1341,
    ("train", "PNEUMONIA"): 3875,
    ("val", "NORMAL"): 8,
    ("val", "PNEUMONIA"): 8,
    ("test", "NORMAL"): 234,
    ("test", "PNEUMONIA"): 390,
}
INDEX_COLUMNS = ["path", "official_split", "label", "subtype", "patient_id", "width", "height", "mode", "format", "sha1"]
SKIPPED_COLUMNS = ["path", "reason"]
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
CACHE_VERSION = 1
INDEX_VERSION = 1

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)
_SUBTYPE = re.compile(r"(bacteria|virus)", re.IGNORECASE)


class DataUnavailable(RuntimeError):
    """The data cannot be obtained or read; the message says what to do (print it, no traceback needed)."""


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------


def _chmod_default(path: str | Path) -> None:
    """Give a mkstemp file (mode 0600) the permissions of a normally created file (0666 minus the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync, then `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _atomic_write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False))


# ---------------------------------------------------------------------------------------------------------------
# Getting the data
# ---------------------------------------------------------------------------------------------------------------

HOW_TO_GET_DATA = f"""\
To use the full dataset ({KAGGLE_DATASET}, 5,856 images), either
  - give Kaggle credentials: create an API token on https://www.kaggle.com/settings and save it as
    ~/.kaggle/kaggle.json (or set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY), or
  - download https://www.kaggle.com/datasets/{KAGGLE_DATASET} by hand and point CXR_DATA at the zip
    or at the extracted folder (e.g. `CXR_DATA=~/Downloads/archive.zip make run`).
See data/README.md."""


def kaggle_credentials() -> str | None:
    """Where Kaggle credentials were found (a short description), or None when there are none."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "$KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "$KAGGLE_USERNAME/$KAGGLE_KEY"
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    for name in ("kaggle.json", "access_token"):
        if (config_dir / name).is_file():
            return str(config_dir / name)
    return None


def _download_marker(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".json")


def _verified_download(zip_path: Path) -> bool:
    """True when `zip_path` is a complete download made by `download` (size recorded, readable zip)."""
    marker = _download_marker(zip_path)
    if not (zip_path.is_file() and marker.is_file()):
        return False
    try:
        info = json.loads(marker.read_text())
        return info.get("size") == zip_path.stat().st_size and zipfile.is_zipfile(zip_path)
    except (OSError, ValueError):
        return False


def download(dest: str | Path, force: bool = False) -> Path:
    """Download the Kaggle dataset into folder `dest` and return the zip (or kagglehub's folder).

    Idempotent: a verified earlier download is reused unless `force`. Uses the `kaggle` client (imported only
    after credentials were found, because importing it without credentials ends the process) or `kagglehub`.
    Raises `DataUnavailable` with instructions when there are no credentials or the download fails.
    """
    dest = Path(dest)
    zip_path = dest / KAGGLE_ZIP_NAME
    if not force and _verified_download(zip_path):
        print(f"Data: reusing the earlier download {zip_path}")
        return zip_path
    where = kaggle_credentials()
    if where is None:
        raise DataUnavailable("No Kaggle credentials found.\n" + HOW_TO_GET_DATA)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: F401  (authenticates on import)
    except ImportError:
        KaggleApi = None
    except SystemExit:  # the client exits when it does not accept the credentials
        raise DataUnavailable(f"The Kaggle client rejected the credentials in {where}.\n" + HOW_TO_GET_DATA) from None

    if KaggleApi is None:
        try:
            import kagglehub
        except ImportError:
            raise DataUnavailable("Neither the `kaggle` nor the `kagglehub` package is installed "
                                  "(pip install kaggle).\n" + HOW_TO_GET_DATA) from None
        try:
            return Path(kagglehub.dataset_download(KAGGLE_DATASET))
        except Exception as error:  # noqa: BLE001  (network, auth: all become one clear message)
            raise DataUnavailable(f"kagglehub could not download {KAGGLE_DATASET}: {error}\n"
                                  + HOW_TO_GET_DATA) from None

    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".download-"))
    try:
        print(f"Data: downloading {KAGGLE_DATASET} from Kaggle (about 1.2 GB) into {dest} ...")
        api = KaggleApi()
        api.authenticate()
        api.dataset_download_files(KAGGLE_DATASET, path=str(tmp), unzip=False, quiet=False)
        got = sorted(tmp.glob("*.zip"))
        if not got or not zipfile.is_zipfile(got[0]):
            raise DataUnavailable(f"The Kaggle download of {KAGGLE_DATASET} gave no readable zip.")
        os.replace(got[0], zip_path)
        atomic_write_text(_download_marker(zip_path),
                          json.dumps({"dataset": KAGGLE_DATASET, "size": zip_path.stat().st_size}))
    except DataUnavailable:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001  (network, auth, disk: one clear message)
        raise DataUnavailable(f"Downloading {KAGGLE_DATASET} from Kaggle failed "
                              f"({type(error).__name__}: {error}).\n" + HOW_TO_GET_DATA) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return zip_path


def _shared_candidates() -> list[Path]:
    bases = [REPO_ROOT.parent, Path.cwd().parent, Path.cwd()]
    return [base / "shared" / "data" / SHARED_ZIP_NAME for base in bases]


def _display_path(path: Path) -> str:
    """`path` relative to the working directory when it can be, so logs and notebooks show no local absolute paths."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def resolve_source(source: str | Path | None, data_dir: str | Path) -> Path:
    """Where the data comes from: `source` > $CXR_DATA > ../shared/data copy > earlier or new Kaggle download
    > the bundled sample (with a message on how to get the full data). Returns a zip or a folder."""
    for given, origin in ((source, "argument"), (os.environ.get("CXR_DATA") or None, "$CXR_DATA")):
        if given is not None:
            path = Path(given).expanduser()
            if not path.exists():
                raise DataUnavailable(f"The data source {path} (from {origin}) does not exist.\n" + HOW_TO_GET_DATA)
            print(f"Data: {path} (from {origin})")
            return path
    for candidate in _shared_candidates():
        if candidate.is_file():
            print(f"Data: {_display_path(candidate)} (shared 224-px copy)")
            return candidate.resolve()
    earlier = Path(data_dir) / KAGGLE_ZIP_NAME
    if _verified_download(earlier):
        print(f"Data: {earlier} (earlier Kaggle download)")
        return earlier
    if kaggle_credentials() is not None:
        try:
            return download(data_dir)
        except DataUnavailable as error:
            print(f"Data: {error}\nFalling back to the bundled sample.", file=sys.stderr)
    if not SAMPLE_ZIP.is_file():
        raise DataUnavailable(f"The bundled sample {SAMPLE_ZIP} is missing.\n" + HOW_TO_GET_DATA)
    print(f"Data: the bundled sample {SAMPLE_ZIP.name} (a few dozen real images, enough for a smoke run only).\n"
          + HOW_TO_GET_DATA)
    return SAMPLE_ZIP


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


def _is_macosx(parts: Iterable[str]) -> bool:
    return any(part == "__MACOSX" or part.startswith("._") for part in parts)


def _zip_root(names: list[str]) -> str:
    """The shallowest folder prefix ("" or "a/b/") inside the zip that holds both train/ and test/."""
    seen: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        if _is_macosx(parts):
            continue
        for i, part in enumerate(parts[:-1]):
            if part.lower() in SPLITS:
                seen.setdefault("/".join(parts[:i]), set()).add(part.lower())
    roots = [prefix for prefix, splits in seen.items() if {"train", "test"} <= splits]
    if not roots:
        raise DataUnavailable("No train/ and test/ folders found in the archive; expected the Kaggle layout "
                              "chest_xray/{train,test}/{NORMAL,PNEUMONIA}/.")
    best = min(roots, key=lambda p: (p.count("/") + bool(p), p))
    return best + "/" if best else ""


def find_root(folder: str | Path, max_depth: int = 4) -> Path:
    """The shallowest folder under `folder` holding train/ and test/ (the nested duplicate and __MACOSX lose)."""
    folder = Path(folder)
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in sorted(level):
            names = {p.name.lower() for p in candidate.iterdir() if p.is_dir()}
            if {"train", "test"} <= names:
                return candidate
        level = [p for d in level for p in sorted(d.iterdir()) if p.is_dir() and not _is_macosx([p.name])]
        if not level:
            break
    raise DataUnavailable(f"No train/ and test/ folders found under {folder}; expected the Kaggle layout "
                          "chest_xray/{train,test}/{NORMAL,PNEUMONIA}/.")


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Unzip `archive` into `dest` (atomically, reused when done before) and return the dataset root.

    A folder is used in place. Only the shallowest train/, val/ and test/ are extracted: the nested duplicate
    `chest_xray/chest_xray/`, `__MACOSX/` and files beside the split folders are left out (and counted).
    """
    archive = Path(archive)
    if archive.is_dir():
        return find_root(archive)
    if not zipfile.is_zipfile(archive):
        raise DataUnavailable(f"{archive} is neither a folder nor a zip archive.")
    dest = Path(dest)
    stat = archive.stat()
    stamp = {"archive": str(archive.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "version": INDEX_VERSION}
    marker = dest / ".extracted.json"
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        prefix = _zip_root(names)
        if marker.is_file():
            try:
                if json.loads(marker.read_text()) == stamp:
                    return dest / prefix
            except ValueError:
                pass
        keep: list[str] = []
        left_out = {"in __MACOSX/": 0, f"beside {prefix or './'}{{train,val,test}}/ (nested duplicate, junk)": 0,
                    f"outside {prefix or './'}": 0}
        kinds = list(left_out)
        for name in names:
            parts = name.split("/")
            rest = name[len(prefix):].split("/")
            if name.endswith("/"):
                continue
            if _is_macosx(parts):
                left_out[kinds[0]] += 1
            elif not name.startswith(prefix):
                left_out[kinds[2]] += 1
            elif len(rest) > 1 and rest[0].lower() in SPLITS:
                if name.startswith("/") or ".." in parts:
                    raise DataUnavailable(f"Unsafe path {name!r} in {archive}.")
                keep.append(name)
            else:
                left_out[kinds[1]] += 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
        try:
            for name in tqdm(keep, desc=f"extract {archive.name}", unit="file", leave=False):
                zf.extract(name, tmp)
            (tmp / ".extracted.json").write_text(json.dumps(stamp))
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    skipped = ", ".join(f"{n} {kind}" for kind, n in left_out.items() if n)
    print(f"Extracted {len(keep)} files of {archive.name} into {dest}" + (f"; left out {skipped}" if skipped else ""))
    return dest / prefix


# ---------------------------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------------------------


def patient_id(filename: str, label: str) -> str:
    """Patient of an image from its file name: person123 for pneumonia (bacteria and virus images of one
    person together), IM-0115 / NORMAL2-IM-0102 for normal images; otherwise the file stem (one image)."""
    name = Path(filename).name
    match = _PERSON.match(name)
    if match:
        return match.group(1).lower()
    match = _NORMAL.match(name)
    if match:
        return match.group(1).upper()
    return f"{label}/{Path(name).stem}"


def subtype_of(filename: str, label: str) -> str:
    """normal, bacteria or virus (unknown when a PNEUMONIA file name says neither)."""
    if label == "NORMAL":
        return "normal"
    match = _SUBTYPE.search(Path(filename).name)
    return match.group(1).lower() if match else "unknown"


def _inspect_file(abs_path: str) -> dict[str, Any]:
    """sha1, size and mode of one file, fully decoded to catch corrupt and truncated images; or a skip reason."""
    suffix = Path(abs_path).suffix.lower()
    try:
        data = Path(abs_path).read_bytes()
    except OSError as error:
        return {"reason": f"unreadable: {error}"}
    if not data:
        return {"reason": "empty file"}
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, mode, fmt = img.width, img.height, img.mode, img.format
            if fmt == "JPEG":
                img.draft(img.mode if img.mode != "RGB" else "L", (64, 64))  # decodes every block, faster
            img.load()
    except UnidentifiedImageError:
        if suffix in IMAGE_EXTENSIONS:
            return {"reason": f"corrupt: not a decodable image despite the {suffix} extension"}
        return {"reason": f"not an image ({suffix or 'no extension'})"}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
        return {"reason": f"{kind}: {error}"}
    return {"width": width, "height": height, "mode": mode, "format": fmt, "sha1": hashlib.sha1(data).hexdigest()}


def _inspect_chunk(paths: list[str]) -> list[dict[str, Any]]:
    return [_inspect_file(p) for p in paths]


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def _mp_context():
    """fork where it is safe (Linux, no TensorFlow/JAX/torch threads in this process): workers start in
    milliseconds; spawn otherwise (each worker then imports cxr.data, about half a second)."""
    heavy = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    return get_context("fork" if sys.platform == "linux" and not heavy else "spawn")


def _parallel(fn: Callable[[list], Any], items: list, workers: int | None, desc: str,
              chunk: int = 32) -> Iterator[Any]:
    """Yield fn(chunk) for consecutive chunks of `items`, in order, over a process pool, with a progress bar.
    Small jobs (or workers=1) run in this process: a pool costs about a second to start."""
    workers = _default_workers() if workers is None else max(1, workers)
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    # small jobs get no bar; otherwise tqdm's defaults apply, so TQDM_DISABLE=1 (headless notebook runs) turns it off
    quiet = {"disable": True} if len(items) < 100 else {}
    with tqdm(total=len(items), desc=desc, unit="img", leave=False, **quiet) as bar:
        if workers == 1 or len(items) < 4 * chunk:
            for part in chunks:
                result = fn(part)
                bar.update(len(part))
                yield result
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_mp_context()) as pool:
            for part, result in zip(chunks, pool.map(fn, chunks)):
                bar.update(len(part))
                yield result


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
        if top.is_dir() and top.name.lower() in SPLITS:
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
    inspected = [row for part in _parallel(_inspect_chunk, abs_paths, workers, "index") for row in part]
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
    return table.reindex(index=[s for s in SPLITS if s in table.index], columns=list(CLASS_NAMES), fill_value=0)


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


def split_summary(index: pd.DataFrame, by: str = "split") -> pd.DataFrame:
    """Images and patients per split (`by`: "split" or "official_split") and label, with each split's pneumonia share."""
    images = pd.crosstab(index[by], index["label"]).reindex(columns=list(CLASS_NAMES), fill_value=0)
    patients = index.groupby([by, "label"])["patient_id"].nunique().unstack(fill_value=0)
    patients = patients.reindex(columns=list(CLASS_NAMES), fill_value=0)
    table = pd.concat({"images": images, "patients": patients}, axis=1)
    table[("images", "total")] = images.sum(axis=1)
    table[("patients", "total")] = index.groupby(by)["patient_id"].nunique()
    table[("pneumonia share", "")] = (images["PNEUMONIA"] / images.sum(axis=1)).round(3)
    order = [s for s in SPLITS if s in table.index]
    return table.reindex(order)[["images", "patients", "pneumonia share"]]


# ---------------------------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------------------------


def _group_ids(index: pd.DataFrame) -> np.ndarray:
    """Integer group per row: rows sharing a patient id or a sha1 are in one group (union-find)."""
    parent = list(range(len(index)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in ("patient_id", "sha1"):
        first: dict[str, int] = {}
        for i, key in enumerate(index[column]):
            if key in first:
                a, b = find(i), find(first[key])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                first[key] = i
    roots = [find(i) for i in range(len(index))]
    _, groups = np.unique(roots, return_inverse=True)
    return groups


def check_no_leakage(index: pd.DataFrame, patients_vs_test: bool = False) -> None:
    """Raise AssertionError when a patient is in both train and val, or a sha1 in two splits (any of the three).
    With `patients_vs_test`, patients shared with the official test count too."""
    splits = ["train", "val", "test"] if patients_vs_test else ["train", "val"]
    for column, names in (("patient_id", splits), ("sha1", ["train", "val", "test"])):
        sub = index[index["split"].isin(names)]
        crossing = sub.groupby(column)["split"].nunique()
        crossing = crossing[crossing > 1]
        if len(crossing):
            raise AssertionError(f"{len(crossing)} {column} values appear in two splits, "
                                 f"e.g. {list(crossing.index[:3])}")


def split_by_patient(index: pd.DataFrame, val_fraction: float = 0.15, seed: int = 42,
                     drop_test_patients: bool = False) -> pd.DataFrame:
    """Add a `split` column (train/val/test): the official train + val is re-split into train and val, grouped by
    patient and by identical sha1, stratified by subtype (so by label too) with scikit-learn's
    StratifiedGroupKFold (val is one of round(1/val_fraction) folds); the official test is kept as it is.

    Deterministic for a seed whatever the row order (rows are sorted by path; the result is sorted by path).
    Training images byte-identical to a test image are dropped (with a warning). The Kaggle file names reuse
    person numbers in train and test; those images are kept and reported unless `drop_test_patients`.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    index = index.sort_values("path", ignore_index=True).copy()
    is_test = index["official_split"].eq("test")
    test_sha1 = set(index.loc[is_test, "sha1"])
    drop = ~is_test & index["sha1"].isin(test_sha1)
    test_patients = set(index.loc[is_test, "patient_id"])
    shared_patients = ~is_test & index["patient_id"].isin(test_patients)
    if drop.any():
        warnings.warn(f"dropped {int(drop.sum())} training images byte-identical to test images", stacklevel=2)
    if shared_patients.any():
        message = (f"{int(shared_patients.sum())} training images carry a patient id "
                   f"({index.loc[shared_patients, 'patient_id'].nunique()} ids) that also appears in the official test")
        if drop_test_patients:
            drop |= shared_patients
            print(f"Note: {message}; left out of train/val so that no patient id is in two splits.")
        else:
            print(f"Note: {message} (Kaggle numbering; test kept unchanged, images kept).")
    index = index[~drop].reset_index(drop=True)
    is_test = index["official_split"].eq("test")

    index["split"] = np.where(is_test, "test", "train")
    pool = index[~is_test]
    groups = _group_ids(pool)
    mixed = pool.groupby(groups)["label"].nunique()
    if (mixed > 1).any():
        warnings.warn(f"{int((mixed > 1).sum())} groups of identical images carry both labels", stacklevel=2)
    n_groups = len(np.unique(groups))
    if n_groups >= 2:
        n_splits = int(min(max(2, round(1 / val_fraction)), n_groups))
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny data
            _, val_rows = next(folds.split(np.zeros(len(pool)), pool["subtype"].to_numpy(), groups))
        index.loc[pool.index[val_rows], "split"] = "val"
    check_no_leakage(index, patients_vs_test=drop_test_patients)
    return index


def cap_per_class(index: pd.DataFrame, max_per_class: int | None, seed: int = 42) -> pd.DataFrame:
    """At most `max_per_class` images per (official split, label), taking whole patients in a seeded order
    (deterministic whatever the row order). For the smoke mode."""
    if max_per_class is None:
        return index
    index = index.sort_values("path", ignore_index=True)
    keep = []
    for (split, label), group in index.groupby(["official_split", "label"], sort=True):
        if len(group) <= max_per_class:
            keep.extend(group.index)
            continue
        sizes = group.groupby("patient_id").size()
        order = np.random.default_rng([seed, len(split), len(label)]).permutation(len(sizes))
        chosen, total = [], 0
        for i in order:
            if total + sizes.iloc[i] <= max_per_class:
                chosen.append(sizes.index[i])
                total += int(sizes.iloc[i])
            if total == max_per_class:
                break
        keep.extend(group.index[group["patient_id"].isin(chosen)])
    return index.loc[sorted(keep)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------


def to_grayscale(img: Image.Image) -> Image.Image:
    """8-bit grayscale ("L") of any Pillow image. 16-bit and 32-bit images are scaled by their bit depth
    (a 12-bit image stays as bright as it was), float images by their range, CMYK goes through RGB."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F" or a.min() < 0:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        else:
            bits = max(8, int(np.ceil(np.log2(float(a.max()) + 1.0))))
            a = a * (255.0 / (2**bits - 1))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return img.convert("L")


def resize(img: Image.Image, size: int, policy: str = "squash") -> np.ndarray:
    """THE resize of the project (training, evaluation and prediction): any Pillow image -> uint8 (size, size).

    squash: stretch to size x size (aspect ratio not kept; how the shared 224-px copy was made).
    letterbox: scale the longer side to `size`, keep the aspect ratio, centre on black (0) padding.
    Bilinear with Pillow's antialiasing when shrinking.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {policy!r}")
    img = to_grayscale(img)
    if policy == "squash":
        out = img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(out, dtype=np.uint8)
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale))))
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(img.resize(new, Image.Resampling.BILINEAR) if new != img.size else img,
                 ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def load_image(path_or_file: str | Path | BinaryIO, size: int, policy: str = "squash") -> np.ndarray:
    """Decode an image file to uint8 (size, size) grayscale. JPEGs decode in draft mode: libjpeg scales by
    1/2, 1/4 or 1/8 while decoding (never below `size`), much faster for 2000-px originals; then `resize`."""
    with Image.open(path_or_file) as img:
        if img.format == "JPEG":
            img.draft("L", (size, size))
        img.load()
        return resize(img, size, policy)


def _decode_paths(paths: list[str], size: int, policy: str) -> np.ndarray:
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = load_image(path, size, policy)
        except Exception as error:  # noqa: BLE001  (say which file; the index said it was fine)
            raise DataUnavailable(f"cannot decode {path} ({type(error).__name__}: {error}); "
                                  "the file changed since it was indexed? Rebuild the index.") from None
    return out


def _decode_into(rows: list[tuple[int, str]], array_path: str, size: int, policy: str) -> int:
    """Decode consecutive rows [(position, path), ...] into the .npy memory map at `array_path`."""
    block = _decode_paths([path for _, path in rows], size, policy)
    array = np.load(array_path, mmap_mode="r+")
    array[rows[0][0]:rows[0][0] + len(rows)] = block
    array.flush()
    del array
    return len(rows)


def _cache_paths(cache_dir: Path, size: int, policy: str) -> tuple[Path, Path]:
    stem = f"images-{size}-{policy}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _index_key(index: pd.DataFrame) -> str:
    text = "\n".join(f"{p}\t{s}" for p, s in zip(index["path"], index["sha1"]))
    return hashlib.sha1(text.encode()).hexdigest()


def _manifest(index: pd.DataFrame, size: int, policy: str) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "size": int(size), "policy": policy, "count": int(len(index)),
            "index_key": _index_key(index)}


def cache_is_valid(index: pd.DataFrame, size: int, policy: str, cache_dir: str | Path) -> bool:
    """True when the cache for (index, size, policy) exists, its manifest matches and the array is complete."""
    array_path, manifest_path = _cache_paths(Path(cache_dir), size, policy)
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = {**_manifest(index, size, policy), "bytes": array_path.stat().st_size}
        if manifest != expected:
            return False
        array = np.load(array_path, mmap_mode="r")
        return array.shape == (len(index), size, size) and array.dtype == np.uint8
    except (OSError, ValueError):
        return False


def build_cache(index: pd.DataFrame, root: str | Path, size: int, policy: str, cache_dir: str | Path,
                workers: int | None = None, force: bool = False) -> np.ndarray:
    """Decode every image of `index` (rows in order) once into a read-only uint8 (N, size, size) memory map.

    The cache (images-{size}-{policy}.npy + .json manifest: version, size, policy, count, a hash of the
    (path, sha1) list and the array's byte size) is reused while valid and rebuilt when stale. Atomic: the old
    manifest is removed first, the array is written to a temporary file and renamed, the manifest is written last;
    an interrupted build leaves no cache that a later call trusts. Decoding runs over `workers` processes.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {policy!r}")
    cache_dir = Path(cache_dir)
    array_path, manifest_path = _cache_paths(cache_dir, size, policy)
    if not force and cache_is_valid(index, size, policy, cache_dir):
        return np.load(array_path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{array_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(index), size, size))
        array.flush()
        del array
        # each worker decodes a run of rows and writes them into the memory map itself: no pixels through pipes
        rows = list(enumerate(str(Path(root) / p) for p in index["path"]))
        decode = functools.partial(_decode_into, array_path=str(tmp), size=size, policy=policy)
        for _ in _parallel(decode, rows, workers, f"decode {size}px"):
            pass
        _chmod_default(tmp)
        os.replace(tmp, array_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(manifest_path, json.dumps({**_manifest(index, size, policy),
                                                 "bytes": array_path.stat().st_size}, indent=1))
    return np.load(array_path, mmap_mode="r")



# ---------------------------------------------------------------------------------------------------------------
# Everything together
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """The data of a run: `images[i]` is the (S, S) uint8 image of `index.iloc[i]`."""

    index: pd.DataFrame  # INDEX_COLUMNS + split
    skipped: pd.DataFrame  # path, reason
    images: np.ndarray  # (N, S, S) uint8, read-only memory map
    root: Path  # dataset root (holds train/ and test/)
    source: Path  # the zip or folder it came from


def _tree_fingerprint(root: Path) -> str:
    """Hash of (path, size, mtime) of every file under root: changes when any file does."""
    digest = hashlib.sha1(str(root.resolve()).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            digest.update(f"{os.path.join(dirpath, name)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_index(root: str | Path, cache_dir: str | Path,
                 workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`build_index(root)`, reused from cache_dir while no file under root changed (size, mtime)."""
    root, cache_dir = Path(root), Path(cache_dir)
    key = f"{INDEX_VERSION}-{_tree_fingerprint(root)[:16]}"
    index_path, skipped_path = cache_dir / f"scan-{key}.csv", cache_dir / f"scan-{key}-skipped.csv"
    if index_path.is_file() and skipped_path.is_file():
        index = pd.read_csv(index_path, dtype=str, keep_default_na=False)
        index[["width", "height"]] = index[["width", "height"]].astype("int64")
        return index, pd.read_csv(skipped_path, dtype=str, keep_default_na=False)
    index, skipped = build_index(root, workers=workers)
    _atomic_write_csv(skipped_path, skipped)  # index last: its presence means both are complete
    _atomic_write_csv(index_path, index)
    return index, skipped


def describe(index: pd.DataFrame, skipped: pd.DataFrame, max_skipped: int = 50) -> str:
    """Counts per split and label, the count check and the skipped files, as printable text."""
    lines = [f"{len(index)} images, {index['patient_id'].nunique()} patient ids",
             count_table(index).to_string()]
    by_subtype = index.groupby(["official_split", "subtype"]).size().unstack(fill_value=0)
    lines.append(by_subtype.to_string())
    if "split" in index:
        table = pd.crosstab(index["split"], index["label"])
        lines.append("after the patient-level re-split:\n" + table.to_string())
    diffs = check_counts(index)
    lines.append("counts match the Kaggle dataset" if not diffs else
                 "counts differ from the Kaggle dataset:\n  " + "\n  ".join(diffs))
    lines.append(f"{len(skipped)} files skipped" + (":" if len(skipped) else ""))
    for row in skipped.head(max_skipped).itertuples():
        lines.append(f"  {row.path}: {row.reason}")
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more")
    return "\n".join(lines)


def prepare(config: Config, workers: int | None = None, verbose: bool = True) -> Prepared:
    """Resolve and extract the data into config.data_dir, index it (data_dir/index.csv, skipped.csv), cap it
    (config.max_per_class), split it by patient and decode it into the cache (data_dir/cache)."""
    data_dir = Path(config.data_dir)
    source = resolve_source(config.source, data_dir)
    name = source.name[:-4] if source.suffix.lower() == ".zip" else source.name
    root = extract(source, data_dir / "extracted" / name)
    index, skipped = cached_index(root, data_dir / "cache", workers=workers)
    if index.empty:
        raise DataUnavailable(f"No decodable images under {root}.")
    full = index
    index = cap_per_class(index, config.max_per_class, config.seed)
    index = split_by_patient(index, config.val_fraction, config.seed, drop_test_patients=config.exclude_test_patients)
    _atomic_write_csv(data_dir / "skipped.csv", skipped)
    _atomic_write_csv(data_dir / "index.csv", index)
    if verbose:
        print(describe(full, skipped, max_skipped=20))
        if config.max_per_class is not None:
            print(f"capped to at most {config.max_per_class} images per (official split, label): {len(index)} images")
        print("split:", index["split"].value_counts().reindex(list(SPLITS), fill_value=0).to_dict())
    images = build_cache(index, root, config.image_size, config.resize_policy, data_dir / "cache", workers=workers)
    return Prepared(index=index, skipped=skipped, images=images, root=root, source=source)


def index_cli(argv: list[str] | None = None) -> int:
    """`python -m cxr index SOURCE --out index.csv`: index a zip or folder, re-split it, print counts and skips."""
    parser = argparse.ArgumentParser(prog="python -m cxr index", description=index_cli.__doc__)
    parser.add_argument("source", help="the Kaggle zip, the shared 224-px zip or an extracted folder")
    parser.add_argument("--out", default="index.csv", help="where to write the index (CSV)")
    parser.add_argument("--data-dir", default=Config.data_dir, help="where a zip is extracted")
    parser.add_argument("--val-fraction", type=float, default=Config.val_fraction)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep-test-patients", action="store_true",
                        help="keep training images whose patient id also appears in the official test")
    args = parser.parse_args(argv)
    try:
        source = Path(args.source).expanduser()
        if not source.exists():
            raise DataUnavailable(f"{source} does not exist.")
        name = source.name[:-4] if source.suffix.lower() == ".zip" else source.name
        root = extract(source, Path(args.data_dir) / "extracted" / name)
        index, skipped = build_index(root, workers=args.workers)
        if index.empty:
            raise DataUnavailable(f"No decodable images under {root}.")
        index = split_by_patient(index, args.val_fraction, args.seed,
                                 drop_test_patients=not args.keep_test_patients)
    except DataUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _atomic_write_csv(Path(args.out), index)
    skipped_out = Path(args.out).with_name(Path(args.out).stem + "-skipped.csv")
    _atomic_write_csv(skipped_out, skipped)
    print(f"dataset root: {root}")
    print(describe(index, skipped, max_skipped=len(skipped)))
    print(f"wrote {args.out} ({len(index)} rows) and {skipped_out} ({len(skipped)} rows)")
    return 0
