"""Does one canonical re-encode of every image close the resize gap (issue 25)? On training children only.

    .venv/bin/python bench/resize_gap.py [--quality Q] [--smooth R] [--no-write]

The study's model scores a user's full-resolution original differently from the third party's 224-px copy it was
trained on (`cxr.evaluate.shift.resize_diagnosis`: the copies, a resize + JPEG re-encode made elsewhere, carry less
energy at the finest scale than the originals resized here). This experiment applies ONE canonical re-encode
(`cxr.data.images.canonical`: optionally a mild Gaussian blur, then an in-memory JPEG at one quality) to EVERY image,
the copies and the originals alike, in training and in scoring, and compares, per preprocessing variant:

- the cost: the pooled out-of-fold (OOF) log-loss and AUROC on the block folds of the training children, and the
  paired AUROC difference against "as today" (`cxr.evaluate.paired.paired_auroc`, children resampled);
- the gap: on every full-resolution original available (`raw-sample/` and `originals/`, all training children),
  the agreement of the calls on an original and its copy at the OOF threshold of the study's rule
  (`cxr.pipeline.operating_point`), sensitivity and specificity on the copies and on the originals with Wilson
  intervals (`shift.raw_sample_agreement` with the variant as `preprocess`, `shift.resize_summary`), and the calls
  that stop or start disagreeing against "as today" (`paired.mcnemar`).

The model is the study's recipe without fine-tuning (the committed run kept the head stage): the full preset with
`finetune_epochs=0`, so `cxr.train.fit` computes the frozen ImageNet EfficientNet-Lite0 features of every training
image once and trains the logistic head per block fold with the run's selection rules (class balance and epoch on
the pooled OOF selection loss). Each variant is trained on its own processed images.

The variants are fixed before any model is trained:
- "as today": the copies as stored, the originals resized here (`cxr.data.load_image`);
- "canonical JPEG qQ": Q is the quality of the copies themselves, read from the luminance quantisation table of
  every training copy (`estimate_qualities`: the Pillow quality whose table is the file's), so the re-encode
  changes a copy little and quantises an original as the copies were quantised;
- "canonical blur R + JPEG qQ": also a mild blur whose radius R is the smallest of `SMOOTH_GRID` at which the
  median finest-scale energy ratio and the median edge-strength ratio (`resize_diagnosis`, original / copy, both
  through the variant) on the 24 `raw-sample/` pairs lie within `MATCH_TOLERANCE` of 1 (image statistics only: no
  model, no label).

Caveat: the originals are training children seen by the head in training (each is scored by the fold model that
did not see its child, but the same children's copies trained the other folds' heads and chose the threshold), so
the agreement and the sensitivity GAP are the measures here, not the accuracy on the originals. The official test
split is never read (its rows of the image array are zeros here) nor scored. Results go to the `resize-gap` section
of doc/performance.md (`cxr.io.update_markdown`) unless `--no-write`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import io
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cxr import data, pipeline, train  # noqa: E402  (before keras: hides TF's start-up lines)
import keras  # noqa: E402
from PIL import Image  # noqa: E402
from cxr.config import Config  # noqa: E402
from cxr.data.images import canonical  # noqa: E402
from cxr.data.sources import originals_dir, raw_sample_dir  # noqa: E402
from cxr.evaluate import paired, shift  # noqa: E402
from cxr.io import update_markdown  # noqa: E402
from prepare import _has_tabulate  # noqa: E402

TASK = "pneumonia"
SMOOTH_GRID = (0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5)  # px, Gaussian radius (Pillow)
MATCH_TOLERANCE = 0.05  # |median ratio - 1| for the blur's choice


def pillow_tables() -> dict[int, np.ndarray]:
    """The luminance quantisation table Pillow writes at each quality 1..100."""
    out = {}
    for q in range(1, 101):
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, "JPEG", quality=q)
        out[q] = np.asarray(Image.open(buffer).quantization[0])
    return out


def estimate_qualities(paths: list[Path]) -> Counter:
    """For each JPEG of `paths`: the Pillow quality whose luminance table is nearest its own (L1; exact when 0),
    counted as (quality, exact)."""
    tables = pillow_tables()
    counts: Counter = Counter()
    for path in paths:
        with Image.open(path) as img:
            table = np.asarray(img.quantization[0])
        distance, quality = min((int(np.abs(t - table).sum()), q) for q, t in tables.items())
        counts[(quality, distance == 0)] += 1
    return counts


def original_pairs(prep: data.Prepared, config: Config, dirs: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(source folder per pair, copies, originals resized here) for every original of `dirs` with a copy in the
    data, in the order `shift.raw_sample_agreement` takes them."""
    names = prep.index["path"].str.rsplit("/", n=1).str[-1].to_numpy()
    sources, copies, originals = [], [], []
    for source, f in shift._original_files(dirs):
        where = np.flatnonzero(names == f.name)
        if len(where):
            sources.append(source)
            copies.append(np.asarray(prep.images[int(where[0])]))
            originals.append(data.load_image(f, config.image_size, config.resize_policy))
    return sources, np.stack(copies), np.stack(originals)


def apply(fn: Callable[[np.ndarray], np.ndarray] | None, images: np.ndarray) -> np.ndarray:
    return np.asarray(images) if fn is None else np.stack([fn(a) for a in images])


def diagnosis(fn, copies: np.ndarray, originals: np.ndarray) -> pd.Series:
    """Medians of `resize_diagnosis` (original / copy) with both through `fn`."""
    return shift.resize_diagnosis(apply(fn, copies), apply(fn, originals)).median()


def choose_smooth(quality: int, copies: np.ndarray, originals: np.ndarray) -> tuple[float | None, pd.DataFrame]:
    """The smallest radius of `SMOOTH_GRID` whose variant (blur + JPEG at `quality`) brings both median ratios
    within `MATCH_TOLERANCE` of 1 on these pairs (None if none does), and the table it read."""
    rows = []
    for r in (0.0, *SMOOTH_GRID):
        d = diagnosis(functools.partial(canonical, quality=quality, smooth=r), copies, originals)
        rows.append({"blur radius px": r, "edge strength ratio": d["sharpness_ratio"],
                     "finest-scale energy ratio": d["high_frequency_ratio"]})
    table = pd.DataFrame(rows)
    ok = table[(table["blur radius px"] > 0)
               & (table["edge strength ratio"] - 1).abs().le(MATCH_TOLERANCE)
               & (table["finest-scale energy ratio"] - 1).abs().le(MATCH_TOLERANCE)]
    return (float(ok["blur radius px"].iloc[0]) if len(ok) else None), table


def variant_images(prep: data.Prepared, fn) -> np.ndarray:
    """The image array of a variant: the training rows through `fn`, the test rows zeros (never read)."""
    out = np.zeros(prep.images.shape, np.uint8)
    train_rows = np.flatnonzero(prep.index["split"].eq("train").to_numpy())
    for start in range(0, len(train_rows), 512):
        rows = train_rows[start:start + 512]
        out[rows] = apply(fn, prep.images[rows])
    return out


def copy_change(prep: data.Prepared, fn) -> tuple[int, float]:
    """How much a variant changes the training copies: (how many stay byte-identical, mean absolute change in grey
    levels over all their pixels)."""
    rows = np.flatnonzero(prep.index["split"].eq("train").to_numpy())
    same, total = 0, 0.0
    for start in range(0, len(rows), 512):
        x = np.asarray(prep.images[rows[start:start + 512]])
        y = apply(fn, x)
        same += int((x == y).all(axis=(1, 2)).sum())
        total += float(np.abs(y.astype(np.int16) - x).mean(axis=(1, 2)).sum())
    return same, total / len(rows)


def run_variant(name: str, fn, cfg: Config, prep: data.Prepared, dirs: list[Path]) -> dict:
    """Train the head ensemble on the variant's images; its OOF results and the resize check."""
    t0 = time.perf_counter()
    processed = dataclasses.replace(prep, images=variant_images(prep, fn))
    result = train.fit(cfg, processed, TASK)
    oof = result.oof
    groups = processed.groups(oof["position"].to_numpy())
    y, p = oof["y"].to_numpy(int), oof["p"].to_numpy(float)
    loss, auroc = train.loss_auroc(y, p)
    threshold = pipeline.operating_point(cfg, y, p, pipeline.fit_calibration(cfg, y, p), TASK)
    # the copies as stored go in, `fn` is applied to every copy and every original before scoring
    table = shift.raw_sample_agreement(result, prep, cfg, threshold, dirs, preprocess=fn)
    summary = shift.resize_summary(table, threshold, cfg.ci_level)
    out = {"variant": name, "oof_loss": loss, "oof_auroc": auroc, "threshold": threshold, "y": y, "p": p,
           "groups": groups, "table": table, "summary": summary, "balance": result.balance,
           "epoch": result.kept_epoch, "seconds": time.perf_counter() - t0}
    del result, processed
    keras.backend.clear_session()
    gc.collect()
    return out


def signed(x: float, digits: int = 4) -> str:
    """`x` with its sign, never "-0.0000"."""
    return f"{round(float(x), digits) + 0.0:+.{digits}f}"


def interval(summary: pd.DataFrame, measure: str, digits: int = 3) -> str:
    r = summary[summary["measure"] == measure].iloc[0]
    if np.isnan(r["ci_low"]):
        return f"{r['value']:+.{digits}f}"
    return f"{r['value']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"


def value(summary: pd.DataFrame, measure: str) -> float:
    return float(summary.loc[summary["measure"] == measure, "value"].iloc[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--quality", type=int, default=None,
                        help="JPEG quality of the canonical re-encode (default: the copies' own, estimated)")
    parser.add_argument("--smooth", type=float, default=None,
                        help="blur radius of the second canonical variant (default: chosen on raw-sample/)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "resize_gap",
                        help="per-image tables (CSV) go here")
    parser.add_argument("--choices-only", action="store_true",
                        help="print the quality and the blur radius that would be used, train nothing")
    parser.add_argument("--reuse", action="store_true",
                        help="take each variant's results from --out (written by an earlier run) instead of training")
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    cfg = train.resolve(Config.preset("full", source=str(zip_path), finetune_epochs=0))
    prep = data.prepare(cfg, verbose=False)
    dirs = [d for d in (raw_sample_dir(), originals_dir()) if d is not None]
    if not dirs:
        print("no raw-sample/ or originals/ beside the shared copy; nothing to measure", file=sys.stderr)
        return 1

    # 1. The choices, before any model: the copies' JPEG quality, the blur radius (image statistics only).
    train_paths = [Path(prep.root) / p for p in prep.index.loc[prep.index["split"].eq("train"), "path"]]
    qualities = estimate_qualities(train_paths)
    (q_est, exact), n_est = qualities.most_common(1)[0]
    quality = args.quality or q_est
    print(f"JPEG quality of the {len(train_paths)} training copies (luminance table): "
          + ", ".join(f"{q}{'' if e else ' (nearest)'}: {n}" for (q, e), n in qualities.most_common()))
    sources, copies, originals = original_pairs(prep, cfg, dirs)
    raw = np.array([s == "raw-sample" for s in sources])
    smooth, smooth_table = choose_smooth(quality, copies[raw], originals[raw])
    if args.smooth is not None:
        smooth = args.smooth
    print(f"blur radius for the second canonical variant: {smooth} (raw-sample/ pairs, {int(raw.sum())})\n"
          + smooth_table.round(3).to_string(index=False))

    if args.choices_only:
        return 0
    variants: list[tuple[str, Callable | None]] = [
        ("as today", None), (f"canonical JPEG q{quality}", functools.partial(canonical, quality=quality))]
    if smooth:
        variants.append((f"canonical blur {smooth:g} px + JPEG q{quality}",
                         functools.partial(canonical, quality=quality, smooth=smooth)))

    # 2. Each variant: train on its images, the OOF results, the resize check on every original.
    runs = []
    for name, fn in variants:
        print(f"\n== {name}")
        saved = args.out / f"{name.replace(' ', '_').replace('+', 'and')}.pkl"
        if args.reuse and saved.is_file():
            r = pd.read_pickle(saved)
        else:
            r = run_variant(name, fn, cfg, prep, dirs)
            r["diagnosis"] = diagnosis(fn, copies, originals)
            args.out.mkdir(parents=True, exist_ok=True)
            pd.to_pickle(r, saved)
        runs.append(r)
        print(f"OOF log-loss {r['oof_loss']:.4f}, AUROC {r['oof_auroc']:.4f}, threshold {r['threshold']:.4f} "
              f"({r['balance']}, epoch {r['epoch']}; {r['seconds']:.0f} s)")
        print(r["summary"].to_string(index=False))
        r["table"].to_csv(saved.with_suffix(".csv"), index=False)

    base = runs[0]
    n = len(base["table"])
    n_pos = int((base["table"]["label"] == "PNEUMONIA").sum())
    skipped = base["table"].attrs.get("skipped", {})
    cost_rows, gap_rows, said = [], [], []
    for r, (name, fn) in zip(runs, variants):
        s = r["summary"]
        same, change = copy_change(prep, fn)
        cost = {"variant": name, "training copies unchanged": f"{same} of {len(base['y'])}",
                "mean change, grey levels": f"{change:.3f}", "OOF log-loss": f"{r['oof_loss']:.4f}",
                "OOF AUROC": f"{r['oof_auroc']:.4f}", "AUROC vs as today": "", "threshold": f"{r['threshold']:.3f}"}
        gap = {"variant": name, "agreement (>= 0.98)": interval(s, "agreement of the calls"),
               "sensitivity, copies": interval(s, "sensitivity, copies"),
               "sensitivity, originals": interval(s, "sensitivity, originals"),
               "gap (within 0.01)": interval(s, "sensitivity difference (originals - copies)"),
               "specificity, copies": interval(s, "specificity, copies"),
               "specificity, originals": interval(s, "specificity, originals"),
               "differing calls fixed / new (McNemar p)": "",
               "edge / finest-scale ratio": f"{r['diagnosis']['sharpness_ratio']:.3f} / "
                                            f"{r['diagnosis']['high_frequency_ratio']:.3f}"}
        agree = s[s["measure"] == "agreement of the calls"].iloc[0]
        gap_value = value(s, "sensitivity difference (originals - copies)")
        met = all(bool(x) for x in s.loc[s["target"].notna(), "met"])
        text = (f"{name}: {int(round((1 - agree['value']) * n))} of {n} calls differ (agreement {agree['value']:.3f}, "
                f"its interval's lower end {agree['ci_low']:.3f} {'above' if agree['ci_low'] >= 0.98 else 'below'} "
                f"0.98), sensitivity gap {gap_value:+.3f}: "
                f"{'both targets met (point values)' if met else 'the targets not both met'}")
        if r is not base:
            d = paired.paired_auroc(base["y"], r["p"], base["p"], base["groups"], seed=cfg.seed)
            cost["AUROC vs as today"] = f"{signed(d['difference'])} [{signed(d['ci_low'])}, {signed(d['ci_high'])}]"
            m = paired.mcnemar(~base["table"]["agree"].to_numpy(bool), ~r["table"]["agree"].to_numpy(bool))
            gap["differing calls fixed / new (McNemar p)"] = f"{m['a_only']} / {m['b_only']} ({m['p_value']:.3f})"
            text += (f"; against as today {m['a_only']} differing calls fixed and {m['b_only']} new (McNemar "
                     f"p = {m['p_value']:.3f}), OOF log-loss {signed(r['oof_loss'] - base['oof_loss'])} and AUROC "
                     f"{signed(d['difference'])} [{signed(d['ci_low'])}, {signed(d['ci_high'])}]")
            if change < 0.05:
                text += (f". It leaves the training copies almost as they are ({same} of {len(base['y'])} "
                         f"byte-identical, mean change {change:.3f} grey levels): in effect it re-encodes the "
                         "originals the way the copies were encoded")
        cost_rows.append(cost)
        gap_rows.append(gap)
        said.append(text)

    def md(frame: pd.DataFrame) -> str:
        return (frame.to_markdown(index=False) if _has_tabulate()
                else "```\n" + frame.to_string(index=False) + "\n```")

    lines = [
        f"Command: `python bench/resize_gap.py`{' --quality ' + str(args.quality) if args.quality else ''}"
        f"{' --smooth ' + str(args.smooth) if args.smooth is not None else ''}. The full preset without "
        f"fine-tuning (`finetune_epochs=0`: the head on frozen ImageNet EfficientNet-Lite0 features, trained per "
        f"block fold with the run's selection rules; the committed run kept that stage), {cfg.n_folds} block "
        f"folds, {len(base['y'])} training images, each variant trained on its own processed images; the "
        f"threshold is the study's rule ({cfg.threshold_policy}, target {cfg.target_sensitivity}) on each "
        f"variant's OOF predictions. The resize check: every full-resolution original available ({n} with a copy: "
        f"{int(raw.sum())} raw-sample/, {n - int(raw.sum())} originals/; {n_pos} pneumonia; skipped: "
        f"{sum(skipped.values())}) beside its copy, both through the variant, each scored by the fold model that "
        f"never saw its child. Intervals: Wilson 95% per image; AUROC difference: paired, children resampled "
        f"(2,000); McNemar on the differing calls against as today. "
        + f"Training and scoring: {sum(r['seconds'] for r in runs):.0f} s on {os.cpu_count()} CPU cores.",
        "",
        f"Chosen before training: JPEG quality {quality} (the copies' own: {n_est} of the {len(train_paths)} "
        f"training copies carry Pillow's luminance table of quality {q_est}{'' if exact else ' (nearest)'}), and "
        f"the blur radius {smooth} px, the smallest of {list(SMOOTH_GRID)} with both median ratios (original / "
        f"copy, both re-encoded) within {MATCH_TOLERANCE} of 1 on the {int(raw.sum())} raw-sample/ pairs (image "
        f"statistics, no model):",
        "",
        md(smooth_table.round(3)),
        "",
        "What each variant costs (training images; OOF on the block folds):",
        "",
        md(pd.DataFrame(cost_rows)),
        "",
        f"The resize check ({n} originals vs their copies, at each variant's threshold; the last column: medians "
        "of `resize_diagnosis`, original / copy, over all of them):",
        "",
        md(pd.DataFrame(gap_rows)),
        "",
        "Measured:",
        "",
        *(f"- {t}." for t in said),
        "",
        "Caveat: the originals are training children (the copies of the same children trained the other folds' "
        "heads and set the threshold), so the agreement and the sensitivity gap are the measures, not the accuracy "
        "on the originals; one seed, one split of folds; the fine-tuned stage is not covered. The study applies "
        "the re-encode only when `reencode_quality` is set (in `load_image`, the image cache and `predict`); "
        "protocol version 2 leaves it off.",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        update_markdown(REPO / "doc" / "performance.md", "## Resize gap under a canonical re-encode "
                        "(`bench/resize_gap.py`, issue 25)\n\n" + text, "resize-gap", create=True)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
