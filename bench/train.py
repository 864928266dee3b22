"""Benchmark of the training recipe's throughput, in one run on one machine.

    .venv/bin/python bench/train.py [--images 256] [--no-write]
    KERAS_BACKEND=jax python bench/train.py      # e.g. on a GPU machine (also counts XLA compilations)

On `--images` training images of the 224-px shared copy, with EfficientNet-Lite0 (ImageNet weights) at 224 px and
the run's own batch size and dtype policy (`cxr.train.batch_size`, `cxr.train.precision_policy`: batch 32 and
float32 on a CPU, 128 per GPU and mixed_bfloat16 on a GPU), it times, each after a warm-up pass:

- prediction: `cxr.train.predict_proba` (fixed-shape batches, last one padded), images/s;
- today's fine-tuning step before issue 12 (baseline): the top 2 blocks unfrozen, the old augmentation (Keras
  RandomRotation/Zoom/Translation/Contrast/Brightness layers), Adam, a plain `model.fit` on the uint8 array;
- the new fine-tuning step: the WHOLE backbone unfrozen (BatchNorm frozen), `cxr.model.training_model`
  (XRayAugment), `LayerwiseAdamW` on warmup + cosine, full batches from `cxr.train.TrainBatches`.

Images per second count training images seen. Under JAX the number of XLA compilations of each phase is counted.
From the measured rates it estimates the fine-tuning time of the full notebook (both tasks, the full preset's
epochs, with the validation predict after every epoch). Results go to the `train` section of doc/performance.md.
"""
from __future__ import annotations

import argparse
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

from cxr import data, model as cxr_model, train  # noqa: E402  (before keras: hides TensorFlow's start-up lines)
import keras  # noqa: E402
from cxr.config import Config  # noqa: E402
from cxr.io import atomic_write_text  # noqa: E402
from prepare import _has_tabulate  # noqa: E402

BEGIN, END = "<!-- train -->", "<!-- /train -->"
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


def old_training_model(model: keras.Model) -> keras.Model:
    """The model as trained before issue 12: Keras Random* augmentation layers between to_float and to_backbone."""
    layers = keras.layers
    aug = keras.Sequential([layers.RandomRotation(0.03, fill_mode="constant", seed=1),
                            layers.RandomZoom(0.1, fill_mode="constant", seed=2),
                            layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=3),
                            layers.RandomContrast(0.1, value_range=(0, 255), seed=4),
                            layers.RandomBrightness(0.1, value_range=(0, 255), seed=5)], name="augment")
    inputs = keras.Input(model.input.shape[1:], dtype="uint8", name="image")
    x = aug(model.get_layer("to_float")(inputs))
    for name in cxr_model.LAYER_ORDER[2:]:
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x, name="old_train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=256, help="training images timed")
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    counting = count_compiles()
    cfg = Config.preset("full", source=str(zip_path))
    policy = train.setup_precision(cfg)
    dist = train.data_parallel()
    from cxr import distribute

    n_dev = distribute.device_count(dist)
    bs = train.batch_size(cfg, n_dev)
    env = train.environment()
    hardware = env["gpu"] or f"CPU, {os.cpu_count()} cores ({env['processor']})"

    prep = data.prepare(cfg, verbose=False)
    rows = prep.rows("train", "pneumonia")
    rows = np.sort(np.random.default_rng(0).choice(rows, size=min(args.images, len(rows)), replace=False))
    n = len(rows) // bs * bs
    rows = rows[:n]
    y = prep.labels("pneumonia", rows)
    x = np.ascontiguousarray(prep.images[rows])
    results = []

    with distribute.distributed(dist):
        net = cxr_model.build_model(cfg)
        train.predict_proba(net, x[:bs], bs)  # warm up (compiles)
        t, c = timed(lambda: train.predict_proba(net, x, bs))
        results.append({"step": "prediction (inference model, padded batches)", "seconds": t, "images/s": n / t,
                        "compilations": c})
        predict_rate = n / t

        # Baseline: today's step (top 2 blocks, Random* augmentation, Adam, plain fit on the array).
        cxr_model.set_trainable(net, 2)
        old = old_training_model(net)
        old.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy", jit_compile="auto")
        old.fit(x[:, :, :, None], y, batch_size=bs, epochs=1, verbose=0)
        t_old, c = timed(lambda: old.fit(x[:, :, :, None], y, batch_size=bs, epochs=1, verbose=0))
        results.append({"step": "baseline: top 2 blocks, Random* layers, Adam, plain fit", "seconds": t_old,
                        "images/s": n / t_old, "compilations": c})

        # New: XRayAugment, LayerwiseAdamW + warmup-cosine, full batches; top 2 blocks (same work as the
        # baseline: the pipeline's own cost), then the whole backbone (the recipe).
        stream = train.TrainBatches(x, y, bs, seed=0)
        for blocks, label in ((2, "new pipeline, top 2 blocks (same work as the baseline)"),
                              (cfg.finetune_blocks, "new recipe: whole backbone, XRayAugment, LayerwiseAdamW")):
            cxr_model.set_trainable(net, blocks)
            trainer = cxr_model.training_model(net, cfg)
            trainer.compile(optimizer=train.finetune_optimizer(trainer, cfg, 2 * len(stream)),
                            loss="binary_crossentropy", jit_compile="auto")
            trainer.fit(stream, epochs=1, verbose=0)
            t_new, c = timed(lambda: trainer.fit(stream, epochs=1, verbose=0))
            results.append({"step": label, "seconds": t_new, "images/s": n / t_new, "compilations": c})
        jit = {"baseline": bool(old.jit_compile), "new": bool(trainer.jit_compile), "predict": bool(net.jit_compile)}

    table = pd.DataFrame(results)
    table["vs baseline"] = table["images/s"] / (n / t_old)
    table.loc[0, "vs baseline"] = np.nan
    if not counting:
        table = table.drop(columns="compilations")
    table = table.round({"seconds": 1, "images/s": 1, "vs baseline": 2})

    # Fine-tuning time of the full notebook from the measured rates (images per task from the shared data).
    train_rate = n / t_new
    estimate = []
    for task in ("pneumonia", "subtype"):
        n_tr, n_va = len(prep.rows("train", task)), len(prep.rows("val", task))
        features = (n_tr + n_va) / predict_rate
        finetune = cfg.finetune_epochs * (n_tr / train_rate + n_va / predict_rate)
        estimate.append({"task": task, "train": n_tr, "val": n_va, "features s": round(features),
                         f"fine-tune s ({cfg.finetune_epochs} epochs)": round(finetune)})
    est = pd.DataFrame(estimate)
    total = float(est.iloc[:, 3:].to_numpy().sum())

    def md(frame: pd.DataFrame) -> str:
        return (frame.to_markdown(index=False) if _has_tabulate()
                else "```\n" + frame.to_string(index=False) + "\n```")

    backend = keras.backend.backend()
    lines = [
        f"### {backend} backend on {hardware}",
        "",
        f"Command: `{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}python bench/train.py "
        f"--images {args.images}`. EfficientNet-Lite0 (ImageNet), {cfg.image_size} px, batch {bs} on {n_dev} "
        f"device(s), {n} training images, dtype policy {policy}, jit_compile resolved to {jit}, Keras "
        f"{keras.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k in ("tensorflow", "jax", "jaxlib", "torch"))
        + f", Python {platform.python_version()}. One timed epoch after a warm-up epoch, each step.",
        "",
        md(table),
        "",
        f"Estimated training time of the full notebook from these rates (backbone features once + "
        f"{cfg.finetune_epochs} fine-tuning epochs with a validation predict after each; the head stage on cached "
        f"features adds seconds): **{total / 60:.1f} min** for both tasks.",
        "",
        md(est),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        write_subsection(REPO / "doc" / "performance.md", backend, env["gpu"] is not None, text)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


def write_subsection(path: Path, backend: str, gpu: bool, text: str) -> None:
    """Replace this (backend, CPU/GPU) measurement inside the `train` section, keeping the others."""
    key = f"<!-- train:{backend}:{'gpu' if gpu else 'cpu'} -->"
    old = path.read_text() if path.is_file() else "# Performance\n"
    if BEGIN not in old or END not in old:
        old = old.rstrip() + f"\n\n{BEGIN}\n## Training throughput (`bench/train.py`)\n\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    parts = body.split(key)
    if len(parts) == 3:  # an earlier measurement of the same kind: replace it
        body = parts[0] + key + "\n" + text.rstrip() + "\n" + key + parts[2]
    else:
        body = body.rstrip() + f"\n\n{key}\n{text.rstrip()}\n{key}\n"
    atomic_write_text(path, head + BEGIN + body + END + tail)


if __name__ == "__main__":
    sys.exit(main())
