"""Data: get the chest X-ray dataset, index it, split it by patient and cache the decoded images.

The pipeline, as `prepare(config)` runs it, one module per step:

1. `sources`: where the data comes from (`resolve_source`: argument, $CXR_DATA, ../shared copy, Kaggle, bundled
   sample) and `extract`: unzip (or take a folder as is) and find the dataset root holding train/ and test/.
2. `index`: `build_index`, one row per decodable image (path, official split, label, subtype, patient, size, mode,
   sha1); every file that is not kept is listed in `skipped` with the reason; `check_counts` against Kaggle's.
3. `audit` and `split`: near-duplicate pairs from the perceptual hashes (`audit.near_duplicate_pairs`);
   `split_by_patient` assigns the training children (official train + val) to cross-validation folds, grouped by
   child, identical bytes and near duplicates, stratified by subtype; the official test is never changed; copies
   of test images are excluded; `check_no_leakage`.
4. `images`: `build_cache` decodes every image once (`load_image`, THE resize policy `resize`, then the JPEG
   re-encode of `config.reencode_quality` when set) into a uint8 (N, S, S) memory map with a manifest; reused while valid, rebuilt when stale, written atomically.

`prepare` returns a `Prepared`, the one object the training, evaluation and explanation code reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.config import SPLITS, Config, primary_task, task as get_task
from cxr.data import audit
from cxr.data.images import (MIN_SIDE, ImageRejected, build_cache, cache_is_valid, is_dicom,  # noqa: F401
                             load_image, min_side, read_image, resize, to_grayscale)
from cxr.data.index import (INDEX_COLUMNS, KAGGLE_COUNTS, build_index, cached_index, check_counts,  # noqa: F401
                            count_table, patient_id, read_checked_csv, subtype_of,
                            write_checked_csv)
from cxr.data.sources import (HOW_TO_GET_DATA, KAGGLE_ZIP_NAME, SAMPLE_ZIP, SHARED_ZIP_NAME, DataUnavailable,  # noqa: F401
                              check_source, download, extract, find_root, kaggle_credentials, raw_sample_dir,
                              resolve_source)
from cxr.data.split import (EXCLUDED, NO_FOLD, cap_per_class, check_no_leakage, exclusion_summary,  # noqa: F401
                            mark_excluded, split_by_patient, split_summary)


NEAR_COLUMNS = ["a", "b", "path_a", "path_b", "distance", "byte_identical"]


@dataclass
class Prepared:
    """The data of a run, as `prepare` returns it. Row i of `index` and `images[i]` are the same image.

    Attributes:
        index: one row per image of the study (training children and the official test; the excluded ones are in
            `excluded`), sorted by path. Columns: `path` (relative to `root`, posix), `official_split` (train/val/
            test folder of the archive), `label` (NORMAL or PNEUMONIA), `subtype` (normal, bacteria, virus),
            `patient_id` (the child, from the file name: `cxr.data.patient_id`), `width`, `height` (original
            pixels), `mode`, `format` (as Pillow reads the file), `sha1` (of the file bytes), `phash` (perceptual
            hash), `split` (train or test: test is the official test, unchanged), `fold` (the cross-validation
            fold of a training image, 0..k-1; -1 for test) and `excluded_reason` (empty).
        skipped: every file that was not kept: `path` and `reason` (junk, empty, corrupt, not an image, ...).
        images: (N, S, S) uint8 grayscale, read-only memory map (S = `config.image_size`, one resize policy).
        root: the dataset root (holds train/ and test/).
        source: the zip or folder the data came from.
        excluded: the images found and readable but left out of the study (`split` = "excluded";
            `excluded_reason` says why: a copy or near duplicate of a test image, a test child's id, over the
            smoke-mode cap). Not in `images`.
        near_duplicates: every pair of images (of the whole inventory) whose perceptual hashes lie within
            `config.near_duplicate_bits` (`cxr.data.audit.near_duplicate_pairs`; paths, distance, byte_identical).
        inventory: `index` and `excluded` together, sorted by path: every readable image found (`index.csv`).

    Tasks (`cxr.config.TASKS`) select rows and labels: `rows(split, task)` gives positions into `index` and
    `images`, `folds(positions)` their folds, `labels(task, positions)` their 0/1 labels, `batch(positions)` the
    (n, S, S, 1) model input, `groups(positions)` their children.
    """

    index: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    root: Path | None
    source: Path | None
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=INDEX_COLUMNS + [
        "split", "fold", "excluded_reason"]))
    near_duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=NEAR_COLUMNS))

    @property
    def inventory(self) -> pd.DataFrame:
        """Every readable image found: the study's rows and the excluded ones, sorted by path."""
        if self.excluded.empty:
            return self.index.copy()
        return pd.concat([self.index, self.excluded]).sort_values("path", ignore_index=True)

    def rows(self, split: str, task: str | None = None) -> np.ndarray:
        """Positions of the rows of `split` ("train" or "test") that take part in `task` (None: the primary task,
        `cxr.config.primary_task`; the subtype task: pneumonia rows only)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        t = get_task(primary_task() if task is None else task)
        mask = self.index["split"].to_numpy() == split
        if t.rows != "all":
            mask &= self.index["label"].to_numpy() == t.rows
        return np.flatnonzero(mask)

    def folds(self, positions: np.ndarray) -> np.ndarray:
        """The cross-validation fold of each row at `positions` (-1 for test rows)."""
        return self.index["fold"].to_numpy().astype(int)[positions]

    def groups(self, positions: np.ndarray) -> np.ndarray:
        """The resampling unit of each row at `positions`: its child (patient id), with children that share an image
        merged into one unit (byte-identical files or near duplicates, as the folds group them: two children whose
        files are the same bytes are one unit, named by the first child's id). Every bootstrap clusters on it, so a
        copy is never drawn as if it were independent evidence."""
        if getattr(self, "_units", None) is None or len(self._units) != len(self.index):
            from cxr.data.split import _group_ids, _pairs_between

            ids = _group_ids(self.index, _pairs_between(self.index, self.near_duplicates)) \
                if "sha1" in self.index else pd.factorize(self.index["patient_id"])[0]
            first = pd.Series(self.index["patient_id"].to_numpy()).groupby(ids).transform("first")
            self._units = first.to_numpy()
        return self._units[positions]

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
    lines = [f"{len(index)} readable images found, {index['patient_id'].nunique()} children",
             count_table(index).to_string()]
    by_subtype = index.groupby(["official_split", "subtype"]).size().unstack(fill_value=0)
    lines.append(by_subtype.to_string())
    diffs = check_counts(index)
    lines.append("counts found match the Kaggle dataset" if not diffs else
                 "counts found differ from the Kaggle dataset:\n  " + "\n  ".join(diffs))
    if "split" in index:
        kept = index[index["split"].isin(SPLITS)]
        table = pd.crosstab(kept["split"], kept["label"]).reindex([s for s in SPLITS if s in set(kept["split"])])
        lines.append("the study's split (training children in cross-validation folds; the official test):\n"
                     + table.to_string())
        lines.append(exclusion_summary(index))
    lines.append(f"{len(skipped)} files skipped" + (":" if len(skipped) else ""))
    for row in skipped.head(max_skipped).itertuples():
        lines.append(f"  {row.path}: {row.reason}")
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more")
    return "\n".join(lines)


def _split(config: Config, index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(inventory with split, fold and excluded_reason; near-duplicate pairs) of an index, by `config`."""
    near = audit.near_duplicate_pairs(index, config.near_duplicate_bits)
    capped = cap_per_class(index, config.max_per_class, config.split_seed)
    inventory = split_by_patient(capped, config.n_folds, config.split_seed,
                                 drop_test_patients=config.exclude_test_patients, near=near, scheme=config.fold_scheme,
                                 dedupe_test=config.dedupe_test)
    if config.max_per_class is not None:
        inventory = mark_excluded(index, inventory, f"over max_per_class={config.max_per_class} (smoke-mode cap)")
    return inventory, near


def prepare(config: Config, workers: int | None = None, verbose: bool = True,
            tasks: list[str] | tuple[str, ...] | None = None) -> Prepared:
    """Resolve and extract the data into config.data_dir, index it (data_dir/index.csv: every readable image,
    the excluded ones with their reason; skipped.csv), find its near duplicates, cap it (config.max_per_class),
    assign the training children to folds and decode the study's images into the cache (data_dir/cache). With
    `tasks`, first check that the split can train and score them (`check_trainable`). Bad data raise
    `DataUnavailable` before the index, the cache and skipped.csv are written."""
    from cxr import ensure_writable

    data_dir = Path(config.data_dir)
    ensure_writable(data_dir, "data folder")
    source = resolve_source(config.source, data_dir)
    name = source.name[:-4] if source.suffix.lower() == ".zip" else source.name
    root = extract(source, data_dir / "extracted" / name)
    index, skipped = cached_index(root, data_dir / "cache", workers=workers)
    _check_not_empty(index, skipped, root)
    inventory, near = _split(config, index)
    is_kept = inventory["split"].ne(EXCLUDED)
    kept = inventory[is_kept].reset_index(drop=True)
    if tasks:
        check_trainable(kept, tasks)
    if verbose:
        print(describe(inventory, skipped, max_skipped=20))
    # the cache holds the study's rows only, in path order
    images = build_cache(kept, root, config.image_size, config.resize_policy, data_dir / "cache", workers=workers,
                         reencode_quality=config.reencode_quality)
    write_checked_csv(data_dir / "skipped.csv", skipped)  # each with its record (rows, sha256): read_checked_csv
    write_checked_csv(data_dir / "index.csv", inventory)
    return Prepared(index=kept, skipped=skipped, images=images, root=root, source=source,
                    excluded=inventory[~is_kept].reset_index(drop=True), near_duplicates=near)


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
    """Raise `DataUnavailable` (one line, with the counts) when a task lacks a class in the training split or in
    the training part of a fold, or has no test rows: what training and scoring need, checked before anything is
    trained or written."""
    for name in tasks:
        t = get_task(name)
        rows = index if t.rows == "all" else index[index["label"] == t.rows]
        positive = rows[t.column].eq(t.positive)
        train = rows["split"].eq("train")
        parts = [("train", train)] + [(f"training part of fold {f}", train & rows["fold"].ne(f))
                                      for f in sorted(set(rows.loc[train, "fold"]))]
        for what, mask in parts:
            n_pos, n_neg = int((mask & positive).sum()), int((mask & ~positive).sum())
            if min(n_pos, n_neg) == 0:
                raise DataUnavailable(
                    f"Task {name!r} cannot be trained on this data: its {what} has {n_pos} {t.class_names[1]} and "
                    f"{n_neg} {t.class_names[0]} images; training needs both classes: add children of the missing "
                    "class (10 or more per class), or train other tasks (--tasks).")
        if not (rows["split"].eq("test")).any():
            raise DataUnavailable(f"Task {name!r} has no test images to score: add images to test/.")


def index_source(config: Config, source: str | Path, out: str | Path, workers: int | None = None) -> pd.DataFrame:
    """Index a zip or folder, split it as `config` says, print what was found and write `out` (every readable
    image, the excluded ones with their reason) and `<out stem>-skipped.csv`, each with its checksum record
    `<name>.json` (rows, sha256; read them back with `read_checked_csv`). Bad input raises `DataUnavailable`
    (one line) before anything is written. Returns the index."""
    from cxr import ensure_writable

    out = Path(out)
    ensure_writable(out.parent, "index folder")
    source = Path(source).expanduser()
    if not source.exists():
        raise DataUnavailable(f"The data source {source} does not exist: pass the Kaggle zip or its extracted folder "
                              "(see README, 'Getting the data').")
    name = source.name[:-4] if source.suffix.lower() == ".zip" else source.name
    root = extract(source, Path(config.data_dir) / "extracted" / name)
    index, skipped = build_index(root, workers=workers)
    _check_not_empty(index, skipped, root)
    index, _ = _split(config, index)
    skipped_out = out.with_name(out.stem + "-skipped.csv")
    write_checked_csv(skipped_out, skipped)  # each with its record `<name>.json` (rows, sha256): read_checked_csv
    write_checked_csv(out, index)
    print(f"dataset root: {root}")
    print(describe(index, skipped, max_skipped=len(skipped)))
    print(f"wrote {out} ({len(index)} rows, {int(index['split'].eq(EXCLUDED).sum())} excluded) and {skipped_out} "
          f"({len(skipped)} rows)")
    return index
