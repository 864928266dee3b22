"""Benchmark of the training recipe's throughput and precision, in one run on one machine.

    .venv/bin/python bench/train.py [--images 256] [--no-write]
    KERAS_BACKEND=jax python bench/train.py      # e.g. on a GPU machine (also counts XLA compilations)

On `--images` training images of the 224-px shared copy, with EfficientNet-Lite0 (ImageNet weights) at 224 px and
the run's resolved batch size (`cxr.train.resolve`), it times, each after a warm-up epoch:

- prediction: `cxr.train.predict_proba` (fixed-shape batches, last one padded), images/s;
- the fine-tuning step of the recipe (the whole backbone, `training_model`, `LayerwiseAdamW`) in float32 without
  the resampling path (the BASELINE), with the resampling path (`aug_resample` 0.5: what it costs), and in
  mixed_bfloat16 (does bfloat16 buy time on this machine?);
- after each timed epoch, the model's log-loss and AUROC on `--held-out` other training images, so that a
  precision that buys time but changes the numbers shows it (the runs start from the same weights and draw the same
  batches).

From the measured rates it estimates the training time of the full notebook (both tasks, the full preset's folds,
epochs and fine-tuned tasks). Results go to the `train` section of doc/performance.md (`cxr.io.update_markdown`).
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
from prepare import _has_tabulate  # noqa: E402

COMPILES: list[str] = []


def count_compiles() -> bool:
    """Count XLA compilations (JAX only): True when counting."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            COMPILES.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return True


def timed(fn) -> tuple[float, int]:
    """(seconds, XLA compilations) of `fn()`."""
    before, start = len(COMPILES), time.perf_counter()
    fn()
    return time.perf_counter() - start, len(COMPILES) - before


def fine_tune_epoch(cfg: Config, start: list, x, y, held_x, held_y, policy: str, resample: float):
    """One warm-up and one timed fine-tuning epoch of the recipe from the weights `start`: (seconds, XLA
    compilations, held-out log-loss, held-out AUROC)."""
    with train.precision_scope(policy):
        keras.utils.set_random_seed(cfg.seed)
        net = cxr_model.build_model(cfg)
        net.set_weights(start)
        cxr_model.set_trainable(net, cfg.finetune_blocks)
        trainer = cxr_model.training_model(net, cfg.augment)
        augment_fn = functools.partial(augment.resample_batch, probability=resample) if resample else None
        stream = train.TrainBatches(x, y, cfg.batch_size, seed=0, augment=augment_fn)
        trainer.compile(optimizer=train.finetune_optimizer(trainer, cfg.optimizer, 2 * len(stream)),
                        loss="binary_crossentropy", jit_compile="auto")
        trainer.fit(stream, epochs=1, verbose=0)
        seconds, compiles = timed(lambda: trainer.fit(stream, epochs=1, verbose=0))
        p = train.predict_proba(net, held_x, cfg.batch_size)
    return seconds, compiles, *train.loss_auroc(held_y, p)


def estimate(cfg: Config, prep: data.Prepared, predict_rate: float, train_rate: float) -> pd.DataFrame:
    """Training time of the full notebook from the measured rates: per task, the backbone features once, and in
    each fold `finetune_epochs` epochs on the other folds with a prediction of the held-out fold after each."""
    rows = []
    for task in ("pneumonia", "subtype"):
        n = len(prep.rows("train", task))
        k = cfg.n_folds
        features = n / predict_rate
        finetune = (k * cfg.finetune_epochs * (n * (k - 1) / k / train_rate + n / k / predict_rate)
                    if task in cfg.finetune_tasks else 0.0)
        test = k * len(prep.rows("test", task)) / predict_rate
        rows.append({"task": task, "training images": n, "folds": k, "features s": round(features),
                     f"fine-tuning s ({cfg.finetune_epochs} epochs x {k} folds)": round(finetune),
                     "test scoring s (the ensemble)": round(test)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=256, help="training images timed")
    parser.add_argument("--held-out", type=int, default=256, help="other training images scored after each run")
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    counting = count_compiles()
    cfg = train.resolve(Config.preset("full", source=str(zip_path)))
    env = train.environment()
    hardware = env["gpu"] or f"CPU, {os.cpu_count()} cores ({env['processor']})"
    prep = data.prepare(cfg, verbose=False)
    rows = np.random.default_rng(0).permutation(prep.rows("train", "pneumonia"))
    bs = cfg.batch_size
    n = min(args.images, len(rows) - args.held_out) // bs * bs
    timed_rows, held_rows = np.sort(rows[:n]), np.sort(rows[n:n + args.held_out])
    x, y = np.ascontiguousarray(prep.images[timed_rows]), prep.labels("pneumonia", timed_rows)
    held_x, held_y = np.ascontiguousarray(prep.images[held_rows]), prep.labels("pneumonia", held_rows).astype(int)

    net = cxr_model.build_model(cfg)
    start = net.get_weights()
    train.predict_proba(net, x[:bs], bs)  # warm up (compiles)
    t, c = timed(lambda: train.predict_proba(net, x, bs))
    results = [{"step": "prediction (inference model, padded batches)", "seconds": t, "images/s": n / t,
                "compilations": c}]
    predict_rate = n / t
    runs = (("baseline: fine-tuning step, float32, no resampling path", "float32", 0.0),
            ("fine-tuning step with the resampling path (aug_resample 0.5)", "float32", 0.5),
            ("fine-tuning step in mixed_bfloat16", "mixed_bfloat16", 0.0))
    for label, policy, resample in runs:
        seconds, compiles, loss, auroc = fine_tune_epoch(cfg, start, x, y, held_x, held_y, policy, resample)
        results.append({"step": label, "seconds": seconds, "images/s": n / seconds, "compilations": compiles,
                        "held-out log-loss": loss, "held-out AUROC": auroc})
    table = pd.DataFrame(results)
    base = table.loc[1, "images/s"]
    table["vs baseline"] = table["images/s"] / base
    table.loc[0, "vs baseline"] = np.nan
    if not counting:
        table = table.drop(columns="compilations")
    table = table.round({"seconds": 1, "images/s": 1, "vs baseline": 2, "held-out log-loss": 4,
                         "held-out AUROC": 4})
    train_rate = float(table.loc[2, "images/s"]) if cfg.aug_resample else float(base)
    est = estimate(cfg, prep, predict_rate, train_rate)
    total = float(est.iloc[:, 3:].to_numpy().sum())

    def md(frame: pd.DataFrame) -> str:
        return (frame.to_markdown(index=False) if _has_tabulate()
                else "```\n" + frame.to_string(index=False) + "\n```")

    backend = keras.backend.backend()
    lines = [
        f"### {backend} backend on {hardware}",
        "",
        f"Command: `{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}python bench/train.py "
        f"--images {args.images}`. EfficientNet-Lite0 (ImageNet), {cfg.image_size} px, batch {bs}, {n} training "
        f"images timed, {len(held_rows)} other training images scored after each run (the same start and the same "
        f"batches), Keras {keras.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k in ("tensorflow", "jax", "jaxlib", "torch"))
        + f", Python {platform.python_version()}. One timed epoch after a warm-up epoch, each step.",
        "",
        md(table),
        "",
        f"Estimated training time of the full notebook from these rates (the full preset: {cfg.n_folds} folds, "
        f"{cfg.finetune_epochs} fine-tuning epochs for {', '.join(cfg.finetune_tasks)}; the head stages on cached "
        f"features, the checks and the figures add a few minutes): **{total / 60:.1f} min**.",
        "",
        md(est),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        marker = f"train:{backend}:{'gpu' if env['gpu'] else 'cpu'}"
        update_markdown(REPO / "doc" / "performance.md", text, marker, create=True)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
