"""Benchmark of the image cache build (`cxr.data.build_cache`) against a naive decoding loop.

    .venv/bin/python bench/prepare.py [--shared ../shared/data] [--repeat 50] [--workers 2] [--no-write]

Two inputs from ../shared/data:
- raw-sample/: 24 full-resolution originals (1000-2000 px), decoded `--repeat` times (so the process pool's
  start-up is paid once per run, as in a real build of 5,856 images, but still counted);
- chest-xray-pneumonia-224.zip: the 5,840 images of the 224-px copy (extracted beforehand, not timed).

For each: images per second of the naive loop (Pillow open, convert("L"), resize, one process), of
`build_cache` with one process (JPEG draft mode alone) and with `--workers` processes (draft mode + processes),
all writing 224 x 224 uint8 arrays. Results go to the `prepare` section of doc/performance.md.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
from PIL import Image, features

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr import cpu_model, data  # noqa: E402
from cxr.io import update_markdown  # noqa: E402

SIZE = 224
BEGIN, END = "<!-- prepare -->", "<!-- /prepare -->"


def naive(paths: list[Path], size: int) -> float:
    """Seconds for the naive loop: open, convert("L"), resize, in this one process."""
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    start = time.perf_counter()
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            out[i] = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    return time.perf_counter() - start


def cached(index: pd.DataFrame, root: Path, size: int, workers: int) -> float:
    """Seconds for `build_cache` (from scratch, into a fresh folder) with `workers` processes."""
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        data.build_cache(index, root, size, "squash", cache_dir, workers=workers, force=True)
        return time.perf_counter() - start


def simple_index(root: Path, paths: list[Path]) -> pd.DataFrame:
    rel = [p.relative_to(root).as_posix() for p in paths]
    return pd.DataFrame({"path": rel, "sha1": [hashlib.sha1(p.read_bytes()).hexdigest() for p in paths]})


def measure(name: str, root: Path, paths: list[Path], workers: int) -> dict:
    index = simple_index(root, paths)
    with Image.open(paths[0]) as img:
        size_note = f"{img.width}x{img.height}"
    naive(paths[: min(20, len(paths))], SIZE)  # warm the file cache
    times = {"naive loop (1 process)": naive(paths, SIZE),
             "build_cache, 1 process (draft mode)": cached(index, root, SIZE, 1),
             f"build_cache, {workers} processes (draft mode)": cached(index, root, SIZE, workers)}
    base = len(paths) / times["naive loop (1 process)"]
    rows = [{"input": name, "method": method, "images": len(paths), "seconds": round(t, 2),
             "images/s": round(len(paths) / t, 1), "speed-up": round(len(paths) / t / base, 2)}
            for method, t in times.items()]
    print(f"{name} (e.g. {size_note}):")
    for row in rows:
        print(f"  {row['method']:<40} {row['images/s']:>8.1f} images/s  x{row['speed-up']}")
    return {"rows": rows}


def decode_floor(paths: list[Path]) -> str:
    """Mean milliseconds of the steps of one decode, to show where the time goes."""
    blobs = [p.read_bytes() for p in paths]

    def ms(fn) -> float:
        start = time.perf_counter()
        for _ in range(5):
            for blob in blobs:
                fn(blob)
        return 1000 * (time.perf_counter() - start) / (5 * len(blobs))

    def full(blob):
        with Image.open(io.BytesIO(blob)) as img:
            img.load()

    def naive_one(blob):
        with Image.open(io.BytesIO(blob)) as img:
            img.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)

    def drafted(blob):
        with Image.open(io.BytesIO(blob)) as img:
            img.draft("L", (SIZE, SIZE))
            img.load()

    def ours(blob):
        data.load_image(io.BytesIO(blob), SIZE, "squash")

    t_full, t_draft, t_naive, t_ours = ms(full), ms(drafted), ms(naive_one), ms(ours)
    return (f"full decode {t_full:.2f} ms, draft-mode decode {t_draft:.2f} ms, naive decode + resize "
            f"{t_naive:.2f} ms, `load_image` (draft decode + resize) {t_ours:.2f} ms. One process can gain at most "
            f"{t_naive / t_draft:.1f}x over the naive loop even if the resize were free, and two cores at most twice "
            "that with perfect scaling")


def write_section(path: Path, text: str) -> None:
    if not path.is_file():
        path.write_text("# Performance\n")
    update_markdown(path, text, "prepare", create=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=50, help="passes over the 24 raw originals")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    raw_root = args.shared / "raw-sample"
    raw = sorted(raw_root.rglob("*.jpeg"))
    if not raw:
        print(f"no raw-sample/ under {args.shared}; nothing to measure", file=sys.stderr)
        return 1
    results = [measure(f"raw-sample/ full resolution, {len(raw)} files x {args.repeat}", raw_root,
                       raw * args.repeat, args.workers)]
    with tempfile.TemporaryDirectory() as tmp:
        root = data.extract(args.shared / data.SHARED_ZIP_NAME, Path(tmp) / "224")
        paths = sorted(p for p in root.rglob("*.jpeg"))
        results.append(measure(f"224-px zip, {len(paths)} files", root, paths, args.workers))

    table = pd.DataFrame([row for r in results for row in r["rows"]])
    lines = [
        "## Cache build (`bench/prepare.py`)",
        "",
        "Command: `.venv/bin/python bench/prepare.py` (from the repository root, with `../shared/data`).",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"Pillow {PIL.__version__} (libjpeg-turbo {features.version('jpg')}), output {SIZE} x {SIZE} uint8, "
        "policy squash. Times include starting the process pool and writing the `.npy` memory map; "
        "the naive loop is Pillow open, `convert(\"L\")`, `resize`, one process.",
        "",
        table.to_markdown(index=False) if _has_tabulate() else "```\n" + table.to_string(index=False) + "\n```",
        "",
        "JPEG draft mode lets libjpeg decode a 1000-2000 px original at 1/2, 1/4 or 1/8 scale (never below the "
        "target size), so the final resize starts from about 350 px instead of 1500 px: that is the one-process "
        "gain on full-resolution images; the second process roughly doubles it (workers write their rows straight "
        "into the memory map; on Linux they are forked, so the pool starts in milliseconds). "
        "The 224-px copy leaves draft mode nothing to skip, so only the processes help there.",
        "",
        f"Target (issue 2): at least 4x the naive loop on full-resolution images with 2 cores. Measured: "
        f"{table.iloc[2]['speed-up']}x" + (" (target met)." if table.iloc[2]["speed-up"] >= 4 else
                                           " (target NOT met; see below)."),
        "",
        "Why not more on full-resolution images: draft mode skips most of the inverse DCT and the big resize, but "
        "not the entropy (Huffman) decoding of every coefficient, which libjpeg-turbo must do at any scale. "
        "Per image on this machine (raw-sample/, mean): " + decode_floor(raw) + ".",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        write_section(REPO / "doc" / "performance.md", text)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
