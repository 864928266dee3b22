"""Where the data comes from and how it is unpacked: Kaggle credentials and download, the source resolution
order (argument, $CXR_DATA, ../shared copy, Kaggle, bundled sample) and extraction of the shallowest
train/, val/, test/ (the nested duplicate, __MACOSX and junk beside them are left out and counted)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

from cxr import UserError, progress
from cxr.config import KAGGLE_DATASET, OFFICIAL_SPLITS
from cxr.io import atomic_folder, atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # cxr/
REPO_ROOT = PACKAGE_DIR.parent
SAMPLE_ZIP = PACKAGE_DIR / "sample" / "chest-xray-sample.zip"
SHARED_ZIP_NAME = "chest-xray-pneumonia-224.zip"
KAGGLE_ZIP_NAME = "chest-xray-pneumonia.zip"
INDEX_VERSION = 2  # version of the extraction and the index layout (a change invalidates both)


class DataUnavailable(UserError, RuntimeError):
    """The data cannot be obtained or read; the message's first line says what is wrong and what to do (print it,
    no traceback needed); more lines, if any, give details."""


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


def _scrub(error: object) -> str:
    """The text of `error` with any Kaggle credential value replaced by ***: a credential is never printed."""
    text = " ".join(str(error).split())
    secrets = [os.environ.get(v, "") for v in ("KAGGLE_API_TOKEN", "KAGGLE_KEY", "KAGGLE_USERNAME")]
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    for name in ("kaggle.json", "access_token"):
        try:
            raw = (config_dir / name).read_text()
        except OSError:
            continue
        try:
            secrets += [str(v) for v in json.loads(raw).values()]
        except (ValueError, AttributeError):
            secrets.append(raw.strip())
    for secret in sorted({x for x in secrets if len(x) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text[:300]


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
        print(f"Data: reusing the earlier download {_display_path(zip_path)}")
        return zip_path
    where = kaggle_credentials()
    if where is None:
        raise DataUnavailable("No Kaggle credentials found: save an API token as ~/.kaggle/kaggle.json (or set "
                              "KAGGLE_API_TOKEN), or download the archive by hand and set CXR_DATA=/path/to/archive.zip."
                              "\n" + HOW_TO_GET_DATA)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: F401  (authenticates on import)
    except ImportError:
        KaggleApi = None
    except SystemExit:  # the client exits when it does not accept the credentials
        raise DataUnavailable(f"Kaggle refused the credentials in {where}: create a new API token on "
                              "https://www.kaggle.com/settings, or set CXR_DATA to a downloaded archive.\n"
                              + HOW_TO_GET_DATA) from None

    if KaggleApi is None:
        try:
            import kagglehub
        except ImportError:
            raise DataUnavailable("Neither the `kaggle` nor the `kagglehub` package is installed "
                                  "(pip install kaggle).\n" + HOW_TO_GET_DATA) from None
        try:
            return Path(kagglehub.dataset_download(KAGGLE_DATASET))
        except Exception as error:  # noqa: BLE001  (network, auth: all become one clear message)
            raise DataUnavailable(f"kagglehub could not download {KAGGLE_DATASET}: {_scrub(error)}; check the "
                                  "credentials and the network, or set CXR_DATA to a downloaded archive.\n"
                                  + HOW_TO_GET_DATA) from None

    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".download-"))
    try:
        print(f"Data: downloading {KAGGLE_DATASET} from Kaggle (about 1.2 GB) into {_display_path(dest)} ...")
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
        refused = any(w in str(error).lower() for w in ("401", "403", "unauthori", "forbidden", "credential"))
        what = f"Kaggle refused the credentials in {where}" if refused else f"Downloading {KAGGLE_DATASET} failed"
        raise DataUnavailable(f"{what} ({type(error).__name__}: {_scrub(error)}); check the token (or the network), "
                              "or set CXR_DATA to a downloaded archive.\n" + HOW_TO_GET_DATA) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return zip_path


def _shared_candidates() -> list[Path]:
    bases = [REPO_ROOT.parent, Path.cwd().parent, Path.cwd()]
    return [base / "shared" / "data" / SHARED_ZIP_NAME for base in bases]


def raw_sample_dir() -> Path | None:
    """`raw-sample/` beside the shared 224-px copy (full-resolution originals of some training images, in
    NORMAL/ and PNEUMONIA/), or None where there is none (e.g. a user's machine)."""
    for candidate in _shared_candidates():
        folder = candidate.parent / "raw-sample"
        if folder.is_dir() and any(folder.glob("*/*.jpeg")):
            return folder
    return None


def _display_path(path: Path) -> str:
    """`path` relative to the working directory when it can be, so logs and notebooks show no local absolute paths."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def resolve_source(source: str | Path | None, data_dir: str | Path) -> Path:
    """Where the data comes from: `source` > $CXR_DATA > ../shared/data copy > earlier or new Kaggle download
    > the bundled sample (with a message on how to get the full data). Returns a zip or a folder.

    `source="kaggle"` asks for the Kaggle download explicitly: missing or refused credentials are then an error
    (otherwise they fall back to the bundled sample with a one-line message)."""
    if str(source).lower() == "kaggle":
        return download(data_dir)
    for given, origin in ((source, "argument"), (os.environ.get("CXR_DATA") or None, "$CXR_DATA")):
        if given is not None:
            path = Path(given).expanduser()
            if not path.exists():
                raise DataUnavailable(f"The data source {path} (from {origin}) does not exist: pass the Kaggle zip "
                                      "or its extracted folder (see README, 'Getting the data').\n" + HOW_TO_GET_DATA)
            print(f"Data: {_display_path(path)} (from {origin})")
            return path
    for candidate in _shared_candidates():
        if candidate.is_file():
            print(f"Data: {_display_path(candidate)} (shared 224-px copy)")
            return candidate.resolve()
    earlier = Path(data_dir) / KAGGLE_ZIP_NAME
    if _verified_download(earlier):
        print(f"Data: {_display_path(earlier)} (earlier Kaggle download)")
        return earlier
    if kaggle_credentials() is not None:
        try:
            return download(data_dir)
        except DataUnavailable as error:
            print(f"Data: {str(error).splitlines()[0]} Falling back to the bundled sample.", file=sys.stderr)
    if not SAMPLE_ZIP.is_file():
        raise DataUnavailable(f"The bundled sample {SAMPLE_ZIP} is missing.\n" + HOW_TO_GET_DATA)
    print(f"Data: the bundled sample {SAMPLE_ZIP.name} (a few dozen real images, enough for a smoke run only).\n"
          + HOW_TO_GET_DATA)
    return SAMPLE_ZIP


def check_source(source: str | Path | None) -> None:
    """Check a data source the user gave, cheaply and silently (no extraction, no download): it exists and is a
    folder or zip in the Kaggle layout. Raises `DataUnavailable` (one line) otherwise. None and "kaggle" pass
    (resolved later). For the first cell of the notebook and the CLI, before any work starts."""
    if source is None or str(source).lower() == "kaggle":
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise DataUnavailable(f"The data source {path} does not exist: pass the Kaggle zip or its extracted folder "
                              "(see README, 'Getting the data').")
    if path.is_dir():
        find_root(path)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            _zip_root(zf.namelist())
    else:
        raise DataUnavailable(f"{path} is neither a folder nor a zip archive: pass the Kaggle zip or its extracted "
                              "folder (chest_xray/{train,test}/{NORMAL,PNEUMONIA}/).")


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
            if part.lower() in OFFICIAL_SPLITS:
                seen.setdefault("/".join(parts[:i]), set()).add(part.lower())
    roots = [prefix for prefix, splits in seen.items() if {"train", "test"} <= splits]
    if not roots:
        raise DataUnavailable("Not a chest X-ray dataset: no train/ and test/ folders in the archive; expected the "
                              "Kaggle layout chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg.")
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
    raise DataUnavailable(f"Not a chest X-ray dataset: no train/ and test/ folders under {folder}; expected the "
                          "Kaggle layout chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg.")


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Unzip `archive` into `dest` (atomically, reused when done before) and return the dataset root.

    A folder is used in place. Only the shallowest train/, val/ and test/ are extracted: the nested duplicate
    `chest_xray/chest_xray/`, `__MACOSX/` and files beside the split folders are left out (and counted).
    """
    archive = Path(archive)
    if archive.is_dir():
        return find_root(archive)
    if not zipfile.is_zipfile(archive):
        raise DataUnavailable(f"{archive} is neither a folder nor a zip archive: pass the Kaggle zip or its extracted "
                              "folder (chest_xray/{train,test}/{NORMAL,PNEUMONIA}/).")
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
            elif len(rest) > 1 and rest[0].lower() in OFFICIAL_SPLITS:
                if name.startswith("/") or ".." in parts:
                    raise DataUnavailable(f"Unsafe path {name!r} in {archive}.")
                keep.append(name)
            else:
                left_out[kinds[1]] += 1
        with atomic_folder(dest) as tmp:
            for name in progress.bar(keep, desc=f"extract {archive.name}"):
                zf.extract(name, tmp)
            (tmp / ".extracted.json").write_text(json.dumps(stamp))
    skipped = ", ".join(f"{n} {kind}" for kind, n in left_out.items() if n)
    print(f"Extracted {len(keep)} files of {archive.name} into {dest}" + (f"; left out {skipped}" if skipped else ""))
    return dest / prefix
