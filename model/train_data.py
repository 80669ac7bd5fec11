"""The training job's inputs: reader settings, datasets, split counts, probe and grid images.

``fundus-train`` and the tuner's trials read their data through these: :func:`read_config`
(the ``pipeline.reader`` settings of a ``TrainConfig``), :func:`build_datasets` (training
and validation ``tf.data`` pipelines, distributed when the strategy has several replicas),
:func:`describe_splits` (the record and class counts behind steps per epoch, majority
accuracy and class weights, with the start-up checks that need them),
:func:`probe_inputs` (the logistic head's feature batches) and :func:`sample_images` (the
TensorBoard image grid). The validation split is ``val`` or fold ``--val_fold``; the test
split is never read here.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np

from model import classifier
from model.train_config import TrainConfig
from pipeline import reader


def read_config(cfg: TrainConfig, image_size: int, training: bool) -> reader.ReadConfig:
    """The reader settings of ``cfg``'s training (``training=True``) or validation input."""
    return reader.ReadConfig(
        image_size=image_size, batch_size=cfg.batch_size, cache_budget_gb=cfg.cache_budget_gb,
        cache_dir=cfg.cache_dir, sample_weights=bool(training and cfg.class_weights),
        with_age=cfg.age_loss_weight > 0, normal_only=cfg.train_selection == "normal",
        seed=cfg.seed)


def build_datasets(cfg: TrainConfig, strategy, image_size: int) -> tuple:
    """``(train_ds, val_ds, train_spec, val_spec)``; distributed when replicas > 1."""
    train_spec, val_spec = reader.training_split(cfg.data, cfg.val_fold)
    tr, va = read_config(cfg, image_size, True), read_config(cfg, image_size, False)
    if strategy.num_replicas_in_sync > 1:
        train = reader.distributed_dataset(strategy, cfg.data, train_spec, True, tr)
        val = reader.distributed_dataset(strategy, cfg.data, val_spec, False, va)
    else:
        train = reader.make_dataset(cfg.data, train_spec, True, tr)
        val = reader.make_dataset(cfg.data, val_spec, False, va)
    return train, val, train_spec, val_spec


@dataclasses.dataclass(frozen=True)
class Splits:
    """The training and validation splits of a run and their class counts."""

    train_spec: reader.SplitSpec
    val_spec: reader.SplitSpec
    train: reader.SplitStats
    val: reader.SplitStats
    batch_size: int

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (the reader drops the last partial batch)."""
        return self.train.records // self.batch_size

    @property
    def majorities(self) -> tuple[float, float]:
        """(train, val) accuracy of always answering the split's more common sex."""
        return tuple(max(s.male, s.female) / s.records for s in (self.train, self.val))


def describe_splits(cfg: TrainConfig) -> Splits:
    """Count the run's splits; ``ValueError`` when the batch is larger than the training
    split or the validation split lacks a class (ROC AUC needs both)."""
    train_spec, val_spec = reader.training_split(cfg.data, cfg.val_fold)
    train = reader.split_stats(cfg.data, train_spec,
                               normal_only=cfg.train_selection == "normal")
    val = reader.split_stats(cfg.data, val_spec, normal_only=True)
    if train.records < cfg.batch_size:
        raise ValueError(f"--batch_size={cfg.batch_size} is larger than the training "
                         f"split ({train.records} images of {train_spec.name}); lower it")
    if min(val.male, val.female) == 0:
        raise ValueError(f"--data={cfg.data}: validation split {val_spec.name} has "
                         f"{val.male} male / {val.female} female images; ROC AUC needs "
                         f"both classes")
    return Splits(train_spec, val_spec, train, val, cfg.batch_size)


def probe_inputs(cfg: TrainConfig, model, cached, splits: Splits, image_size: int,
                 raw: bool = False):
    """``(features model, training batches, validation batches)`` for the logistic head:
    the head's input (pooled features of the frozen backbone; standardised multi-depth
    features), in evaluation order, labels only. ``raw``: the multi-depth features before
    their standardisation (what ``model.features.fit_standardize`` measures)."""
    if cached is not None:
        return (cached.raw_features if raw else cached.features), cached.train_eval_ds, \
            cached.val_ds
    layer = classifier.raw_features_name(model) if raw else classifier.head_input_name(model)
    features = keras.Model(model.input, model.get_layer(layer).output)
    tr = dataclasses.replace(read_config(cfg, image_size, True), sample_weights=False,
                             with_age=False, cache_budget_gb=0.0, cache_dir=None)
    va = dataclasses.replace(tr, normal_only=True)
    return (features, reader.make_dataset(cfg.data, splits.train_spec, False, tr),
            reader.make_dataset(cfg.data, splits.val_spec, False, va))


def sample_images(cfg: TrainConfig, spec, image_size: int) -> np.ndarray:
    """A few training images (uint8) for the TensorBoard grid, read without a cache."""
    n = max(1, min(cfg.image_grid, cfg.batch_size))
    rc = dataclasses.replace(read_config(cfg, image_size, False), batch_size=n,
                             cache_budget_gb=0.0, cache_dir=None, sample_weights=False,
                             with_age=False)
    for images, _ in reader.make_dataset(cfg.data, spec, False, rc).take(1):
        return images.numpy()
    raise ValueError(f"--data={cfg.data}: the training split is empty")
