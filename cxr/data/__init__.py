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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.config import CLASS_NAMES, RESIZE_POLICIES, SPLITS, TASKS, Config, task as get_task  # noqa: F401
from cxr.data.images import (CACHE_VERSION, build_cache, cache_is_valid, load_image, resize,  # noqa: F401
                             to_grayscale)
from cxr.data.index import (INDEX_COLUMNS, KAGGLE_COUNTS, SKIPPED_COLUMNS, build_index, cached_index,  # noqa: F401
                            check_counts, count_table, patient_id, subtype_of)
from cxr.data.sources import (HOW_TO_GET_DATA, INDEX_VERSION, KAGGLE_ZIP_NAME, SAMPLE_ZIP,  # noqa: F401
                              SHARED_ZIP_NAME, DataUnavailable, check_source, download, extract, find_root,
                              kaggle_credentials, resolve_source)
from cxr.data.split import (EXCLUDED, cap_per_class, check_no_leakage, exclusion_summary, mark_excluded,  # noqa: F401
                            split_by_patient, split_summary)
from cxr.io import atomic_write_bytes, atomic_write_csv, atomic_write_text  # noqa: F401  (old cxr.data names)


@dataclass
class Prepared:
    """The data of a run, as `prepare` returns it. Row i of `index` and `images[i]` are the same image.

    Attributes:
        index: one row per image of train/val/test (the excluded ones are in `excluded`), sorted by path. Columns: `path` (relative to `root`, posix),
            `official_split` (train/val/test folder of the archive), `label` (NORMAL or PNEUMONIA), `subtype`
            (normal, bacteria, virus), `patient_id` (from the file name), `width`, `height` (original pixels),
            `mode`, `format` (as Pillow reads the file), `sha1` (of the file bytes) and `split` (train/val/test
            after the patient-level re-split; test is the official test, unchanged) and `excluded_reason` (empty).
        skipped: every file that was not kept: `path` and `reason` (junk, empty, corrupt, not an image, ...).
        images: (N, S, S) uint8 grayscale, read-only memory map (S = `config.image_size`, one resize policy).
        root: the dataset root (holds train/ and test/).
        source: the zip or folder the data came from.
        excluded: the images found and readable but left out of train/val/test by the split (`split` =
            "excluded", `excluded_reason` says why: patient id also in the official test, byte-identical to a test
            image, over the smoke-mode cap). Not in `images`.
        inventory: `index` and `excluded` together, sorted by path: every readable image found (`index.csv`).

    Tasks (`cxr.config.TASKS`) select rows and labels: `rows(split, task)` gives positions into `index` and
    `images`, `labels(task, positions)` their 0/1 labels, `batch(positions)` the (n, S, S, 1) model input.
    """

    index: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    root: Path
    source: Path
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=INDEX_COLUMNS + ["split",
                                                                                                 "excluded_reason"]))

    @property
    def inventory(self) -> pd.DataFrame:
        """Every readable image found: the train/val/test rows and the excluded ones, sorted by path."""
        if self.excluded.empty:
            return self.index.copy()
        return pd.concat([self.index, self.excluded]).sort_values("path", ignore_index=True)

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
    """What was found (counts per official split and label, checked against the published counts), the split and
    its exclusions (reported apart: a decision of the split), and the skipped files, as printable text.
    `index`: the inventory (every readable image, excluded ones included)."""
    lines = [f"{len(index)} readable images found, {index['patient_id'].nunique()} patient ids",
             count_table(index).to_string()]
    by_subtype = index.groupby(["official_split", "subtype"]).size().unstack(fill_value=0)
    lines.append(by_subtype.to_string())
    diffs = check_counts(index)
    lines.append("counts found match the Kaggle dataset" if not diffs else
                 "counts found differ from the Kaggle dataset:\n  " + "\n  ".join(diffs))
    if "split" in index:
        kept = index[index["split"].isin(SPLITS)]
        table = pd.crosstab(kept["split"], kept["label"]).reindex([s for s in SPLITS if s in set(kept["split"])])
        lines.append("after the patient-level re-split:\n" + table.to_string())
        lines.append(exclusion_summary(index))
    lines.append(f"{len(skipped)} files skipped" + (":" if len(skipped) else ""))
    for row in skipped.head(max_skipped).itertuples():
        lines.append(f"  {row.path}: {row.reason}")
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more")
    return "\n".join(lines)


def prepare(config: Config, workers: int | None = None, verbose: bool = True,
            tasks: list[str] | tuple[str, ...] | None = None) -> Prepared:
    """Resolve and extract the data into config.data_dir, index it (data_dir/index.csv: every readable image,
    the excluded ones with their reason; skipped.csv), cap it (config.max_per_class), split it by patient and
    decode the train/val/test images into the cache (data_dir/cache). With `tasks`, first check that the split
    can train and score them (`check_trainable`). Bad data raise `DataUnavailable` before the index, the cache
    and skipped.csv are written."""
    from cxr import ensure_writable

    data_dir = Path(config.data_dir)
    ensure_writable(data_dir, "data folder")
    source = resolve_source(config.source, data_dir)
    name = source.name[:-4] if source.suffix.lower() == ".zip" else source.name
    root = extract(source, data_dir / "extracted" / name)
    index, skipped = cached_index(root, data_dir / "cache", workers=workers)
    _check_not_empty(index, skipped, root)
    capped = cap_per_class(index, config.max_per_class, config.seed)
    inventory = split_by_patient(capped, config.val_fraction, config.seed,
                                 drop_test_patients=config.exclude_test_patients)
    if config.max_per_class is not None:
        inventory = mark_excluded(index, inventory, f"over max_per_class={config.max_per_class} (smoke-mode cap)")
    is_kept = inventory["split"].ne(EXCLUDED)
    kept = inventory[is_kept].reset_index(drop=True)
    if tasks:
        check_trainable(kept, tasks)
    if verbose:
        print(describe(inventory, skipped, max_skipped=20))
        print("split:", kept["split"].value_counts().reindex(list(SPLITS), fill_value=0).to_dict())
    # the cache holds the train/val/test rows only, in path order: the same rows (and bytes) as before the
    # excluded rows were kept in the index
    images = build_cache(kept, root, config.image_size, config.resize_policy, data_dir / "cache", workers=workers)
    atomic_write_csv(data_dir / "skipped.csv", skipped)
    atomic_write_csv(data_dir / "index.csv", inventory)
    return Prepared(index=kept, skipped=skipped, images=images, root=root, source=source,
                    excluded=inventory[~is_kept].reset_index(drop=True))


def _check_not_empty(index: pd.DataFrame, skipped: pd.DataFrame, root: Path) -> None:
    if index.empty:
        raise DataUnavailable(f"No readable images under {root} ({len(skipped)} files skipped, e.g. "
                              f"{', '.join(skipped['path'].head(3)) or 'none'}): expected JPEG or PNG images in "
                              "train/NORMAL, train/PNEUMONIA, test/NORMAL and test/PNEUMONIA.")
    found = set(index["official_split"])
    if "test" not in found or not found & {"train", "val"}:
        missing = "test/" if "test" not in found else "train/"
        raise DataUnavailable(f"No readable images in {missing} under {root}: both train/ and test/ need images of "
                              "NORMAL and PNEUMONIA (the test split is scored, the train split trained on).")


def check_trainable(index: pd.DataFrame, tasks: list[str] | tuple[str, ...]) -> None:
    """Raise `DataUnavailable` (one line, with the counts) when a task lacks a class in train or val, or has no
    test rows: what training and scoring need, checked before anything is trained or written."""
    for name in tasks:
        t = get_task(name)
        rows = index if t.rows == "all" else index[index["label"] == t.rows]
        positive = rows[t.column].eq(t.positive)
        for split in SPLITS:
            in_split = rows["split"].eq(split)
            n_pos, n_neg = int((in_split & positive).sum()), int((in_split & ~positive).sum())
            if (split != "test" and min(n_pos, n_neg) == 0) or (split == "test" and n_pos + n_neg == 0):
                raise DataUnavailable(
                    f"Task {name!r} cannot be trained on this data: its {split} split has {n_pos} "
                    f"{t.class_names[1]} and {n_neg} {t.class_names[0]} images; train and val need both classes and "
                    f"test needs images: add patients of the missing class (10 or more per class), or train other "
                    f"tasks (--tasks).")


def index_source(source: str | Path, out: str | Path, data_dir: str | Path = Config.data_dir,
                 val_fraction: float = Config.val_fraction, seed: int = Config.seed, exclude_test_patients: bool = True,
                 workers: int | None = None) -> pd.DataFrame:
    """Index a zip or folder, re-split it, print what was found and write `out` (every readable image, the
    excluded ones with their reason) and `<out stem>-skipped.csv`. Bad input raises `DataUnavailable` (one line)
    before anything is written. Returns the index."""
    from cxr import ensure_writable

    out = Path(out)
    ensure_writable(out.parent, "index folder")
    source = Path(source).expanduser()
    if not source.exists():
        raise DataUnavailable(f"The data source {source} does not exist: pass the Kaggle zip or its extracted folder "
                              "(see README, 'Getting the data').")
    name = source.name[:-4] if source.suffix.lower() == ".zip" else source.name
    root = extract(source, Path(data_dir) / "extracted" / name)
    index, skipped = build_index(root, workers=workers)
    _check_not_empty(index, skipped, root)
    index = split_by_patient(index, val_fraction, seed, drop_test_patients=exclude_test_patients)
    skipped_out = out.with_name(out.stem + "-skipped.csv")
    atomic_write_csv(skipped_out, skipped)
    atomic_write_csv(out, index)
    print(f"dataset root: {root}")
    print(describe(index, skipped, max_skipped=len(skipped)))
    print(f"wrote {out} ({len(index)} rows, {int(index['split'].eq(EXCLUDED).sum())} excluded) and {skipped_out} "
          f"({len(skipped)} rows)")
    return index


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
        index_source(args.source, args.out, args.data_dir, args.val_fraction, args.seed,
                     exclude_test_patients=not args.keep_test_patients, workers=args.workers)
    except DataUnavailable as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
