"""Images: decoding any image file (Pillow formats and DICOM) to 8-bit grayscale, THE resize of the project
(training, evaluation and prediction all go through `resize`), and the cache: every image decoded once into a uint8
(N, S, S) memory map, reused while valid (its checksum verified), rebuilt when stale or damaged, written atomically.

What an input must be, or it is refused with `ImageRejected` (its message names the file and says why; the index
counts the file as skipped with that reason, `predict` reports it for that file):

- at least `MIN_SIDE` px on its shorter side (a smaller model's input side, if less: `min_side(size)`);
- not blank (every pixel the same after conversion);
- 8-bit images (L, RGB, P, CMYK, ...) as they are; unsigned 16-bit images (and 32-bit integer images holding
  values 0..65535) scaled by their bit depth (a 12-bit image stays as bright as it was); integer images with
  negative values or values beyond 16 bits are refused (signed or 32-bit data are not stored intensities: give
  the DICOM file, or save them as unsigned 16-bit or float);
- float images rescaled by their range (minimum -> 0, maximum -> 255, whatever the range: [0, 1], Hounsfield
  units, ...); a NaN or infinite pixel is refused;
- DICOM (.dcm, .dicom or the DICM preamble; needs the `dicom` extra, pydicom): one frame, MONOCHROME1/2 or RGB;
  Modality LUT or rescale slope/intercept, then the VOI LUT or the window (its output range -> 0..255; without
  either, the range of the modality values), MONOCHROME1 inverted;
- EXIF orientation applied (a phone photo of a film is scored upright).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps

from cxr.config import RESIZE_POLICIES
from cxr.data.parallel import parallel_map
from cxr.data.sources import DataUnavailable
from cxr.io import atomic_file, atomic_write_text

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporary files are then swept by age
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 2  # 2: EXIF orientation applied, array checksum in the manifest
MIN_SIDE = 32  # px: no image with a shorter side below this is indexed, trained on or scored (a 1x1 image carries
# no anatomy); one rule for the index and every model, so that what the index kept training can decode
DICOM_SUFFIXES = (".dcm", ".dicom")
STALE_TEMP_AGE_S = 24 * 3600  # without locks (Windows): a cache's temporary file this old is an orphan
_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_STRIP_PIXELS = 1 << 18  # 16/32-bit and float images are converted in strips of about this many pixels


class ImageRejected(DataUnavailable, ValueError):
    """An image file that cannot be scored or trained on: too small, blank, NaN pixels, out-of-range values, an
    unreadable or unsupported DICOM, a DICOM without pydicom. The message names the file and says why; `reason` is
    the why alone (the index's skip reason), `name` the file."""

    def __init__(self, name: str, reason: str, message: str | None = None):
        self.name, self.reason = str(name), reason
        super().__init__(message or f"{name}: {reason}")

    def __reduce__(self):  # survives the trip from a worker process
        return type(self), (self.name, self.reason, str(self))


def min_side(size: int) -> int:
    """The shortest side (px) an image may have to be scored by a model of input side `size`: `MIN_SIDE`, or
    `size` itself for a model smaller than that. Never more than the index's rule (`MIN_SIDE`): whatever the
    index kept, training can decode."""
    return min(int(size), MIN_SIDE)


# ---------------------------------------------------------------------------------------------------------------
# Conversion to 8-bit grayscale
# ---------------------------------------------------------------------------------------------------------------


def _row_ranges(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _STRIP_PIXELS // max(1, width))
    return [(y, min(height, y + step)) for y in range(0, height, step)]


def _image_strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, pixels) of consecutive horizontal strips of `img`: never the whole image as one array."""
    w, h = img.size
    for y0, y1 in _row_ranges(h, w):
        yield y0, np.asarray(img.crop((0, y0, w, y1)))


def _assemble(size: tuple[int, int], strips: Iterator[tuple[int, np.ndarray]]) -> Image.Image:
    """An "L" image of `size` from uint8 strips (first row, rows)."""
    out = Image.new("L", size)
    for y, part in strips:
        out.paste(Image.fromarray(np.ascontiguousarray(part, dtype=np.uint8)), (0, y))
    return out


def _integer_to_l(img: Image.Image, name: str) -> Image.Image:
    """Unsigned 16-bit (or 32-bit holding 0..65535) -> 8-bit, scaled by the bit depth of the maximum: exactly
    rint(v * 255 / (2**bits - 1)), in integer arithmetic, strip by strip."""
    try:
        lo, hi = img.getextrema()
    except ValueError:  # a mode Pillow cannot take the extrema of (I;16B): from the strips
        parts = [(int(a.min()), int(a.max())) for _, a in _image_strips(img) if a.size]
        lo, hi = min(p[0] for p in parts), max(p[1] for p in parts)
    if lo < 0:
        raise ImageRejected(name, f"negative pixel values (minimum {lo}) in a {img.mode!r} integer image: signed data "
                                  "are not stored intensities; give the DICOM file, or save it as unsigned 16-bit or "
                                  "float")
    if hi > 0xFFFF:
        raise ImageRejected(name, f"pixel values beyond 16 bits (maximum {hi}) in a 32-bit integer image: not an "
                                  "X-ray's stored intensities; give the DICOM file, or save it as 16-bit or float")
    bits = max(8, int(hi).bit_length())
    d = 2**bits - 1
    return _assemble(img.size, ((y, (a.astype(np.uint32) * 255 + d // 2) // d) for y, a in _image_strips(img)))


def _range_to_l(size: tuple[int, int], strips: Callable[[], Iterator[tuple[int, np.ndarray]]], name: str,
                lo: float | None = None, hi: float | None = None) -> Image.Image:
    """Values -> 8-bit by a linear map of [lo, hi] to [0, 255] (clipped), strip by strip (float64 per strip only).
    Without lo/hi, the range of the values; a NaN or infinite value is refused."""
    if lo is None or hi is None:
        lo, hi, bad, total = math.inf, -math.inf, 0, 0
        for _, a in strips():
            finite = np.isfinite(a)
            total += a.size
            if not finite.all():
                bad += int(a.size - np.count_nonzero(finite))
            elif a.size:
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        if bad:
            raise ImageRejected(name, f"{bad} of {total} pixels are NaN or infinite (missing values in a float "
                                      "image): it cannot be scored; fill or crop them in the source")
    scale = 255.0 / (hi - lo) if hi != lo else 0.0
    return _assemble(size, ((y, np.clip(np.rint((a.astype(np.float64) - lo) * scale), 0, 255))
                            for y, a in strips()))


def to_grayscale(img: Image.Image, name: str | None = None) -> Image.Image:
    """8-bit grayscale ("L") of any Pillow image (the rules are in the module docstring): 16-bit and 32-bit integer
    images are scaled by their bit depth, float images by their range (NaN or infinite pixels: `ImageRejected`),
    CMYK goes through RGB. Never a float64 copy of the whole image: 16/32-bit and float images are converted in
    strips of about 260,000 pixels. `name`: the file, for error messages."""
    if img.mode == "L":
        return img
    name = name or getattr(img, "filename", "") or "image"
    if img.mode in _INTEGER_MODES:
        return _integer_to_l(img, name)
    if img.mode == "F":
        return _range_to_l(img.size, lambda: _image_strips(img), name)
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return img.convert("L")


# ---------------------------------------------------------------------------------------------------------------
# Reading a file
# ---------------------------------------------------------------------------------------------------------------


def _display_name(source: str | Path | BinaryIO, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "") or "image")


def is_dicom(source: str | Path | BinaryIO, name: str | None = None) -> bool:
    """True for a .dcm/.dicom file name or bytes with the DICOM preamble (b"DICM" at offset 128)."""
    if Path(_display_name(source, name)).suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                head = f.read(132)
        else:
            position = source.tell()
            head = source.read(132)
            source.seek(position)
    except (OSError, AttributeError, ValueError):
        return False  # opening it again says what is wrong
    return head[128:132] == b"DICM"


def _check_side(name: str, width: int, height: int, minimum: int, model: str) -> None:
    if min(width, height) < minimum:
        raise ImageRejected(name, f"too small: {width}x{height} px; the shorter side must be at least {minimum} px"
                                  f"{model} (an image this small carries no usable anatomy)")


def _check_not_blank(name: str, gray: Image.Image) -> None:
    lo, hi = gray.getextrema()
    if lo == hi:
        raise ImageRejected(name, f"blank image (every pixel is {lo} in 8-bit grayscale): nothing to score")


def read_image(source: str | Path | BinaryIO, name: str | None = None, draft: int | None = None,
               minimum: int = MIN_SIDE, model: str = "") -> tuple[Image.Image, dict[str, Any]]:
    """Decode an image file (any Pillow format, or DICOM) to 8-bit grayscale, as displayed (EXIF orientation
    applied), checked: (the "L" image, {width, height, mode, format} of the file, width and height as displayed).

    Raises `ImageRejected` (a ValueError and a `DataUnavailable`, naming the file) for an image smaller than
    `minimum` on its shorter side, a blank one, NaN or out-of-range pixels, an unusable DICOM; Pillow's own errors
    (UnidentifiedImageError, OSError for truncated data) for files that are not decodable images. JPEGs decode in
    draft mode when `draft` is given: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below `draft` on
    either side (the same for a rotated image: the requested box is square). `model`: text for the size message.
    """
    name = _display_name(source, name)
    if is_dicom(source, name):
        return _read_dicom(source, name, minimum, model)
    with Image.open(source) as img:
        width, height, mode, fmt = img.width, img.height, img.mode, img.format
        _check_side(name, width, height, minimum, model)  # before decoding: a 1x1 or a huge-but-thin image
        if draft and fmt == "JPEG":
            img.draft("L", (draft, draft))  # draft keeps the EXIF block: the orientation is applied below
        img.load()
        before = img.size
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except (SyntaxError, ValueError, TypeError, KeyError, struct.error) as error:
            raise ImageRejected(name, f"corrupt: its EXIF block cannot be read ({type(error).__name__}: {error}), "
                                      "so its orientation is unknown") from None
        if img.size != before:  # orientation 5 to 8: the picture as displayed is the file's transpose
            width, height = height, width
        gray = to_grayscale(img, name)
    _check_not_blank(name, gray)
    return gray, {"width": width, "height": height, "mode": mode, "format": fmt}


def _pydicom_module(name: str):
    try:
        import pydicom
    except ImportError:
        hint = "pip install 'cxr[dicom]'"
        raise ImageRejected(name, f"DICOM file needs pydicom: {hint}",
                            f"DICOM file {name} needs pydicom: {hint}") from None
    return pydicom


def _dicom_lut_functions():
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _voi_output_range(ds: Any, apply_voi_lut: Callable) -> tuple[float, float]:
    """(output of the lowest input, output of the highest input) of the dataset's VOI LUT or window: the black
    and the white of the displayed image (in this order, so that an inverting LUT stays inverting)."""
    if ds.get("VOILUTSequence"):
        nr, first = int(ds.VOILUTSequence[0].LUTDescriptor[0]) or 2**16, int(ds.VOILUTSequence[0].LUTDescriptor[1])
        out = apply_voi_lut(np.arange(first, first + nr, dtype=np.int64), ds)
    else:
        with np.errstate(over="ignore"):  # SIGMOID at +-1e30 saturates by overflow
            out = apply_voi_lut(np.array([-1e30, 1e30]), ds)
    return float(out[0]), float(out[-1])


def _read_dicom(source: str | Path | BinaryIO, name: str, minimum: int, model: str
                ) -> tuple[Image.Image, dict[str, Any]]:
    """A DICOM file -> (8-bit "L" image, info): pixel data, Modality LUT (or rescale slope/intercept), VOI LUT (or
    window centre/width; without either, the range of the modality values), MONOCHROME1 inverted."""
    pydicom = _pydicom_module(name)
    apply_modality_lut, apply_voi_lut = _dicom_lut_functions()
    try:
        ds = pydicom.dcmread(source, force=True)
    except Exception as error:  # noqa: BLE001  (pydicom raises many kinds for a damaged file)
        raise ImageRejected(name, f"corrupt: not a readable DICOM file ({type(error).__name__}: {error})") from None
    if "PixelData" not in ds:
        raise ImageRejected(name, "DICOM file without pixel data (a report or a structured document?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageRejected(name, f"multi-frame DICOM ({frames} frames): give one radiograph per file")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageRejected(name, "corrupt: DICOM file without Rows/Columns") from None
    _check_side(name, columns, rows, minimum, model)
    try:
        pixels = ds.pixel_array
    except Exception as error:  # noqa: BLE001
        raise ImageRejected(name, f"cannot decode its DICOM pixel data ({type(error).__name__}: {error}); "
                                  "compressed transfer syntaxes need pylibjpeg or gdcm") from None
    info = {"width": columns, "height": rows, "mode": photometric, "format": "DICOM"}
    if photometric == "RGB" and pixels.ndim == 3 and pixels.dtype == np.uint8:
        gray = Image.fromarray(pixels, "RGB").convert("L")
    elif photometric in ("MONOCHROME1", "MONOCHROME2") and pixels.ndim == 2:
        has_voi = bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)

        def values(a: np.ndarray) -> np.ndarray:
            m = apply_modality_lut(a, ds)
            if not has_voi:
                return m
            if ds.get("VOILUTSequence") and not np.issubdtype(m.dtype, np.integer):
                m = np.rint(m).astype(np.int64)  # a LUT is indexed by integers
            return apply_voi_lut(m, ds)

        def strips() -> Iterator[tuple[int, np.ndarray]]:
            return ((y0, values(pixels[y0:y1])) for y0, y1 in _row_ranges(rows, columns))

        try:
            lo, hi = _voi_output_range(ds, apply_voi_lut) if has_voi else (None, None)
            gray = _range_to_l((columns, rows), strips, name, lo, hi)
        except ImageRejected:
            raise
        except (ValueError, TypeError, AttributeError, IndexError, NotImplementedError) as error:
            raise ImageRejected(name, f"unusable DICOM LUT or window ({type(error).__name__}: {error})") from None
        if photometric == "MONOCHROME1":  # low values are white
            gray = Image.eval(gray, lambda v: 255 - v)
    else:
        raise ImageRejected(name, f"unsupported DICOM image ({photometric or 'no PhotometricInterpretation'}, "
                                  f"{pixels.shape}): radiographs are MONOCHROME1 or MONOCHROME2")
    _check_not_blank(name, gray)
    return gray, info


# ---------------------------------------------------------------------------------------------------------------
# THE resize, and loading a file for a model
# ---------------------------------------------------------------------------------------------------------------


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


def canonical(image: np.ndarray, quality: int = 75, smooth: float = 0.0) -> np.ndarray:
    """One canonical re-encode of a uint8 (S, S) grayscale image (after `resize`): an optional Gaussian blur of
    radius `smooth` px (Pillow's `GaussianBlur`; 0: none), then an in-memory JPEG encode (8-bit grayscale, Pillow,
    `quality`, no optimisation) and decode. The shared 224-px copies are JPEGs at quality 75 (their luminance table
    is the standard one scaled to 75), so quality 75 changes a copy little and quantises a sharper image (an
    original resized here) the same way. The same shape and dtype; pure (a new array, the input untouched).
    `load_image` applies it (no blur) with `reencode_quality` (`Config.reencode_quality`; `bench/resize_gap.py`)."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 2:
        raise ValueError(f"canonical takes a uint8 (S, S) image, not {a.dtype} {a.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, not {quality!r}")
    img = Image.fromarray(a, "L")
    if smooth > 0:
        img = img.filter(ImageFilter.GaussianBlur(float(smooth)))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.uint8).copy()


def load_image(path_or_file: str | Path | BinaryIO, size: int, policy: str = "squash",
               reencode_quality: int | None = None) -> np.ndarray:
    """Decode an image file (any Pillow format, or DICOM) to uint8 (size, size) grayscale: `read_image` (EXIF
    orientation applied, JPEGs in draft mode, checked: `ImageRejected` names the file and says why, e.g. shorter
    side below `min_side(size)`, blank, NaN pixels), then `resize`, then, with `reencode_quality`, `canonical` (a
    JPEG re-encode at that quality; None: none). The one path of training (the cache), scoring and predict."""
    gray, _ = read_image(path_or_file, draft=size, minimum=min_side(size), model=f" for a {size}-px model")
    image = resize(gray, size, policy)
    return image if reencode_quality is None else canonical(image, reencode_quality)


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------


def _decode_paths(paths: list[str], size: int, policy: str, quality: int | None = None) -> np.ndarray:
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = load_image(path, size, policy, quality)
        except Exception as error:  # noqa: BLE001  (say which file; the index said it was fine)
            raise DataUnavailable(f"cannot decode {path} ({type(error).__name__}: {error}); "
                                  "the file changed since it was indexed? Rebuild the index.") from None
    return out


def _decode_into(rows: list[tuple[int, str]], array_path: str, size: int, policy: str,
                 quality: int | None = None) -> int:
    """Decode consecutive rows [(position, path), ...] into the .npy memory map at `array_path`."""
    block = _decode_paths([path for _, path in rows], size, policy, quality)
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


def _manifest(index: pd.DataFrame, size: int, policy: str, quality: int | None = None) -> dict[str, Any]:
    # reencode_quality None also matches a manifest written before it existed (`manifest.get`): still valid
    return {"version": CACHE_VERSION, "size": int(size), "policy": policy, "count": int(len(index)),
            "index_key": _index_key(index), "reencode_quality": quality}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks (about 0.2 s for a 300 MB cache on this project's CPU)."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(1 << 22))
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def _cache_problem(index: pd.DataFrame, size: int, policy: str, cache_dir: Path, verify: bool,
                   quality: int | None = None) -> str | None:
    """None when the cache of (index, size, policy, re-encode quality) can be reused; else why not: "missing",
    "stale" (made for another index, size, policy, quality or version) or a sentence saying how the array is damaged."""
    array_path, manifest_path = _cache_paths(cache_dir, size, policy)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "missing"
    expected = _manifest(index, size, policy, quality)
    if not isinstance(manifest, dict) or {k: manifest.get(k) for k in expected} != expected or "sha256" not in manifest:
        return "stale"
    try:
        if array_path.stat().st_size != manifest.get("bytes"):
            return f"its array has {array_path.stat().st_size} bytes, its manifest says {manifest.get('bytes')}"
        array = np.load(array_path, mmap_mode="r")
        if array.shape != (len(index), size, size) or array.dtype != np.uint8:
            return f"its array holds {array.shape} {array.dtype}, not {len(index)} rows of {size}x{size} uint8"
        del array
        if verify and file_sha256(array_path) != manifest["sha256"]:
            return "its array does not match the checksum in its manifest (changed since it was written)"
    except (OSError, ValueError) as error:
        return f"its array cannot be read ({error})"
    return None


def cache_is_valid(index: pd.DataFrame, size: int, policy: str, cache_dir: str | Path, verify: bool = True,
                   reencode_quality: int | None = None) -> bool:
    """True when the cache for (index, size, policy, reencode_quality) exists, its manifest matches (version, size,
    policy, re-encode quality, the rows and their file hashes, the row count, the byte size) and the array is
    complete and, with `verify`, matches the sha256 recorded in its manifest."""
    return _cache_problem(index, size, policy, Path(cache_dir), verify, reencode_quality) is None


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def _create_locked(path: Path) -> int:
    """Create `path` and hold an exclusive lock on it (the descriptor is returned): while a build runs, its
    temporary file is locked, so that `sweep_stale_temporaries` of another process never takes it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        _lock(fd)
        if os.fstat(fd).st_nlink:  # not swept between creation and lock
            return fd
        os.close(fd)


def sweep_stale_temporaries(cache_dir: str | Path) -> list[Path]:
    """Remove the temporary files of cache builds that were killed (`.images-*.npy.*.tmp`): those that no running
    build holds locked (or, without locks, older than `STALE_TEMP_AGE_S`). Returns the removed paths."""
    removed = []
    for path in sorted(Path(cache_dir).glob(".images-*.npy.*.tmp")):
        try:
            if fcntl is None:
                if time.time() - path.stat().st_mtime > STALE_TEMP_AGE_S:
                    path.unlink()
                    removed.append(path)
                continue
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a running build holds it
            os.close(fd)
            continue
        try:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def build_cache(index: pd.DataFrame, root: str | Path, size: int, policy: str, cache_dir: str | Path,
                workers: int | None = None, force: bool = False, reencode_quality: int | None = None) -> np.ndarray:
    """Decode every image of `index` (rows in order, `load_image` with `reencode_quality`) once into a read-only
    uint8 (N, size, size) memory map.

    The cache (images-{size}-{policy}.npy + .json manifest: version, size, policy, re-encode quality (a change of it
    makes the cache stale), row count, a hash of the
    (path, sha1) list, the array's byte size and its sha256) is reused while valid (the checksum is verified on
    every reuse: about 0.2 s for the full dataset at 224 px) and rebuilt when stale or damaged (a damaged cache is
    announced in one line). Atomic: the old manifest is removed first, the array is written to a locked temporary
    file and renamed, the manifest is written last; an interrupted build leaves no cache that a later call trusts,
    and the temporary files of killed builds are swept at the start of the next one. Decoding runs over `workers`
    processes (which end with this process).
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {policy!r}")
    cache_dir = Path(cache_dir)
    array_path, manifest_path = _cache_paths(cache_dir, size, policy)
    if cache_dir.is_dir():
        swept = sweep_stale_temporaries(cache_dir)
        if swept:
            print(f"Data: removed {len(swept)} temporary file(s) of an interrupted image-cache build in {cache_dir}")
    if not force:
        problem = _cache_problem(index, size, policy, cache_dir, True, reencode_quality)
        if problem is None:
            return np.load(array_path, mmap_mode="r")
        if problem not in ("missing", "stale"):
            print(f"Data: the image cache {array_path} is damaged ({problem}): rebuilding it")
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    lock = None
    try:
        with atomic_file(array_path) as tmp:
            lock = _create_locked(tmp)
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(index), size, size))
            array.flush()
            del array
            # each worker decodes a run of rows and writes them into the memory map itself: no pixels through pipes
            rows = list(enumerate(str(Path(root) / p) for p in index["path"]))
            decode = functools.partial(_decode_into, array_path=str(tmp), size=size, policy=policy,
                                       quality=reencode_quality)
            for _ in parallel_map(decode, rows, workers, f"decode {size}px"):
                pass
            checksum = file_sha256(tmp)
    finally:
        if lock is not None:
            os.close(lock)  # after the rename: a sweep never sees the finished file unlocked under its temporary name
    atomic_write_text(manifest_path, json.dumps({**_manifest(index, size, policy, reencode_quality),
                                                 "bytes": array_path.stat().st_size, "sha256": checksum}, indent=1))
    return np.load(array_path, mmap_mode="r")
