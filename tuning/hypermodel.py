"""The HyperModel: one trial = the training job's model and stages with trial values.

Nothing here builds or trains a model in its own way. A trial's configuration is the
sweep's base :class:`model.train_config.TrainConfig` (the ``fundus-train`` flags, defaults
and overrides) with the searched values written into it by :func:`apply_values`. Then:

* :meth:`FundusHyperModel.build`: ``model.precision.set_policy`` (again every trial:
  ``keras.backend.clear_session`` resets the global dtype policy), the seed, and
  ``model.classifier.build_classifier`` of ``training.classifier_config`` (what ``train``
  builds; keras-tuner calls it inside the ``distribution_strategy`` scope);
* :meth:`FundusHyperModel.fit`: the training job's own pieces: its input pipeline
  (``train_data.build_datasets``), split counts and checks (``train_data.describe_splits``)
  and its two-stage loop (``training.run_stages``: head, then fine-tune the top
  ``fine_tune_fraction``, each stage compiled and run with the job's callbacks).

Per trial it writes, in the keras-tuner trial dir: ``best.keras`` + ``best.json``
(``SelectBest``, as ``fundus-train``), ``history.csv``, ``config.json`` (the trial's
TrainConfig); and TensorBoard logs in ``logs_root/<trial_id>`` (``train/``,
``validation/``) holding the trial's HParams session (:mod:`model.hparams`: its recipe,
``validation ROC AUC`` = the best epoch's value reported to the oracle, loss, wall time).

Datasets are built once per input configuration (image size, batch size, and the
read flags) and kept for the whole sweep in :class:`DatasetCache`; the reader caches the
decoded uint8 images in memory (or in ``--cache_dir``), so every image is decoded once
per image size and batch size, not once per trial.

The value reported to the oracle is ``val_auc``: the best epoch's validation ROC AUC
(Keras ``AUC(num_thresholds=1000)``, the metric ``fundus-train`` selects its best epoch
by), maximised.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from typing import Any, Mapping

import keras
import keras_tuner
import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2

from model import augment, classifier, hparams, precision, rundir, train_data, training
from model.train_config import TrainConfig
from pipeline import fileio
from tuning import space as space_lib

OBJECTIVE_NAME = "val_auc"
CONFIG_JSON = "config.json"


def objective() -> keras_tuner.Objective:
    """The sweep objective: validation ROC AUC, maximised (named explicitly)."""
    return keras_tuner.Objective(OBJECTIVE_NAME, direction="max")


# ----------------------------------------------------------------- values -> config
def _augment_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(augment.AugmentConfig)}


def settable_names() -> list[str]:
    """Every name :func:`apply_values` accepts: TrainConfig fields (the ``fundus-train``
    flags) and ``augment_<AugmentConfig field>`` (model.augment's flags)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)
             if f.name not in ("data", "model_dir", "augment")]
    return names + [augment.FLAG_PREFIX + n for n in _augment_fields() if n != "seed"]


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Cast ``value`` to the type of the field's current value (JSON gives 3 for 3.0)."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expects true/false, got {value!r}")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"{name}: expects an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expects a number, got {value!r}")
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        raise ValueError(f"{name}: expects a string, got {value!r}")
    return value


def apply_values(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``values`` written in: TrainConfig fields by name, ``augment_<f>``
    into ``base.augment`` (``AugmentConfig(seed=base.seed)`` when None, as ``train``).

    Keras-tuner's own entries (``tuner/epochs`` ...) are ignored. Raises ValueError naming
    an unknown name or a value of the wrong type.
    """
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    aug_fields = _augment_fields()
    top: dict[str, Any] = {}
    aug: dict[str, Any] = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        if name in train_fields and name not in ("data", "model_dir", "augment"):
            top[name] = _coerce(name, value, getattr(base, name))
        elif name.startswith(augment.FLAG_PREFIX) and \
                name[len(augment.FLAG_PREFIX):] in aug_fields:
            field = name[len(augment.FLAG_PREFIX):]
            aug[field] = value
        else:
            raise ValueError(f"{name}: not a fundus-train flag; use one of "
                             f"{', '.join(settable_names())}")
    cfg = dataclasses.replace(base, **top)
    if aug:
        current = cfg.augment_config()
        aug = {k: _coerce(augment.FLAG_PREFIX + k, v, getattr(current, k))
               for k, v in aug.items()}
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(current, **aug))
    return cfg


# fundus-train flags a trial does not apply (its objective is the best epoch's val AUC,
# on images): refused instead of ignored
_TRIAL_DEFAULTS = {"cache_frozen_prefix": False, "prefix_cache_dir": None,
                   "head_init": "random", "select": "best", "swa_epochs": 0, "tta": "none",
                   "feature_layers": ""}


def check_trial_flags(cfg: TrainConfig, where: str = "") -> None:
    """Raise ValueError naming the ``fundus-train`` flags set in ``cfg`` that a sweep's
    trials do not apply (:data:`_TRIAL_DEFAULTS`)."""
    if cfg.strategy == "multi_worker":
        raise ValueError(f"{where + ': ' if where else ''}--strategy=multi_worker: fundus-tune "
                         f"trials train with Keras fit, which fails under "
                         f"MultiWorkerMirroredStrategy (Keras 3); spread trials over VMs with "
                         f"the tuner's chief/worker roles, each worker with --strategy=mirrored")
    bad = [f"--{k}={getattr(cfg, k)}" for k, v in _TRIAL_DEFAULTS.items()
           if getattr(cfg, k) != v]
    if bad:
        raise ValueError(f"{where + ': ' if where else ''}{', '.join(bad)}: fundus-train "
                         f"flags that fundus-tune trials do not apply (a trial keeps its "
                         f"best epoch by validation AUC, trained on images); drop them "
                         f"from the sweep and use them in fundus-train")


def check_space(base: TrainConfig, space: space_lib.SearchSpace) -> None:
    """Every searched name must be settable, and every corner value (choices, min, max)
    valid for the training job (``TrainConfig.validate``; its value checks run only when
    ``base.data`` holds a manifest, as on the machines that train)."""
    check_trial_flags(base)
    names = set(settable_names())
    for name in space.searched:
        if name not in names:
            raise ValueError(f"{name}: searched but not a fundus-train flag")
    # One name at a time; when the image size is searched too, other names are checked
    # at the backbone's default size (a backbone/size pair below the backbone's minimum
    # fails that trial only, as FAILED in the summary).
    sized = dataclasses.replace(base, image_size=0) if "image_size" in space.searched else base
    for name, p in space.searched.items():
        corners = p.values if p.kind == "choice" else (p.min, p.max)
        for v in corners:
            cfg = apply_values(base if name == "image_size" else sized, {name: v})
            _validate_flags(cfg, f"{name}={v!r} ({p.source})")


def _validate_flags(cfg: TrainConfig, where: str) -> None:
    """``TrainConfig.validate`` minus the data-dir check (the chief has no data), and
    :func:`check_trial_flags`."""
    check_trial_flags(cfg, where)
    try:
        dataclasses.replace(cfg, data=cfg.data or ".", model_dir=cfg.model_dir or ".").validate()
    except FileNotFoundError as e:
        if "manifest" not in str(e):
            raise ValueError(f"{where}: {e}") from e
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


# ------------------------------------------------------------------------ datasets
class DatasetCache:
    """The sweep's datasets, built once per input configuration and reused by trials.

    Key: everything ``train_data.read_config`` reads (image size, batch size, sample
    weights, age labels, selection, cache settings, seed) plus the validation fold. The
    reader caches decoded images inside each dataset (memory, else ``cache_dir``), so a
    dataset's second and later passes read no JPEG. Datasets belong to ``strategy``.
    """

    def __init__(self, strategy):
        self.strategy = strategy
        self._sets: dict[tuple, tuple] = {}
        self.builds = 0

    @staticmethod
    def key(cfg: TrainConfig, image_size: int) -> tuple:
        rc = train_data.read_config(cfg, image_size, True)
        return (os.path.abspath(cfg.data), cfg.val_fold, dataclasses.astuple(rc))

    def get(self, cfg: TrainConfig, image_size: int) -> tuple:
        """``(train_ds, val_ds, train_spec, val_spec)`` of ``cfg`` at ``image_size``."""
        k = self.key(cfg, image_size)
        if k not in self._sets:
            self._sets[k] = train_data.build_datasets(cfg, self.strategy, image_size)
            self.builds += 1
        return self._sets[k]

    def __len__(self) -> int:
        return len(self._sets)


# ------------------------------------------------------------------------- HParams
def write_hparams_config(logs_root: str, space: space_lib.SearchSpace) -> None:
    """The HParams experiment at the root of the sweep's logs: ``model.hparams``'s one
    experiment (the same as every ``fundus-train`` run writes, so sweeps and runs share
    one table), the searched names listed first and marked as differing."""
    hparams.write_experiment(logs_root, varied=list(space.searched))


def write_trial_hparams(logdir: str, cfg: TrainConfig, start_time: float | None = None
                        ) -> None:
    """The trial's session start in its TensorBoard run dir: the recipe of its
    TrainConfig (``model.hparams.recipe_hparams``; the searched values among them)."""
    hparams.write_session_start(logdir, hparams.recipe_hparams(cfg), start_time,
                                experiment=False)


def write_trial_metrics(logdir: str, cfg: TrainConfig, best: Mapping | None,
                        history: list[dict], wall_seconds: float) -> None:
    """The trial's metrics and session end: ``validation ROC AUC`` is the best epoch's
    value, the objective reported to the oracle (``summary.csv`` ``val_auc``); a trial
    without a finite epoch ends as failed."""
    if best is None:
        hparams.write_session_end(logdir, {}, status=api_pb2.STATUS_FAILURE)
    else:
        hparams.write_session_end(
            logdir, hparams.trial_metrics(cfg, best, history, wall_seconds))


# ---------------------------------------------------------------------- HyperModel
class FundusHyperModel(keras_tuner.HyperModel):
    """Searches ``space`` around ``base``; see the module docstring.

    Args:
      base: the sweep's TrainConfig (``model_dir`` unused: trials write to their dirs).
      space: the resolved search space (its fixed overrides already in ``base``).
      logs_root: TensorBoard root; trial ``t`` logs to ``logs_root/t``.
      strategy: the ``tf.distribute`` strategy trials train under (datasets belong to it).
    """

    def __init__(self, base: TrainConfig, space: space_lib.SearchSpace,
                 logs_root: str, strategy=None):
        super().__init__(name="fundus_sex")
        self.base = base
        self.space = space
        self.logs_root = logs_root
        self.strategy = strategy
        self._data: DatasetCache | None = None

    # keras-tuner API ------------------------------------------------------------------
    def declare_hyperparameters(self, hp) -> None:
        for p in self.space.searched.values():
            space_lib.declare(hp, p)

    def values(self, hp) -> dict[str, Any]:
        """The trial's searched values (declaring them on ``hp`` when new)."""
        return {name: space_lib.declare(hp, p) for name, p in self.space.searched.items()}

    def trial_config(self, hp) -> TrainConfig:
        """The TrainConfig of this trial: ``base`` + the searched values (+ hyperband's
        epoch budget ``tuner/epochs`` as ``epochs``)."""
        cfg = apply_values(self.base, self.values(hp))
        if "tuner/epochs" in hp.values:
            cfg = dataclasses.replace(cfg, epochs=int(hp.values["tuner/epochs"]))
        return cfg

    def build(self, hp) -> keras.Model:
        """``build_classifier`` of the trial's config (backbone frozen, uncompiled)."""
        cfg = self.trial_config(hp)
        precision.set_policy(cfg.precision)        # clear_session reset it
        keras.utils.set_random_seed(cfg.seed)
        try:
            ccfg = training.classifier_config(cfg)
        except ValueError as e:                     # e.g. xception at 32 px: not this trial
            raise keras_tuner.errors.FailedTrialError(str(e)) from e
        return classifier.build_classifier(ccfg)

    def data(self) -> DatasetCache:
        """The sweep's :class:`DatasetCache` (built on first use, under the strategy)."""
        if self._data is None:
            self._data = DatasetCache(self.strategy or tf.distribute.get_strategy())
        return self._data

    @property
    def datasets_built(self) -> int:
        """Distinct input configurations built so far (0 before the first trial)."""
        return len(self._data) if self._data is not None else 0

    def fit(self, hp, model, *args, trial_dir: str = "", trial_id: str = "",
            callbacks=None, epochs: int | None = None, initial_epoch: int = 0,
            verbose: Any = None, **kwargs) -> dict[str, float]:
        """Train ``model`` through the training job's stages (``training.run_stages``);
        returns the best epoch's logs with ``val_auc`` (the objective).

        ``epochs`` / ``initial_epoch`` come from Hyperband (``tuner/epochs`` budget; the
        model then holds the weights of the trial it continues). ``callbacks`` (keras-tuner's
        checkpoint and progress callbacks) are added to every stage. ``verbose`` (from
        ``tuner.search``) is ignored: the trial's ``--verbose`` applies.
        """
        if args or kwargs:
            raise TypeError(f"unexpected fit arguments {args} {sorted(kwargs)}")
        cfg = self.trial_config(hp)
        if epochs:
            cfg = dataclasses.replace(cfg, epochs=int(epochs))
        strategy = self.data().strategy
        train_ds, val_ds, _, _ = self.data().get(cfg, cfg.input_size())
        try:
            splits = train_data.describe_splits(cfg)
        except ValueError as e:
            raise keras_tuner.errors.FailedTrialError(str(e)) from e

        trial_dir = trial_dir or os.path.join(self.logs_root, "..", f"trial_{trial_id}")
        logdir = os.path.join(self.logs_root, str(trial_id))
        _fresh_trial_outputs(trial_dir, logdir)
        rundir.write_json(os.path.join(trial_dir, CONFIG_JSON), cfg.to_json())
        started = time.time()
        write_trial_hparams(logdir, cfg, started)
        training.run_stages(model, cfg, strategy, train_ds, val_ds, splits,
                            run_dir=trial_dir, logs_dir=logdir, initial_epoch=initial_epoch,
                            extra_callbacks=callbacks or (), job=f"fundus-tune trial {trial_id}")
        best = fileio.read_json(os.path.join(trial_dir, rundir.BEST_JSON))
        write_trial_metrics(logdir, cfg, best,
                            rundir.read_history(os.path.join(trial_dir, rundir.HISTORY_CSV)),
                            time.time() - started)
        if best is None:
            raise keras_tuner.errors.FailedTrialError(
                f"trial {trial_id}: no epoch gave a finite {cfg.metric_key('auc')} "
                f"(see {trial_dir})")
        metrics = {k: float(v) for k, v in best["logs"].items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        metrics[OBJECTIVE_NAME] = float(best["value"])
        metrics["best_epoch"] = float(best["epoch"] + 1)
        return metrics


def _fresh_trial_outputs(trial_dir: str, logdir: str) -> None:
    """Remove what an interrupted earlier run of this trial left (a rerun starts clean);
    keras-tuner's own ``trial.json`` stays."""
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(trial_dir, exist_ok=True)
    for name in (rundir.BEST_MODEL, rundir.BEST_JSON, rundir.HISTORY_CSV, CONFIG_JSON,
                 "checkpoint.weights.h5"):
        path = os.path.join(trial_dir, name)
        if os.path.exists(path):
            os.remove(path)
