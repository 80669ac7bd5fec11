"""TensorBoard HParams sessions: one per training run, CV fold, CV and tuner trial.

Every session is a TensorBoard run dir (``D/logs`` of a model dir, ``D/logs`` of a
``--cv`` dir, ``DIR/logs/<trial>`` of a sweep) holding

* the HParams experiment (:func:`experiment_pb`): the same hyperparameters and metrics
  whoever writes it, so ``tensorboard --logdir ROOT`` over any mix of model dirs, CV dirs
  and sweeps shows one table and one parallel-coordinates view (the plugin reads the first
  experiment it finds);
* the session start: the recipe (:func:`recipe_hparams`: the ``TrainConfig`` fields that
  change what is trained, ``--augment_*`` included; not paths, verbosity, overwrite, cache
  or distribution settings), ``val_fold`` for a fold and ``cv`` (K) for a whole CV;
* the metrics, as scalars at step 0 under ``hparams/`` (:data:`METRICS`), then the
  session end.

``validation ROC AUC`` (``hparams/validation_roc_auc``) is the value the session was
ranked or kept by: a trial's best epoch's Keras validation AUC (the oracle's objective,
``summary.csv`` ``val_auc``), a run's exact per-image AUC of the kept model (``run.json``
``val.auc``), a CV's mean over its folds (``cv.json`` ``auc.mean``). The last epoch's value
is ``last-epoch validation ROC AUC``.

Session names are the run dirs' paths below the TensorBoard root and the group name is
left empty (the plugin then uses the session name), so sessions of different model dirs
and sweeps never merge. The session's own event files end in :data:`SUFFIX`; a session
written again (a resumed CV, a tuner trial copied to ``best/``) replaces them.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import time
from typing import Any, Iterable, Mapping

import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hp_summary

from model import augment
from model.train_config import TrainConfig

SUFFIX = ".hparams"          # file-name suffix of the session's own event files


@dataclasses.dataclass(frozen=True)
class Metric:
    """One HParams metric: its scalar tag (in the session's run dir), name, meaning."""

    tag: str
    name: str
    description: str


METRICS = (
    Metric("hparams/validation_roc_auc", "validation ROC AUC",
           "The value the session was ranked or kept by, the same for trials and runs: "
           "the kept epoch's Keras validation AUC (1000 thresholds; best.json value: a "
           "trial's best epoch = the tuner's objective = summary.csv val_auc; a run's "
           "kept epoch, best or last by --select); CV: mean over the folds."),
    Metric("hparams/validation_exact_roc_auc", "validation ROC AUC, exact",
           "Exact per-image AUC of the kept model file (run.json val.auc; with --tta, "
           "and after --swa_epochs averaging); CV: mean over the folds (cv.json "
           "auc.mean)."),
    Metric("hparams/validation_patient_roc_auc", "validation ROC AUC per patient",
           "Exact AUC of the kept model on the mean of a patient's eyes (runs; CV: mean "
           "over the folds)."),
    Metric("hparams/oof_roc_auc", "out-of-fold ROC AUC",
           "CV only: exact per-image AUC of every fold's validation predictions pooled."),
    Metric("hparams/validation_loss", "validation loss",
           "Kept epoch's validation loss (CV: mean over the folds)."),
    Metric("hparams/wall_seconds", "wall time (s)",
           "Seconds from the start of the run to its record (CV: sum over the folds)."),
    Metric("hparams/last_epoch_validation_roc_auc", "last-epoch validation ROC AUC",
           "Keras validation AUC after the last epoch run."),
    Metric("hparams/training_roc_auc", "training ROC AUC",
           "Keras training AUC of the kept epoch (augmented images)."),
    Metric("hparams/kept_epoch", "kept epoch", "1-based epoch of the kept model."),
)
TAGS = {m.name: m.tag for m in METRICS}      # metric name -> tag
VAL_AUC = TAGS["validation ROC AUC"]

# TrainConfig fields that do not change what is trained
NOT_RECIPE = ("data", "model_dir", "augment", "cache_budget_gb", "cache_dir",
              "prefix_cache_dir", "cache_frozen_prefix", "profile_batch", "image_grid",
              "overwrite", "verbose", "strategy")
# marked as differing in a run's experiment: the dashboard shows them by default
FIRST = ("backbone", "image_size", "learning_rate", "optimizer", "epochs")


# ============================================================ hyperparameters
def _recipe_fields() -> list[tuple[str, Any, tuple | None, str]]:
    """``(hparam name, default, choices, description)`` of every recipe hyperparameter,
    in display order."""
    out = [(f.name, f.default, f.metadata.get("choices"), f.metadata.get("help", ""))
           for f in dataclasses.fields(TrainConfig) if f.name not in NOT_RECIPE]
    out += [(augment.FLAG_PREFIX + f.name, f.default, None, f"--{augment.FLAG_PREFIX}"
             f"{f.name}") for f in dataclasses.fields(augment.AugmentConfig)
            if f.name != "seed"]
    out.append(("cv", 0, None, "--cv: number of folds (a whole CV's session only)."))
    first = [r for n in FIRST for r in out if r[0] == n]
    return first + [r for r in out if r[0] not in FIRST]


def recipe_names() -> list[str]:
    """Every hyperparameter a session may carry, in display order."""
    return [r[0] for r in _recipe_fields()]


def recipe_hparams(cfg: TrainConfig, cv: int | None = None) -> dict[str, Any]:
    """The session's hyperparameters: the recipe fields of ``cfg`` (bool, number or str;
    ``image_size`` resolved by ``cfg.input_size()``; a weights file by its base name;
    ``val_fold`` only when set) plus ``cv`` = K for a whole CV."""
    flat = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RECIPE}
    try:
        flat["image_size"] = cfg.input_size()
    except ValueError:
        pass
    if flat.get("weights") not in (None, "imagenet", "none"):
        flat["weights"] = os.path.basename(str(flat["weights"]))
    aug = cfg.augment_config()
    for f in dataclasses.fields(aug):
        if f.name != "seed":
            flat[augment.FLAG_PREFIX + f.name] = getattr(aug, f.name)
    if cv:
        flat["cv"] = int(cv)
    out = {}
    for name in recipe_names():
        v = flat.get(name)
        if v is None:
            continue
        v = v.item() if hasattr(v, "item") else v
        out[name] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def _hparam_info(name: str, default: Any, choices, description: str,
                 varied: bool) -> api_pb2.HParamInfo:
    info = api_pb2.HParamInfo(name=name, description=description, differs=varied)
    if isinstance(default, bool):
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend([False, True])
    elif choices:
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(list(choices))
    elif isinstance(default, str):
        info.type = api_pb2.DATA_TYPE_STRING
    else:                                   # numbers, and val_fold (None by default)
        info.type = api_pb2.DATA_TYPE_FLOAT64
    return info


def experiment_pb(varied: Iterable[str] | None = None):
    """The HParams experiment summary: every recipe hyperparameter (types, and the
    allowed values of booleans and enum flags; numbers without a domain, so runs of any
    value fit) and :data:`METRICS` on the session's run dir. ``varied``: names marked as
    differing (a sweep's searched names; default :data:`FIRST`): TensorBoard lists those
    first and the dashboard shows five hyperparameters until more are ticked."""
    varied = list(FIRST if varied is None else varied)
    rows = _recipe_fields()
    rows = [r for n in varied for r in rows if r[0] == n] + \
        [r for r in rows if r[0] not in varied]
    infos = [_hparam_info(*r, varied=r[0] in varied) for r in rows]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=m.tag),
                                  display_name=m.name, description=m.description)
               for m in METRICS]
    return hp_summary.experiment_pb(infos, metrics)


# ================================================================== writing
def _write(logdir: str, write_fn) -> None:
    os.makedirs(logdir, exist_ok=True)
    writer = tf.summary.create_file_writer(logdir, filename_suffix=SUFFIX)
    with writer.as_default():
        write_fn()
    writer.flush()
    writer.close()


def _raw(pb) -> None:
    tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=0)


def clear_session(logdir: str) -> None:
    """Remove the session's own event files (``*`` :data:`SUFFIX`) from ``logdir`` (not
    from its sub-directories)."""
    for path in glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*" + SUFFIX)):
        os.remove(path)


def write_experiment(logdir: str, varied: Iterable[str] | None = None) -> None:
    """The experiment (:func:`experiment_pb`) alone, e.g. at the root of a sweep's logs."""
    _write(logdir, lambda: _raw(experiment_pb(varied)))


def write_session_start(logdir: str, hparams: Mapping[str, Any],
                        start_time: float | None = None, experiment: bool = True,
                        varied: Iterable[str] | None = None) -> None:
    """The session start (a running session) in ``logdir``, after the experiment
    (:func:`experiment_pb` of ``varied``) unless ``experiment=False`` (a sweep's trial:
    the experiment is at the sweep's logs root)."""
    def write():
        if experiment:
            _raw(experiment_pb(varied))
        _raw(hp_summary.session_start_pb(dict(hparams), start_time_secs=start_time))
    _write(logdir, write)


def write_session_end(logdir: str, metrics: Mapping[str, float],
                      status: int = api_pb2.STATUS_SUCCESS) -> None:
    """The metrics (``{tag: value}``; None and non-finite values left out) at step 0,
    then the session end."""
    def write():
        for tag, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                tf.summary.scalar(tag, float(value), step=0)
        _raw(hp_summary.session_end_pb(status))
    _write(logdir, write)


def write_session(logdir: str, hparams: Mapping[str, Any], metrics: Mapping[str, float],
                  start_time: float | None = None, varied: Iterable[str] | None = None
                  ) -> None:
    """A finished session in ``logdir``, replacing one written there before."""
    clear_session(logdir)
    write_session_start(logdir, hparams, start_time, varied=varied)
    write_session_end(logdir, metrics)


# ================================================================== the metrics
def _num(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def kept_metrics(cfg: TrainConfig, best: Mapping, history: list[dict]) -> dict[str, float]:
    """Metrics read off ``best.json`` (``best``) and ``history.csv`` rows: the kept
    epoch's validation loss and training AUC, the last epoch's validation AUC, the kept
    epoch (1-based)."""
    logs = best.get("logs") or {}
    last = history[-1] if history else {}
    epoch = _num(best.get("epoch"))
    return {TAGS["validation loss"]: _num(logs.get("val_loss")),
            TAGS["training ROC AUC"]: _num(logs.get(cfg.metric_key("auc", False))),
            TAGS["last-epoch validation ROC AUC"]: _num(last.get(cfg.metric_key("auc"))),
            TAGS["kept epoch"]: None if epoch is None else epoch + 1}


def trial_metrics(cfg: TrainConfig, best: Mapping, history: list[dict],
                  wall_seconds: float | None) -> dict[str, float]:
    """A tuner trial's metrics: ``validation ROC AUC`` = its best epoch's value (the
    oracle's objective) and :func:`kept_metrics`."""
    return {VAL_AUC: _num(best.get("value")), **kept_metrics(cfg, best, history),
            TAGS["wall time (s)"]: _num(wall_seconds)}


def run_metrics(cfg: TrainConfig, record: Mapping, history: list[dict]) -> dict[str, float]:
    """A run's metrics from its record (``run.json``): ``validation ROC AUC`` = the kept
    epoch's value (``best.value``, what the run was kept by, as a trial's), the exact
    ``val.auc`` and ``val.patient_auc``, ``wall_seconds``, and :func:`kept_metrics` of its
    ``best``."""
    val = record.get("val") or {}
    best = dict(record.get("best") or {})
    best["epoch"] = int(best.get("epoch", 0)) - 1          # the record's epoch is 1-based
    return {VAL_AUC: _num(best.get("value")),
            TAGS["validation ROC AUC, exact"]: _num(val.get("auc")),
            TAGS["validation ROC AUC per patient"]: _num(val.get("patient_auc")),
            **kept_metrics(cfg, best, history),
            TAGS["wall time (s)"]: _num(record.get("wall_seconds"))}


def cv_metrics(summary: Mapping, records: list[Mapping]) -> dict[str, float]:
    """A whole CV's metrics from ``cv.json`` (``summary``) and the folds' records: means
    over folds, the pooled out-of-fold AUC (``summary["oof"]["auc"]`` when present) and
    the folds' summed wall time."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None
    walls = [_num(r.get("wall_seconds")) for r in records]
    return {VAL_AUC: mean(_num((r.get("best") or {}).get("value")) for r in records),
            TAGS["validation ROC AUC, exact"]: _num(summary["auc"]["mean"]),
            TAGS["validation ROC AUC per patient"]: _num(summary["patient_auc"]["mean"]),
            TAGS["out-of-fold ROC AUC"]: _num((summary.get("oof") or {}).get("auc")),
            TAGS["validation loss"]: mean(_num((r.get("best") or {}).get("logs", {})
                                               .get("val_loss")) for r in records),
            TAGS["wall time (s)"]: None if None in walls else sum(walls)}


def write_run_session(cfg: TrainConfig, logdir: str, record: Mapping,
                      history: list[dict]) -> None:
    """The session of a finished run (``fundus-train``, a CV fold, the tuner's ``best/``)
    in its TensorBoard dir ``logdir``. The tuner's ``best/`` (its record's ``tuning``)
    marks the sweep's searched names as differing, as the sweep's own experiment."""
    wall = _num(record.get("wall_seconds"))
    searched = [n for n in ((record.get("tuning") or {}).get("hyperparameters") or {})
                if not n.startswith("tuner/")]
    write_session(logdir, recipe_hparams(cfg), run_metrics(cfg, record, history),
                  start_time=time.time() - wall if wall is not None else None,
                  varied=searched or None)


def write_cv_session(cfg: TrainConfig, logdir: str, k: int, summary: Mapping,
                     records: list[Mapping]) -> None:
    """The session of a whole ``--cv=K`` (``cfg`` without ``val_fold``) in ``logdir``."""
    write_session(logdir, recipe_hparams(cfg, cv=k), cv_metrics(summary, records))
