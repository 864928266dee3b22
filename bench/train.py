"""Benchmark of training throughput: the project's pipeline against a file-based baseline, in one run.

    .venv/bin/python bench/train.py [--images 256] [--head-epochs 10] [--no-write]
    KERAS_BACKEND=jax python bench/train.py      # e.g. on a GPU machine

Both sides train the same EfficientNet-Lite0 model (ImageNet weights, 224 px, batch 32) on the same `--images`
training images of the 224-px shared copy:

- stage 1 (head on the frozen backbone, `--head-epochs` epochs):
  ours = backbone features computed once from the uint8 cache, then the head trained on them (`cxr.train.fit`'s
  stage 1); baseline = the whole model with the backbone frozen, fed by a `keras.utils.PyDataset` that decodes
  the JPEG files with Pillow every epoch (what `image_dataset_from_directory` does, without tf.data, so the same
  baseline runs on every backend);
- stage 2 (top 2 blocks unfrozen, augmentation on, one epoch after a warm-up epoch):
  ours = `model.fit` on the cached uint8 array; baseline = the same model fed from the JPEG files.

Images per second count training images seen (epochs x images). Results go to the `train` section of
doc/performance.md, with the hardware (CPU or GPU) they were measured on.
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
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cxr import data, model as cxr_model, train  # noqa: E402  (before keras: hides TensorFlow's start-up lines)
import keras  # noqa: E402
from cxr.config import Config  # noqa: E402
from cxr.io import atomic_write_text  # noqa: E402
from prepare import _has_tabulate  # noqa: E402

BEGIN, END = "<!-- train -->", "<!-- /train -->"


class JpegFiles(keras.utils.PyDataset):
    """Batches of (uint8 image, label) decoded from JPEG files with Pillow at every epoch (the baseline)."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.paths, self.labels, self.size, self.batch_size = paths, labels, size, batch_size

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, i: int):
        rows = range(i * self.batch_size, min(len(self.paths), (i + 1) * self.batch_size))
        x = np.stack([np.asarray(Image.open(self.paths[r]).convert("L").resize((self.size, self.size),
                                                                              Image.Resampling.BILINEAR))
                      for r in rows])[..., None]
        return x, self.labels[list(rows)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=256, help="training images used by both sides")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    zip_path = args.shared / data.SHARED_ZIP_NAME
    if not zip_path.is_file():
        print(f"{zip_path} not found; nothing to measure", file=sys.stderr)
        return 1
    cfg = Config.preset("full", source=str(zip_path), mixed_precision="auto")
    policy = train.setup_precision(cfg)
    env = train.environment()
    hardware = env["gpu"] or f"CPU, {os.cpu_count()} cores ({env['processor']})"

    prep = data.prepare(cfg, verbose=False)
    rows = np.flatnonzero(prep.index["split"].eq("train").to_numpy())
    rows = np.sort(np.random.default_rng(0).choice(rows, size=min(args.images, len(rows)), replace=False))
    n = len(rows)
    y = (prep.index["label"].to_numpy()[rows] == "PNEUMONIA").astype("float32")
    x = np.ascontiguousarray(prep.images[rows])[..., None]
    paths = [prep.root / p for p in prep.index["path"].to_numpy()[rows]]
    bs, e1 = cfg.batch_size, args.head_epochs
    results = []

    # Stage 1, ours: features once + head epochs.
    net = cxr_model.build_model(cfg)
    features = cxr_model.feature_model(net)
    head = cxr_model.head_model(net)
    train._compile(head, cfg.head_lr)
    features.predict(x[:bs], batch_size=bs, verbose=0)  # compile / warm up
    t_feat = timed(lambda: features.predict(x, batch_size=bs, verbose=0))
    f = features.predict(x, batch_size=bs, verbose=0)
    head.fit(f, y, epochs=1, batch_size=bs, verbose=0)  # warm up
    t_head = timed(lambda: head.fit(f, y, epochs=e1, batch_size=bs, verbose=0))
    ours1 = t_feat + t_head

    # Stage 1, baseline: frozen backbone + head fed from JPEG files every epoch.
    base = cxr_model.build_model(cfg)
    cxr_model.set_trainable(base, 0)
    base.get_layer("augment").trainable = False
    train._compile(base, cfg.head_lr)
    files = JpegFiles(paths, y, cfg.image_size, bs)
    base.fit(JpegFiles(paths[:bs], y[:bs], cfg.image_size, bs), epochs=1, verbose=0)  # warm up
    base1 = timed(lambda: base.fit(files, epochs=e1, verbose=0))
    results.append({"stage": f"1: head, {e1} epochs", "method": "baseline: frozen model fed from JPEG files",
                    "seconds": base1, "images/s": n * e1 / base1, "speed-up": 1.0})
    results.append({"stage": f"1: head, {e1} epochs", "method": "ours: features once from the cache, then the head",
                    "seconds": ours1, "images/s": n * e1 / ours1, "speed-up": base1 / ours1})

    # Stage 2: top 2 blocks + augmentation, one timed epoch after a warm-up epoch, each side.
    cxr_model.set_trainable(net, cfg.finetune_blocks)
    train._compile(net, cfg.finetune_lr)
    net.fit(x, y, epochs=1, batch_size=bs, verbose=0)
    ours2 = timed(lambda: net.fit(x, y, epochs=1, batch_size=bs, verbose=0))
    base2_model = cxr_model.build_model(cfg)
    cxr_model.set_trainable(base2_model, cfg.finetune_blocks)
    train._compile(base2_model, cfg.finetune_lr)
    base2_model.fit(files, epochs=1, verbose=0)
    base2 = timed(lambda: base2_model.fit(files, epochs=1, verbose=0))
    results.append({"stage": f"2: fine-tune top {cfg.finetune_blocks} blocks, 1 epoch",
                    "method": "baseline: model fed from JPEG files", "seconds": base2, "images/s": n / base2,
                    "speed-up": 1.0})
    results.append({"stage": f"2: fine-tune top {cfg.finetune_blocks} blocks, 1 epoch",
                    "method": "ours: model fed from the uint8 cache", "seconds": ours2, "images/s": n / ours2,
                    "speed-up": base2 / ours2})

    table = pd.DataFrame(results).round({"seconds": 1, "images/s": 1, "speed-up": 2})
    backend = keras.backend.backend()
    lines = [
        f"### {backend} backend on {hardware}",
        "",
        f"Command: `{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}python bench/train.py "
        f"--images {args.images} --head-epochs {e1}`. EfficientNet-Lite0 (ImageNet), {cfg.image_size} px, batch "
        f"{bs}, {n} training images, dtype policy {policy}, Keras {keras.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k in ("tensorflow", "jax", "jaxlib", "torch"))
        + f", Python {platform.python_version()}.",
        "",
        table.to_markdown(index=False) if _has_tabulate() else "```\n" + table.to_string(index=False) + "\n```",
        "",
        f"Stage-1 detail (ours): features {t_feat:.1f} s ({n / t_feat:.1f} images/s of backbone inference), "
        f"head {t_head:.2f} s for {e1} epochs.",
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
