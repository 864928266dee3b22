"""The training recipe, cross-validated over the training children, and the fold ensemble it gives.

The training children are split into k patient-grouped folds (`cxr.data.split`). For every fold f, a model is
trained on the other folds and scores fold f after every epoch, so every training image gets an OUT-OF-FOLD
(OOF) probability from a model that never saw its child. Every choice is made on the POOLED OOF predictions of
all k folds (about all training images, instead of one small validation split), by their log-loss after the
calibration the model ships with (`calibration`), CROSS-FITTED: fold f's predictions recalibrated by a
calibrator fitted on the other folds' (so an over-confident stage that ranks well is not penalised for what the
calibration removes, and no prediction is recalibrated with its own label; raw log-loss with calibration "none"):

Stage 1 (head): the ImageNet backbone's pooled features are computed once for every training image (no
augmentation; the same for all folds) and the dropout + logit head trains on them with Adam at `head_lr`, for
`head_epochs` epochs in each fold. `class_balance="auto"` trains it three times from the same start (class
weights, balanced sampling, none). The option and the epoch with the lowest pooled OOF log-loss are kept.

Stage 2 (fine-tune): in each fold, the model with that fold's head is fine-tuned, the whole backbone (or the top
`finetune_blocks` blocks) with BatchNorm frozen (for the tasks of `finetune_tasks`; the others keep the head), behind the augmentation (`cxr.model.training_model`, and the
resampling path of `cxr.augment.resample_batch` where batches are drawn), with `cxr.optim.LayerwiseAdamW` on
warmup + cosine over `finetune_epochs` epochs. The epoch with the lowest pooled OOF log-loss is the stage's best.

Stage 3 (WiSE-FT, when `wise_ft_alpha` is set; protocol version 3): in each fold, the weights with the head (the
start of stage 2) and those after the last fine-tuning epoch are mixed weight by weight, (1 - alpha) * start +
alpha * end (`interpolate_weights`; Wortsman et al., CVPR 2022: robust fine-tuning of zero-shot models), alpha fixed
in advance, and the mixed model scores its held-out fold. Of the three stages (head, fine-tuned at its best epoch,
WiSE-FT), the one with the lowest pooled OOF selection loss is kept (a tie keeps the earlier stage), and every fold
model is set to that stage's weights.

The final model is the ENSEMBLE of the k fold models at the kept stage and epoch: the mean of their probabilities
(`cxr.model.ensemble_model`), saved and loaded as one model. Its OOF predictions are those of its members, each on
the fold it never saw. Only the rows of the `train` split are ever read here: the test split is scored once per
task in a run, later, by `cxr.pipeline`. Every step has one fixed batch shape (`cxr.train.batches`), models are compiled with
`jit_compile="auto"`, and the dtype policy and batch size come resolved in the Config (`cxr.train.resolve`).
"""
from __future__ import annotations

import functools
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from cxr import augment, distribute, model as cxr_model, optim, progress
from cxr.config import PRIMARY_TASK, Config, OptimizerSettings, task as get_task
from cxr.data import Prepared
from cxr.io import write_json
from cxr.train.batches import TrainBatches, balanced_class_weight, padded_predict, predict_proba
from cxr.train.device import environment, precision_policy, precision_scope

BALANCE_OPTIONS = ("weights", "sampling", "none")
STAGES = ("head", "finetune", "wise-ft")  # in the order a tie is broken: the earlier stage kept


@dataclass
class TrainResult:
    """The fold ensemble of a task, its members, and the out-of-fold evidence behind every choice.

    oof: one row per training image of the task: position (into `Prepared.index`), fold, y, p (the OOF probability
    at the kept stage and epoch). history: one row per (fold, stage, epoch): loss and auroc on the fold's training
    part, oof_loss and oof_auroc on its held-out fold, lr. pooled: one row per (stage, option, epoch): the pooled
    OOF log-loss (raw), the selection loss (`selection_loss`: cross-fitted recalibrated) and AUROC over all folds
    (what the choices read). selection: one row per stage: epochs, best_epoch, selection_loss, oof_loss,
    oof_auroc, kept. class_balance: one row per imbalance option tried on the head stage. stage_oof: each stage's
    OOF probabilities at its best epoch (in the order of `oof`). seconds: wall time of features, head, finetune.
    kept_stage: one of `STAGES`; kept_epoch: the head's or fine-tuning's epoch (for WiSE-FT, the fine-tuning epoch
    mixed with the head: the last).
    """

    model: keras.Model
    members: list[keras.Model]
    task: str
    oof: pd.DataFrame
    history: pd.DataFrame
    pooled: pd.DataFrame
    selection: pd.DataFrame
    class_balance: pd.DataFrame
    stage_oof: dict[str, np.ndarray] = field(default_factory=dict)  # each stage's OOF at its best epoch
    balance: str = "none"
    kept_stage: str = "finetune"
    kept_epoch: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32
    precision: str = "float32"
    devices: int = 1

    @property
    def n_folds(self) -> int:
        return len(self.members)


class HeldOut(keras.callbacks.Callback):
    """After every epoch: the held-out fold's probabilities from `predictor` (a padded predict), their log-loss and
    AUROC put into the epoch logs (oof_loss, oof_auroc, with the learning rate), and `snapshot()` (weights)."""

    def __init__(self, predictor: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int,
                 snapshot: Callable[[], list] | None = None):
        super().__init__()
        self.predictor, self.x, self.y, self.batch_size = predictor, x, np.asarray(y, int), batch_size
        self.snapshot = snapshot
        self.probs: list[np.ndarray] = []
        self.weights: list[list] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        p = np.asarray(padded_predict(self.predictor, self.x, self.batch_size), "float64").reshape(-1)
        self.probs.append(p)
        if self.snapshot is not None:
            self.weights.append(self.snapshot())
        if logs is not None:
            logs["oof_loss"], logs["oof_auroc"] = loss_auroc(self.y, p)
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def loss_auroc(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(log-loss, AUROC) of probabilities; (inf, NaN) for a diverged model (non-finite outputs), AUROC NaN for a
    single class."""
    if not np.isfinite(p).all():
        return float("inf"), float("nan")
    p = np.clip(p, 1e-7, 1 - 1e-7)
    auroc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return float(log_loss(y, p, labels=[0, 1])), auroc


def _batches(x, y, batch: int, balance: str, seed: int, augment_fn=None) -> TrainBatches:
    weights = balanced_class_weight(y) if balance == "weights" else None
    return TrainBatches(x, y, batch, class_weight=weights, balance=balance == "sampling", seed=seed,
                        augment=augment_fn)


def finetune_optimizer(model: keras.Model, settings: OptimizerSettings, steps: int) -> optim.LayerwiseAdamW:
    """AdamW with layer-wise learning-rate decay on warmup + cosine over `steps` optimizer steps, as a run's
    optimizer section (`Config.optimizer`) says."""
    warmup = min(int(round(settings.warmup_fraction * steps)), steps - 1)
    opt = optim.LayerwiseAdamW(
        multipliers=optim.layerwise_multipliers(model, settings.layer_decay),
        learning_rate=optim.warmup_cosine(settings.finetune_lr, steps, warmup, settings.final_lr_fraction),
        weight_decay=settings.weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def interpolate_weights(start: list, end: list, alpha: float) -> list:
    """WiSE-FT: every floating-point weight array (1 - alpha) * start + alpha * end, in its dtype; any other state
    (seed generators, counters) from `end`. `start` and `end` are `model.get_weights()` lists of one model."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha!r}")
    if len(start) != len(end):
        raise ValueError(f"the two weight lists differ in length ({len(start)} vs {len(end)})")
    out = []
    for a, b in zip(start, end):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"weight shapes differ: {a.shape} vs {b.shape}")
        out.append(((1.0 - alpha) * a + alpha * b).astype(b.dtype) if np.issubdtype(b.dtype, np.floating) else b)
    return out


def _fit_stage(trainer: keras.Model, data: TrainBatches, held_out: HeldOut, epochs: int, verbose: int,
               desc: str) -> pd.DataFrame:
    """`trainer.fit` for `epochs` epochs with the held-out callback; the history with a 1-based `epoch` column."""
    callbacks: list[keras.callbacks.Callback] = [held_out]
    if not verbose:  # a live bar in interactive sessions only (none in headless runs, CI or saved notebooks)
        callbacks += progress.keras_callbacks(desc)
    h = trainer.fit(data, epochs=epochs, callbacks=callbacks, verbose=verbose)
    history = pd.DataFrame(h.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return history


def _pooled(y: np.ndarray, fold: np.ndarray, probs: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
    """Per epoch, the OOF probability of every training row: fold f's rows from fold f's model."""
    n_epochs = min(len(v) for v in probs.values())
    out = []
    for e in range(n_epochs):
        p = np.full(len(y), np.nan)
        for f, per_epoch in probs.items():
            p[fold == f] = per_epoch[e]
        out.append(p)
    return out


def selection_loss(y: np.ndarray, p: np.ndarray, fold: np.ndarray, calibration: str) -> float:
    """The pooled out-of-fold log-loss the choices read: with a calibration method, CROSS-FITTED (fold f's
    probabilities recalibrated by the calibrator of `calibration` fitted on the other folds'); raw with "none".
    Infinite for a diverged model."""
    if calibration == "none" or not np.isfinite(p).all():
        return loss_auroc(y, p)[0]
    from cxr.evaluate.calibration import apply_calibrator, fit_calibrator

    q = np.empty(len(p))
    for f in np.unique(fold):
        held = fold == f
        q[held] = apply_calibrator(fit_calibrator(y[~held], p[~held], calibration), p[held])
    return loss_auroc(y, q)[0]


def _curve(y: np.ndarray, fold: np.ndarray, pooled: list[np.ndarray], stage: str, option: str,
           calibration: str) -> pd.DataFrame:
    rows = [{"stage": stage, "option": option, "epoch": e + 1,
             "selection_loss": selection_loss(y, p, fold, calibration),
             **dict(zip(("oof_loss", "oof_auroc"), loss_auroc(y, p)))}
            for e, p in enumerate(pooled)]
    return pd.DataFrame(rows)


def _row(stage: str, epochs: int, epoch: int, curve: pd.DataFrame) -> dict[str, Any]:
    r = curve[curve["epoch"] == epoch].iloc[0]
    return {"stage": stage, "epochs": epochs, "best_epoch": epoch, "selection_loss": float(r["selection_loss"]),
            "oof_loss": float(r["oof_loss"]), "oof_auroc": float(r["oof_auroc"])}


def fit(config: Config, prepared: Prepared, task: str = PRIMARY_TASK, verbose: int = 0) -> TrainResult:
    """Train `task` by cross-validation over the training children (see the module docstring): the fold ensemble,
    its members and the out-of-fold evidence. `config` must be resolved (`cxr.train.resolve`: an explicit batch
    size and dtype policy); the dtype policy is set for the run and restored afterwards."""
    get_task(task)  # a clear error for an unknown task
    if config.batch_size is None:
        raise ValueError("fit needs a resolved Config (cxr.train.resolve(config)): batch_size is None")
    rows = prepared.rows("train", task)
    y, fold = prepared.labels(task, rows), prepared.folds(rows)
    folds = sorted(set(fold.tolist()))
    if len(folds) < 2:
        raise ValueError(f"task {task!r} needs at least 2 folds of training rows; got {folds}")
    balanced_class_weight(y)  # a clear error for single-class training labels
    dist = distribute.data_parallel()
    with precision_scope(precision_policy(config)) as policy, distribute.distributed(dist):
        keras.utils.set_random_seed(config.seed)
        result = _fit(config, prepared, task, rows, y, fold, folds, verbose)
    result.precision, result.devices = policy, distribute.device_count(dist)
    return result


def _fit(config: Config, prepared: Prepared, task: str, rows: np.ndarray, y: np.ndarray, fold: np.ndarray,
         folds: list[int], verbose: int) -> TrainResult:
    batch = int(config.batch_size)
    x = prepared.images[rows]  # (n, S, S) uint8; batches add the channel axis
    seconds: dict[str, float] = {}
    history: list[pd.DataFrame] = []

    # Stage 1: the head on frozen ImageNet features, computed once for every training image.
    t0 = time.perf_counter()
    base = cxr_model.build_model(config, name=task)
    features = padded_predict(cxr_model.feature_model(base), x, batch,
                              desc=f"{task} / backbone features").astype("float32")  # bf16 on a GPU
    seconds["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    logit = base.get_layer("logit")
    start = logit.get_weights()
    options = BALANCE_OPTIONS if config.class_balance == "auto" else (config.class_balance,)
    head_probs: dict[str, dict[int, list[np.ndarray]]] = {}
    head_weights: dict[str, dict[int, list[list]]] = {}
    curves = []
    for option in options:
        head_probs[option], head_weights[option] = {}, {}
        for f in folds:
            tr, va = fold != f, fold == f
            logit.set_weights(start)
            keras.utils.set_random_seed(config.seed + f)
            head = cxr_model.head_model(base)
            head.compile(optimizer=keras.optimizers.Adam(learning_rate=config.head_lr), loss="binary_crossentropy",
                         metrics=[keras.metrics.AUC(name="auroc")], jit_compile="auto")
            held = HeldOut(head, features[va], y[va], batch, snapshot=logit.get_weights)
            h = _fit_stage(head, _batches(features[tr], y[tr], batch, option, config.seed + f), held,
                           config.head_epochs, verbose, desc=f"{task} / fold {f} / head ({option})")
            history.append(h.assign(fold=f, stage="head", option=option))
            head_probs[option][f], head_weights[option][f] = held.probs, held.weights
        curves.append(_curve(y, fold, _pooled(y, fold, head_probs[option]), "head", option, config.calibration))
    head_curve = pd.concat(curves, ignore_index=True)
    best = head_curve.loc[head_curve["selection_loss"].idxmin()]
    balance, head_epoch = str(best["option"]), int(best["epoch"])
    table = (head_curve.loc[head_curve.groupby("option", sort=False)["selection_loss"].idxmin()]
             .rename(columns={"epoch": "best_epoch"}).drop(columns="stage").reset_index(drop=True))
    table["chosen"] = table["option"].eq(balance)
    seconds["head"] = time.perf_counter() - t0
    oof_head = _pooled(y, fold, head_probs[balance])[head_epoch - 1]
    selection = [_row("head", config.head_epochs, head_epoch, head_curve[head_curve["option"] == balance])]
    start_weights = base.get_weights()  # every fold model starts from THIS backbone (the one the head was fitted on)
    del base, features
    gc.collect()

    # Stage 2: in every fold, fine-tune the model with that fold's head behind the augmentation.
    members: list[keras.Model] = []
    snapshots: dict[int, list[list]] = {}  # per fold: [weights with the head (epoch 0), after epoch 1, ...]
    ft_probs: dict[int, list[np.ndarray]] = {}
    wise_probs: dict[int, list[np.ndarray]] = {}
    wise_weights: dict[int, list] = {}
    finetune = config.finetune_epochs > 0 and config.finetune_blocks != 0 and task in config.finetune_tasks
    resample = (functools.partial(augment.resample_batch, probability=config.augment.resample)
                if config.augment.resample > 0 else None)
    t0 = time.perf_counter()
    for f in folds:
        tr, va = fold != f, fold == f
        keras.utils.set_random_seed(config.seed + f)
        member = cxr_model.build_model(config, name=f"{task}_fold{f}")
        member.set_weights(start_weights)
        member.get_layer("logit").set_weights(head_weights[balance][f][head_epoch - 1])
        snapshots[f] = [member.get_weights()]
        if finetune:
            cxr_model.set_trainable(member, config.finetune_blocks)
            trainer = cxr_model.training_model(member, config.augment)
            stream = _batches(x[tr], y[tr], batch, balance, config.seed + 1000 * (f + 1), resample)
            steps = len(stream) * config.finetune_epochs
            trainer.compile(optimizer=finetune_optimizer(trainer, config.optimizer, steps),
                            loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auroc")],
                            jit_compile="auto")
            held = HeldOut(member, x[va], y[va], batch, snapshot=member.get_weights)
            h = _fit_stage(trainer, stream, held, config.finetune_epochs, verbose,
                           desc=f"{task} / fold {f} / fine-tune")
            history.append(h.assign(fold=f, stage="finetune", option=balance))
            ft_probs[f] = held.probs
            snapshots[f] += held.weights
            cxr_model.set_trainable(member, 0)
            if config.wise_ft_alpha is not None:  # stage 3: the fold's start and last epoch mixed
                wise_weights[f] = interpolate_weights(snapshots[f][0], snapshots[f][-1], config.wise_ft_alpha)
                member.set_weights(wise_weights[f])
                wise_probs[f] = [np.asarray(padded_predict(member, x[va], batch, desc=f"{task} / fold {f} / WiSE-FT"),
                                            "float64").reshape(-1)]
            del trainer, stream, held
            gc.collect()
        members.append(member)
    kept, kept_epoch, oof = "head", head_epoch, oof_head
    pooled = [head_curve]
    stage_oof = {"head": oof_head}
    if finetune:
        seconds["finetune"] = time.perf_counter() - t0
        ft = _pooled(y, fold, ft_probs)
        ft_curve = _curve(y, fold, ft, "finetune", balance, config.calibration)
        pooled.append(ft_curve)
        finite = np.isfinite(ft_curve["selection_loss"])
        e = int(ft_curve.loc[ft_curve["selection_loss"][finite].idxmin(), "epoch"]) if finite.any() else 0
        if e:
            selection.append(_row("finetune", config.finetune_epochs, e, ft_curve))
            stage_oof["finetune"] = ft[e - 1]
            if selection[-1]["selection_loss"] < selection[0]["selection_loss"]:
                kept, kept_epoch, oof = "finetune", e, ft[e - 1]
        else:  # every epoch diverged somewhere: never selected
            selection.append({"stage": "finetune", "epochs": config.finetune_epochs, "best_epoch": 0,
                              "selection_loss": float("inf"), "oof_loss": float("inf"), "oof_auroc": float("nan")})
        if wise_probs:
            last = config.finetune_epochs
            wise_curve = _curve(y, fold, _pooled(y, fold, wise_probs), "wise-ft", balance,
                                config.calibration).assign(epoch=last)
            pooled.append(wise_curve)
            selection.append(_row("wise-ft", last, last, wise_curve))
            stage_oof["wise-ft"] = _pooled(y, fold, wise_probs)[0]
            if selection[-1]["selection_loss"] < min(r["selection_loss"] for r in selection[:-1]):
                kept, kept_epoch, oof = "wise-ft", last, stage_oof["wise-ft"]
    for f, member in zip(folds, members):
        member.set_weights(wise_weights[f] if kept == "wise-ft" else
                           snapshots[f][kept_epoch if kept == "finetune" else 0])
    del snapshots, wise_weights
    gc.collect()
    selection = pd.DataFrame(selection)
    selection["kept"] = selection["stage"].eq(kept)
    history = pd.concat(history, ignore_index=True)
    first = ["fold", "stage", "option", "epoch"]
    history = history[first + [c for c in history.columns if c not in first]]
    oof_frame = pd.DataFrame({"position": rows, "fold": fold, "y": y.astype(int), "p": oof})
    ensemble = cxr_model.ensemble_model(members, name=task)
    return TrainResult(model=ensemble, members=members, task=task, oof=oof_frame, history=history,
                       pooled=pd.concat(pooled, ignore_index=True), selection=selection, class_balance=table,
                       stage_oof=stage_oof, balance=balance, kept_stage=kept, kept_epoch=kept_epoch, seconds=seconds, batch_size=batch)


def record(result: TrainResult, config: Config, path: Any) -> dict[str, Any]:
    """Write the run record (configuration, environment, history, pooled OOF curves, selection, timings) as strict
    JSON, atomically."""
    doc = {
        "task": result.task, "config": config.to_dict(), "environment": environment(),
        "seconds": result.seconds, "n_folds": result.n_folds, "kept_stage": result.kept_stage,
        "kept_epoch": result.kept_epoch, "class_balance_used": result.balance, "batch_size": result.batch_size,
        "precision": result.precision, "devices": result.devices, "selection": result.selection,
        "class_balance": result.class_balance, "pooled": result.pooled, "history": result.history,
    }
    write_json(path, doc)
    return doc


def predict_split(model: keras.Model, prepared: Prepared, task: str, split: str,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, labels, probabilities) of `task` on one split (fixed-shape batches, padding dropped)."""
    positions = prepared.rows(split, task)
    probs = predict_proba(model, prepared.images[positions], batch_size)
    return positions, prepared.labels(task, positions), probs
