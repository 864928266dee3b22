"""Two-stage fine-tuning: a head on cached frozen-backbone features, then the top blocks with augmentation.

Only the rows of the `train` and `val` splits are ever read here: the test split is scored once, later, by
`cxr.pipeline.run_task`, with the threshold chosen on validation. The task table (which rows, which label) is
`cxr.config.TASKS`; rows, labels and model inputs come from `cxr.data.Prepared`.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from cxr import cpu_model, quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

from cxr.config import TASKS, Config, task as get_task  # noqa: F401  (train.TASKS: the task table)
from cxr.data import Prepared
from cxr.io import atomic_write_text
from cxr import model as cxr_model

@dataclass
class TrainResult:
    """A trained model with its history (one row per epoch, both stages) and timings."""

    model: keras.Model
    history: pd.DataFrame
    task: str
    seconds: dict[str, float] = field(default_factory=dict)
    kept_stage: str = "finetune"


def _prepared(index: pd.DataFrame, images: np.ndarray) -> Prepared:
    """An index and its images as a `Prepared` (for its rows/labels/batch accessors)."""
    return Prepared(index=index, skipped=pd.DataFrame(columns=["path", "reason"]), images=images, root=None,
                    source=None)


def balanced_class_weight(y: np.ndarray) -> dict[int, float]:
    """scikit-learn's 'balanced' class weights, as the dict `model.fit` takes."""
    classes = np.unique(y.astype(int))
    if len(classes) < 2:
        raise ValueError("training labels hold a single class; both classes are needed")
    weights = compute_class_weight("balanced", classes=classes, y=y.astype(int))
    return {int(c): float(w) for c, w in zip(classes, weights)}


def precision_policy(config: Config) -> str:
    """The Keras dtype policy a run of `config` trains with: mixed precision on a GPU when
    `config.mixed_precision` is 'auto' (mixed_bfloat16 under JAX, mixed_float16 otherwise), else float32."""
    wanted = config.mixed_precision
    if wanted == "auto":
        wanted = "on" if accelerator() != "cpu" else "off"
    if wanted == "on":
        return "mixed_bfloat16" if keras.backend.backend() == "jax" else "mixed_float16"
    return "float32"


def setup_precision(config: Config) -> str:
    """Set Keras' GLOBAL dtype policy to `precision_policy(config)` and return it. Called by `fit` where training
    starts (models built afterwards in the process use it too); nothing else in the package sets it."""
    policy = precision_policy(config)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def accelerator() -> str:
    """'gpu' or 'cpu': what the active Keras backend computes on."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        from cxr import quiet_stderr

        with quiet_stderr():  # "Could not find cuda drivers" and friends
            return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return "cpu"


def _compile(m: keras.Model, lr: float) -> None:
    m.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auroc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def _callbacks(config: Config) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_auroc", mode="max", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_auroc", mode="max", factor=0.3, patience=max(1, config.patience // 2), min_lr=1e-6
        ),
    ]


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities of the positive class for (n, S, S) or (n, S, S, 1) uint8 images."""
    x = images if images.ndim == 4 else images[..., None]
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype="float64").reshape(-1)


def fit(
    config: Config,
    index: pd.DataFrame,
    images: np.ndarray,
    task: str = "pneumonia",
    verbose: int = 0,
) -> TrainResult:
    """Train `task` ('pneumonia' or 'subtype') on the train split, selecting on the val split only.

    Stage 1 trains the head on backbone features computed once (no augmentation), which keeps CPU runs
    practical. Stage 2 unfreezes the top `config.finetune_blocks` blocks (BatchNorm stays in inference mode)
    and trains end to end with augmentation at `config.finetune_lr`. Early stopping and learning-rate
    reduction follow validation AUROC; the best weights are kept, and stage 2 is rolled back if it did not
    beat stage 1 on validation.
    """
    get_task(task)  # a clear error for an unknown task
    keras.utils.set_random_seed(config.seed)
    setup_precision(config)  # the global dtype policy is set here, where training starts, and left set
    data = _prepared(index, images)
    tr, va = data.rows("train", task), data.rows("val", task)
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"task {task!r} needs train and val rows; got {len(tr)} and {len(va)}")
    y_tr, y_va = data.labels(task, tr), data.labels(task, va)
    if len(np.unique(y_va)) < 2:
        raise ValueError(f"task {task!r}: the validation split holds a single class; AUROC is undefined")
    weights = balanced_class_weight(y_tr)
    x_tr, x_va = data.batch(tr), data.batch(va)
    model = cxr_model.build_model(config, name=task)
    seconds: dict[str, float] = {}

    # Stage 1: head on frozen features, computed once.
    t0 = time.perf_counter()
    features = cxr_model.feature_model(model)
    f_tr = features.predict(x_tr, batch_size=config.batch_size, verbose=0)
    f_va = features.predict(x_va, batch_size=config.batch_size, verbose=0)
    seconds["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    head = cxr_model.head_model(model)
    _compile(head, config.head_lr)
    h1 = head.fit(
        f_tr, y_tr, validation_data=(f_va, y_va), epochs=config.head_epochs, batch_size=config.batch_size,
        class_weight=weights, callbacks=_callbacks(config), verbose=verbose,
    )
    seconds["head"] = time.perf_counter() - t0
    history = pd.DataFrame(h1.history).assign(stage="head")
    stage1_auroc = float(max(h1.history["val_auroc"]))
    kept = "head"

    # Stage 2: fine-tune the top blocks with augmentation.
    if config.finetune_epochs > 0 and config.finetune_blocks > 0:
        stage1_weights = model.get_weights()
        cxr_model.set_trainable(model, config.finetune_blocks)
        _compile(model, config.finetune_lr)
        t0 = time.perf_counter()
        h2 = model.fit(
            x_tr, y_tr, validation_data=(x_va, y_va), epochs=config.finetune_epochs,
            batch_size=config.batch_size, class_weight=weights, callbacks=_callbacks(config), verbose=verbose,
        )
        seconds["finetune"] = time.perf_counter() - t0
        history = pd.concat([history, pd.DataFrame(h2.history).assign(stage="finetune")], ignore_index=True)
        if max(h2.history["val_auroc"]) >= stage1_auroc:
            kept = "finetune"
        else:
            model.set_weights(stage1_weights)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return TrainResult(model=model, history=history, task=task, seconds=seconds, kept_stage=kept)


def environment() -> dict[str, Any]:
    """Versions and hardware of this run, for the record."""
    import sys

    import PIL
    import scipy
    import sklearn

    versions = {
        "python": sys.version.split()[0], "keras": keras.__version__, "numpy": np.__version__,
        "pandas": pd.__version__, "scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
        "pillow": PIL.__version__,
    }
    backend = keras.backend.backend()
    for name in {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(backend, []):
        versions[name] = __import__(name).__version__
    return {
        "backend": backend, "accelerator": accelerator(), "gpu": _gpu_name(),
        "platform": platform.platform(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def _gpu_name() -> str | None:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return gpus[0].device_kind if gpus else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
    except Exception:  # a record, not a requirement
        return None
    return None


def record(result: TrainResult, config: Config, path: str | os.PathLike) -> dict[str, Any]:
    """Write the run record (configuration, environment, history, timings) as JSON, atomically."""
    doc = {
        "task": result.task, "config": config.to_dict(), "environment": environment(),
        "seconds": result.seconds, "kept_stage": result.kept_stage,
        "history": json.loads(result.history.to_json(orient="records")),
    }
    atomic_write_text(path, json.dumps(doc, indent=2))
    return doc


def predict_split(model: keras.Model, index: pd.DataFrame, images: np.ndarray, task: str, split: str,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, labels, probabilities) of `task` on one split."""
    data = _prepared(index, images)
    positions = data.rows(split, task)
    probs = predict_proba(model, data.batch(positions), batch_size=batch_size)
    return positions, data.labels(task, positions), probs


def validation_threshold(model: keras.Model, config: Config, index: pd.DataFrame, images: np.ndarray,
                         task: str) -> float:
    """The decision threshold of `task`, chosen on the validation split by `config.threshold_policy`."""
    from cxr.evaluate import choose

    _, y_val, p_val = predict_split(model, index, images, task, "val", config.batch_size)
    return choose(y_val, p_val, config.threshold_policy, tolerance=config.threshold_tolerance,
                  target_sensitivity=config.target_sensitivity)
