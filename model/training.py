"""The training job: two-stage transfer learning of one run, one fold or a CV.

``train(TrainConfig) -> dict`` runs one model (one split or one CV fold) into
``model_dir``; ``train_cv`` runs ``--cv=K`` folds into ``model_dir/fold_i`` and writes
``cv.json``. The tuner (``tuning.hypermodel``) builds and fits every trial with the same
public pieces: :func:`classifier_config`, ``model.train_data`` (``build_datasets``,
``describe_splits``), :func:`run_stages` (the one two-stage loop) and :func:`finish_run`
(the one builder of the run record, written by ``model.rundir.write_run_record``).

Stages (each one ``model.fit`` over a contiguous range of the epoch counter)::

    head       epochs [0, warmup_epochs)       backbone frozen, --learning_rate
    fine_tune  epochs [warmup_epochs, epochs)  top --fine_tune_fraction of the backbone
                                               trainable, --fine_tune_learning_rate
                                               (default --learning_rate * 0.1)

BatchNorm statistics of pretrained backbones stay frozen in both stages (see
``model.backbones.FrozenStatistics``). Each stage builds its own optimizer and schedule
(``model.optim``; the schedule spans that stage's steps) and runs the callbacks of
``model.callbacks.stage_callbacks``.

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

import dataclasses
import os
import shutil
import time
import warnings
from typing import Sequence

import keras
import numpy as np

from model import callbacks as callbacks_lib
from model import classifier, cv_summary, distribute, evaluation, export, features, optim
from model import head_init as head_init_lib
from model import io as model_io
from model import metrics as metrics_lib
from model import hparams, plots, precision, prefix_cache, rundir, train_data
from model.train_config import ConfigError, TrainConfig
from pipeline import fileio, integrity, progress
from pipeline import manifest as manifest_lib


# ===================================================================== model, compile
def classifier_config(cfg: TrainConfig) -> classifier.ClassifierConfig:
    """The classifier a run of ``cfg`` trains (the image size resolved by
    ``cfg.input_size()``)."""
    return classifier.ClassifierConfig(
        backbone=cfg.backbone, image_size=cfg.input_size(), weights=cfg.weights,
        dropout=cfg.dropout, augment=cfg.augment_config(),
        age_loss_weight=cfg.age_loss_weight, seed=cfg.seed,
        feature_layers=features.parse_spec(cfg.feature_layers, cfg.backbone),
        orient=cfg.orient)


def compile_model(model: keras.Model, cfg: TrainConfig, optimizer) -> None:
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


def compile_stage(model: keras.Model, fit_model: keras.Model, cfg: TrainConfig, strategy,
                  fraction: float, peak: float, steps: int, epochs: int) -> int:
    """One stage's set-up: unfreeze the top ``fraction`` of ``model``'s backbone and
    compile ``fit_model`` (the model itself, or the cached-prefix tail that shares its
    layers) with the stage's optimizer and schedule (``peak`` lr over ``steps`` x
    ``epochs``). Returns the number of trainable backbone layers."""
    with strategy.scope():
        n_trainable = classifier.set_backbone_trainable(model, fraction)
        lr = optim.learning_rate_for(cfg, peak, steps, epochs)
        compile_model(fit_model, cfg, optim.make_optimizer(cfg, lr))
    return n_trainable


# ============================================================================ stages
@dataclasses.dataclass(frozen=True)
class StagesOutcome:
    """How :func:`run_stages` ended."""

    stopped_early: bool
    terminated_on_nan: bool


def _done_weights(backup_root: str, stage: str) -> str:
    return os.path.join(backup_root, f"{stage}.done.weights.h5")


def finished_stages(cfg: TrainConfig, backup_root: str) -> list[str]:
    """Names of ``cfg``'s stages an interrupted run already finished (weights kept)."""
    return [s[0] for s in cfg.stages() if os.path.exists(_done_weights(backup_root, s[0]))]


def run_stages(model: keras.Model, cfg: TrainConfig, strategy, train_ds, val_ds,
               splits: train_data.Splits, *, run_dir: str, logs_dir: str,
               fit_model: keras.Model | None = None, initial_epoch: int = 0,
               backup_root: str | None = None, grid_images: np.ndarray | None = None,
               profile_batch: int = 0, extra_callbacks: Sequence = (),
               job: str = "fundus-train",
               clock: tuple[progress.RunClock, float] | None = None) -> StagesOutcome:
    """THE two-stage loop (``fundus-train`` and tuner trials): for every stage of
    ``cfg.stages()`` from ``initial_epoch`` on (hyperband continues a trial there),
    :func:`compile_stage` and ``fit_model.fit`` (default ``model``) with
    ``model.callbacks.stage_callbacks`` writing ``best.keras`` / ``best.json`` /
    ``history.csv`` in ``run_dir`` and TensorBoard in ``logs_dir``, plus
    ``WeightAverage`` on the last stage (``--swa_epochs``) and ``extra_callbacks``.

    ``backup_root``: resumable (``BackupAndRestore`` per stage, a finished stage's weights
    kept, finished stages skipped); ``grid_images``: logged to TensorBoard at the first
    epoch; ``profile_batch``: TensorBoard profiler batch (0: off); ``job``: the name its
    stage messages start with; ``clock``: ``(clock, offset)`` of the whole run the stage
    lines report (a CV's, with this fold's first epoch at ``offset``; default: this run's
    own). Stops after a stage that stopped early or on a NaN loss."""
    fit_model = fit_model if fit_model is not None else model
    stages = cfg.stages()
    done = finished_stages(cfg, backup_root) if backup_root else []
    stopped_early = terminated_nan = False
    # the whole run's clock in epochs: a CV fold reports its CV's (given by train_cv)
    clock, offset = clock or (progress.RunClock(stages[-1][2]), 0.0)
    for name, first, end, fraction, peak in stages:
        if name in done or end <= initial_epoch:
            continue
        first = max(first, initial_epoch)
        n_trainable = compile_stage(model, fit_model, cfg, strategy, fraction, peak,
                                    splits.steps, end - first)
        cbs = callbacks_lib.stage_callbacks(
            cfg, name, first, peak, run_dir=run_dir, logs_dir=logs_dir,
            majorities=splits.majorities, target=model, keep=cfg.select,
            profile_batch=profile_batch)
        if cfg.swa_epochs and (name, end) == (stages[-1][0], stages[-1][2]):
            cbs.append(callbacks_lib.WeightAverage(
                model, end - cfg.swa_epochs, os.path.join(run_dir, rundir.BEST_MODEL),
                os.path.join(run_dir, rundir.BEST_JSON), backup_root or run_dir))
        if backup_root:
            # double_checkpoint: a kill while the backup is written falls back to the
            # previous epoch's copy instead of failing on a truncated file
            cbs.append(keras.callbacks.BackupAndRestore(
                os.path.join(backup_root, name), double_checkpoint=True,
                delete_checkpoint=False))
        if first == 0 and grid_images is not None:
            cbs.append(callbacks_lib.ImageGrid(os.path.join(logs_dir, "images"), grid_images))
        cbs += list(extra_callbacks)
        if cfg.verbose:
            print(f"[{job}] stage {name}: epochs {first + 1}..{end}, "
                  f"{n_trainable} backbone layers trainable, peak lr {peak:g}; "
                  f"{clock.status(offset + first)}", flush=True)
        fit_model._initial_epoch = None  # Keras keeps a restored epoch across fit calls
        with warnings.catch_warnings():
            # the reader yields one finite pass per epoch (no .repeat()) on purpose
            warnings.filterwarnings("ignore", message=".*ran out of data.*")
            fit_model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=first,
                          callbacks=cbs, verbose=cfg.verbose, shuffle=False)
        if backup_root:
            rundir.save_weights(model, _done_weights(backup_root, name))
            shutil.rmtree(os.path.join(backup_root, name), ignore_errors=True)
        terminated_nan = bool(getattr(fit_model, "stop_training", False) and
                              rundir.nan_in_history(run_dir))
        last = rundir.read_history(os.path.join(run_dir, rundir.HISTORY_CSV))
        if last and int(last[-1]["epoch"]) < end - 1 and not terminated_nan:
            stopped_early = True
        if stopped_early or terminated_nan:
            break
    return StagesOutcome(stopped_early, terminated_nan)


def keep_probe(model: keras.Model, cfg: TrainConfig, run_dir: str, head_info: dict
               ) -> StagesOutcome:
    """``--epochs=0``: keep ``model`` as it stands (the logistic probe in its head) as
    ``best.keras``, with ``best.json`` recording the probe's exact validation AUC as the
    kept value (epoch -1: before any epoch) and an empty ``history.csv``."""
    rundir.save_model(model, os.path.join(run_dir, rundir.BEST_MODEL))
    rundir.write_json(os.path.join(run_dir, rundir.BEST_JSON), {
        "epoch": -1, "value": float(head_info["val_auc"]), "monitor": cfg.metric_key("auc"),
        "logs": {}, "probe": True})
    fileio.write_text(os.path.join(run_dir, rundir.HISTORY_CSV), "epoch\n")
    return StagesOutcome(False, False)


# ======================================================================= the result
def predict_split(model, cfg: TrainConfig, spec, image_size: int) -> dict[str, np.ndarray]:
    """``{"y", "p", "patient_id"}`` of every record of ``spec`` (evaluation order), through
    :func:`model.evaluation.predict_split` (the one prediction path of evaluation), with
    the flip TTA when ``cfg.tta == "flip"``."""
    member = model_io.Member(model_io.sex_model(model), {"path": os.path.join(
        cfg.model_dir, rundir.BEST_MODEL), "image_size": image_size})
    frame = evaluation.predict_split([member], cfg.data, spec, batch_size=cfg.batch_size,
                                     tta=cfg.tta)
    return {"y": frame["label"].to_numpy(np.float64),
            "p": frame["probability"].to_numpy(np.float64),
            "patient_id": frame["patient"].to_numpy().astype(str)}


def auc_summary(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Exact ROC AUC per image and per patient (mean of the eyes' probabilities), the
    majority and 0.5-threshold accuracy, and the Youden threshold (probability that
    maximises sensitivity + specificity over the images)."""
    y_pat, p_pat = metrics_lib.per_patient(pred["y"], pred["p"], pred["patient_id"])
    out = {"images": int(pred["y"].size), "patients": int(y_pat.size)}
    for key, (y, p) in {"auc": (pred["y"], pred["p"]), "patient_auc": (y_pat, p_pat)}.items():
        try:
            out[key] = metrics_lib.roc_auc(y, p)
        except ValueError:
            out[key] = float("nan")
    out["majority_accuracy"] = metrics_lib.majority_accuracy(pred["y"])
    out["accuracy"] = metrics_lib.accuracy(pred["y"], pred["p"])
    try:
        out["youden_threshold"] = metrics_lib.youden_threshold(pred["y"], pred["p"])
    except ValueError:
        out["youden_threshold"] = float("nan")
    return out


def finish_run(cfg: TrainConfig, run_dir: str, splits: train_data.Splits, *, strategy,
               policy: str, outcome: StagesOutcome | None = None, resumed: bool = False,
               head_info: dict | None = None, cache_info: dict | None = None,
               started: float | None = None, extra: dict | None = None) -> dict:
    """Complete a model dir whose ``best.keras`` / ``best.json`` / ``history.csv`` exist:
    validation figures of the kept model (exact AUC per image and per patient, Youden
    threshold; ``cfg.tta``), the SavedModel export, ``history.json`` and the run record
    (``run.json`` via :func:`model.rundir.write_run_record`), then ``val_predictions.csv``,
    the run's HParams session in ``logs/`` (:mod:`model.hparams`) and ``curves.png``
    (:mod:`model.plots`). ``fundus-train`` and the tuner's ``best/`` both end here.
    ``outcome``: how the stages ended (None: read off ``history.csv``); ``started``:
    ``time.time()`` at the run's start (``wall_seconds`` then counts up to the record's
    writing); ``extra``: more top-level keys (the tuner's ``tuning``). Returns the
    record."""
    best = fileio.read_json(os.path.join(run_dir, rundir.BEST_JSON))
    monitor = cfg.metric_key("auc")
    if best is None:
        raise RuntimeError(f"{run_dir}: no epoch gave a finite {monitor}; nothing to select "
                           f"(see {rundir.HISTORY_CSV})")
    image_size = cfg.input_size()
    best_model = keras.models.load_model(os.path.join(run_dir, rundir.BEST_MODEL),
                                         compile=False)
    val_pred = predict_split(best_model, cfg, splits.val_spec, image_size)
    val_summary = auc_summary(val_pred)
    export.export_saved_model(best_model, os.path.join(run_dir, rundir.SAVED_MODEL))
    history = rundir.read_history(os.path.join(run_dir, rundir.HISTORY_CSV))
    rundir.write_json(os.path.join(run_dir, rundir.HISTORY_JSON), history)
    if outcome is None:                 # a tuner trial's files: read the outcome off them
        nan = rundir.nan_in_history(run_dir)
        outcome = StagesOutcome(bool(history) and history[-1]["epoch"] < cfg.epochs - 1
                                and not nan, nan)
    stored = manifest_lib.stored_format(manifest_lib.load(cfg.data)) or (None, None)
    train_majority, val_majority = splits.majorities
    record = {
        "flags": cfg.to_json(),
        "versions": rundir.versions(),
        "data": {"dir": os.path.abspath(cfg.data), "manifest_sha256":
                 manifest_lib.manifest_sha256(cfg.data),
                 "stored_size": stored[0], "jpeg_quality": stored[1],
                 "train": {"spec": splits.train_spec.name,
                           **dataclasses.asdict(splits.train),
                           "majority_accuracy": train_majority,
                           "class_weights": splits.train.class_weights()},
                 "val": {"spec": splits.val_spec.name, **dataclasses.asdict(splits.val),
                         "majority_accuracy": val_majority},
                 "test_read": False},
        "backbone": cfg.backbone, "image_size": image_size, "policy": policy,
        "strategy": distribute.describe(strategy),
        "stages": [{"name": s[0], "epochs": [s[1], s[2]], "fine_tune_fraction": s[3],
                    "peak_learning_rate": s[4]} for s in cfg.stages()],
        "epochs_run": len(history), "stopped_early": outcome.stopped_early,
        "terminated_on_nan": outcome.terminated_on_nan, "resumed": resumed,
        "best": {"epoch": best["epoch"] + 1, "monitor": best.get("monitor", monitor),
                 "value": best["value"], "logs": best.get("logs", {}),
                 "swa_epochs": best.get("swa_epochs")},
        "val_tta": cfg.tta,
        "val": val_summary,
        "cache_frozen_prefix": cache_info,
        "head_init": head_info,
        "wall_seconds": None if started is None else round(time.time() - started, 1),
        "outputs": {"best_model": rundir.BEST_MODEL, "saved_model": rundir.SAVED_MODEL,
                    "history": [rundir.HISTORY_CSV, rundir.HISTORY_JSON],
                    "tensorboard": rundir.LOGS, "curves": rundir.CURVES_PNG,
                    "val_predictions": rundir.VAL_PREDICTIONS},
        "metrics_module": metrics_lib.__name__,
        **(extra or {}),
    }
    rundir.write_run_record(run_dir, record)
    # the kept model's validation predictions (pooled by a CV), HParams session, curves
    rundir.write_val_predictions(run_dir, val_pred)
    logs_dir = os.path.join(run_dir, rundir.LOGS)
    hparams.write_run_session(cfg, logs_dir, record, history)
    plots.write_run_plots(cfg, run_dir, record, history, logs_dir)
    return record


# =========================================================================== the run
def train(cfg: TrainConfig, callbacks: Sequence | None = None,
          extra: dict | None = None,
          clock: tuple[progress.RunClock, float] | None = None) -> dict:
    """Train one model into ``cfg.model_dir``; returns the ``run.json`` dict.

    ``callbacks``: extra Keras callbacks appended to every stage (tests use one to
    interrupt a run); ``extra``: more top-level keys of the run record; ``clock``: the
    whole run's clock and this run's first epoch on it (``train_cv`` passes the CV's).
    """
    try:
        cfg.validate()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    policy = precision.set_policy(cfg.precision)

    t0 = time.time()
    # the whole run's clock (a CV fold gets its CV's): elapsed time includes start-up
    clock = clock or (progress.RunClock(cfg.epochs), 0.0)
    read: tuple[str, ...] = ()       # the splits this run reads (never test)
    try:  # start-up: every bad flag or input fails here, before model_dir is touched
        splits = train_data.describe_splits(cfg)
        read = splits.train_spec.splits + splits.val_spec.splits
        manifest_lib.check_shards(cfg.data, read)   # every shard there, at its size
        image_size = cfg.input_size()
        strategy = distribute.make_strategy(cfg.strategy)
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            model = classifier.build_classifier(classifier_config(cfg))
        train_ds, val_ds, _, _ = train_data.build_datasets(cfg, strategy, image_size)
        fit_model, cached = model, None
        if cfg.cache_frozen_prefix:   # fit a tail sharing the layers, on cached activations
            cached = prefix_cache.prepare(
                model, cfg, splits.train_spec, splits.val_spec, image_size,
                splits.train.class_weights() if cfg.class_weights else None)
            fit_model, train_ds, val_ds = cached.tail, cached.train_ds, cached.val_ds
        os.makedirs(cfg.model_dir, exist_ok=True)
        resumed = rundir.prepare_model_dir(cfg.model_dir, cfg.to_json(), cfg.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        raise ConfigError(str(e)) from e
    except integrity.READ_ERRORS as e:   # a damaged record read by --cache_frozen_prefix
        data_error = integrity.as_data_error(cfg.data, e, read)
        if data_error is None:
            raise
        raise data_error from e

    d = cfg.model_dir
    backup_root = os.path.join(d, rundir.BACKUP)
    logs_dir = os.path.join(d, rundir.LOGS)
    done = finished_stages(cfg, backup_root)
    if done:
        model.load_weights(_done_weights(backup_root, done[-1]))
    head_info = None
    # a damaged record met while training: DataError naming the shard (backup/ is kept)
    with integrity.reading(cfg.data, read):
        train_xy = None      # the standardised training features, read once for both
        if classifier.raw_features_name(model) and not done:
            raw, tr_batches, _ = train_data.probe_inputs(cfg, model, cached, splits,
                                                         image_size, raw=True)
            x_raw, y = head_init_lib.pooled_features(raw, tr_batches)
            train_xy = (features.standardize_array(model, x_raw), y)
            head_info = {"standardize": {"features": int(x_raw.shape[1]),
                                         "images": int(x_raw.shape[0])}}
        if cfg.head_init == "logistic" and not done:
            probe, tr_batches, va_batches = train_data.probe_inputs(
                cfg, model, cached, splits, image_size)
            head_info = {**(head_info or {}), **head_init_lib.init_head(
                probe, model.get_layer(classifier.SEX_OUTPUT), tr_batches, va_batches,
                cfg.head_init_c,
                splits.train.class_weights() if cfg.class_weights else None,
                train_xy=train_xy)}
            if cfg.verbose:
                print(f"[fundus-train] head from a logistic probe (C={cfg.head_init_c:g}): "
                      f"AUC {head_info['train_auc']:.4f} train, {head_info['val_auc']:.4f} "
                      f"validation, {head_info['seconds']:.0f} s", flush=True)
        grid = None
        if not resumed and cfg.image_grid > 0 and cached is None:
            grid = train_data.sample_images(cfg, splits.train_spec, image_size)
        if cfg.stages():
            outcome = run_stages(model, cfg, strategy, train_ds, val_ds, splits, run_dir=d,
                                 logs_dir=logs_dir, fit_model=fit_model,
                                 backup_root=backup_root, grid_images=grid,
                                 profile_batch=cfg.profile_batch or 0,
                                 extra_callbacks=callbacks or (), clock=clock)
        else:                   # --epochs=0: the fitted probe is the model
            outcome = keep_probe(model, cfg, d, head_info)
    run = finish_run(cfg, d, splits, strategy=strategy, policy=policy, outcome=outcome,
                     resumed=resumed, head_info=head_info,
                     cache_info=cached.info if cached is not None else None,
                     started=t0, extra=extra)
    shutil.rmtree(backup_root, ignore_errors=True)
    if cfg.verbose:
        val = run["val"]
        kept = (f"{cfg.select} epoch {run['best']['epoch']}" if cfg.stages()
                else "the logistic probe (--epochs=0)")
        print(f"[fundus-train] {kept}: validation AUC "
              f"{val['auc']:.4f} per image, {val['patient_auc']:.4f} per "
              f"patient (majority accuracy {splits.majorities[1]:.3f}); model "
              f"{d}/{rundir.BEST_MODEL}; TensorBoard: tensorboard --logdir "
              f"{os.path.abspath(logs_dir)}", flush=True)
    return run


# ================================================================================ CV
def train_cv(cfg: TrainConfig, k: int, callbacks: Sequence | None = None) -> dict:
    """``--cv=K``: train fold i (``--val_fold=i``) into ``model_dir/fold_i`` for every i,
    skipping folds that already finished, then write the CV summary
    (:func:`model.cv_summary.write_cv_summary`: ``cv.json`` with the per-fold and
    mean ± sd validation AUC per image and per patient and the pooled out-of-fold AUC,
    the CV's HParams session in ``model_dir/logs``, ``model_dir/cv.png``); returns it.
    ``callbacks``: extra Keras callbacks of every fold (as :func:`train`'s)."""
    cv_summary.check_cv(cfg, k)
    os.makedirs(cfg.model_dir, exist_ok=True)
    per_fold = max(cfg.epochs, 1)               # --epochs=0: the clock counts folds
    clock = progress.RunClock(k * per_fold)     # the whole CV, in epochs
    for i in range(k):
        fold_dir = cv_summary.fold_dir(cfg.model_dir, i)
        if not rundir.read_run_record(fold_dir) or cfg.overwrite:
            if cfg.verbose:
                print(f"[fundus-train] fold {i + 1}/{k} (fold_{i}): "
                      f"{clock.status(i * per_fold)}", flush=True)
            train(dataclasses.replace(cfg, model_dir=fold_dir, val_fold=i),
                  callbacks=callbacks,
                  clock=(clock, float(i * cfg.epochs)))  # stage lines report the CV
    return cv_summary.write_cv_summary(cfg, k)


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
