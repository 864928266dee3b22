"""Forward and training speed of the EfficientNet-Lite backbones (Lite0, Lite1, Lite2), in one run; the table (with
each variant's speed as a ratio of Lite0's) goes to the `lite` block of doc/performance.md (`--no-write`: print only).

    KERAS_BACKEND=tensorflow .venv/bin/python bench/lite_speed.py [--size 224] [--batch 32] [--predict-batches 4]
        [--fit-steps 3] [--repeats 3] [--variants lite0 lite1 lite2]

For each variant, the classifier of the full preset (`cxr.model.build_model`, ImageNet weights) on random uint8
images (speed does not depend on the content), each after a warm-up call, the best of `--repeats` timings (the
machine may be shared):

- predict: `model.predict` of `--predict-batches` batches, images/s;
- fit: `--fit-steps` steps of the fine-tuning recipe with the WHOLE backbone trainable (`set_trainable(model, -1)`,
  BatchNorm frozen as in the recipe), `training_model` (XRayAugment), `finetune_optimizer` (LayerwiseAdamW),
  `jit_compile="auto"` as `cxr.train.fit`, images/s.

Parameter counts: the backbone with and without the ImageNet top (the .pth), and the classifier.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr import lite, model as cxr_model, train  # noqa: E402  (before keras: hides TensorFlow's start-up lines)
import keras  # noqa: E402
from cxr.config import Config  # noqa: E402
from cxr.io import update_markdown  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """The shortest of `repeats` wall-clock timings of `fn()`, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--predict-batches", type=int, default=4)
    parser.add_argument("--fit-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timings of each phase; the fastest is reported")
    parser.add_argument("--variants", nargs="*", default=list(lite.VARIANTS))
    parser.add_argument("--no-write", action="store_true", help="do not update doc/performance.md")
    args = parser.parse_args(argv)
    bs, size = args.batch, args.size
    rng = np.random.default_rng(0)
    rows = []
    for variant in args.variants:
        v = lite.get_variant(variant)
        cfg = Config.preset("full").replace(backbone=v.backbone, image_size=size, batch_size=bs)
        net = cxr_model.build_model(cfg)
        x = rng.integers(0, 256, (bs * args.predict_batches, size, size, 1), dtype=np.uint8)
        net.predict(x[:bs], batch_size=bs, verbose=0)  # warm-up
        predict_rate = len(x) / best_time(lambda: net.predict(x, batch_size=bs, verbose=0), args.repeats)

        cxr_model.set_trainable(net, -1)
        xt = rng.integers(0, 256, (bs * args.fit_steps, size, size), dtype=np.uint8)
        yt = rng.integers(0, 2, len(xt)).astype(np.float32)
        stream = train.TrainBatches(xt, yt, bs, seed=0)
        trainer = cxr_model.training_model(net, cfg.augment)
        trainer.compile(optimizer=train.finetune_optimizer(trainer, cfg.optimizer, 2 * len(stream)),
                        loss="binary_crossentropy", jit_compile="auto")
        trainer.fit(train.TrainBatches(xt[:bs], yt[:bs], bs, seed=1), epochs=1, verbose=0)  # warm-up: one step
        fit_rate = len(stream) * bs / best_time(lambda: trainer.fit(stream, epochs=1, verbose=0), args.repeats)

        top = lite.build_lite(v, (size, size, 3), include_top=True).count_params()
        rows.append((v.title, top, net.get_layer("backbone").count_params(), net.count_params(),
                     sum(int(np.prod(w.shape)) for w in net.trainable_weights), predict_rate, fit_rate))
        print(f"{v.title}: predict {predict_rate:.1f} images/s, fit {fit_rate:.1f} images/s", flush=True)
        del net, trainer
        keras.backend.clear_session()

    lines = [f"Command: `python bench/lite_speed.py --size {size} --batch {bs}`. {size} px, batch {bs}, Keras "
             f"{keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPU cores "
             f"({platform.processor() or platform.machine()}); random images; predict: {args.predict_batches} "
             f"batches, fit: {args.fit_steps} steps of the fine-tuning recipe with the whole backbone trainable, each "
             f"after a warm-up, best of {args.repeats}.", "",
             "| model | params with ImageNet top | backbone params | classifier params | trainable in fit "
             "| predict images/s | vs first | fit images/s | vs first |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    p0, f0 = rows[0][5], rows[0][6]
    for title, top, backbone, total, trainable, p, f in rows:
        lines.append(f"| {title} | {top:,} | {backbone:,} | {total:,} | {trainable:,} | {p:.1f} | {p / p0:.2f} "
                     f"| {f:.1f} | {f / f0:.2f} |")
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        update_markdown(REPO / "doc" / "performance.md", text, "lite", create=True)
        print(f"\nupdated {REPO / 'doc' / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
