"""WiSE-FT for the study's recipe (issue 25, item 5): interpolating the head-only and the fine-tuned weights, on the
block folds of the training children only.

    .venv/bin/python bench/wise_ft.py [--alpha 0.5] [--no-write]

The committed run of protocol version 2 kept the head stage (a logistic head on frozen ImageNet EfficientNet-Lite0
features): on the block folds the fine-tuned backbone's pooled out-of-fold (OOF) selection loss was worse. WiSE-FT
(Wortsman et al., CVPR 2022) mixes the two ends of fine-tuning, weight by weight: w = (1 - alpha) * w_head +
alpha * w_finetuned, which often keeps the robustness of the starting model under distribution shift. This script
runs the full preset's recipe once (`cxr.train.fit`: per block fold the head, then the whole backbone fine-tuned
for `finetune_epochs`), keeps every fold's weights after the head stage and after the last fine-tuning epoch (the
`HeldOut` snapshots the fit takes anyway), and scores every training image with its own fold's model that never saw
its child, for:

- the head stage (what the study kept), the fine-tuned stage at the epoch the study's rule picks and at the last
  epoch, and WiSE-FT with the mixing weight `--alpha` (0.5, fixed before the run: the paper's default middle);

by the study's criteria (`bench/tta.py`'s `criteria`: the pooled OOF selection loss after cross-fitted Platt
recalibration, log-loss, AUROC, the rule's threshold and its cross-fitted specificity, pooled and in the worst
block), with the paired AUROC difference of WiSE-FT against the head (children resampled within their class).
BatchNorm is frozen in inference mode during fine-tuning, so its statistics are the same at both ends. The official
test split is never read (its rows of the image array are zeros) nor scored. Results go to the `wise-ft` section of
doc/performance.md unless `--no-write`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cxr import data, train  # noqa: E402  (before keras: hides TF's start-up lines)
from cxr.config import Config  # noqa: E402
from cxr.evaluate import paired  # noqa: E402
from cxr.io import update_markdown  # noqa: E402
from tta import TASK, criteria, md, training_only  # noqa: E402

fit_module = importlib.import_module("cxr.train.fit")  # the module (cxr.train.fit is also a function)
HELD: list = []  # every HeldOut callback the fit creates, in order


class Recording(fit_module.HeldOut):
    """The fit's own held-out callback, registered so that its per-epoch weight snapshots can be read after."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        HELD.append(self)


def fold_scores(member, weights: list, x: np.ndarray, batch: int) -> np.ndarray:
    """Probabilities of `x` from `member` with `weights` set (the member's own weights restored after)."""
    keep = member.get_weights()
    member.set_weights(weights)
    try:
        return train.predict_proba(member, x, batch)
    finally:
        member.set_weights(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--alpha", type=float, default=0.5, help="WiSE-FT mixing weight of the fine-tuned end")
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    cfg = train.resolve(Config.preset("full", source=str(zip_path)))
    prep = data.prepare(cfg, verbose=False)
    prep = training_only(prep)
    fit_module.HeldOut = Recording
    try:
        result = train.fit(cfg, prep, TASK)
    finally:
        fit_module.HeldOut = Recording.__mro__[1]
    members = result.members
    tuned = [h for h in HELD if any(h.predictor is m for m in members)]  # the fine-tuning stage's callbacks
    if len(tuned) != len(members) or result.kept_stage != "head":
        print(f"expected one fine-tuning record per fold and the head kept; got {len(tuned)} records, kept "
              f"{result.kept_stage}", file=sys.stderr)
        return 1
    positions, folds = result.oof["position"].to_numpy(), result.oof["fold"].to_numpy()
    y = result.oof["y"].to_numpy(int)
    groups = prep.groups(positions)
    chosen = int(result.selection.loc[result.selection["stage"].eq("finetune"), "best_epoch"].iloc[0])
    kinds = {"head stage (kept by the study)": np.empty(len(y)),
             f"fine-tuned, epoch {chosen} (the stage's choice)": np.empty(len(y)),
             f"fine-tuned, last epoch ({cfg.finetune_epochs})": np.empty(len(y)),
             f"WiSE-FT, alpha {args.alpha:g} (head <-> last epoch)": np.empty(len(y))}
    for f, (member, held) in enumerate(zip(members, tuned)):
        rows = folds == f
        x = np.asarray(prep.images[positions[rows]])
        head = member.get_weights()  # the kept (head-stage) weights
        last = held.weights[-1]
        mixed = [((1 - args.alpha) * h + args.alpha * t).astype(h.dtype) if np.issubdtype(h.dtype, np.floating)
                 else t for h, t in zip(head, last)]  # state such as seed generators: the fine-tuned end's
        outs = (head, held.weights[chosen - 1] if chosen else last, last, mixed)
        for p, w in zip(kinds.values(), outs):
            p[rows] = fold_scores(member, w, x, cfg.batch_size)
    gap = float(np.max(np.abs(kinds["head stage (kept by the study)"] - result.oof["p"].to_numpy())))
    assert gap < 1e-3, f"the head rows should reproduce the study's OOF predictions (max difference {gap})"
    table = pd.DataFrame([{"OOF prediction": name, **criteria(cfg, y, p, folds)} for name, p in kinds.items()])
    wise = list(kinds.values())[-1]
    diff = paired.paired_auroc(y, wise, kinds["head stage (kept by the study)"], groups, n_bootstrap=2000,
                               ci_level=cfg.ci_level, seed=cfg.seed)
    seconds = time.perf_counter() - t0

    lines = [
        "## WiSE-FT for the recipe (`bench/wise_ft.py`, issue 25)",
        "",
        f"Command: `python bench/wise_ft.py --alpha {args.alpha:g}`. The full preset's recipe ({cfg.n_folds} block "
        f"folds, the head then the whole backbone fine-tuned for {cfg.finetune_epochs} epochs), {len(y)} training "
        f"images of {len(np.unique(groups))} children, each scored by its fold's model that never saw its child; "
        f"{seconds / 60:.0f} min on this machine. The test split is not read.",
        "",
        md(table),
        "",
        f"Paired AUROC difference, WiSE-FT minus the head stage: {diff['difference']:+.4f} "
        f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] ({diff['ci_level']:.0%}, children resampled within their "
        f"class; p = {diff['p_value']:.2f}). The head rows reproduce the study's OOF predictions (largest difference "
        f"{gap:.1e}).",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        update_markdown(REPO / "doc" / "performance.md", text, "wise-ft", create=True)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
