"""Atomic writes (a file or a whole folder is either the old one or the complete new one, never half), the lock of
a folder that one process writes (`lock_folder`), the sweep of temporary files a killed writer left
(`sweep_stale`) and the marker-block Markdown writer. The bottom of the package: imports nothing from `cxr`."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


def _chmod_default(path: str | Path) -> None:
    """Give a mkstemp file (mode 0600) the permissions of a normally created file (0666 minus the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give an `OSError` raised inside the block that names no file (a full disk during `write`, a quota) the path
    being written, so that every disk error says where: "cannot write runs/x/model.keras: No space left on device"."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise type(error)(error.errno, error.strerror or str(error), str(path)) from error
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync, then `os.replace`."""
    path = Path(path)
    with naming(path):
        return _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
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


def atomic_write_csv(path: str | Path, frame) -> Path:
    """Write a pandas DataFrame as CSV (no index column) atomically."""
    return atomic_write_text(path, frame.to_csv(index=False))


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path` (not created) for a writer that wants a file name (e.g. Keras, numpy);
    on success it replaces `path`, on error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        with naming(path):
            yield tmp
            if tmp.exists():
                _chmod_default(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new empty temporary folder beside `path`; fill it, and on success it replaces `path` (an old folder
    is moved aside first and then removed). On error the temporary folder is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        with naming(path):
            yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def update_markdown(path: str | Path, text: str, marker: str = "results", create: bool = False) -> Path:
    """Replace the block between `<!-- marker -->` and `<!-- /marker -->` in a Markdown file, atomically.
    A file without the block is an error, unless `create`: then the block is appended (to a new file if need be)."""
    path = Path(path)
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    old = path.read_text() if path.is_file() or not create else ""
    if begin not in old or end not in old:
        if not create:
            raise ValueError(f"{path} has no {begin} ... {end} block")
        old = (old.rstrip() + "\n\n" if old.strip() else "") + f"{begin}\n{end}\n"
    new = old[: old.index(begin) + len(begin)] + "\n" + text.rstrip() + "\n" + old[old.index(end):]
    return atomic_write_text(path, new)


def to_json(x: Any) -> Any:
    """A strict-JSON copy of `x`: dataclasses and mappings to dicts, tuples and arrays to lists, numpy scalars to
    Python numbers, NaN and infinities to None (null = undefined), paths to posix strings, pandas frames to lists
    of records."""
    import dataclasses
    import math

    import numpy as np

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if hasattr(x, "to_dict") and hasattr(x, "columns"):  # a pandas DataFrame
        x = x.to_dict(orient="records")
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_json(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Path):
        return x.as_posix()
    return x


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as strict JSON (`to_json`: no NaN, no numpy types) atomically, with a final newline."""
    import json

    return atomic_write_text(path, json.dumps(to_json(obj), indent=indent, allow_nan=False) + "\n")


class FolderLocked(RuntimeError):
    """Another process holds the lock of a folder (`lock_folder`); the message names the folder and that process."""


LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # folder -> file descriptor of its lock, for the life of this process


def lock_folder(folder: str | Path) -> Path:
    """Take the exclusive lock of `folder` (created if need be) for the rest of this process's life, and return
    the lock file. Held already by this process: nothing to do (a notebook cell run twice). Held by another live
    process: `FolderLocked`, naming its pid. The lock is an `fcntl.flock` on `folder/.lock`, so the system drops it
    when its process ends, however it ends (a killed run leaves no stale lock). Where flock is missing (Windows)
    nothing is locked."""
    folder = Path(folder)
    key = str(folder.resolve())
    lock = folder / LOCK_NAME
    if key in _held:
        return lock
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return lock
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.read(fd, 64).decode(errors="replace").split()[0]
        except (OSError, IndexError):
            owner = "?"
        os.close(fd)
        raise FolderLocked(f"{folder} is being written by another run (process {owner}); wait for it to end or "
                           "choose another run folder (--run DIR).") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    _held[key] = fd
    return lock


def unlock_folder(folder: str | Path) -> None:
    """Give the lock of `folder` back before this process ends (tests, long-lived kernels)."""
    fd = _held.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def sweep_stale(folder: str | Path, patterns: tuple[str, ...] = (".*.tmp", ".*.tmp-*", ".*.old-*"),
                min_age_s: float = 60.0) -> list[Path]:
    """Remove the temporary files and folders that a killed atomic writer left in `folder` (names as
    `atomic_write_bytes`, `atomic_file` and `atomic_folder` make them) and that are older than `min_age_s` (a live
    writer's are young). Returns what was removed. Call it where the folder's writer holds its lock, or on caches
    whose writers are known to be gone."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for pattern in patterns:
        for path in folder.glob(pattern):
            try:
                if now - path.lstat().st_mtime < min_age_s:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
            except FileNotFoundError:
                continue
    return removed
