"""The Keras callbacks of a training stage, and the list every stage runs with.

:func:`stage_callbacks` is the one list (``fundus-train`` and tuner trials alike):
:class:`LearningRateLogger` and :class:`MajorityAccuracy` (extra log columns), the
``step`` / ``plateau`` schedule, ``TerminateOnNaN``, :class:`SelectBest` (the kept model
and early stopping, restart-safe), ``history.csv`` and TensorBoard. ``fundus-train`` adds
:class:`WeightAverage` (``--swa_epochs``), :class:`ImageGrid` and ``BackupAndRestore``
(``model.training.run_stages``). Files go through :mod:`model.rundir`; epochs are 0-based
in the code, 1-based in messages.
"""
from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from model import optim, rundir
from model.train_config import SELECTS, STAGE_FINE_TUNE, TrainConfig
from pipeline import fileio


class LearningRateLogger(keras.callbacks.Callback):
    """Writes the learning rate at the end of the epoch into the logs (CSV, TensorBoard).

    Put it first in the callback list: it then records the rate the epoch ended with,
    before ``ReduceLROnPlateau`` lowers it for the next epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = optim.current_learning_rate(self.model.optimizer)


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
        self.best = fileio.read_json(self.state_path)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"{self.monitor} is not in the epoch logs "
                           f"({sorted(logs)}); is there a validation split?")
        value = float(value)
        if not math.isnan(value) and (self.best is None or value > self.best["value"]
                                      or self.keep == "last"):
            rundir.save_model(self.target or self.model, self.path)
            self.best = {"epoch": int(epoch), "value": value, "monitor": self.monitor,
                         "logs": {k: float(v) for k, v in logs.items()}}
            rundir.write_json(self.state_path, self.best)
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
        rundir.save_model(self.target, self.path)
        best = fileio.read_json(self.state_path) or {}
        best["swa_epochs"] = [self.last_epoch - self.count + 2, self.last_epoch + 1]
        rundir.write_json(self.state_path, best)



def stage_callbacks(cfg: TrainConfig, stage: str, first: int, peak: float, *,
                    run_dir: str, logs_dir: str, majorities: tuple[float, float],
                    target: keras.Model | None = None, keep: str = "best",
                    profile_batch: int = 0) -> list:
    """The callbacks every stage runs with, in order (shared by ``fundus-train`` and the
    tuner): learning-rate and majority-accuracy logging, the step / plateau schedule,
    ``TerminateOnNaN``, :class:`SelectBest` (``best.keras`` / ``best.json`` in
    ``run_dir``; early stopping counts from the fine-tune stage only), ``history.csv``
    and TensorBoard in ``logs_dir``. ``majorities``: (train, val) majority accuracy."""
    monitor = cfg.metric_key("auc")
    cbs: list = [LearningRateLogger(), MajorityAccuracy(*majorities)]
    if cfg.schedule == "step":
        cbs.append(keras.callbacks.LearningRateScheduler(optim.step_schedule(cfg, peak, first)))
    elif cfg.schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="max", factor=cfg.step_factor,
            patience=cfg.plateau_patience, min_lr=peak * 1e-3))
    cbs += [
        keras.callbacks.TerminateOnNaN(),
        SelectBest(os.path.join(run_dir, rundir.BEST_MODEL),
                   os.path.join(run_dir, rundir.BEST_JSON),
                   monitor, cfg.patience,
                   stop_from_epoch=first if stage == STAGE_FINE_TUNE else cfg.epochs,
                   target=target, keep=keep),
        keras.callbacks.CSVLogger(os.path.join(run_dir, rundir.HISTORY_CSV), append=True),
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


class StopOnRequest(keras.callbacks.Callback):
    """Stops a fit cleanly at the end of the running batch once :meth:`request` was called
    (``fundus-train``'s Ctrl-C handler calls it): raises ``KeyboardInterrupt`` from the
    batch-end hook, a plain Python frame, so nothing inside TensorFlow can swallow it.
    The epoch in progress is lost; the last finished epoch's ``BackupAndRestore`` state
    stays, and the same command resumes from it. Outside a fit (start-up, the prefix
    cache, between stages, the final validation and export) and on a second request
    (Ctrl-C pressed again) :meth:`request` raises at once."""

    def __init__(self, say=None):
        super().__init__()
        self.requested = False
        self.fitting = False
        self.say = say          # callable(str) telling the user what happens, or None

    def request(self) -> None:
        """Ask the running fit to stop after this batch (raise now outside a fit or when
        asked twice)."""
        if self.requested or not self.fitting:
            raise KeyboardInterrupt
        self.requested = True
        if self.say:
            self.say("stopping after this batch (the last finished epoch is backed up); "
                     "Ctrl-C again to stop at once")

    def on_train_begin(self, logs=None):
        self.fitting = True

    def on_train_end(self, logs=None):
        self.fitting = False

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            raise KeyboardInterrupt

    on_test_batch_end = on_train_batch_end
