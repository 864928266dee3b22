"""Data: get the chest X-ray dataset, index it, split it by patient and cache the decoded images.

The pipeline, as `prepare(config)` runs it, one module per step:

1. `sources`: where the data comes from (`resolve_source`: argument, $CXR_DATA, ../shared copy, Kaggle, bundled
   sample) and `extract`: unzip (or take a folder as is) and find the dataset root holding train/ and test/.
2. `index`: `build_index`, one row per decodable image (path, official split, label, subtype, patient, size, mode,
   sha1); every file that is not kept is listed in `skipped` with the reason; `check_counts` against Kaggle's.
3. `split`: `split_by_patient` re-splits the official train (+ val) into train/val, grouped by patient and
   identical bytes, stratified by subtype; the official test is never changed; `check_no_leakage`.
4. `images`: `build_cache` decodes every image once (`load_image`, THE resize policy `resize`) into a uint8
   (N, S, S) memory map with a manifest; reused while valid, rebuilt when stale, written atomically.

`prepare` returns a `Prepared`, the one object the training, evaluation and explanation code reads.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.config import CLASS_NAMES, RESIZE_POLICIES, SPLITS, TASKS, Config, task as get_task  # noqa: F401
from cxr.data.images import (CACHE_VERSION, build_cache, cache_is_valid, load_image, resize,  # noqa: F401
                             to_grayscale)
from cxr.data.index import (INDEX_COLUMNS, KAGGLE_COUNTS, SKIPPED_COLUMNS, build_index, cached_index,  # noqa: F401
                            check_counts, count_table, patient_id, subtype_of)
from cxr.data.sources import (HOW_TO_GET_DATA, INDEX_VERSION, KAGGLE_ZIP_NAME, SAMPLE_ZIP,  # noqa: F401
                              SHARED_ZIP_NAME, DataUnavailable, download, extract, find_root, kaggle_credentials,
                              resolve_source)
from cxr.data.split import cap_per_class, check_no_leakage, split_by_patient, split_summary  # noqa: F401
from cxr.io import atomic_write_bytes, atomic_write_csv, atomic_write_text  # noqa: F401  (old cxr.data names)


@dataclass
class Prepared:
    """The data of a run, as `prepare` returns it. Row i of `index` and `images[i]` are the same image.

    Attributes:
        index: one row per image kept, sorted by path. Columns: `path` (relative to `root`, posix),
            `official_split` (train/val/test folder of the archive), `label` (NORMAL or PNEUMONIA), `subtype`
            (normal, bacteria, virus), `patient_id` (from the file name), `width`, `height` (original pixels),
            `mode`, `format` (as Pillow reads the file), `sha1` (of the file bytes) and `split` (train/val/test
            after the patient-level re-split; test is the official test, unchanged).
        skipped: every file that was not kept: `path` and `reason` (junk, empty, corrupt, not an image, ...).
        images: (N, S, S) uint8 grayscale, read-only memory map (S = `config.image_size`, one resize policy).
        root: the dataset root (holds train/ and test/).
        source: the zip or folder the data came from.

    Tasks (`cxr.config.TASKS`) select rows and labels: `rows(split, task)` gives positions into `index` and
    `images`, `labels(task, positions)` their 0/1 labels, `batch(positions)` the (n, S, S, 1) model input.
    """

    index: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    root: Path
    source: Path

    def rows(self, split: str, task: str = "pneumonia") -> np.ndarray:
        """Positions of the rows of `split` that take part in `task` (the subtype task: pneumonia rows only)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        t = get_task(task)
        mask = self.index["split"].to_numpy() == split
        if t.rows != "all":
            mask &= self.index["label"].to_numpy() == t.rows
        return np.flatnonzero(mask)

    def labels(self, task: str, positions: np.ndarray) -> np.ndarray:
        """0/1 labels (float32) of `task` for the rows at `positions` (1 = the task's positive class)."""
        t = get_task(task)
        return (self.index[t.column].to_numpy()[positions] == t.positive).astype("float32")

    def batch(self, positions: np.ndarray) -> np.ndarray:
        """(n, S, S, 1) uint8 copy of the images at `positions`, the model's input (reads the memory map once)."""
        return np.ascontiguousarray(self.images[positions])[..., None]


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
    atomic_write_csv(data_dir / "skipped.csv", skipped)
    atomic_write_csv(data_dir / "index.csv", index)
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
    atomic_write_csv(Path(args.out), index)
    skipped_out = Path(args.out).with_name(Path(args.out).stem + "-skipped.csv")
    atomic_write_csv(skipped_out, skipped)
    print(f"dataset root: {root}")
    print(describe(index, skipped, max_skipped=len(skipped)))
    print(f"wrote {args.out} ({len(index)} rows) and {skipped_out} ({len(skipped)} rows)")
    return 0
