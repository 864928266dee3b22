"""Where the data comes from and how it is unpacked: Kaggle credentials and download, the source resolution
order and extraction of the shallowest train/, val/, test/ (the nested duplicate, __MACOSX and junk beside them
are left out and counted).

`resolve_source` takes the first of: the argument (a zip or folder; "kaggle" asks for the download explicitly)
> $CXR_DATA > the dataset attached to a Kaggle Notebook (`KAGGLE_INPUT_DIRS`, read-only, used in place) >
the ../shared/data 224-px copy (hidden by `CXR_HIDE_SHARED=1`, so that tests and CI run as a newcomer would) >
an earlier verified download in the data folder > a new download when Kaggle credentials exist (the `kaggle`
client; `kagglehub` in Colab or when the client is missing) > the bundled sample.

The download is resumable: it goes to `<data>/.download/` (the client's partial file and its `.kaggle-partial`
marker), a later attempt continues it with an HTTP range request, and only a complete, readable zip in the
Kaggle layout is moved into place (then the partial folder is removed). Credentials are looked for where the
kaggle 2.x client looks (`kaggle_credentials`), the client's own printing is suppressed, and every failure is one
`DataUnavailable` line that never shows a credential.

Extraction caps every kept entry before anything is written (`MAX_ENTRY_BYTES` declared, a compression ratio over
`MAX_RATIO`) and again while writing (no more bytes than declared): such entries are counted, reported skips; an
archive that declares more than `MAX_TOTAL_BYTES` in all is refused.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from cxr import UserError, progress
from cxr.config import KAGGLE_DATASET, OFFICIAL_SPLITS
from cxr.io import FolderLocked, atomic_folder, atomic_write_text, lock_folder, unlock_folder

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # cxr/
REPO_ROOT = PACKAGE_DIR.parent
SAMPLE_ZIP = PACKAGE_DIR / "sample" / "chest-xray-sample.zip"
SHARED_ZIP_NAME = "chest-xray-pneumonia-224.zip"
KAGGLE_SLUG = KAGGLE_DATASET.split("/")[-1]  # chest-xray-pneumonia
KAGGLE_ZIP_NAME = f"{KAGGLE_SLUG}.zip"  # the name the client gives the download
KAGGLE_INPUT_DIRS: tuple[Path, ...] = (Path("/kaggle/input"),)  # where Kaggle Notebooks mount attached datasets
PARTIAL_DIR = ".download"  # <data>/.download/: the download in progress (resumed by the next attempt)
KAGGLE_RETRIES = 5  # the client's in-process retries (each resumes with a range request)
KAGGLE_CHUNK_BYTES = 1 << 20  # the client writes (and flushes) the download in chunks of this size
INDEX_VERSION = 2  # version of the extraction and the index layout (a change invalidates both)
MAX_ENTRY_BYTES = 64 << 20  # an entry of the zip declaring more is skipped (the largest X-ray is a few MB)
MAX_RATIO = 100  # an entry over RATIO_MIN_BYTES compressed more than 100:1 is skipped (JPEGs barely compress)
RATIO_MIN_BYTES = 1 << 20
MAX_TOTAL_BYTES = 16 << 30  # the kept entries together: more is refused (the real dataset is about 1.2 GB)


class DataUnavailable(UserError, RuntimeError):
    """The data cannot be obtained or read; the message's first line says what is wrong and what to do (print it,
    no traceback needed); more lines, if any, give details."""


# ---------------------------------------------------------------------------------------------------------------
# Kaggle credentials: where the kaggle 2.x client (kaggle_api_extended.KaggleApi.authenticate, kagglesdk) looks
# ---------------------------------------------------------------------------------------------------------------

HOW_TO_GET_DATA = f"""\
To use the full dataset ({KAGGLE_DATASET}, 5,856 images), either
  - give Kaggle credentials: create an API token on https://www.kaggle.com/settings and set KAGGLE_API_TOKEN
    (or save it as ~/.kaggle/access_token), or save a legacy kaggle.json as ~/.kaggle/kaggle.json, or run
    `kaggle auth login`; in a Kaggle Notebook attach the dataset instead ("Add Input"), or
  - download https://www.kaggle.com/datasets/{KAGGLE_DATASET} by hand and point CXR_DATA at the zip
    or at the extracted folder (e.g. `CXR_DATA=~/Downloads/archive.zip make run`).
See data/README.md."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _kaggle_home() -> Path:
    """~/.kaggle: where the client reads access_token and credentials.json (whatever $KAGGLE_CONFIG_DIR says)."""
    return Path(os.path.expanduser("~")) / ".kaggle"


def kaggle_config_dir() -> Path:
    """The folder of the client's kaggle.json, by the client's rule: $KAGGLE_CONFIG_DIR, else ~/.kaggle, else (on
    Linux, when ~/.kaggle does not exist) $XDG_CONFIG_HOME/kaggle, by default ~/.config/kaggle."""
    given = os.environ.get("KAGGLE_CONFIG_DIR")
    if given:
        return Path(given)
    legacy = _kaggle_home()
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path(os.path.expanduser("~")) / ".config") / "kaggle"
    return legacy


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _token_file(path: Path) -> bool:
    """A readable, non-empty token file (what kagglesdk's _get_access_token_from_file accepts)."""
    try:
        return path.is_file() and bool(path.read_text().strip())
    except (OSError, UnicodeDecodeError):
        return False


def _notebook_token_file() -> Path | None:
    """The token file of a Kaggle Notebook ($KAGGLE_API_V1_TOKEN, read only when $KAGGLE_KERNEL_RUN_TYPE and
    $KAGGLE_DATA_PROXY_URL are set, as kagglesdk does), or None."""
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") is None or os.environ.get("KAGGLE_DATA_PROXY_URL") is None:
        return None
    path = os.environ.get("KAGGLE_API_V1_TOKEN")
    return Path(path) if path else None


def _credential_sources() -> list[str]:
    """Every place holding credentials the client would use, in the order it tries them: an access token
    (the Kaggle Notebook's token file, $KAGGLE_API_TOKEN as a value or a file name, else ~/.kaggle/access_token
    or access_token.txt), a legacy key (username and key from <config dir>/kaggle.json, each overridden by
    $KAGGLE_USERNAME / $KAGGLE_KEY), OAuth credentials of `kaggle auth login` (~/.kaggle/credentials.json)."""
    found = []
    notebook = _notebook_token_file()
    if notebook is not None and _token_file(notebook):
        found.append("$KAGGLE_API_V1_TOKEN (Kaggle Notebook)")
    token = os.environ.get("KAGGLE_API_TOKEN")
    if token:
        if not Path(token).exists():
            found.append("$KAGGLE_API_TOKEN")
        elif _token_file(Path(token)):  # a file name (the client then reads no ~/.kaggle/access_token)
            found.append(f"$KAGGLE_API_TOKEN ({token})")
    else:
        found += [str(p) for p in (_kaggle_home() / "access_token", _kaggle_home() / "access_token.txt")
                  if _token_file(p)][:1]
    from_env = {k[len("KAGGLE_"):].lower() for k in os.environ if k.startswith("KAGGLE_")}
    config = kaggle_config_dir() / "kaggle.json"
    from_file = set(_read_json(config))
    if {"username", "key"} <= from_env:
        found.append("$KAGGLE_USERNAME/$KAGGLE_KEY")
    elif {"username", "key"} <= from_env | from_file:
        found.append(str(config))
    oauth = _kaggle_home() / "credentials.json"
    if _read_json(oauth).get("refresh_token"):
        found.append(str(oauth))
    return found


def kaggle_credentials() -> str | None:
    """Where Kaggle credentials were found (a short description, several joined by ", " in the order the client
    tries them), or None when the client would find none."""
    return ", ".join(_credential_sources()) or None


def _credential_files() -> list[Path]:
    """Every file a Kaggle credential may be read from (the ones `_credential_sources` looks at, and the
    ~/.kaggle/kaggle.json kagglesdk reads on its own)."""
    files = [_kaggle_home() / n for n in ("access_token", "access_token.txt", "kaggle.json", "credentials.json")]
    files.append(kaggle_config_dir() / "kaggle.json")
    notebook = _notebook_token_file()
    if notebook is not None:
        files.append(notebook)
    token = os.environ.get("KAGGLE_API_TOKEN")
    if token and len(token) < 4096:
        with contextlib.suppress(OSError, ValueError):
            if Path(token).is_file():
                files.append(Path(token))
    return files


def _scrub(error: object) -> str:
    """The text of `error` with any Kaggle credential value replaced by ***: a credential is never printed."""
    text = " ".join(str(error).split())
    secrets = [os.environ.get(v, "") for v in ("KAGGLE_API_TOKEN", "KAGGLE_KEY", "KAGGLE_USERNAME")]
    for path in _credential_files():
        try:
            raw = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        values = _read_json(path)
        secrets += [str(v) for v in values.values() if isinstance(v, (str, int))] if values else [raw.strip()]
    for secret in sorted({x for x in secrets if len(x) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text[:300]


# ---------------------------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _client_output(stdout: io.TextIOBase | None = None, stderr: bool = True) -> Iterator[io.StringIO]:
    """Run kaggle client code without its printing: stdout (and stderr) go to a buffer (or `stdout`), and sys.stdin
    is a dummy while it runs (the client's `exit()` closes sys.stdin)."""
    sink = io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout or sink), \
                (contextlib.redirect_stderr(sink) if stderr else contextlib.nullcontext()):
            yield sink
    finally:
        sys.stdin = saved_stdin


class _ClientNotices(io.StringIO):
    """The client's stdout during a download: its retry and resume notices go to stderr (scrubbed, one line each),
    the rest (its failure advice, the file paths) is dropped; `download` says what happened in one line."""

    PASS = ("Retry", "Resuming", "Connection error", "Rate limited")

    def __init__(self) -> None:
        super().__init__()
        self._line = ""
        self._err = sys.stderr

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            if line.strip().startswith(self.PASS):
                print(f"Kaggle: {_scrub(line)}", file=self._err)
        return len(text)


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of a client error: requests' HTTPError.response.status_code (kaggle 2.x, kagglesdk,
    kagglehub), or `.status` (the kaggle 1.x ApiException)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is None:
        status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def _failure(error: BaseException, where: str, kept: str = "", via: str = "Kaggle") -> DataUnavailable:
    """The one-line `DataUnavailable` for a failed authentication or download (by the HTTP status, not words)."""
    status = _http_status(error)
    detail = _scrub(error)[:160] or type(error).__name__
    if status in (401, 403):
        first = (f"{via} refused the credentials in {where} (HTTP {status}: {detail}): create a new API token on "
                 "https://www.kaggle.com/settings (or run `kaggle auth login`), or set CXR_DATA to a downloaded "
                 "archive.")
    elif status == 404:
        first = (f"Kaggle dataset {KAGGLE_DATASET} not found (HTTP 404: {detail}): check that "
                 f"https://www.kaggle.com/datasets/{KAGGLE_DATASET} exists, or download the archive by hand and set "
                 "CXR_DATA=/path/to/archive.zip.")
    else:
        what = f"HTTP {status}: {detail}" if status else f"{type(error).__name__}: {detail}"
        first = (f"Downloading {KAGGLE_DATASET} with {via} failed ({what}){kept}; check the network and run again"
                 + (" (the download resumes)" if kept else "") + ", or set CXR_DATA to a downloaded archive.")
    return DataUnavailable(first + "\n" + HOW_TO_GET_DATA)


def _refused(where: str) -> DataUnavailable:
    return DataUnavailable(f"Kaggle refused the credentials in {where}: create a new API token on "
                           "https://www.kaggle.com/settings (or run `kaggle auth login`), or set CXR_DATA to a "
                           "downloaded archive.\n" + HOW_TO_GET_DATA)


def _kaggle_client(where: str):
    """The installed client's KaggleApi class, or None when the `kaggle` package is not installed. Imported with
    its printing suppressed: its __init__ authenticates on import and prints its help text when that fails (and
    kaggle 1.x then ends the process)."""
    try:
        with _client_output():
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        return None
    except (Exception, SystemExit) as error:  # noqa: BLE001  (kaggle 1.x: no usable credentials on import)
        raise (_refused(where) if isinstance(error, SystemExit) else _failure(error, where)) from None
    return KaggleApi


def _authenticate(api, where: str) -> None:
    """`api.authenticate()` against the credentials `kaggle_credentials` found, silently; a refusal (the client's
    `exit(1)` after its help text, or an HTTP 401/403 while checking a token) is one `DataUnavailable` line."""
    if hasattr(api, "config_file"):  # the client fixes its kaggle.json path on import; use today's environment
        api.config_dir = str(kaggle_config_dir())
        api.config = os.path.join(api.config_dir, api.config_file)
    try:
        with _client_output():
            api.authenticate()
    except SystemExit:
        raise _refused(where) from None
    except Exception as error:  # noqa: BLE001  (network, auth: one clear message)
        raise _failure(error, where) from None


def _client_download(api, partial: Path) -> None:
    """Download the dataset zip to the file `partial` with the client, continuing an earlier partial of the same
    object (the client checks the .kaggle-partial marker: ETag and size, then sends Range / If-Range)."""
    download_file = getattr(api, "download_file", None)
    if hasattr(api, "build_kaggle_client") and download_file is not None and \
            "max_retries" in inspect.signature(download_file).parameters:  # kaggle 2.x
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        request = ApiDownloadDatasetRequest()
        request.owner_slug, request.dataset_slug = KAGGLE_DATASET.split("/")
        with api.build_kaggle_client() as kaggle:
            response = kaggle.datasets.dataset_api_client.download_dataset(request)
            api.download_file(response, str(partial), kaggle.http_client(), quiet=False, resume=True,
                              chunk_size=KAGGLE_CHUNK_BYTES, max_retries=KAGGLE_RETRIES)
    else:  # an older client: its own call, into the same folder
        api.dataset_download_files(KAGGLE_DATASET, path=str(partial.parent), force=True, quiet=False, unzip=False)


def _resumable(partial: Path) -> bool:
    """Whether the client can continue `partial` (bytes on disk and the client's marker of the remote object)."""
    return partial.is_file() and partial.stat().st_size > 0 and Path(str(partial) + ".kaggle-partial").is_file()


def _check_download(partial: Path) -> None:
    """The download is a readable zip in the Kaggle layout (its central directory, at the end, proves it complete);
    else the partial folder is removed and `DataUnavailable` raised."""
    try:
        size = partial.stat().st_size
        if not zipfile.is_zipfile(partial):
            raise DataUnavailable(f"The Kaggle download of {KAGGLE_DATASET} is not a zip archive ({size} bytes, "
                                  "removed): run again later, or download the archive by hand and set "
                                  "CXR_DATA=/path/to/archive.zip.\n" + HOW_TO_GET_DATA)
        with zipfile.ZipFile(partial) as zf:
            _zip_root(zf.namelist())
    except (DataUnavailable, OSError, zipfile.BadZipFile) as error:
        shutil.rmtree(partial.parent, ignore_errors=True)
        if isinstance(error, DataUnavailable):
            raise
        raise DataUnavailable(f"The Kaggle download of {KAGGLE_DATASET} is unreadable ({_scrub(error)}); it was "
                              "removed: run again, or set CXR_DATA to a downloaded archive.") from None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _sweep_stale(dest: Path) -> None:
    """Remove the temporary `.download-*` folders an older version of `download` left behind when killed."""
    if dest.is_dir():
        for stale in dest.glob(".download-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def _in_colab() -> bool:
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def _kagglehub():
    try:
        import kagglehub
    except ImportError:
        return None
    return kagglehub


def _kagglehub_download(kagglehub, where: str) -> Path:
    """The dataset through `kagglehub.dataset_download` (its own cache, an extracted folder); checked for the
    Kaggle layout."""
    try:
        folder = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as error:  # noqa: BLE001  (network, auth: all become one clear message)
        raise _failure(error, where, via="kagglehub") from None
    if not folder.is_dir():
        raise DataUnavailable(f"kagglehub gave {folder} for {KAGGLE_DATASET}, which is not a folder: set CXR_DATA to a "
                              "downloaded archive.\n" + HOW_TO_GET_DATA)
    find_root(folder)
    print(f"Data: {_display_path(folder)} (kagglehub download of {KAGGLE_DATASET})")
    return folder


def _download_into(api, partial: Path, where: str) -> None:
    """Download (or continue) the zip at `partial` and check it; a failure keeps the partial only when the client
    can resume it, and is one `DataUnavailable` line."""
    resuming = _resumable(partial)
    print(f"Data: downloading {KAGGLE_DATASET} from Kaggle (about 1.2 GB) into {_display_path(partial.parent.parent)}"
          + (f", resuming the partial download ({_size(partial.stat().st_size)})" if resuming else "") + " ...")
    try:
        with _client_output(_ClientNotices(), stderr=False):  # the progress bar (stderr) stays
            _client_download(api, partial)
    except (Exception, SystemExit) as error:  # noqa: BLE001  (network, auth, disk: one clear message)
        if _resumable(partial):
            kept = f"; {_size(partial.stat().st_size)} kept in {_display_path(partial.parent)} to resume"
        else:
            kept = ""
            shutil.rmtree(partial.parent, ignore_errors=True)
        if isinstance(error, SystemExit):
            raise _refused(where) from None
        raise _failure(error, where, kept) from None
    _check_download(partial)


def download(dest: str | Path, force: bool = False) -> Path:
    """Download the Kaggle dataset into folder `dest` and return the zip (or kagglehub's folder).

    Idempotent: a verified earlier download is reused unless `force` (no credentials or network needed).
    Resumable: the download goes to `dest/.download/`, which a later attempt continues; only a complete, readable
    zip in the Kaggle layout is moved to `dest/chest-xray-pneumonia.zip` (with a size marker), and the partial
    folder is then removed. In Colab (or without the `kaggle` client) `kagglehub` downloads instead. Raises
    `DataUnavailable` (one first line, no credential in it) when there are no credentials, Kaggle refuses them, the
    dataset is not found or the transfer fails; what is left behind is at most a partial the next attempt resumes.
    """
    dest = Path(dest)
    zip_path = dest / KAGGLE_ZIP_NAME
    _sweep_stale(dest)
    if not force and _verified_download(zip_path):
        print(f"Data: reusing the earlier download {_display_path(zip_path)}")
        return zip_path
    where = kaggle_credentials()
    if where is None:
        raise DataUnavailable("No Kaggle credentials found: save an API token as ~/.kaggle/access_token or set "
                              "KAGGLE_API_TOKEN (or save a legacy ~/.kaggle/kaggle.json), or download the archive by "
                              "hand and set CXR_DATA=/path/to/archive.zip.\n" + HOW_TO_GET_DATA)
    hub = _kagglehub() if _in_colab() else None
    client = None if hub is not None else _kaggle_client(where)
    if client is None:
        hub = hub or _kagglehub()
        if hub is None:
            raise DataUnavailable("Neither the `kaggle` nor the `kagglehub` package is installed "
                                  "(pip install kaggle).\n" + HOW_TO_GET_DATA)
        return _kagglehub_download(hub, where)

    api = client()
    _authenticate(api, where)
    partial = dest / PARTIAL_DIR / KAGGLE_ZIP_NAME
    try:
        lock_folder(partial.parent)  # one download into data/.download/ at a time (dropped if the process dies)
    except FolderLocked:
        raise DataUnavailable(f"Another process is downloading {KAGGLE_DATASET} into {_display_path(partial.parent)}: "
                              "wait for it to end (or stop it), then run again.") from None
    try:
        _download_into(api, partial, where)
        os.replace(partial, zip_path)
        atomic_write_text(_download_marker(zip_path),
                          json.dumps({"dataset": KAGGLE_DATASET, "size": zip_path.stat().st_size}))
        shutil.rmtree(partial.parent, ignore_errors=True)
    finally:
        unlock_folder(partial.parent)
    print(f"Data: {_display_path(zip_path)} ({_size(zip_path.stat().st_size)}, Kaggle download)")
    return zip_path


def shared_hidden() -> bool:
    """True when `CXR_HIDE_SHARED` is set (1, true, yes): the ../shared copy and raw sample are then ignored, as on
    a newcomer's machine."""
    return _truthy(os.environ.get("CXR_HIDE_SHARED"))


def _shared_candidates() -> list[Path]:
    if shared_hidden():
        return []
    bases = [REPO_ROOT.parent, Path.cwd().parent, Path.cwd()]
    return [base / "shared" / "data" / SHARED_ZIP_NAME for base in bases]


def _shared_folder(name: str) -> Path | None:
    """The folder `name` beside the shared 224-px copy when it holds JPEGs in class folders, else None."""
    for candidate in _shared_candidates():
        folder = candidate.parent / name
        if folder.is_dir() and any(folder.glob("*/*.jpeg")):
            return folder
    return None


def raw_sample_dir() -> Path | None:
    """`raw-sample/` beside the shared 224-px copy (full-resolution originals of some training images, in
    NORMAL/ and PNEUMONIA/), or None where there is none (e.g. a user's machine, or `CXR_HIDE_SHARED=1`)."""
    return _shared_folder("raw-sample")


def originals_dir() -> Path | None:
    """`originals/` beside the shared 224-px copy (full-resolution originals of 330 more training images, in
    NORMAL/ and PNEUMONIA/, none of them in `raw-sample/`), or None where there is none (e.g. a user's machine,
    or `CXR_HIDE_SHARED=1`)."""
    return _shared_folder("originals")


def _display_path(path: Path) -> str:
    """`path` relative to the working directory when it can be, so logs and notebooks show no local absolute paths."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def kaggle_input_dir() -> Path | None:
    """The dataset attached to a Kaggle Notebook: the root (holding train/ and test/) under
    `<input>/chest-xray-pneumonia/` for the first of `KAGGLE_INPUT_DIRS` that has it (on Kaggle
    /kaggle/input/chest-xray-pneumonia/chest_xray/, read-only, used in place), or None."""
    for base in KAGGLE_INPUT_DIRS:
        folder = Path(base) / KAGGLE_SLUG
        if folder.is_dir():
            try:
                return find_root(folder)
            except (DataUnavailable, OSError):
                continue
    return None


def resolve_source(source: str | Path | None, data_dir: str | Path) -> Path:
    """Where the data comes from; returns a zip or a folder. The first of:

    1. `source` (a zip or folder; "kaggle" asks for the download explicitly: missing or refused credentials are
       then an error);
    2. $CXR_DATA (same);
    3. the dataset attached to a Kaggle Notebook (`kaggle_input_dir`, used in place: nothing is written there);
    4. the ../shared/data 224-px copy (unless `CXR_HIDE_SHARED=1`);
    5. an earlier verified download in `data_dir`;
    6. a new download when Kaggle credentials exist (`download`: the kaggle client, kagglehub in Colab); a
       failure falls back, with its one-line reason, to
    7. the bundled sample (with a message on how to get the full data).
    """
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
    mounted = kaggle_input_dir()
    if mounted is not None:
        print(f"Data: {mounted} (the dataset attached to this Kaggle Notebook, read in place)")
        return mounted
    for candidate in _shared_candidates():
        if candidate.is_file():
            print(f"Data: {_display_path(candidate)} (shared 224-px copy)")
            return candidate.resolve()
    earlier = Path(data_dir) / KAGGLE_ZIP_NAME
    if _verified_download(earlier):
        _sweep_stale(Path(data_dir))
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


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry is not extracted, from the sizes its header declares (before anything is written), or None."""
    if info.file_size > MAX_ENTRY_BYTES:
        return f"over {MAX_ENTRY_BYTES >> 20} MiB"
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return f"compressed over {MAX_RATIO}:1"
    return None


class _TooLong(Exception):
    pass


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str | None:
    """Copy one entry to `target` in chunks, never more bytes than its header declares (nor `MAX_ENTRY_BYTES`);
    returns why it was not extracted (then nothing of it is left), or None."""
    limit = min(info.file_size, MAX_ENTRY_BYTES)
    written = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise _TooLong
                out.write(chunk)
        return None
    except _TooLong:
        problem = "more bytes than declared (or allowed)"
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        problem = f"corrupt in the archive ({type(error).__name__})"
    except (NotImplementedError, RuntimeError):  # an unsupported compression method, an encrypted entry
        problem = "unsupported compression or encrypted"
    target.unlink(missing_ok=True)
    return problem


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Unzip `archive` into `dest` (atomically, reused when done before) and return the dataset root.

    A folder is used in place (read only: nothing is written into it, e.g. a read-only Kaggle input). Only the
    shallowest train/, val/ and test/ are extracted: the nested duplicate `chest_xray/chest_xray/`, `__MACOSX/` and
    files beside the split folders are left out (and counted). Entries declaring more than `MAX_ENTRY_BYTES` or
    compressed more than `MAX_RATIO`:1 (above `RATIO_MIN_BYTES`) are skipped before extraction, an entry giving
    more bytes than declared or failing its CRC is skipped while extracting: all counted in the message (and in
    `.extracted.json`). Kept entries declaring more than `MAX_TOTAL_BYTES` together are refused (`DataUnavailable`).
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
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataUnavailable(f"{archive} is not a readable zip archive ({error}): download it again.") from None
    with zf:
        infos = zf.infolist()
        prefix = _zip_root([i.filename for i in infos])
        if marker.is_file():
            try:
                done = json.loads(marker.read_text())
                if {k: done.get(k) for k in stamp} == stamp:
                    return dest / prefix
            except (ValueError, AttributeError):
                pass
        keep: list[zipfile.ZipInfo] = []
        left_out = {"in __MACOSX/": 0, f"beside {prefix or './'}{{train,val,test}}/ (nested duplicate, junk)": 0,
                    f"outside {prefix or './'}": 0}
        kinds = list(left_out)
        for info in infos:
            name = info.filename
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
                problem = _entry_problem(info)
                if problem is None:
                    keep.append(info)
                else:
                    left_out[problem] = left_out.get(problem, 0) + 1
            else:
                left_out[kinds[1]] += 1
        declared = sum(i.file_size for i in keep)
        if declared > MAX_TOTAL_BYTES:
            raise DataUnavailable(f"{archive} declares {declared / 2**30:.1f} GiB of images (more than "
                                  f"{MAX_TOTAL_BYTES >> 30} GiB; the Kaggle dataset has about 1.2 GB): not the chest "
                                  "X-ray archive, or a zip bomb; nothing was extracted.")
        extracted = 0
        with atomic_folder(dest) as tmp:
            for info in progress.bar(keep, desc=f"extract {archive.name}"):
                problem = _extract_entry(zf, info, tmp / info.filename)
                if problem is None:
                    extracted += 1
                else:
                    left_out[problem] = left_out.get(problem, 0) + 1
            (tmp / ".extracted.json").write_text(json.dumps({**stamp, "left_out": left_out}))
    skipped = ", ".join(f"{n} {kind}" for kind, n in left_out.items() if n)
    print(f"Extracted {extracted} files of {archive.name} into {dest}" + (f"; left out {skipped}" if skipped else ""))
    return dest / prefix
