"""Is test-time augmentation (TTA) worth it for the kept recipe (issue 25, item 5)? On training children only.

    .venv/bin/python bench/tta.py [--no-write]

The committed run of protocol version 2 kept the head stage: a logistic head on frozen ImageNet EfficientNet-Lite0
features, per block fold. This experiment trains exactly that (the full preset with `finetune_epochs=0`:
`cxr.train.fit` with the run's selection rules) once, then scores every training image with the fold model that
never saw its child, on the image as it is and on fixed views of it, and compares the mean probability over the
views ("TTA") with the image alone, by the study's own criteria on the block folds:

- the selection loss (`cxr.train.fit.selection_loss`: pooled OOF log-loss after cross-fitted Platt recalibration)
  and the raw OOF log-loss and AUROC, with the paired AUROC difference (`cxr.evaluate.paired.paired_auroc`,
  children resampled within their class);
- the operating point chosen on each kind of OOF prediction (`cxr.pipeline.operating_point`, the sensitivity
  rule), its OOF specificity, and the rule cross-fitted over the block folds (`evaluate.threshold.cross_fitted`:
  chosen on three folds, applied to the fourth), pooled and in the worst block, which is the transfer the test asks
  for.

The views are fixed before any score is seen: central zooms of 1.05 and 1.10 (a crop of the central 1/z of the
image, resized back with the project's resize). Zooms IN only, so that the burned-in stamp in a corner moves
outwards (further into the masked corner zones or out of the frame), never into the unmasked image; no flips (the
chest is not left-right symmetric) and no rotations (they would move a corner stamp out of its masked zone).
The official test split is never read (its rows of the image array are zeros) nor scored. Results go to the `tta`
section of doc/performance.md (`cxr.io.update_markdown`) unless `--no-write`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cxr import data, pipeline, train  # noqa: E402  (before keras: hides TF's start-up lines)
from cxr.config import Config  # noqa: E402
from cxr.data.images import resize  # noqa: E402
from cxr.evaluate import paired, threshold as thresholds  # noqa: E402
from cxr.io import update_markdown  # noqa: E402
from cxr.train.fit import selection_loss  # noqa: E402
from prepare import _has_tabulate  # noqa: E402

TASK = "pneumonia"
ZOOMS = (1.05, 1.10)  # the TTA views besides the image itself, fixed before any score was seen


def training_only(prep: data.Prepared) -> data.Prepared:
    """`prep` with the test rows of its image array set to zeros, so that nothing here can read a test image."""
    images = np.zeros(prep.images.shape, np.uint8)
    train_rows = np.flatnonzero(prep.index["split"].eq("train").to_numpy())
    images[train_rows] = prep.images[train_rows]
    return dataclasses.replace(prep, images=images)


def md(frame: pd.DataFrame) -> str:
    """A results table as Markdown (plain text when tabulate is missing)."""
    return (frame.to_markdown(index=False, floatfmt=".4f") if _has_tabulate()
            else "```\n" + frame.to_string(index=False) + "\n```")


def zoom(images: np.ndarray, factor: float) -> np.ndarray:
    """A central zoom of each uint8 (n, S, S) image: the central S/factor square, resized back to S x S with the
    project's resize (`cxr.data.images.resize`, squash)."""
    n, size = images.shape[0], images.shape[1]
    side = size / factor
    box = tuple(round(v) for v in ((size - side) / 2, (size - side) / 2, (size + side) / 2, (size + side) / 2))
    out = np.empty_like(images)
    for i in range(n):
        out[i] = resize(Image.fromarray(images[i]).crop(box), size, "squash")
    return out


def oof_views(result: train.TrainResult, prep: data.Prepared, cfg: Config) -> dict[str, np.ndarray]:
    """Per view, every training image's probability from the fold model that never saw its child (OOF order)."""
    positions = result.oof["position"].to_numpy()
    folds = result.oof["fold"].to_numpy()
    views = {"image": None, **{f"zoom {z:.2f}": z for z in ZOOMS}}
    out: dict[str, np.ndarray] = {}
    for name, factor in views.items():
        p = np.empty(len(positions))
        for f, member in enumerate(result.members):
            held = folds == f
            x = np.asarray(prep.images[positions[held]])
            p[held] = train.predict_proba(member, x if factor is None else zoom(x, factor), cfg.batch_size)
        out[name] = p
    return out


def criteria(cfg: Config, y: np.ndarray, p: np.ndarray, fold: np.ndarray) -> dict[str, float]:
    """The study's criteria on one kind of OOF prediction: selection loss, log-loss, AUROC, the rule's threshold
    and OOF specificity, and the cross-fitted specificity (pooled and in the worst block)."""
    loss, auroc = train.loss_auroc(y, p)

    def rule(yy: np.ndarray, pp: np.ndarray) -> float:
        return pipeline.operating_point(cfg, yy, pp, pipeline.fit_calibration(cfg, yy, pp), TASK)

    t = rule(y, p)
    crossed = thresholds.cross_fitted(y, p, fold, rule)
    per_fold = crossed[crossed["fold"] != "pooled"]
    pooled = crossed[crossed["fold"] == "pooled"].iloc[0]
    return {"selection loss": selection_loss(y, p, fold, cfg.calibration), "log-loss": loss, "AUROC": auroc,
            "threshold": t, "OOF sensitivity": float((p[y == 1] >= t).mean()),
            "OOF specificity": float(1 - (p[y == 0] >= t).mean()),
            "cross-fitted sensitivity": float(pooled["sensitivity"]),
            "cross-fitted specificity": float(pooled["specificity"]),
            "worst block's cross-fitted specificity": float(per_fold["specificity"].min())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    cfg = train.resolve(Config.preset("full", source=str(zip_path), finetune_epochs=0))
    prep = data.prepare(cfg, verbose=False)
    prep = training_only(prep)
    result = train.fit(cfg, prep, TASK)
    y, fold = result.oof["y"].to_numpy(int), result.oof["fold"].to_numpy()
    groups = prep.groups(result.oof["position"].to_numpy())
    views = oof_views(result, prep, cfg)
    gap = float(np.max(np.abs(views["image"] - result.oof["p"].to_numpy())))
    assert gap < 1e-3, f"the image view should reproduce the study's OOF predictions (max difference {gap})"
    tta = np.mean(np.stack(list(views.values())), axis=0)
    kinds = {"the image alone (the study)": views["image"],
             **{f"{k} alone": v for k, v in views.items() if k != "image"},
             f"TTA: mean of the image and zooms {', '.join(f'{z:.2f}' for z in ZOOMS)}": tta}
    rows = [{"OOF prediction": name, **criteria(cfg, y, p, fold)} for name, p in kinds.items()]
    table = pd.DataFrame(rows)
    diff = paired.paired_auroc(y, tta, views["image"], groups, n_bootstrap=2000, ci_level=cfg.ci_level,
                               seed=cfg.seed)
    seconds = time.perf_counter() - t0

    lines = [
        "## Test-time augmentation for the kept recipe (`bench/tta.py`, issue 25)",
        "",
        f"Command: `python bench/tta.py`. The head on frozen EfficientNet-Lite0 features (the full preset with "
        f"`finetune_epochs=0`: the stage the committed run kept), {cfg.n_folds} block folds, {len(y)} training "
        f"images of {len(np.unique(groups))} children, each scored by the fold model that never saw its child; "
        f"views fixed before any score was seen: the image and central zooms {', '.join(f'{z:.2f}' for z in ZOOMS)}. "
        f"{seconds / 60:.0f} min on this machine. The test split is not read.",
        "",
        md(table),
        "",
        f"Paired AUROC difference, TTA minus the image alone: {diff['difference']:+.4f} "
        f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] ({diff['ci_level']:.0%}, children resampled within their "
        f"class; p = {diff['p_value']:.2f}). The image view reproduces the study's OOF predictions (largest "
        f"difference {gap:.1e}).",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        update_markdown(REPO / "doc" / "performance.md", text, "tta", create=True)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
