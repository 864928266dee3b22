"""Image inputs that never give a silently wrong answer (EXIF orientation, NaN pixels, tiny and blank images,
out-of-range integer images, memory of 16-bit and float conversion), DICOM in a dataset folder and for a model, and
an image cache and scan index that detect damage and leave no orphans (cxr.data.images, .index, .parallel)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import data
from cxr.config import Config
from cxr.data import images as cxr_images
from cxr.data import index as cxr_index

pydicom = pytest.importorskip("pydicom")  # the test extra installs it (pip install 'cxr[test]')

REPO = Path(__file__).resolve().parents[1]


def picture(seed: int, w: int = 96, h: int = 64) -> np.ndarray:
    """A smooth, asymmetric grayscale picture (a bright block in the top-left corner tells any rotation)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = 110 + 50 * np.sin(x / (4 + seed % 5) + seed) + 30 * np.cos(y / (3 + seed % 7)) + rng.normal(0, 5, (h, w))
    a[: h // 3, : w // 4] = 250
    return np.clip(a, 0, 255).astype(np.uint8)


def jpeg_bytes(a: np.ndarray, orientation: int | None = None, mode: str = "L") -> bytes:
    img = Image.fromarray(a).convert(mode)
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def save(img: Image.Image, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


# ----------------------------------------------------------------------------------------------------------------
# 1. EXIF orientation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w, h, size", [(96, 64, 64), (1600, 1200, 224)])  # the second decodes in draft mode
def test_exif_rotated_jpeg_is_scored_upright_everywhere(tmp_path, w, h, size):
    upright = picture(3, w, h)
    stored = np.asarray(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90))  # as a camera stores it
    rotated = write(tmp_path / "train/NORMAL/IM-0001-0001.jpeg", jpeg_bytes(stored, orientation=6))
    plain = write(tmp_path / "train/NORMAL/IM-0002-0001.jpeg", jpeg_bytes(upright))
    (tmp_path / "test/NORMAL").mkdir(parents=True)
    for policy in ("squash", "letterbox"):
        a, b = data.load_image(rotated, size, policy), data.load_image(plain, size, policy)
        assert np.abs(a.astype(int) - b).mean() < 2  # the same picture, upright
        sideways = data.resize(Image.fromarray(stored), size, policy)
        assert np.abs(a.astype(int) - sideways).mean() > 20  # what was scored before
    index, skipped = data.build_index(tmp_path, workers=1)
    assert skipped.empty
    rows = index.set_index("path")
    # the index sees the picture as displayed: size (w x h, not h x w) and the perceptual hash of the upright image
    assert tuple(rows.loc["train/NORMAL/IM-0001-0001.jpeg", ["width", "height"]]) == (w, h)
    distance = bin(int(rows.loc["train/NORMAL/IM-0001-0001.jpeg", "phash"], 16)
                   ^ int(rows.loc["train/NORMAL/IM-0002-0001.jpeg", "phash"], 16)).count("1")
    assert distance <= 16
    cache = data.build_cache(index, tmp_path, size, "squash", tmp_path / "cache", workers=1)
    np.testing.assert_array_equal(cache[0], data.load_image(rotated, size, "squash"))


# ----------------------------------------------------------------------------------------------------------------
# 2-5. NaN pixels, memory, tiny and blank images, out-of-range integers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_a_nan_pixel_is_refused_naming_the_file(tmp_path, bad):
    a = picture(5).astype(np.float32) / 255
    a[10, 20] = bad
    path = save(Image.fromarray(a), tmp_path / "scan.tiff", "TIFF")
    with pytest.raises(data.ImageRejected, match=r"scan\.tiff: 1 of 6144 pixels are NaN or infinite") as info:
        data.load_image(path, 64)
    assert isinstance(info.value, ValueError) and isinstance(info.value, data.DataUnavailable)
    assert "\n" not in str(info.value)
    assert cxr_index._inspect_file(str(path))["reason"].startswith("1 of 6144 pixels are NaN or infinite")


def reference_integer(a: np.ndarray) -> np.ndarray:
    """The scaling of the float64 code this replaces: by the bit depth of the maximum."""
    bits = max(8, int(np.ceil(np.log2(float(a.max()) + 1.0))))
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)


def reference_float(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.clip(np.rint((a.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def test_sixteen_bit_and_float_conversion_keeps_its_scaling_exactly():
    rng = np.random.default_rng(0)
    for high in (255, 256, 4095, 65535):  # 8-, 9-, 12- and 16-bit content in a 16-bit image
        a = rng.integers(0, high + 1, (700, 600), dtype=np.uint16)  # several strips
        a[0, 0] = high
        got = np.asarray(data.to_grayscale(Image.fromarray(a)))
        np.testing.assert_array_equal(got, reference_integer(a))
        # a 32-bit integer image holding the same values is scaled the same way
        np.testing.assert_array_equal(np.asarray(data.to_grayscale(Image.fromarray(a.astype(np.int32)))), got)
    big_endian = Image.frombytes("I;16B", (600, 700), a.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(data.to_grayscale(big_endian)), reference_integer(a))
    # float images are rescaled by their range, whatever it is: [0, 1], Hounsfield units, ...
    for lo, hi in ((0.0, 1.0), (-1000.0, 3000.0), (0.2, 0.3)):
        f = rng.uniform(lo, hi, (700, 600)).astype(np.float32)
        got = np.asarray(data.to_grayscale(Image.fromarray(f)))
        np.testing.assert_array_equal(got, reference_float(f))
        assert got.min() == 0 and got.max() == 255


@pytest.mark.parametrize("dtype, mode", [(np.uint16, "I;16"), (np.float32, "F"), (np.int32, "I")])
def test_large_sixteen_bit_and_float_images_convert_in_bounded_memory(dtype, mode):
    a = np.random.default_rng(1).integers(0, 4096, (4000, 4000)).astype(dtype)
    img = Image.fromarray(a)
    assert img.mode == mode
    del a
    tracemalloc.start()
    try:
        gray = data.to_grayscale(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gray.mode == "L" and gray.size == (4000, 4000)
    pixels = 4000 * 4000
    assert peak < 0.5 * pixels, f"{peak / pixels:.2f} bytes per pixel"  # the float64 code took 8+ bytes per pixel


def test_tiny_and_blank_images_are_refused_and_skipped_by_the_index(tmp_path):
    assert data.MIN_SIDE == 32 and data.min_side(224) == 32 and data.min_side(16) == 16
    root = tmp_path / "ds"
    tiny = save(Image.new("L", (1, 1), 128), root / "train/NORMAL/IM-0001-0001.png", "PNG")
    thin = write(root / "train/NORMAL/IM-0002-0001.jpeg", jpeg_bytes(picture(2, 400, 20)))
    blank = save(Image.new("L", (64, 64), 0), root / "train/NORMAL/IM-0003-0001.png", "PNG")
    small = write(root / "train/NORMAL/IM-0004-0001.jpeg", jpeg_bytes(picture(4, 48, 40)))
    write(root / "train/NORMAL/IM-0005-0001.jpeg", jpeg_bytes(picture(5)))
    write(root / "test/NORMAL/IM-0006-0001.jpeg", jpeg_bytes(picture(6)))
    with pytest.raises(data.ImageRejected, match=r"IM-0001-0001\.png: too small: 1x1 px; the shorter side must be "
                                                 r"at least 32 px for a 224-px model"):
        data.load_image(tiny, 224)
    with pytest.raises(data.ImageRejected, match="400x20 px"):
        data.load_image(thin, 224, "letterbox")
    with pytest.raises(data.ImageRejected, match=r"blank image \(every pixel is 0"):
        data.load_image(blank, 32)
    assert data.load_image(small, 224).shape == (224, 224)
    index, skipped = data.build_index(root, workers=1)
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    assert reasons["train/NORMAL/IM-0001-0001.png"].startswith("too small: 1x1 px")
    assert reasons["train/NORMAL/IM-0002-0001.jpeg"].startswith("too small: 400x20 px")
    assert reasons["train/NORMAL/IM-0003-0001.png"].startswith("blank image")
    assert len(skipped) == 3
    assert set(index["path"]) == {"train/NORMAL/IM-0004-0001.jpeg", "train/NORMAL/IM-0005-0001.jpeg",
                                  "test/NORMAL/IM-0006-0001.jpeg"}


def test_integer_images_with_negative_or_over_16_bit_values_are_refused(tmp_path):
    a = picture(7).astype(np.int32) * 16
    a[0, 0] = -1024
    with pytest.raises(data.ImageRejected, match=r"ct\.tiff: negative pixel values \(minimum -1024\)"):
        data.load_image(save(Image.fromarray(a), tmp_path / "ct.tiff", "TIFF"), 64)
    a[0, 0] = 70000
    with pytest.raises(data.ImageRejected, match=r"beyond 16 bits \(maximum 70000\)"):
        data.load_image(save(Image.fromarray(a), tmp_path / "wide.tiff", "TIFF"), 64)
    a[0, 0] = 0  # 12-bit content in a 32-bit image: scaled as a 12-bit image
    ok = data.load_image(save(Image.fromarray(a), tmp_path / "ok.tiff", "TIFF"), 64)
    np.testing.assert_array_equal(ok, data.resize(Image.fromarray(reference_integer(a)), 64))


# ----------------------------------------------------------------------------------------------------------------
# 6. DICOM
# ----------------------------------------------------------------------------------------------------------------


def dicom_file(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 16,
               rescale: tuple[float, float] | None = None, window: tuple[float, float] | None = None,
               voi_lut: np.ndarray | None = None) -> Path:
    """Write a one-frame uncompressed DICOM (CR-like, or CT-like when `stored` is signed) the way a scanner would."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "anonymous"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    signed = np.issubdtype(stored.dtype, np.signedinteger)
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])
        ds.VOILUTSequence = [item]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom 3
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) to 0..255, written out by hand."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    return np.rint(y * 255).astype(np.uint8)


def test_dicom_ct_like_rescale_and_window(tmp_path):
    hu = np.linspace(-1000, 1500, 64 * 64).reshape(64, 64)
    stored = np.rint(hu / 0.5 + 2000).astype(np.int16)  # HU = 0.5 * stored - 1000
    path = dicom_file(tmp_path / "ct.dcm", stored, rescale=(0.5, -1000.0), window=(40.0, 400.0))
    got = data.load_image(path, 64)
    expected = linear_window(stored * 0.5 - 1000.0, 40.0, 400.0)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert got.min() == 0 and got.max() == 255  # air black, bone white, soft tissue in between
    # the same file without its window: the range of the Hounsfield units
    bare = data.load_image(dicom_file(tmp_path / "bare.dcm", stored, rescale=(0.5, -1000.0)), 64)
    assert np.abs(bare.astype(int) - reference_float(stored * 0.5 - 1000.0)).max() <= 1


def test_dicom_cr_like_monochrome1_is_inverted_and_the_voi_lut_applied(tmp_path):
    stored = np.asarray(Image.fromarray(picture(8)).resize((64, 64))).astype(np.uint16) * 16  # 12-bit
    window = (2048.0, 4096.0)
    mono2 = data.load_image(dicom_file(tmp_path / "m2.dcm", stored, bits_stored=12, window=window), 64)
    mono1 = data.load_image(dicom_file(tmp_path / "m1.dcm", stored, "MONOCHROME1", bits_stored=12, window=window),
                            64)
    assert np.abs(mono2.astype(int) - linear_window(stored.astype(float), *window)).max() <= 1
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))  # low values are white
    # a VOI LUT (here a gamma curve over 12 bits, 16-bit output) wins over the window
    lut = np.rint(65535 * (np.arange(4096) / 4095) ** 0.5)
    curved = data.load_image(dicom_file(tmp_path / "lut.dcm", stored, bits_stored=12, window=window, voi_lut=lut), 64)
    assert np.abs(curved.astype(int) - np.rint(lut[stored] * 255 / 65535)).max() <= 1


def test_dicom_is_found_by_its_preamble_and_needs_pydicom_said_in_one_line(tmp_path, monkeypatch):
    stored = (np.asarray(Image.fromarray(picture(9)).resize((64, 64))).astype(np.uint16) * 16)
    path = dicom_file(tmp_path / "scan.dcm", stored, bits_stored=12)
    plain = write(tmp_path / "IMG0001", path.read_bytes())  # no extension: the DICM preamble says what it is
    assert data.is_dicom(plain) and data.is_dicom(io.BytesIO(plain.read_bytes()))
    assert not data.is_dicom(write(tmp_path / "a.jpeg", jpeg_bytes(picture(1))))
    np.testing.assert_array_equal(data.load_image(plain, 64), data.load_image(path, 64))
    # no window: the range of the values (as for a float image)
    assert np.abs(data.load_image(path, 64).astype(int) - reference_float(stored)).max() <= 1
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    with pytest.raises(data.ImageRejected) as info:
        data.load_image(path, 64)
    assert str(info.value) == f"DICOM file {path} needs pydicom: pip install 'cxr[dicom]'"


def test_dicom_files_in_a_kaggle_layout_folder_are_indexed_labelled_and_cached(tmp_path):
    root = tmp_path / "chest_xray"

    def stored(seed: int) -> np.ndarray:
        return np.asarray(Image.fromarray(picture(seed)).resize((80, 64))).astype(np.uint16) * 16

    for i in range(3):
        dicom_file(root / f"train/NORMAL/IM-{i:04d}-0001.dcm", stored(i), bits_stored=12, window=(2048.0, 4096.0))
        dicom_file(root / f"train/PNEUMONIA/person{i}_bacteria_{i}.dcm", stored(10 + i), "MONOCHROME1", 12)
    dicom_file(root / "test/PNEUMONIA/person9_virus_9.dicom", stored(20), bits_stored=12)
    write(root / "test/NORMAL/IM-0100-0001.jpeg", jpeg_bytes(picture(21)))  # a JPEG beside them
    dicom_file(root / "test/NORMAL/IM-0101-0001.dcm", np.full((8, 8), 100, np.uint16), bits_stored=12)  # 8x8
    write(root / "test/NORMAL/IM-0102-0001.dcm", b"\x00" * 128 + b"DICM" + b"\x00" * 40)  # a preamble, no image
    index, skipped = data.build_index(root, workers=1)
    assert len(index) == 8
    rows = index.set_index("path")
    assert rows.loc["train/PNEUMONIA/person1_bacteria_1.dcm", ["label", "subtype", "patient_id", "format"]].tolist() \
        == ["PNEUMONIA", "bacteria", "person1_bacteria", "DICOM"]
    assert rows.loc["train/NORMAL/IM-0002-0001.dcm", ["label", "patient_id", "width", "height", "mode"]].tolist() \
        == ["NORMAL", "IM-0002", 80, 64, "MONOCHROME2"]
    assert rows.loc["test/PNEUMONIA/person9_virus_9.dicom", "official_split"] == "test"
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    assert reasons["test/NORMAL/IM-0101-0001.dcm"].startswith("too small: 8x8 px")
    assert reasons["test/NORMAL/IM-0102-0001.dcm"].startswith("DICOM file without pixel data")
    cache = data.build_cache(index, root, 32, "squash", tmp_path / "cache", workers=1)
    for i, path in enumerate(index["path"]):
        np.testing.assert_array_equal(cache[i], data.load_image(root / path, 32, "squash"))


# ----------------------------------------------------------------------------------------------------------------
# 7-9. The cache and the scan index detect damage; killed builds leave no orphans
# ----------------------------------------------------------------------------------------------------------------


def small_tree(base: Path, n: int = 12) -> Path:
    for i in range(n):
        write(base / f"train/NORMAL/IM-{i:04d}-0001.jpeg", jpeg_bytes(picture(i, 80, 60)))
    write(base / "test/NORMAL/IM-0900-0001.jpeg", jpeg_bytes(picture(99, 80, 60)))
    return base


def test_a_cache_zeroed_in_place_is_detected_and_rebuilt(tmp_path, capsys):
    root, cache = small_tree(tmp_path / "ds"), tmp_path / "cache"
    index, _ = data.build_index(root, workers=1)
    images = np.array(data.build_cache(index, root, 32, "squash", cache, workers=1))
    manifest = json.loads((cache / "images-32-squash.json").read_text())
    assert manifest["count"] == len(index) and len(manifest["sha256"]) == 64
    array = np.load(cache / "images-32-squash.npy", mmap_mode="r+")
    array[:] = 0  # same size, same shape, same manifest: only the checksum tells
    array.flush()
    del array
    assert not data.cache_is_valid(index, 32, "squash", cache)
    assert data.cache_is_valid(index, 32, "squash", cache, verify=False)  # what the old check saw
    capsys.readouterr()
    again = data.build_cache(index, root, 32, "squash", cache, workers=1)
    out = capsys.readouterr().out
    assert "image cache" in out and "does not match the checksum" in out and "rebuilding" in out
    assert len(out.strip().splitlines()) == 1
    np.testing.assert_array_equal(again, images)
    assert data.cache_is_valid(index, 32, "squash", cache)


def test_a_cut_scan_index_is_detected_and_rebuilt(tmp_path, capsys):
    root, cache = small_tree(tmp_path / "ds"), tmp_path / "cache"
    index, skipped = data.cached_index(root, cache, workers=1)
    scan = next(p for p in cache.glob("scan-*.csv") if not p.name.endswith("-skipped.csv"))
    full = scan.read_bytes()
    lines = full.splitlines(keepends=True)
    for cut in (b"".join(lines[: len(lines) // 2]),  # at a line boundary: fewer rows
                full[: len(full) // 2 + 7]):  # mid-line: was a traceback
        scan.write_bytes(cut)
        capsys.readouterr()
        again, _ = data.cached_index(root, cache, workers=1)
        out = capsys.readouterr().out
        assert "scan index is damaged" in out and "rebuilding" in out and len(out.strip().splitlines()) == 1
        pd.testing.assert_frame_equal(again, index)
        assert scan.read_bytes() == full
    # a checked CSV read on its own: a clear one-line error
    scan.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(data.DataUnavailable, match="does not match its checksum record") as info:
        data.read_checked_csv(scan)
    assert "\n" not in str(info.value)
    (cache / (scan.name + ".json")).unlink()
    with pytest.raises(data.DataUnavailable, match="no readable checksum record"):
        data.read_checked_csv(scan)


def test_the_index_command_writes_a_checked_index(tmp_path, capsys):
    root = small_tree(tmp_path / "ds", n=8)
    out = tmp_path / "out" / "index.csv"
    config = Config(data_dir=str(tmp_path / "data"), n_folds=2, image_size=32)
    index = data.index_source(config, root, out, workers=1)
    back = data.read_checked_csv(out)
    assert len(back) == len(index) and list(back["path"]) == list(index["path"])
    assert json.loads((out.parent / "index.csv.json").read_text())["rows"] == len(index)
    assert len(data.read_checked_csv(out.parent / "index-skipped.csv")) == 0


def test_a_running_builds_temporary_file_is_not_swept(tmp_path):
    tmp = tmp_path / ".images-32-squash.npy.abc123.tmp"
    fd = cxr_images._create_locked(tmp)
    try:
        assert cxr_images.sweep_stale_temporaries(tmp_path) == [] and tmp.exists()
    finally:
        os.close(fd)
    assert cxr_images.sweep_stale_temporaries(tmp_path) == [tmp] and not tmp.exists()


def _children(pid: int) -> list[int]:
    """Living (not zombie) processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_cache_build_leaves_no_workers_and_its_temporary_file_is_swept(tmp_path, capsys):
    root, cache = small_tree(tmp_path / "ds", n=140), tmp_path / "cache"
    script = textwrap.dedent("""
        import sys, time
        from cxr.data import images, index
        root, cache = sys.argv[1], sys.argv[2]
        rows, _ = index.build_index(root, workers=1)
        real = images._decode_paths

        def slow(paths, size, policy, *quality):  # the workers inherit it (fork): a build that takes a while
            time.sleep(30)
            return real(paths, size, policy, *quality)

        images._decode_paths = slow
        print("building", flush=True)
        images.build_cache(rows, root, 32, "squash", cache, workers=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), str(cache)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "building"
        deadline = time.time() + 60
        while time.time() < deadline and not (len(_children(proc.pid)) >= 2 and list(cache.glob(".images-*.tmp"))):
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) >= 2, "the build never started its workers"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "orphaned workers outlived the killed build"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = list(cache.glob(".images-*.npy.*.tmp"))
    assert len(left) == 1  # what the kill left behind
    index, _ = data.build_index(root, workers=1)
    capsys.readouterr()
    data.build_cache(index, root, 32, "squash", cache, workers=1)
    assert "removed 1 temporary file(s) of an interrupted image-cache build" in capsys.readouterr().out
    assert not list(cache.glob(".images-*")) and data.cache_is_valid(index, 32, "squash", cache)
