"""Benchmark of the REAL fold loop against the bare fine-tuning step, in one run on one machine (issue 25).

    .venv/bin/python bench/fold_loop.py [--images 1024] [--fold-images 1600] [--rounds 2] [--no-write]

`bench/train.py` times one bare fine-tuning step; the study's fold loop (`cxr.train.fit`) adds to it what a real
fold does. This script adds those parts one at a time to the bare step, each row a warm-up epoch and then timed
epochs (taken round-robin over the rows, so that a change in the machine's load hits every row alike; the fastest
kept) on the same `--images` training images of the 224-px shared copy (EfficientNet-Lite0, ImageNet weights, the
full preset's batch size), so that each row's ratio to the first says what that part costs:

1. the bare step (`bench/train.py`'s baseline: float32, no metric, no resampling path, corners not masked);
2. + the AUROC metric that `cxr.train.fit` compiles into every trainer;
3. + the resampling path (`aug_resample`, drawn in numpy/Pillow in `TrainBatches`, serially with the step);
4. + the masked marker corners (`marker_zones`, the model's first layer);
5. + the held-out fold's prediction after the epoch (`HeldOut`, a quarter of the images at 4 folds);

and then times one fold of `cxr.train.fit` itself (`_fit` with one fold, the full preset's recipe, 2 fine-tuning
epochs): the backbone features, the head stage on them, and the fine-tuning epochs (the first of which builds and
traces the trainer), with the time spent drawing batches and predicting the held-out fold counted inside it.
Results go to the `fold-loop` section of doc/performance.md (`cxr.io.update_markdown`).
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cxr import augment, data, model as cxr_model, train  # noqa: E402  (before keras: hides TF's start-up lines)
import keras  # noqa: E402
from cxr.config import Config  # noqa: E402
from cxr.io import update_markdown  # noqa: E402
import importlib  # noqa: E402

batches_module = importlib.import_module("cxr.train.batches")  # the modules (cxr.train.fit is also a function)
fit_module = importlib.import_module("cxr.train.fit")
from prepare import _has_tabulate  # noqa: E402

PARTS = (  # (label, AUROC metric, resampling path, masked corners, held-out prediction)
    ("1. bare fine-tuning step (bench/train.py baseline)", False, False, False, False),
    ("2. + AUROC metric in the trainer", True, False, False, False),
    ("3. + resampling path in the batches", True, True, False, False),
    ("4. + masked marker corners", True, True, True, False),
    ("5. + held-out fold predicted after the epoch", True, True, True, True),
)


class Timer:
    """Seconds spent inside a wrapped function, summed (for TrainBatches.__getitem__ and HeldOut.on_epoch_end)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return inner


def build_part(cfg: Config, x, y, held_x, held_y, metric: bool, resample: bool, masked: bool, held: bool):
    """The trainer, batches and callbacks of one row of PARTS, after a warm-up epoch (which traces the step)."""
    cfg = cfg.replace(marker_zones=masked)
    keras.utils.set_random_seed(cfg.seed)
    net = cxr_model.build_model(cfg)
    cxr_model.set_trainable(net, cfg.finetune_blocks)
    trainer = cxr_model.training_model(net, cfg.augment)
    augment_fn = (functools.partial(augment.resample_batch, probability=cfg.aug_resample) if resample else None)
    stream = train.TrainBatches(x, y, cfg.batch_size, seed=0, augment=augment_fn)
    trainer.compile(optimizer=train.finetune_optimizer(trainer, cfg.optimizer, 8 * len(stream)),
                    loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auroc")] if metric else None,
                    jit_compile="auto")
    callbacks = [fit_module.HeldOut(net, held_x, held_y, cfg.batch_size)] if held else []
    trainer.fit(stream, epochs=1, verbose=0, callbacks=callbacks)
    return trainer, stream, callbacks


def timed_epoch(trainer, stream, callbacks) -> dict[str, float]:
    """Seconds of one more epoch (and of its batch drawing)."""
    draw = Timer()
    original = type(stream).__getitem__
    type(stream).__getitem__ = draw.wrap(original)
    try:
        start = time.perf_counter()
        trainer.fit(stream, epochs=1, verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - start
    finally:
        type(stream).__getitem__ = original
    return {"seconds": seconds, "drawing batches s": draw.seconds}


def one_fold(cfg: Config, prep: data.Prepared, rows: np.ndarray) -> dict[str, float]:
    """One fold of `cxr.train.fit` (its `_fit` with folds=[0]) on `rows`, 4 folds as assigned: its stage seconds,
    and the seconds spent drawing batches and predicting the held-out fold inside it."""
    y = prep.labels("pneumonia", rows)
    fold = prep.folds(rows)
    draw, held = Timer(), Timer()
    get, end = batches_module.TrainBatches.__getitem__, fit_module.HeldOut.on_epoch_end
    batches_module.TrainBatches.__getitem__ = draw.wrap(get)
    fit_module.HeldOut.on_epoch_end = held.wrap(end)
    try:
        start = time.perf_counter()
        result = fit_module._fit(cfg, prep, "pneumonia", rows, y, fold, [0], verbose=0)
        total = time.perf_counter() - start
    finally:
        batches_module.TrainBatches.__getitem__, fit_module.HeldOut.on_epoch_end = get, end
    trained = int((fold != 0).sum()) // cfg.batch_size * cfg.batch_size * cfg.finetune_epochs
    return {"total s": total, **{f"{k} s": v for k, v in result.seconds.items()},
            "drawing batches s (head + fine-tuning)": draw.seconds, "held-out predictions s": held.seconds,
            "fine-tuned images": trained, "held-out images": int((fold == 0).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=1024, help="training images timed per epoch")
    parser.add_argument("--fold-images", type=int, default=1600, help="training children's images in the fold run")
    parser.add_argument("--rounds", type=int, default=2, help="timed epochs per row, round-robin; the best kept")
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    cfg = train.resolve(Config.preset("full", source=str(zip_path), finetune_epochs=2))
    env = train.environment()
    hardware = env["gpu"] or f"CPU, {os.cpu_count()} cores ({env['processor']})"
    prep = data.prepare(cfg, verbose=False)
    train_rows = prep.rows("train", "pneumonia")
    rng = np.random.default_rng(0)
    order = rng.permutation(train_rows)
    bs = cfg.batch_size
    n = args.images // bs * bs
    held_n = n // 3  # a quarter of the fold's images, as at 4 folds
    timed_rows, held_rows = np.sort(order[:n]), np.sort(order[n:n + held_n])
    x, y = np.ascontiguousarray(prep.images[timed_rows]), prep.labels("pneumonia", timed_rows)
    held_x = np.ascontiguousarray(prep.images[held_rows])
    held_y = prep.labels("pneumonia", held_rows).astype(int)

    built = [build_part(cfg, x, y, held_x, held_y, *flags) for _, *flags in PARTS]
    best: list[dict[str, float]] = [{} for _ in PARTS]
    for _ in range(args.rounds):  # round-robin, so that a change in the machine's load hits every row alike
        for k, parts in enumerate(built):
            found = timed_epoch(*parts)
            if not best[k] or found["seconds"] < best[k]["seconds"]:
                best[k] = found
            print(PARTS[k][0], found, flush=True)
    rows = [{"fine-tuning epoch": label, "seconds": b["seconds"], "images/s": n / b["seconds"],
             "drawing batches s": b["drawing batches s"]} for (label, *_), b in zip(PARTS, best)]
    del built
    table = pd.DataFrame(rows)
    table["vs bare step"] = table["images/s"] / table.loc[0, "images/s"]

    children = prep.index.loc[train_rows, "patient_id"].to_numpy()
    chosen = set(rng.choice(np.unique(children), size=len(np.unique(children)), replace=False)
                 [: max(8, int(len(np.unique(children)) * args.fold_images / len(train_rows)))])
    fold_rows = np.sort(train_rows[np.isin(children, list(chosen))])
    fold = one_fold(cfg, prep, fold_rows)
    print(fold, flush=True)
    ft_rate = fold["fine-tuned images"] / max(fold.get("finetune s", np.nan) - fold["held-out predictions s"]
                                              + 0.0, 1e-9)
    fold_table = pd.DataFrame([{"part of one fold": k, "value": round(v, 1) if isinstance(v, float) else v}
                               for k, v in fold.items()])
    table = table.round({"seconds": 1, "images/s": 1, "drawing batches s": 1, "vs bare step": 2})

    def md(frame: pd.DataFrame) -> str:
        return (frame.to_markdown(index=False) if _has_tabulate()
                else "```\n" + frame.to_string(index=False) + "\n```")

    backend = keras.backend.backend()
    lines = [
        f"### {backend} backend on {hardware}",
        "",
        f"Command: `python bench/fold_loop.py --images {args.images} --fold-images {args.fold_images} "
        f"--rounds {args.rounds}`. "
        f"EfficientNet-Lite0 (ImageNet), {cfg.image_size} px, batch {bs}, {n} training images per timed epoch "
        f"({held_n} held out), Keras {keras.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k in ("tensorflow", "jax", "jaxlib", "torch"))
        + f", Python {platform.python_version()}. Each row: a warm-up epoch, then {args.rounds} timed epochs taken "
        "round-robin over the rows (the fastest kept), the parts added one at a time.",
        "",
        md(table),
        "",
        f"One fold of `cxr.train.fit` on {len(fold_rows)} training images (the full preset's recipe, "
        f"{cfg.finetune_epochs} fine-tuning epochs; the first builds and traces the trainer): fine-tuning at "
        f"**{ft_rate:.1f} images/s** without the held-out predictions.",
        "",
        md(fold_table),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        marker = f"fold-loop:{backend}:{'gpu' if env['gpu'] else 'cpu'}"
        update_markdown(REPO / "doc" / "performance.md", text, marker, create=True)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
