"""Images: decoding any Pillow image to 8-bit grayscale, THE resize of the project (training, evaluation and
prediction all go through `resize`), and the cache: every image decoded once into a uint8 (N, S, S) memory map,
reused while valid, rebuilt when stale, written atomically."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from PIL import Image

from cxr.config import RESIZE_POLICIES
from cxr.data.parallel import parallel_map
from cxr.data.sources import DataUnavailable
from cxr.io import atomic_file, atomic_write_text

CACHE_VERSION = 1


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
    with atomic_file(array_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(index), size, size))
        array.flush()
        del array
        # each worker decodes a run of rows and writes them into the memory map itself: no pixels through pipes
        rows = list(enumerate(str(Path(root) / p) for p in index["path"]))
        decode = functools.partial(_decode_into, array_path=str(tmp), size=size, policy=policy)
        for _ in parallel_map(decode, rows, workers, f"decode {size}px"):
            pass
    atomic_write_text(manifest_path, json.dumps({**_manifest(index, size, policy),
                                                 "bytes": array_path.stat().st_size}, indent=1))
    return np.load(array_path, mmap_mode="r")
