"""The training loop: two-stage transfer learning, callbacks, resumable, and its outputs.

``train(TrainConfig) -> dict`` runs one model (one split or one CV fold); ``train_cv``
runs ``--cv=K`` folds into ``model_dir/fold_i`` and writes ``cv.json``.

Stages (each one ``model.fit`` over a contiguous range of the epoch counter)::

    head       epochs [0, warmup_epochs)       backbone frozen, --learning_rate
    fine_tune  epochs [warmup_epochs, epochs)  top --fine_tune_fraction of the backbone
                                               trainable, --fine_tune_learning_rate
                                               (default --learning_rate * 0.1)

BatchNorm statistics of pretrained backbones stay frozen in both stages (see
``model.backbones.FrozenStatistics``). Each stage builds its own optimizer and schedule
(the schedule spans that stage's steps).

Resume (a preempted VM): every stage has its own ``BackupAndRestore`` directory
``model_dir/backup/<stage>``; when a stage finishes its weights are kept as
``backup/<stage>.done.weights.h5``. A restarted job with the same flags skips finished
stages, loads the last finished stage's weights, and the running stage's
``BackupAndRestore`` restores weights, optimizer state and the epoch counter: a job
killed during epoch 3 restarts at epoch 3. The best checkpoint and early stopping keep
their state in ``best.json``, so they survive restarts too. ``backup/`` is removed when the
run finishes.

Model selection uses the validation split (``val``, or fold ``--val_fold``) only; the test
split is never opened here.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import time
import warnings
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from model import backbones, classifier, distribute, precision
from model import head_init as head_init_lib
from model import io as model_io
from model import metrics as metrics_lib
from pipeline import augment, fileio, reader
from pipeline import manifest as manifest_lib

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "plateau")
SELECTIONS = ("normal", "all")
SELECTS = ("best", "last")                # which epoch's model is kept
STAGE_HEAD = "head"
STAGE_FINE_TUNE = "fine_tune"
RUN_JSON = "run.json"
BEST_MODEL = "best.keras"
BEST_JSON = "best.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
CONFIG_JSON = "config.json"
NO_DECAY = ("bias", "gamma", "beta")     # variables excluded from weight decay


class ConfigError(ValueError):
    """A bad flag or input found at start-up; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every ``fundus-train`` flag (field names are the flag names).

    Learning rates are per step (optimizer units); sizes in pixels; epochs count passes
    over the training split; ``batch_size`` is the GLOBAL batch (split across replicas).
    """

    data: str
    model_dir: str
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"            # imagenet | none | PATH.weights.h5
    image_size: int = 0                  # 0: the backbone's default size
    batch_size: int = 32
    epochs: int = 20                     # total epochs, both stages
    warmup_epochs: int = 2               # stage 1: head only
    fine_tune_fraction: float = 0.3      # stage 2: top fraction of backbone layers, 0..1
    optimizer: str = "adamw"
    learning_rate: float = 1e-3          # stage 1 (head) peak learning rate
    fine_tune_learning_rate: float = 0.0  # stage 2 peak; 0: learning_rate * fine_tune_lr_scale
    fine_tune_lr_scale: float = 0.1
    momentum: float = 0.9                # sgd / rmsprop
    nesterov: bool = True                # sgd
    schedule: str = "cosine"             # constant | cosine | step | plateau
    lr_warmup_fraction: float = 0.1      # cosine: linear warmup, fraction of a stage's steps
    step_epochs: int = 5                 # step: epochs between drops
    step_factor: float = 0.1             # step / plateau: multiply the lr by this
    plateau_patience: int = 2            # plateau: epochs without val AUC gain
    weight_decay: float = 1e-4           # decoupled, not on biases / BN
    label_smoothing: float = 0.0         # 0..0.5
    dropout: float = 0.3
    class_weights: bool = True           # balance the classes of the training split
    age_loss_weight: float = 0.0         # > 0: auxiliary age head
    augment: Any = None                  # pipeline.augment.AugmentConfig; None: defaults
    precision: str = "auto"
    strategy: str = "auto"
    seed: int = 42
    patience: int = 5                    # early stopping on val AUC (0: off)
    select: str = "best"                 # best: best val AUC epoch; last: last epoch
    swa_epochs: int = 0                  # > 0: keep the mean weights of the last K epochs
    tta: str = "none"                    # final validation prediction: none | flip
    val_fold: int | None = None
    cache_budget_gb: float = 4.0
    cache_dir: str | None = None
    train_selection: str = "normal"      # normal: normal eyes only; all: every written eye
    head_init: str = "random"            # random | logistic (fitted linear probe)
    head_init_c: float = 1e-3            # logistic: inverse L2 strength (scikit-learn C)
    cache_frozen_prefix: bool = False    # train the top on cached prefix activations
    prefix_cache_dir: str | None = None  # keep those activations on disk between jobs
    profile_batch: int = 0               # TensorBoard profiler batch (0: off)
    image_grid: int = 16                 # augmented images logged at the start
    overwrite: bool = False              # replace a finished run in model_dir
    verbose: int = 2

    # ----------------------------------------------------------------- derived values
    def fine_tune_lr(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate * self.fine_tune_lr_scale

    def stages(self) -> list[tuple[str, int, int, float, float]]:
        """``[(name, first_epoch, end_epoch, fine_tune_fraction, peak_lr)]``."""
        out = []
        head_end = self.epochs if self.fine_tune_fraction == 0 else min(
            self.warmup_epochs, self.epochs)
        if head_end > 0:
            out.append((STAGE_HEAD, 0, head_end, 0.0, self.learning_rate))
        if self.epochs > head_end:
            out.append((STAGE_FINE_TUNE, head_end, self.epochs, self.fine_tune_fraction,
                        self.fine_tune_lr()))
        return out

    def validate(self) -> None:
        """Start-up checks; every error names the flag and the fix."""

        if not self.data:
            raise ValueError("--data is required: a fundus-convert output directory")
        if not self.model_dir:
            raise ValueError("--model_dir is required: where the model and logs go")
        if not os.path.exists(manifest_lib.manifest_path(self.data)):
            raise FileNotFoundError(
                f"--data={self.data}: no manifest.json there; point --data at a "
                f"fundus-convert output directory (run fundus-convert first)")
        backbones.get(self.backbone)
        backbones.check_image_size(self.backbone, self.image_size)
        backbones.normalise_weights(self.weights)
        precision.resolve_policy(self.precision)
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer={self.optimizer!r}: use one of "
                                           f"{', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule={self.schedule!r}: use one of "
                                         f"{', '.join(SCHEDULES)}"),
            (self.strategy in distribute.CHOICES, f"--strategy={self.strategy!r}: use one of "
                                                  f"{', '.join(distribute.CHOICES)}"),
            (self.train_selection in SELECTIONS, f"--train_selection={self.train_selection!r}:"
                                                 f" use one of {', '.join(SELECTIONS)}"),
            (self.batch_size >= 1, f"--batch_size={self.batch_size}: must be >= 1"),
            (self.epochs >= 1, f"--epochs={self.epochs}: must be >= 1"),
            (self.warmup_epochs >= 0, f"--warmup_epochs={self.warmup_epochs}: must be >= 0"),
            (0.0 <= self.fine_tune_fraction <= 1.0,
             f"--fine_tune_fraction={self.fine_tune_fraction}: must be in [0, 1]"),
            (self.learning_rate > 0, f"--learning_rate={self.learning_rate}: must be > 0"),
            (self.fine_tune_learning_rate >= 0,
             f"--fine_tune_learning_rate={self.fine_tune_learning_rate}: must be >= 0"),
            (0.0 <= self.lr_warmup_fraction < 1.0,
             f"--lr_warmup_fraction={self.lr_warmup_fraction}: must be in [0, 1)"),
            (self.step_epochs >= 1, f"--step_epochs={self.step_epochs}: must be >= 1"),
            (0.0 < self.step_factor < 1.0, f"--step_factor={self.step_factor}: in (0, 1)"),
            (self.weight_decay >= 0, f"--weight_decay={self.weight_decay}: must be >= 0"),
            (0.0 <= self.label_smoothing <= 0.5,
             f"--label_smoothing={self.label_smoothing}: must be in [0, 0.5]"),
            (0.0 <= self.dropout < 1.0, f"--dropout={self.dropout}: must be in [0, 1)"),
            (self.age_loss_weight >= 0, f"--age_loss_weight={self.age_loss_weight}: >= 0"),
            (self.patience >= 0, f"--patience={self.patience}: must be >= 0 (0: off)"),
            (self.select in SELECTS, f"--select={self.select}: one of {', '.join(SELECTS)}"),
            (self.tta in model_io.TTAS,
             f"--tta={self.tta}: one of {', '.join(model_io.TTAS)}"),
            (self.swa_epochs >= 0, f"--swa_epochs={self.swa_epochs}: must be >= 0 (0: off)"),
            (self.swa_epochs == 0 or self.select == "last",
             f"--swa_epochs={self.swa_epochs} averages the last epochs' weights; it needs "
             f"--select=last (and --patience=0), not --select={self.select}"),
            (self.head_init in head_init_lib.CHOICES,
             f"--head_init={self.head_init}: one of {', '.join(head_init_lib.CHOICES)}"),
            (self.head_init_c > 0, f"--head_init_c={self.head_init_c}: must be > 0"),
            (self.select == "best" or self.patience == 0,
             f"--select=last with --patience={self.patience}: early stopping selects on "
             f"the validation split; pass --patience=0"),
            (self.cache_budget_gb >= 0, f"--cache_budget_gb={self.cache_budget_gb}: >= 0"),
            (self.val_fold is None or self.val_fold >= 0,
             f"--val_fold={self.val_fold}: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        last_stage = self.stages()[-1]
        if self.swa_epochs > last_stage[2] - last_stage[1]:
            raise ValueError(f"--swa_epochs={self.swa_epochs}: the last stage "
                             f"({last_stage[0]}) has only {last_stage[2] - last_stage[1]} "
                             f"epochs; lower it or raise --epochs")
        if self.prefix_cache_dir and not self.cache_frozen_prefix:
            raise ValueError(f"--prefix_cache_dir={self.prefix_cache_dir} needs "
                             f"--cache_frozen_prefix")
        if self.cache_frozen_prefix:
            from model import prefix_cache  # noqa: PLC0415
            prefix_cache.check_augment(self.augment)
            if self.age_loss_weight > 0:
                raise ValueError("--cache_frozen_prefix does not support the age head; "
                                 "pass --age_loss_weight=0")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.augment is not None:
            d["augment"] = dataclasses.asdict(self.augment)
        return d


# ===================================================================== optimizers, lr
@keras.saving.register_keras_serializable(package="fundus")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from ``peak / warmup_steps`` to ``peak`` over ``warmup_steps``, then
    cosine decay to ``peak * final_fraction`` at ``total_steps`` (constant afterwards).
    Steps are optimizer iterations; rates in optimizer units."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int,
                 final_fraction: float = 0.0):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, warmup_steps + 1))
        self.final_fraction = float(final_fraction)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        ramp = self.peak * ops.minimum(step + 1.0, warm) / warm
        span = float(self.total_steps - self.warmup_steps)
        t = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        floor = self.peak * self.final_fraction
        cos = floor + (self.peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * t))
        return ops.where(step < self.warmup_steps, ramp, cos)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "final_fraction": self.final_fraction}


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                  final_fraction: float = 0.0):
    """The serializable warmup + cosine ``LearningRateSchedule`` (package ``fundus``)."""
    return WarmupCosine(peak, warmup_steps, total_steps, final_fraction)


def learning_rate_for(cfg: TrainConfig, peak: float, steps_per_epoch: int, n_epochs: int):
    """The optimizer's ``learning_rate`` for one stage: a float (constant, step, plateau:
    the callbacks change it per epoch) or the warmup-cosine schedule."""
    if cfg.schedule != "cosine":
        return float(peak)
    total = max(1, steps_per_epoch * n_epochs)
    return warmup_cosine(peak, int(round(cfg.lr_warmup_fraction * total)), total)


def make_optimizer(cfg: TrainConfig, learning_rate):
    """``sgd`` (momentum, nesterov), ``adam``, ``adamw`` or ``rmsprop`` with decoupled
    weight decay (not applied to biases and BatchNorm/LayerNorm gamma/beta)."""

    wd = float(cfg.weight_decay) or None
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov, weight_decay=wd)
    elif cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate, weight_decay=wd)
    elif cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate, weight_decay=wd or 0.0)
    elif cfg.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(learning_rate, momentum=cfg.momentum, weight_decay=wd)
    else:
        raise ValueError(f"--optimizer={cfg.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if wd:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt


def step_schedule(cfg: TrainConfig, peak: float, first_epoch: int):
    """``epoch -> lr`` of the ``step`` schedule (for ``LearningRateScheduler``)."""
    def fn(epoch: int, lr: float | None = None) -> float:
        return float(peak * cfg.step_factor ** ((epoch - first_epoch) // cfg.step_epochs))
    return fn


# ========================================================================== metrics
def compile_model(model, cfg: TrainConfig, optimizer) -> None:
    """Compile with BCE (label smoothing), the age loss when present, and the metrics:
    ROC AUC ``auc`` (model selection), PR AUC ``pr_auc``, ``accuracy``, ``precision``,
    ``recall``."""

    sex_metrics = metrics_lib.keras_metrics() + [
        keras.metrics.AUC(num_thresholds=1000, curve="PR", name="pr_auc"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]
    bce = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
    if cfg.age_loss_weight > 0:
        model.compile(optimizer=optimizer,
                      loss={classifier.SEX_OUTPUT: bce,
                            classifier.AGE_OUTPUT: classifier.MaskedAgeLoss()},
                      loss_weights={classifier.SEX_OUTPUT: 1.0,
                                    classifier.AGE_OUTPUT: cfg.age_loss_weight},
                      metrics={classifier.SEX_OUTPUT: sex_metrics})
    else:
        model.compile(optimizer=optimizer, loss=bce, metrics=sex_metrics)


def metric_key(cfg: TrainConfig, name: str, validation: bool = True) -> str:
    """Log key of a ``sex`` metric (``val_auc``; ``val_sex_auc`` with the age head)."""
    key = f"sex_{name}" if cfg.age_loss_weight > 0 else name
    return f"val_{key}" if validation else key


# ========================================================================= callbacks
class LearningRateLogger(keras.callbacks.Callback):
    """Writes the learning rate at the end of the epoch into the logs (CSV, TensorBoard).

    Put it first in the callback list: it then records the rate the epoch ended with,
    before ``ReduceLROnPlateau`` lowers it for the next epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)


class MajorityAccuracy(keras.callbacks.Callback):
    """Logs ``majority_accuracy`` / ``val_majority_accuracy``: the accuracy of always
    predicting each split's more frequent class, next to ``accuracy``."""

    def __init__(self, train_majority: float, val_majority: float):
        super().__init__()
        self.train_majority = float(train_majority)
        self.val_majority = float(val_majority)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["majority_accuracy"] = self.train_majority
            logs["val_majority_accuracy"] = self.val_majority


class SelectBest(keras.callbacks.Callback):
    """Best checkpoint by ``monitor`` (max) and early stopping, restart-safe.

    Saves the model atomically to ``path`` whenever ``monitor`` improves and records
    ``{epoch, value, logs}`` in ``state_path``; stops training when the best epoch is
    ``patience`` epochs behind (counting only from ``stop_from_epoch``; 0 = never).
    ``keep="last"``: save after every epoch instead (the model of the last epoch is kept,
    nothing is selected on the validation split, so its validation AUC is unbiased).
    """

    def __init__(self, path: str, state_path: str, monitor: str, patience: int,
                 stop_from_epoch: int, target=None, keep: str = "best"):
        super().__init__()
        if keep not in SELECTS:
            raise ValueError(f"--select={keep}: one of {', '.join(SELECTS)}")
        self.target = target    # the model to save (None: the model being fit)
        self.path, self.state_path, self.monitor = path, state_path, monitor
        self.patience, self.stop_from_epoch = int(patience), int(stop_from_epoch)
        self.keep = keep
        self.best: dict | None = None

    def on_train_begin(self, logs=None):
        self.best = read_json(self.state_path)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"{self.monitor} is not in the epoch logs "
                           f"({sorted(logs)}); is there a validation split?")
        value = float(value)
        if not math.isnan(value) and (self.best is None or value > self.best["value"]
                                      or self.keep == "last"):
            save_model(self.target or self.model, self.path)
            self.best = {"epoch": int(epoch), "value": value, "monitor": self.monitor,
                         "logs": {k: float(v) for k, v in logs.items()}}
            write_json(self.state_path, self.best)
        if self.patience and epoch >= self.stop_from_epoch:
            best_epoch = self.best["epoch"] if self.best else -1
            if epoch - max(best_epoch, self.stop_from_epoch - 1) >= self.patience:
                self.model.stop_training = True


class WeightAverage(keras.callbacks.Callback):
    """``--swa_epochs=K``: the mean of the trainable weights after each of the stage's last
    K epochs (epochs ``first_epoch`` .. end - 1, 0-based), written into ``target`` when the
    stage ends and saved as its model (``path``; ``state_path`` gains ``swa_epochs``).

    With BatchNorm statistics frozen (pretrained backbones) the averaged weights need no
    statistics update, so the average is exact. Restart-safe: the running mean, its count
    and the last epoch included go to ``state_dir/swa.npz`` (atomically) after every
    averaged epoch; an epoch a resumed run repeats is not counted twice."""

    def __init__(self, target: keras.Model, first_epoch: int, path: str, state_path: str,
                 state_dir: str):
        super().__init__()
        self.target, self.first_epoch = target, int(first_epoch)
        self.path, self.state_path = path, state_path
        self.file = os.path.join(state_dir, "swa.npz")
        self.mean: list[np.ndarray] = []
        self.count, self.last_epoch = 0, -1

    def on_train_begin(self, logs=None):
        self.mean, self.count, self.last_epoch = [], 0, -1
        if os.path.exists(self.file):
            with np.load(self.file) as z:
                self.count, self.last_epoch = int(z["count"]), int(z["last_epoch"])
                self.mean = [z[f"w{i}"] for i in range(len(z.files) - 2)]

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.first_epoch or epoch <= self.last_epoch:
            return
        w = [v.numpy().astype(np.float64) for v in self.target.trainable_weights]
        if not self.mean:
            self.mean = w
        else:
            self.mean = [m + (x - m) / (self.count + 1) for m, x in zip(self.mean, w)]
        self.count, self.last_epoch = self.count + 1, int(epoch)
        arrays = {f"w{i}": m for i, m in enumerate(self.mean)}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, count=self.count, last_epoch=self.last_epoch, **arrays)
        fileio.write_atomic(self.file, write)

    def on_train_end(self, logs=None):
        if not self.count:
            return
        for v, m in zip(self.target.trainable_weights, self.mean):
            v.assign(m.astype(v.dtype))
        save_model(self.target, self.path)
        best = read_json(self.state_path) or {}
        best["swa_epochs"] = [self.last_epoch - self.count + 2, self.last_epoch + 1]
        write_json(self.state_path, best)


def compile_stage(model: keras.Model, fit_model: keras.Model, cfg: TrainConfig, strategy,
                  fraction: float, peak: float, steps: int, epochs: int) -> int:
    """One stage's set-up, shared by ``fundus-train`` and the tuner: unfreeze the top
    ``fraction`` of ``model``'s backbone and compile ``fit_model`` (the model itself, or
    the cached-prefix tail that shares its layers) with the stage's optimizer and
    schedule (``peak`` lr over ``steps`` x ``epochs``). Returns the trainable count."""
    with strategy.scope():
        n_trainable = classifier.set_backbone_trainable(model, fraction)
        lr = learning_rate_for(cfg, peak, steps, epochs)
        compile_model(fit_model, cfg, make_optimizer(cfg, lr))
    return n_trainable


def stage_callbacks(cfg: TrainConfig, stage: str, first: int, peak: float, *,
                    run_dir: str, logs_dir: str, majorities: tuple[float, float],
                    target: keras.Model | None = None, keep: str = "best",
                    profile_batch: int = 0) -> list:
    """The callbacks every stage runs with, in order (shared by ``fundus-train`` and the
    tuner): learning-rate and majority-accuracy logging, the step / plateau schedule,
    ``TerminateOnNaN``, :class:`SelectBest` (``best.keras`` / ``best.json`` in
    ``run_dir``; early stopping counts from the fine-tune stage only), ``history.csv``
    and TensorBoard in ``logs_dir``. ``majorities``: (train, val) majority accuracy."""
    monitor = metric_key(cfg, "auc")
    cbs: list = [LearningRateLogger(), MajorityAccuracy(*majorities)]
    if cfg.schedule == "step":
        cbs.append(keras.callbacks.LearningRateScheduler(step_schedule(cfg, peak, first)))
    elif cfg.schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="max", factor=cfg.step_factor,
            patience=cfg.plateau_patience, min_lr=peak * 1e-3))
    cbs += [
        keras.callbacks.TerminateOnNaN(),
        SelectBest(os.path.join(run_dir, BEST_MODEL), os.path.join(run_dir, BEST_JSON),
                   monitor, cfg.patience,
                   stop_from_epoch=first if stage == STAGE_FINE_TUNE else cfg.epochs,
                   target=target, keep=keep),
        keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY_CSV), append=True),
        keras.callbacks.TensorBoard(logs_dir, histogram_freq=0, write_graph=False,
                                    profile_batch=profile_batch),
    ]
    return cbs


class ImageGrid(keras.callbacks.Callback):
    """At the start of training, writes a grid of training images as seen by the
    model: input and after the augmentation block (``training=True``)."""

    def __init__(self, log_dir: str, images: np.ndarray):
        super().__init__()
        self.log_dir, self.images = log_dir, images

    def on_train_begin(self, logs=None):
        x = tf.constant(self.images)
        try:
            aug = self.model.get_layer("augmentation")(x, training=True)
        except ValueError:
            aug = tf.cast(x, tf.float32)
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            tf.summary.image("training_images/input", image_grid(x)[None], step=0)
            tf.summary.image("training_images/augmented", image_grid(aug)[None], step=0)
        writer.flush()
        writer.close()


def save_model(model, path: str) -> str:
    """Save ``model`` to a ``.keras`` file atomically, as an inference artifact: no
    optimizer state and no compile config (a third of the size with Adam; resuming uses
    ``backup/``, not this file). ``keras.models.load_model`` returns it uncompiled."""
    tmp = path[: -len(".keras")] + ".tmp.keras"
    optimizer, compiled = getattr(model, "optimizer", None), getattr(model, "compiled", False)
    try:
        model.optimizer, model.compiled = None, False
        model.save(tmp, overwrite=True)
    finally:
        model.optimizer, model.compiled = optimizer, compiled
    os.replace(tmp, path)
    return path


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate now (schedules evaluated at its iteration count)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


def image_grid(images, columns: int = 4):
    """uint8/float ``[N, H, W, 3]`` in 0..255 -> float32 ``[rows*H, columns*W, 3]`` 0..1."""
    x = tf.clip_by_value(tf.cast(images, tf.float32) / 255.0, 0.0, 1.0)
    n = int(x.shape[0])
    rows = -(-n // columns)
    pad = rows * columns - n
    if pad:
        x = tf.concat([x, tf.zeros([pad] + list(x.shape[1:]), x.dtype)], axis=0)
    h, w = int(x.shape[1]), int(x.shape[2])
    x = tf.reshape(x, [rows, columns, h, w, 3])
    x = tf.transpose(x, [0, 2, 1, 3, 4])
    return tf.reshape(x, [rows * h, columns * w, 3])


# ============================================================================ files
def read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, obj: Any) -> None:
    """Atomic JSON write (temporary name, then rename)."""
    fileio.write_json(path, obj, default=_json_default)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_history(path: str) -> list[dict]:
    """Rows of ``history.csv`` (one per epoch; a re-run epoch after a restart replaces
    the earlier row), numbers as floats, ``epoch`` as int, sorted by epoch."""
    if not os.path.exists(path):
        return []
    rows: dict[int, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    out[k] = v
            out["epoch"] = int(out["epoch"])
            rows[out["epoch"]] = out
    return [rows[e] for e in sorted(rows)]


def versions() -> dict:
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


# ============================================================================ data
def _read_config(cfg: TrainConfig, image_size: int, training: bool):
    return reader.ReadConfig(
        image_size=image_size, batch_size=cfg.batch_size, cache_budget_gb=cfg.cache_budget_gb,
        cache_dir=cfg.cache_dir, sample_weights=bool(training and cfg.class_weights),
        with_age=cfg.age_loss_weight > 0, normal_only=cfg.train_selection == "normal",
        seed=cfg.seed)


def _datasets(cfg: TrainConfig, strategy, image_size: int):
    """``(train_ds, val_ds, train_spec, val_spec)``; distributed when replicas > 1."""
    train_spec, val_spec = reader.training_split(cfg.data, cfg.val_fold)
    tr, va = _read_config(cfg, image_size, True), _read_config(cfg, image_size, False)
    if strategy.num_replicas_in_sync > 1:
        train = reader.distributed_dataset(strategy, cfg.data, train_spec, True, tr)
        val = reader.distributed_dataset(strategy, cfg.data, val_spec, False, va)
    else:
        train = reader.make_dataset(cfg.data, train_spec, True, tr)
        val = reader.make_dataset(cfg.data, val_spec, False, va)
    return train, val, train_spec, val_spec


def _probe_inputs(cfg: TrainConfig, model, cached, train_spec, val_spec, image_size: int):
    """``(features model, training batches, validation batches)`` for the logistic head:
    pooled features of the frozen backbone, in evaluation order, labels only."""
    if cached is not None:
        return cached.features, cached.train_eval_ds, cached.val_ds
    features = keras.Model(model.input, model.get_layer("pool").output)
    tr = dataclasses.replace(_read_config(cfg, image_size, True), sample_weights=False,
                             with_age=False, cache_budget_gb=0.0, cache_dir=None)
    va = dataclasses.replace(tr, normal_only=True)
    return (features, reader.make_dataset(cfg.data, train_spec, False, tr),
            reader.make_dataset(cfg.data, val_spec, False, va))


def _sample_images(cfg: TrainConfig, spec, image_size: int) -> np.ndarray:
    """A few training images (uint8) for the TensorBoard grid, read without a cache."""
    n = max(1, min(cfg.image_grid, cfg.batch_size))
    rc = dataclasses.replace(_read_config(cfg, image_size, False), batch_size=n,
                             cache_budget_gb=0.0, cache_dir=None, sample_weights=False,
                             with_age=False)
    for images, _ in reader.make_dataset(cfg.data, spec, False, rc).take(1):
        return images.numpy()
    raise ValueError(f"--data={cfg.data}: the training split is empty")


def predict_split(model, cfg: TrainConfig, spec, image_size: int) -> dict[str, np.ndarray]:
    """``{"y", "p", "patient_id"}`` of every record of ``spec`` (evaluation order), through
    :func:`model.evaluation.predict_split` (the one prediction path of evaluation), with
    the flip TTA when ``cfg.tta == "flip"``."""
    from model import evaluation  # noqa: PLC0415
    member = model_io.Member(model_io.sex_model(model), {"path": os.path.join(
        cfg.model_dir, BEST_MODEL), "image_size": image_size})
    frame = evaluation.predict_split([member], cfg.data, spec, batch_size=cfg.batch_size,
                                     tta=cfg.tta)
    return {"y": frame["label"].to_numpy(np.float64),
            "p": frame["probability"].to_numpy(np.float64),
            "patient_id": frame["patient"].to_numpy().astype(str)}


def auc_summary(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Exact ROC AUC per image and per patient (mean of the eyes' probabilities)."""
    y_pat, p_pat = metrics_lib.per_patient(pred["y"], pred["p"], pred["patient_id"])
    out = {"images": int(pred["y"].size), "patients": int(y_pat.size)}
    for key, (y, p) in {"auc": (pred["y"], pred["p"]), "patient_auc": (y_pat, p_pat)}.items():
        try:
            out[key] = metrics_lib.roc_auc(y, p)
        except ValueError:
            out[key] = float("nan")
    out["majority_accuracy"] = metrics_lib.majority_accuracy(pred["y"])
    out["accuracy"] = metrics_lib.accuracy(pred["y"], pred["p"])
    return out


# ========================================================================= the run
def _check_model_dir(cfg: TrainConfig) -> bool:
    """Prepare ``model_dir``; returns True when resuming an interrupted run."""
    backup = os.path.join(cfg.model_dir, "backup")
    run_json = os.path.join(cfg.model_dir, RUN_JSON)
    saved = read_json(os.path.join(backup, CONFIG_JSON))
    if cfg.overwrite:
        for name in (backup, os.path.join(cfg.model_dir, "logs"),
                     os.path.join(cfg.model_dir, "saved_model")):
            shutil.rmtree(name, ignore_errors=True)
        for name in (run_json, BEST_MODEL, BEST_JSON, HISTORY_CSV, HISTORY_JSON):
            path = os.path.join(cfg.model_dir, name)
            if os.path.exists(path):
                os.remove(path)
        saved = None
    elif saved is None and os.path.exists(run_json):
        raise FileExistsError(f"--model_dir={cfg.model_dir} holds a finished run ({RUN_JSON}); "
                              f"use a new --model_dir or pass --overwrite")
    elif saved is None and os.path.exists(os.path.join(cfg.model_dir, HISTORY_CSV)):
        raise FileExistsError(f"--model_dir={cfg.model_dir} holds a partial run without "
                              f"backup state; use a new --model_dir or pass --overwrite")
    mine = _resume_key(cfg)
    if saved is not None and saved != mine:
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise ValueError(f"--model_dir={cfg.model_dir} holds an interrupted run with other "
                         f"flags ({', '.join('--' + d for d in diff)}); rerun with the same "
                         f"flags to resume, or pass --overwrite to start again")
    os.makedirs(backup, exist_ok=True)
    write_json(os.path.join(backup, CONFIG_JSON), mine)
    return saved is not None


def _resume_key(cfg: TrainConfig) -> dict:
    """The flags a resumed run must share with the interrupted one."""
    d = cfg.to_json()
    for k in ("overwrite", "verbose", "profile_batch", "cache_dir", "cache_budget_gb",
              "image_grid", "strategy"):
        d.pop(k, None)
    return json.loads(json.dumps(d, default=_json_default))


def train(cfg: TrainConfig, callbacks: Sequence | None = None) -> dict:
    """Train one model into ``cfg.model_dir``; returns the ``run.json`` dict.

    ``callbacks``: extra Keras callbacks appended to every stage (tests use one to
    interrupt a run).
    """
    try:
        cfg.validate()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    policy = precision.set_policy(cfg.precision)

    t0 = time.time()
    try:  # start-up: every bad flag or input fails here, before model_dir is touched
        image_size = backbones.check_image_size(cfg.backbone, cfg.image_size)
        strategy = distribute.make_strategy(cfg.strategy)
        keras.utils.set_random_seed(cfg.seed)
        ccfg = classifier.ClassifierConfig(
            backbone=cfg.backbone, image_size=image_size, weights=cfg.weights,
            dropout=cfg.dropout, augment=cfg.augment or augment.AugmentConfig(seed=cfg.seed),
            age_loss_weight=cfg.age_loss_weight, seed=cfg.seed)
        with strategy.scope():
            model = classifier.build_classifier(ccfg)
        manifest_sha = manifest_lib.manifest_sha256(cfg.data)
        train_ds, val_ds, train_spec, val_spec = _datasets(cfg, strategy, image_size)
        normal_only = cfg.train_selection == "normal"
        train_stats = reader.split_stats(cfg.data, train_spec, normal_only=normal_only)
        val_stats = reader.split_stats(cfg.data, val_spec, normal_only=True)
        if train_stats.records < cfg.batch_size:
            raise ValueError(f"--batch_size={cfg.batch_size} is larger than the training "
                             f"split ({train_stats.records} images of {train_spec.name}); "
                             f"lower it")
        if min(val_stats.male, val_stats.female) == 0:
            raise ValueError(f"--data={cfg.data}: validation split {val_spec.name} has "
                             f"{val_stats.male} male / {val_stats.female} female images; "
                             f"ROC AUC needs both classes")
        fit_model, cached = model, None
        if cfg.cache_frozen_prefix:   # fit a tail sharing the layers, on cached activations
            from model import prefix_cache  # noqa: PLC0415
            cached = prefix_cache.prepare(
                model, cfg, train_spec, val_spec, image_size,
                train_stats.class_weights() if cfg.class_weights else None)
            fit_model, train_ds, val_ds = cached.tail, cached.train_ds, cached.val_ds
        os.makedirs(cfg.model_dir, exist_ok=True)
        resumed = _check_model_dir(cfg)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        raise ConfigError(str(e)) from e
    steps = train_stats.records // cfg.batch_size
    train_majority = max(train_stats.male, train_stats.female) / train_stats.records
    val_majority = max(val_stats.male, val_stats.female) / val_stats.records

    d = cfg.model_dir
    backup_root = os.path.join(d, "backup")
    logs_dir = os.path.join(d, "logs")
    monitor = metric_key(cfg, "auc")
    stages = cfg.stages()
    done = [s for s in stages
            if os.path.exists(os.path.join(backup_root, f"{s[0]}.done.weights.h5"))]
    if done:
        model.load_weights(os.path.join(backup_root, f"{done[-1][0]}.done.weights.h5"))
    head_info = None
    if cfg.head_init == "logistic" and not done:
        features, tr_batches, va_batches = _probe_inputs(cfg, model, cached, train_spec,
                                                         val_spec, image_size)
        head_info = head_init_lib.init_head(
            features, model.get_layer(classifier.SEX_OUTPUT), tr_batches, va_batches,
            cfg.head_init_c, train_stats.class_weights() if cfg.class_weights else None)
        if cfg.verbose:
            print(f"[fundus-train] head from a logistic probe (C={cfg.head_init_c:g}): "
                  f"AUC {head_info['train_auc']:.4f} train, {head_info['val_auc']:.4f} "
                  f"validation, {head_info['seconds']:.0f} s", flush=True)
    stopped_early = terminated_nan = False
    for name, first, end, fraction, peak in stages:
        if any(s[0] == name for s in done):
            continue
        n_trainable = compile_stage(model, fit_model, cfg, strategy, fraction, peak, steps,
                                    end - first)
        cbs = stage_callbacks(cfg, name, first, peak, run_dir=d, logs_dir=logs_dir,
                              majorities=(train_majority, val_majority), target=model,
                              keep=cfg.select, profile_batch=cfg.profile_batch or 0)
        if cfg.swa_epochs and (name, first, end) == stages[-1][:3]:
            cbs.append(WeightAverage(model, end - cfg.swa_epochs, os.path.join(d, BEST_MODEL),
                                     os.path.join(d, BEST_JSON), backup_root))
        # double_checkpoint: a kill while the backup is written falls back to the
        # previous epoch's copy instead of failing on a truncated file
        cbs.append(keras.callbacks.BackupAndRestore(os.path.join(backup_root, name),
                                                    double_checkpoint=True,
                                                    delete_checkpoint=False))
        if first == 0 and not resumed and cfg.image_grid > 0 and cached is None:
            cbs.append(ImageGrid(os.path.join(logs_dir, "images"),
                                 _sample_images(cfg, train_spec, image_size)))
        cbs += list(callbacks or [])
        if cfg.verbose:
            print(f"[fundus-train] stage {name}: epochs {first + 1}..{end}, "
                  f"{n_trainable} backbone layers trainable, peak lr {peak:g}", flush=True)
        fit_model._initial_epoch = None  # Keras keeps a restored epoch across fit calls
        with warnings.catch_warnings():
            # the reader yields one finite pass per epoch (no .repeat()) on purpose
            warnings.filterwarnings("ignore", message=".*ran out of data.*")
            fit_model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=first,
                      callbacks=cbs, verbose=cfg.verbose, shuffle=False)
        done_path = os.path.join(backup_root, f"{name}.done.weights.h5")
        model.save_weights(done_path[: -len(".weights.h5")] + ".tmp.weights.h5")
        os.replace(done_path[: -len(".weights.h5")] + ".tmp.weights.h5", done_path)
        shutil.rmtree(os.path.join(backup_root, name), ignore_errors=True)
        terminated_nan = bool(getattr(fit_model, "stop_training", False) and
                              _nan_in_history(d))
        last = read_history(os.path.join(d, HISTORY_CSV))
        if last and int(last[-1]["epoch"]) < end - 1 and not terminated_nan:
            stopped_early = True
        if stopped_early or terminated_nan:
            break

    best = read_json(os.path.join(d, BEST_JSON))
    if best is None:
        raise RuntimeError(f"{d}: no epoch gave a finite {monitor}; nothing to select "
                           f"(see {HISTORY_CSV})")
    best_model = keras.models.load_model(os.path.join(d, BEST_MODEL), compile=False)
    val_pred = predict_split(best_model, cfg, val_spec, image_size)
    val_summary = auc_summary(val_pred)
    _export(best_model, os.path.join(d, "saved_model"))

    history = read_history(os.path.join(d, HISTORY_CSV))
    write_json(os.path.join(d, HISTORY_JSON), history)
    run = {
        "flags": cfg.to_json(),
        "versions": versions(),
        "data": {"dir": os.path.abspath(cfg.data), "manifest_sha256": manifest_sha,
                 "train": {"spec": train_spec.name, **dataclasses.asdict(train_stats),
                           "majority_accuracy": train_majority,
                           "class_weights": train_stats.class_weights()},
                 "val": {"spec": val_spec.name, **dataclasses.asdict(val_stats),
                         "majority_accuracy": val_majority},
                 "test_read": False},
        "backbone": cfg.backbone, "image_size": image_size, "policy": policy,
        "strategy": distribute.describe(strategy),
        "stages": [{"name": s[0], "epochs": [s[1], s[2]], "fine_tune_fraction": s[3],
                    "peak_learning_rate": s[4]} for s in stages],
        "epochs_run": len(history), "stopped_early": stopped_early,
        "terminated_on_nan": terminated_nan, "resumed": resumed,
        "best": {"epoch": best["epoch"] + 1, "monitor": monitor, "value": best["value"],
                 "logs": best["logs"], "swa_epochs": best.get("swa_epochs")},
        "val_tta": cfg.tta,
        "val": val_summary,
        "cache_frozen_prefix": cached.info if cached is not None else None,
        "head_init": head_info,
        "wall_seconds": round(time.time() - t0, 1),
        "outputs": {"best_model": BEST_MODEL, "saved_model": "saved_model",
                    "history": [HISTORY_CSV, HISTORY_JSON], "tensorboard": "logs"},
        "metrics_module": metrics_lib.__name__,
    }
    write_json(os.path.join(d, RUN_JSON), run)
    shutil.rmtree(backup_root, ignore_errors=True)
    if cfg.verbose:
        print(f"[fundus-train] {cfg.select} epoch {run['best']['epoch']}: validation AUC "
              f"{val_summary['auc']:.4f} per image, {val_summary['patient_auc']:.4f} per "
              f"patient (majority accuracy {val_majority:.3f}); model {d}/{BEST_MODEL}; "
              f"TensorBoard: tensorboard --logdir {os.path.abspath(logs_dir)}", flush=True)
    return run


def _nan_in_history(model_dir: str) -> bool:
    rows = read_history(os.path.join(model_dir, HISTORY_CSV))
    return bool(rows) and isinstance(rows[-1].get("loss"), float) and \
        not math.isfinite(rows[-1]["loss"])


def _export(model, path: str) -> None:
    """SavedModel for serving: uint8 ``[None, S, S, 3]`` -> probability."""
    from model import export as export_lib  # noqa: PLC0415
    export_lib.export_saved_model(model, path)


# ============================================================================== CV
def train_cv(cfg: TrainConfig, k: int) -> dict:
    """``--cv=K``: train fold i (``--val_fold=i``) into ``model_dir/fold_i`` for every i,
    skipping folds that already finished, then write ``model_dir/cv.json`` with the
    per-fold and mean ± sd (sample sd) validation AUC per image and per patient."""
    if k < 2:
        raise ConfigError(f"--cv={k}: must be >= 2 (or 0 for a single run)")
    if cfg.val_fold is not None:
        raise ConfigError("--cv and --val_fold exclude each other; pass one")
    try:
        cfg.validate()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    man = manifest_lib.load(cfg.data)
    folds = int(man.get("folds", 0) or 0)
    if folds != k:
        raise ConfigError(f"--cv={k}: {manifest_lib.manifest_path(cfg.data)} has "
                         f"{folds or 'no'} folds; convert with --folds={k} or pass --cv={folds}")
    os.makedirs(cfg.model_dir, exist_ok=True)
    monitor = metric_key(cfg, "auc")     # per-image val AUC column of history.csv
    per_fold = []
    for i in range(k):
        fold_dir = os.path.join(cfg.model_dir, f"fold_{i}")
        run = read_json(os.path.join(fold_dir, RUN_JSON))
        if run is None or cfg.overwrite:
            run = train(dataclasses.replace(cfg, model_dir=fold_dir, val_fold=i))
        history = read_history(os.path.join(fold_dir, HISTORY_CSV))
        per_fold.append({"fold": i, "model_dir": f"fold_{i}", "auc": run["val"]["auc"],
                         "patient_auc": run["val"]["patient_auc"],
                         "best_epoch": run["best"]["epoch"],
                         "val_images": run["val"]["images"],
                         "val_patients": run["val"]["patients"],
                         "val_auc_by_epoch": [r[monitor] for r in history
                                              if isinstance(r.get(monitor), float)]})
    summary: dict[str, Any] = {"k": k, "select": cfg.select, "swa_epochs": cfg.swa_epochs,
                               "tta": cfg.tta, "folds": per_fold,
                               "manifest_sha256": manifest_lib.manifest_sha256(cfg.data)}
    curves = [f["val_auc_by_epoch"] for f in per_fold]
    n = min(len(c) for c in curves)
    # the learning curve: mean over folds of the per-image val AUC after each epoch
    summary["val_auc_by_epoch_mean"] = [float(np.mean([c[e] for c in curves]))
                                        for e in range(n)]
    for key in ("auc", "patient_auc"):
        v = np.array([f[key] for f in per_fold], np.float64)
        summary[key] = {"mean": float(v.mean()),
                        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    write_json(os.path.join(cfg.model_dir, "cv.json"), summary)
    return summary


def format_cv(summary: dict) -> str:
    """Human-readable table of a ``cv.json`` summary."""
    lines = [f"{'fold':>4}  {'AUC/image':>9}  {'AUC/patient':>11}  best epoch"]
    for f in summary["folds"]:
        lines.append(f"{f['fold']:>4}  {f['auc']:>9.4f}  {f['patient_auc']:>11.4f}  "
                     f"{f['best_epoch']:>10}")
    a, p = summary["auc"], summary["patient_auc"]
    lines.append(f"mean  {a['mean']:.4f} ± {a['sd']:.4f} per image, "
                 f"{p['mean']:.4f} ± {p['sd']:.4f} per patient "
                 f"(model kept: {summary.get('select', 'best')} epoch)")
    if summary.get("val_auc_by_epoch_mean"):
        lines.append("val AUC per image by epoch (fold mean): " + " ".join(
            f"{v:.3f}" for v in summary["val_auc_by_epoch_mean"]))
    return "\n".join(lines)


# =========================================================================== flags
_FLAG_HELP = {
    "data": "Converted data dir (fundus-convert output with manifest.json).",
    "model_dir": "Output dir: best.keras, saved_model/, history, run.json, logs/, backup/.",
    "backbone": "Backbone: one of " + ", ".join(backbones.BACKBONES) + ".",
    "weights": "Backbone weights: imagenet, none (random init), or a PATH to a "
               "include_top=False .weights.h5 file.",
    "image_size": "Training size, pixels (0: the backbone's default; >= its minimum).",
    "batch_size": "GLOBAL batch size (split across replicas).",
    "epochs": "Total epochs (head warmup + fine-tuning).",
    "warmup_epochs": "Stage 1 epochs: the head only, backbone frozen.",
    "fine_tune_fraction": "Stage 2: top fraction of backbone layers unfrozen (1.0 = all, "
                          "0 = head only for every epoch).",
    "optimizer": "Optimizer: sgd (momentum, nesterov), adam, adamw, rmsprop.",
    "learning_rate": "Stage 1 (head) peak learning rate.",
    "fine_tune_learning_rate": "Stage 2 peak learning rate (0: learning_rate * "
                               "fine_tune_lr_scale).",
    "fine_tune_lr_scale": "Stage 2 learning rate as a fraction of --learning_rate.",
    "momentum": "Momentum of sgd and rmsprop.",
    "nesterov": "Nesterov momentum for sgd.",
    "schedule": "Learning-rate schedule per stage: constant, cosine (linear warmup), step, "
                "plateau (reduce on a val AUC plateau).",
    "lr_warmup_fraction": "cosine: linear warmup over this fraction of a stage's steps.",
    "step_epochs": "step: epochs between learning-rate drops.",
    "step_factor": "step / plateau: multiply the learning rate by this at a drop.",
    "plateau_patience": "plateau: epochs without val AUC gain before a drop.",
    "weight_decay": "Decoupled weight decay (not on biases and normalisation scales).",
    "label_smoothing": "Binary label smoothing, 0..0.5.",
    "dropout": "Dropout before the output layer, 0..<1.",
    "class_weights": "Weight samples n / (2 n_class) from the training split's counts.",
    "age_loss_weight": "> 0 adds the auxiliary age-regression head with this loss weight.",
    "precision": "auto (mixed_float16 on GPU, else float32), float32, mixed_float16, "
                 "mixed_bfloat16.",
    "strategy": "auto (MirroredStrategy over >= 2 GPUs, else default device), mirrored, "
                "one_device, multi_worker (reads TF_CONFIG).",
    "seed": "Seed of weights init, shuffling, augmentation and dropout.",
    "patience": "Early stopping: stage-2 epochs without val AUC gain (0: off).",
    "select": "Which model is kept: best (the epoch with the best validation AUC; that "
              "AUC is then optimistic) or last (the last epoch; nothing is selected on "
              "validation, use it for honest --cv figures, with --patience=0).",
    "val_fold": "With --folds data: validate on fold i, train on the other folds.",
    "swa_epochs": "K > 0: keep the mean of the trainable weights after each of the last "
                  "K epochs (weight averaging; exact with frozen BatchNorm statistics); "
                  "needs --select=last. 0: off.",
    "tta": "Final validation prediction (run.json, cv.json): none, or flip (mean of the "
           "image and its left-right mirror, as fundus-evaluate --tta=flip).",
    "cache_budget_gb": "Decoded images are cached in memory when they fit this budget, GiB.",
    "cache_dir": "File cache for decoded images that exceed the budget (default: none).",
    "head_init": "Sex head start: random (Keras init) or logistic (an L2 logistic "
                 "regression fitted on the frozen backbone's standardised pooled features "
                 "of the training split, written into the head before the first stage).",
    "head_init_c": "--head_init=logistic: inverse L2 strength C (scikit-learn convention; "
                   "smaller is stronger).",
    "cache_frozen_prefix": "Run the frozen backbone prefix once per image (and its mirror "
                           "with --augment_flip), cache the activations in memory and train "
                           "the top on them (all --cv folds share one cache); only the flip "
                           "augmentation is possible.",
    "prefix_cache_dir": "With --cache_frozen_prefix: keep the activations in this "
                        "directory (one sub-directory per data/backbone/weights/size/cut/"
                        "flip key) and reuse them in later jobs (default: memory only).",
    "train_selection": "Training eyes: normal (keywords exactly normal fundus) or all "
                       "written eyes; validation always uses normal eyes.",
    "profile_batch": "TensorBoard profiler on this batch of the first epoch (0: off).",
    "image_grid": "Training images (input and augmented) logged to TensorBoard at start.",
    "overwrite": "Replace a finished or interrupted run in --model_dir.",
    "verbose": "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
}


def define_flags(flag_values=None) -> None:
    """Define the ``fundus-train`` absl flags (one per :class:`TrainConfig` field, plus
    ``--cv`` and the ``--augment_*`` flags of :mod:`pipeline.augment`)."""
    from absl import flags  # noqa: PLC0415

    fv = flag_values if flag_values is not None else flags.FLAGS
    enums = {"backbone": sorted(backbones.BACKBONES), "optimizer": list(OPTIMIZERS),
             "schedule": list(SCHEDULES), "strategy": list(distribute.CHOICES),
             "precision": list(precision.CHOICES), "train_selection": list(SELECTIONS),
             "select": list(SELECTS), "head_init": list(head_init_lib.CHOICES),
             "tta": list(model_io.TTAS)}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "augment" or f.name in fv:
            continue
        help_text = _FLAG_HELP[f.name]
        default = None if f.default is dataclasses.MISSING else f.default
        if f.name in enums:
            flags.DEFINE_enum(f.name, default, enums[f.name], help_text, flag_values=fv)
        elif isinstance(default, bool):
            flags.DEFINE_bool(f.name, default, help_text, flag_values=fv)
        elif f.name == "val_fold" or isinstance(default, int):
            flags.DEFINE_integer(f.name, default, help_text, flag_values=fv)
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, default, help_text, flag_values=fv)
        else:
            flags.DEFINE_string(f.name, default, help_text, flag_values=fv)
    if "cv" not in fv:
        flags.DEFINE_integer("cv", 0, "K >= 2: train every fold of --folds=K data into "
                             "model_dir/fold_i and write cv.json (0: one run).", flag_values=fv)
    augment.define_flags(fv)


def config_from_flags(flag_values=None) -> TrainConfig:
    """The :class:`TrainConfig` of the parsed flags (augmentation seeded by ``--seed``)."""
    from absl import flags  # noqa: PLC0415

    fv = flag_values if flag_values is not None else flags.FLAGS
    values = {f.name: getattr(fv, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name != "augment"}
    return TrainConfig(augment=augment.config_from_flags(fv, seed=fv.seed), **values)
