"""Optimizers and learning-rate schedules of a training stage.

Each stage (``model.train_config.TrainConfig.stages``) gets a fresh optimizer from
:func:`make_optimizer` whose learning rate comes from :func:`learning_rate_for`: a float
for the ``constant``, ``step`` and ``plateau`` schedules (the last two change it per epoch
through callbacks: :func:`step_schedule`, Keras' ``ReduceLROnPlateau``) or the
serializable :class:`WarmupCosine` schedule spanning the stage's steps. Learning rates are
in optimizer units (per step); steps are optimizer iterations. Weight decay is decoupled
and skips biases and normalisation scales (:data:`NO_DECAY`).
"""
from __future__ import annotations

import math
from typing import Callable

import keras

from model.train_config import OPTIMIZERS, TrainConfig

NO_DECAY = ("bias", "gamma", "beta")     # variables excluded from weight decay


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


def step_schedule(cfg: TrainConfig, peak: float, first_epoch: int) -> Callable:
    """``epoch -> lr`` of the ``step`` schedule (for ``LearningRateScheduler``)."""
    def fn(epoch: int, lr: float | None = None) -> float:
        return float(peak * cfg.step_factor ** ((epoch - first_epoch) // cfg.step_epochs))
    return fn



def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate now (schedules evaluated at its iteration count)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))
