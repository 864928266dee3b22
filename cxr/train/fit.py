"""The training recipe: a head on cached frozen-backbone features, then the whole backbone fine-tuned with
augmentation, each stage selected on validation log-loss.

Only the rows of the `train` and `val` splits are ever read here: the test split is scored once, later, by
`cxr.pipeline.run_task`, with the threshold chosen on validation. The task table (which rows, which label) is
`cxr.config.TASKS`; rows, labels and model inputs come from `cxr.data.Prepared`.

Stage 1 (head): the backbone's pooled features are computed once (no augmentation) and the dropout + logit head
trains on them with Adam at `head_lr`, early stopping on validation log-loss. `class_balance="auto"` trains the
head three times from the same start (class weights, balanced sampling, none) and keeps the option with the lowest
validation log-loss, for both stages.

Stage 2 (fine-tune): the top `finetune_blocks` blocks (-1: the whole backbone) with BatchNorm frozen, behind the
augmentation layer (`cxr.model.training_model`), `cxr.optim.LayerwiseAdamW` (decoupled weight decay, learning
rate decayed by `layer_decay` per block below the top) on `cxr.optim.warmup_cosine` over the stage.

Selection (the same rule for both stages): validation log-loss and AUROC (scikit-learn, on a padded predict of the
validation images) are computed after every epoch; each stage restores the weights of its epoch of lowest
validation log-loss; the fine-tuned stage is kept only if its best validation log-loss is lower than the head's,
otherwise the model is rolled back to the head. Every step has one fixed batch shape (`cxr.train.batches`), models
are compiled with `jit_compile="auto"` (XLA under JAX; TensorFlow on a CPU stays without it, which is faster
there), the dtype policy is mixed_bfloat16 on a GPU and float32 on a CPU, and several accelerators train data
parallel (`cxr.distribute`, JAX).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from cxr import distribute, model as cxr_model, optim, progress
from cxr.config import TASKS, Config, task as get_task  # noqa: F401  (train.TASKS: the task table)
from cxr.data import Prepared
from cxr.io import atomic_write_text
from cxr.train.batches import TrainBatches, balanced_class_weight, padded_predict, predict_proba
from cxr.train.device import (batch_size as auto_batch_size, data_parallel, environment, precision_policy,
                              precision_scope)

BALANCE_OPTIONS = ("weights", "sampling", "none")


@dataclass
class TrainResult:
    """A trained model with its history and the validation evidence behind it.

    history: one row per epoch of every stage run (columns epoch, stage, loss, auroc (train), val_loss,
    val_auroc, lr). selection: one row per stage (stage, epochs, best_epoch, val_loss, val_auroc at the best
    epoch, kept). class_balance: one row per imbalance option tried on the head stage (option, epochs,
    best_epoch, val_loss, val_auroc, chosen). seconds: wall time of features, head, finetune.
    """

    model: keras.Model
    history: pd.DataFrame
    task: str
    seconds: dict[str, float] = field(default_factory=dict)
    kept_stage: str = "finetune"
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_balance: pd.DataFrame = field(default_factory=pd.DataFrame)
    balance: str = "none"  # the imbalance option used for both stages
    batch_size: int = 32
    precision: str = "float32"
    devices: int = 1


def _prepared(index: pd.DataFrame, images: np.ndarray) -> Prepared:
    """An index and its images as a `Prepared` (for its rows/labels/batch accessors)."""
    return Prepared(index=index, skipped=pd.DataFrame(columns=["path", "reason"]), images=images, root=None,
                    source=None)


class ValidationMetrics(keras.callbacks.Callback):
    """After every epoch: val_loss (log-loss) and val_auroc of `predictor` on (x, y), from a padded predict, put
    into the epoch logs (so that the callbacks after it, and the History, see them), with the learning rate."""

    def __init__(self, predictor: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int):
        super().__init__()
        self.predictor, self.x, self.y, self.batch_size = predictor, x, np.asarray(y, int), batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        p = np.asarray(padded_predict(self.predictor, self.x, self.batch_size), "float64").reshape(-1)
        if logs is not None:
            if np.isfinite(p).all():  # a diverged model (NaN outputs) gets an infinite loss, never the best
                p = np.clip(p, 1e-7, 1 - 1e-7)
                logs["val_loss"] = float(log_loss(self.y, p, labels=[0, 1]))
                logs["val_auroc"] = float(roc_auc_score(self.y, p))
            else:
                logs["val_loss"], logs["val_auroc"] = float("inf"), float("nan")
            lr = self.model.optimizer.learning_rate
            logs["lr"] = float(keras.ops.convert_to_numpy(lr))


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of `target` at the epoch of lowest `logs[monitor]` and restores them when training ends."""

    def __init__(self, target: keras.Model, monitor: str = "val_loss"):
        super().__init__()
        self.target, self.monitor = target, monitor
        self.best, self.best_epoch, self.weights = np.inf, -1, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor, np.inf)
        if value < self.best:
            self.best, self.best_epoch, self.weights = value, epoch, self.target.get_weights()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.weights is not None:
            self.target.set_weights(self.weights)


def _run_stage(train_model: keras.Model, predictor: keras.Model, keep: keras.Model, data: TrainBatches,
               x_va: np.ndarray, y_va: np.ndarray, batch: int, epochs: int, patience: int | None,
               verbose: int, desc: str = "training") -> tuple[pd.DataFrame, int]:
    """`train_model.fit` for up to `epochs` epochs with validation metrics of `predictor`, early stopping on
    val_loss after `patience` epochs without improvement (None: never), and the best epoch's weights of `keep`
    restored. Returns (history with a 1-based `epoch` column, best epoch, 1-based)."""
    best = BestEpoch(keep)
    callbacks: list[keras.callbacks.Callback] = [ValidationMetrics(predictor, x_va, y_va, batch), best]
    if patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience))
    if not verbose:  # a live bar in interactive sessions only (none in headless runs, CI or saved notebooks)
        callbacks += progress.keras_callbacks(desc)
    h = train_model.fit(data, epochs=epochs, callbacks=callbacks, verbose=verbose)
    history = pd.DataFrame(h.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return history, best.best_epoch + 1


def _summary(history: pd.DataFrame, best_epoch: int) -> dict[str, Any]:
    if best_epoch < 1:  # no epoch with a finite validation loss
        return {"epochs": len(history), "best_epoch": 0, "val_loss": float("inf"), "val_auroc": float("nan")}
    row = history.iloc[best_epoch - 1]
    return {"epochs": len(history), "best_epoch": int(best_epoch), "val_loss": float(row["val_loss"]),
            "val_auroc": float(row["val_auroc"])}


def _batches(x, y, batch: int, balance: str, seed: int) -> TrainBatches:
    weights = balanced_class_weight(y) if balance == "weights" else None
    return TrainBatches(x, y, batch, class_weight=weights, balance=balance == "sampling", seed=seed)


def _train_head(model: keras.Model, config: Config, f_tr, y_tr, f_va, y_va, batch: int, balance: str,
                verbose: int) -> tuple[pd.DataFrame, int]:
    head = cxr_model.head_model(model)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate=config.head_lr), loss="binary_crossentropy",
                 metrics=[keras.metrics.AUC(name="auroc")], jit_compile="auto")
    return _run_stage(head, head, head, _batches(f_tr, y_tr, batch, balance, config.seed), f_va, y_va, batch,
                      config.head_epochs, config.patience, verbose, desc=f"head ({balance})")


def finetune_optimizer(model: keras.Model, config: Config, steps: int) -> optim.LayerwiseAdamW:
    """AdamW with layer-wise learning-rate decay on warmup + cosine over `steps` optimizer steps."""
    warmup = min(int(round(config.warmup_fraction * steps)), steps - 1)
    opt = optim.LayerwiseAdamW(
        multipliers=optim.layerwise_multipliers(model, config.layer_decay),
        learning_rate=optim.warmup_cosine(config.finetune_lr, steps, warmup, config.final_lr_fraction),
        weight_decay=config.weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def fit(config: Config, index: pd.DataFrame, images: np.ndarray, task: str = "pneumonia",
        verbose: int = 0) -> TrainResult:
    """Train `task` ('pneumonia' or 'subtype') on the train split, selecting on the val split only (see the
    module docstring for the recipe). The dtype policy is set for the run and restored afterwards."""
    get_task(task)  # a clear error for an unknown task
    data = _prepared(index, images)
    tr, va = data.rows("train", task), data.rows("val", task)
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"task {task!r} needs train and val rows; got {len(tr)} and {len(va)}")
    y_tr, y_va = data.labels(task, tr), data.labels(task, va)
    if len(np.unique(y_va)) < 2:
        raise ValueError(f"task {task!r}: the validation split holds a single class; log-loss/AUROC undefined")
    balanced_class_weight(y_tr)  # a clear error for single-class training labels
    dist = data_parallel()
    batch = auto_batch_size(config, distribute.device_count(dist))
    with precision_scope(precision_policy(config)) as policy, distribute.distributed(dist):
        keras.utils.set_random_seed(config.seed)
        result = _fit(config, data, tr, va, y_tr, y_va, task, batch, verbose)
    result.precision, result.devices = policy, distribute.device_count(dist)
    return result


def _fit(config: Config, data: Prepared, tr, va, y_tr, y_va, task: str, batch: int, verbose: int) -> TrainResult:
    x_tr, x_va = data.images[tr], data.images[va]  # (n, S, S) uint8; batches add the channel axis
    model = cxr_model.build_model(config, name=task)
    seconds: dict[str, float] = {}

    # Stage 1: head on frozen features, computed once.
    t0 = time.perf_counter()
    features = cxr_model.feature_model(model)
    f_tr, f_va = (padded_predict(features, x, batch, desc=f"{task} / backbone features ({part})").astype("float32")
                  for x, part in ((x_tr, "train"), (x_va, "val")))  # bf16 on a GPU
    seconds["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    start = model.get_layer("logit").get_weights()
    options = BALANCE_OPTIONS if config.class_balance == "auto" else (config.class_balance,)
    tried, heads = [], {}
    for option in options:
        model.get_layer("logit").set_weights(start)
        keras.utils.set_random_seed(config.seed)
        history, best = _train_head(model, config, f_tr, y_tr, f_va, y_va, batch, option, verbose)
        tried.append({"option": option, **_summary(history, best)})
        heads[option] = (model.get_layer("logit").get_weights(), history, best)
    table = pd.DataFrame(tried)
    balance = str(table.loc[table["val_loss"].idxmin(), "option"])
    table["chosen"] = table["option"].eq(balance)
    logit, history, best_head = heads[balance]
    model.get_layer("logit").set_weights(logit)
    seconds["head"] = time.perf_counter() - t0
    history = history.assign(stage="head")
    stages = [{"stage": "head", **_summary(history, best_head)}]
    kept = "head"

    # Stage 2: fine-tune the backbone behind the augmentation layer.
    if config.finetune_epochs > 0 and config.finetune_blocks != 0:
        head_weights = model.get_weights()
        cxr_model.set_trainable(model, config.finetune_blocks)
        trainer = cxr_model.training_model(model, config)
        stream = _batches(x_tr, y_tr, batch, balance, config.seed + 1)
        trainer.compile(optimizer=finetune_optimizer(trainer, config, len(stream) * config.finetune_epochs),
                        loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auroc")], jit_compile="auto")
        t0 = time.perf_counter()
        h2, best_ft = _run_stage(trainer, model, model, stream, x_va, y_va, batch, config.finetune_epochs, None,
                                 verbose, desc="fine-tune")
        seconds["finetune"] = time.perf_counter() - t0
        stages.append({"stage": "finetune", **_summary(h2, best_ft)})
        history = pd.concat([history, h2.assign(stage="finetune")], ignore_index=True)
        if stages[1]["val_loss"] < stages[0]["val_loss"]:
            kept = "finetune"  # BestEpoch already restored its best epoch
        else:
            model.set_weights(head_weights)
        cxr_model.set_trainable(model, 0)
    selection = pd.DataFrame(stages)
    selection["kept"] = selection["stage"].eq(kept)
    history = history[["epoch", "stage"] + [c for c in history.columns if c not in ("epoch", "stage")]]
    return TrainResult(model=model, history=history, task=task, seconds=seconds, kept_stage=kept,
                       selection=selection, class_balance=table, balance=balance, batch_size=batch)


def record(result: TrainResult, config: Config, path: str | os.PathLike) -> dict[str, Any]:
    """Write the run record (configuration, environment, history, selection, timings) as JSON, atomically."""
    def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:  # strict JSON: inf (a diverged stage) -> null
        return json.loads(frame.replace([np.inf, -np.inf], np.nan).to_json(orient="records"))

    doc = {
        "task": result.task, "config": config.to_dict(), "environment": environment(),
        "seconds": result.seconds, "kept_stage": result.kept_stage, "class_balance_used": result.balance,
        "batch_size": result.batch_size, "precision": result.precision, "devices": result.devices,
        "selection": rows(result.selection), "class_balance": rows(result.class_balance),
        "history": rows(result.history),
    }
    atomic_write_text(path, json.dumps(doc, indent=2))
    return doc


def predict_split(model: keras.Model, index: pd.DataFrame, images: np.ndarray, task: str, split: str,
                  batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, labels, probabilities) of `task` on one split (fixed-shape batches, padding dropped)."""
    data = _prepared(index, images)
    positions = data.rows(split, task)
    probs = predict_proba(model, data.images[positions], batch_size=batch_size)
    return positions, data.labels(task, positions), probs


def validation_threshold(model: keras.Model, config: Config, index: pd.DataFrame, images: np.ndarray,
                         task: str) -> float:
    """The decision threshold of `task`, chosen on the validation split by `config.threshold_policy`."""
    from cxr.evaluate import choose

    _, y_val, p_val = predict_split(model, index, images, task, "val", config.batch_size)
    return choose(y_val, p_val, config.threshold_policy, tolerance=config.threshold_tolerance,
                  target_sensitivity=config.target_sensitivity)
