"""A cross-validation dir's summary: ``cv.json``, ``cv.png`` and the CV's HParams session,
written from its finished folds, whether ``fundus-train --cv=K`` trained them in one job
(``model.training.train_cv``) or one ``--val_fold=i`` job per machine did
(``fundus-train --cv=K --collect``: :func:`collect_cv`)::

    RUN/fold_0 .. RUN/fold_{K-1}   model dirs of the folds (each with its run.json)
    RUN/cv.json                    per-fold and mean ± sd validation AUC, pooled OOF AUC
    RUN/cv.png, RUN/logs/          the plot and the CV's HParams session

:func:`collect_cv` refuses folds that do not make one CV: a missing or unfinished fold,
folds trained with different flags (all but :data:`CV_FREE`) or on different data (the
manifest's sha256). Nothing here trains or predicts.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from model import augment, eval_metrics, hparams, plots, rundir
from model.train_config import ConfigError, TrainConfig
from pipeline import manifest as manifest_lib

# flags the folds of one CV may differ in: the fold, its dir, the data's path (the data
# itself is compared by its manifest's sha256) and what a resumed run may change
CV_FREE = ("model_dir", "val_fold", "data") + rundir.RESUME_FREE


def fold_dir(cv_dir: str, i: int) -> str:
    """The model dir of fold ``i`` (0-based) of the CV dir ``cv_dir``."""
    return os.path.join(cv_dir, f"fold_{i}")


def check_cv(cfg: TrainConfig, k: int) -> None:
    """The start-up checks of a ``--cv=K`` (training or ``--collect``): K >= 2, no
    ``--val_fold``, valid flags, ``--data`` converted with ``--folds=K``. Raises
    :class:`ConfigError` naming the flag and the fix."""
    if k < 2:
        raise ConfigError(f"--cv={k}: must be >= 2 (or 0 for a single run)")
    if cfg.val_fold is not None:
        raise ConfigError("--cv and --val_fold exclude each other; pass one")
    try:
        cfg.validate()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    folds = int(manifest_lib.load(cfg.data).get("folds", 0) or 0)
    if folds != k:
        raise ConfigError(f"--cv={k}: {manifest_lib.manifest_path(cfg.data)} has "
                          f"{folds or 'no'} folds; convert with --folds={k} or pass "
                          f"--cv={folds}")


def write_cv_summary(cfg: TrainConfig, k: int) -> dict:
    """The CV summary of the finished folds ``cfg.model_dir/fold_0 .. fold_{k-1}`` (each
    with its ``run.json``): ``cv.json`` with the per-fold and mean ± sd (sample sd)
    validation AUC per image and per patient, the folds' mean validation AUC by epoch and
    the pooled out-of-fold AUC (``oof``: the folds' ``val_predictions.csv``,
    patient-bootstrap 95% CI seeded by ``cfg.seed``); the CV's HParams session (the recipe
    of ``cfg``) in ``cfg.model_dir/logs`` and ``cv.png``. Returns the summary."""
    monitor = cfg.metric_key("auc")     # per-image val AUC column of history.csv
    fold_dirs = [fold_dir(cfg.model_dir, i) for i in range(k)]
    records = [rundir.read_run_record(d) for d in fold_dirs]
    per_fold = []
    for i, (d, run) in enumerate(zip(fold_dirs, records)):
        history = rundir.read_history(os.path.join(d, rundir.HISTORY_CSV))
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
    # pooled out-of-fold AUC (each fold's val_predictions.csv) with a patient-bootstrap CI
    summary["oof"] = eval_metrics.pooled_oof(fold_dirs, seed=cfg.seed)
    rundir.write_json(os.path.join(cfg.model_dir, rundir.CV_JSON), summary)
    logs_dir = os.path.join(cfg.model_dir, rundir.LOGS)   # the CV's HParams session, cv.png
    hparams.write_cv_session(cfg, logs_dir, k, summary, records)
    plots.write_cv_plots(cfg.model_dir, summary, logs_dir)
    return summary


# ========================================================================== collect
def recipe_flags(record: dict) -> dict[str, Any]:
    """The flags of a fold's run record that every fold of one CV shares: all but
    :data:`CV_FREE`, ``--augment_*`` flattened (the augmentation seed is ``--seed``'s),
    as JSON values."""
    flags = rundir.resume_key(record.get("flags") or {})
    out = {k: v for k, v in flags.items() if k not in CV_FREE and k != "augment"}
    for name, v in (flags.get("augment") or {}).items():
        if name != "seed":
            out[augment.FLAG_PREFIX + name] = v
    return out


def config_of_record(record: dict, **changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` a run record's ``flags`` describe (keys this version does
    not know are dropped), with ``changes``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in (record.get("flags") or {}).items() if k in names}
    if isinstance(values.get("augment"), dict):
        known = {f.name for f in dataclasses.fields(augment.AugmentConfig)}
        values["augment"] = augment.AugmentConfig(
            **{k: v for k, v in values["augment"].items() if k in known})
    return TrainConfig(**{**values, **changes})


def finished_folds(cv_dir: str, k: int) -> list[dict]:
    """The run records of ``cv_dir/fold_0 .. fold_{k-1}``. Raises :class:`ConfigError`
    naming every fold dir that is missing, unfinished (no ``run.json``: never finished,
    or still running / interrupted with ``backup/``) or holds another fold's record."""
    problems, records = [], []
    for i in range(k):
        d = fold_dir(cv_dir, i)
        run = rundir.read_run_record(d) if os.path.isdir(d) else {}
        how = f"fundus-train --val_fold={i} --model_dir={d}"
        if not os.path.isdir(d):
            problems.append(f"{d}: missing (train it with {how}, or copy it here)")
        elif not run:
            problems.append(f"{d}: unfinished (no {rundir.RUN_JSON}; rerun {how} to "
                            f"finish it)")
        elif (run.get("flags") or {}).get("val_fold") != i:
            problems.append(f"{d}: its {rundir.RUN_JSON} is of --val_fold="
                            f"{(run.get('flags') or {}).get('val_fold')}, not {i}")
        records.append(run)
    if problems:
        raise ConfigError(f"--cv={k} --collect: " + "; ".join(problems))
    return records


def check_same_recipe(cv_dir: str, records: list[dict]) -> None:
    """Raise :class:`ConfigError` when the folds' records (fold i at ``records[i]``) were
    trained with different flags (:func:`recipe_flags`; the message names each differing
    flag with both values) or on different data (``data.manifest_sha256``), naming the
    fold dirs compared."""
    d0, want = fold_dir(cv_dir, 0), recipe_flags(records[0])
    sha = (records[0].get("data") or {}).get("manifest_sha256")
    problems = []
    for i, run in enumerate(records[1:], start=1):
        got = recipe_flags(run)
        differ = [f"--{n}={want.get(n)} vs {got.get(n)}" for n in sorted(set(want) | set(got))
                  if want.get(n) != got.get(n)]
        if differ:
            problems.append(f"{fold_dir(cv_dir, i)} was trained with other flags than {d0}: "
                            + ", ".join(differ))
        other = (run.get("data") or {}).get("manifest_sha256")
        if other != sha:
            problems.append(f"{fold_dir(cv_dir, i)} was trained on other data than {d0} "
                            f"(manifest sha256 {str(other)[:12]} vs {str(sha)[:12]})")
    if problems:
        raise ConfigError(f"--cv={len(records)} --collect: " + "; ".join(problems)
                          + "; retrain those folds with the flags and data of the others")


def collect_cv(cfg: TrainConfig, k: int) -> dict:
    """``fundus-train --cv=K --collect``: :func:`write_cv_summary` of folds trained
    elsewhere (one ``--val_fold=i --model_dir=RUN/fold_i`` job per machine, the fold dirs
    copied into ``cfg.model_dir``), training nothing. The summary's recipe (``select``,
    ``tta``, ``seed``, HParams) is the folds' own flags; ``cfg`` gives ``model_dir``,
    ``data`` and ``verbose`` only. Raises :class:`ConfigError` (``fundus-train``: exit 2)
    for the :func:`check_cv` flag checks, :func:`finished_folds`,
    :func:`check_same_recipe`, and ``--data`` whose manifest is not the folds'."""
    check_cv(cfg, k)
    records = finished_folds(cfg.model_dir, k)
    check_same_recipe(cfg.model_dir, records)
    sha = records[0]["data"]["manifest_sha256"]
    if manifest_lib.manifest_sha256(cfg.data) != sha:
        raise ConfigError(f"--cv={k} --collect: --data={cfg.data} is not the data the "
                          f"folds were trained on ({fold_dir(cfg.model_dir, 0)}: manifest "
                          f"sha256 {str(sha)[:12]}); pass that data dir")
    return write_cv_summary(config_of_record(
        records[0], model_dir=cfg.model_dir, data=cfg.data, val_fold=None,
        verbose=cfg.verbose), k)
