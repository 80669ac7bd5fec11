"""A sweep's results: the trial table (``summary.csv``) and ``DIR/best``.

:func:`summary_rows` reads every trial from the oracle (a worker's ``OracleClient``
asks the chief) and sorts them by ``val_auc``, failed trials last; :func:`write_summary`
writes ``DIR/summary.csv`` and ``DIR/sweep.png`` (validation AUC against each searched
hyperparameter, also in TensorBoard) and :func:`format_summary` the same table as text.
:func:`export_best` turns the best completed trial into a ``fundus-train`` model dir
(``DIR/best``) through the training job's own ``training.finish_run`` (``copy``) or
``training.train`` (``retrain``), so its ``run.json`` is the record ``fundus-train``
writes, plus ``tuning``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import shutil
from typing import Any, Sequence

import keras

from model import distribute, plots, rundir, train_data, training
from pipeline import fileio
from tuning import space as space_lib

SUMMARY_CSV = "summary.csv"
SWEEP_PNG = "sweep.png"
LOGS = "logs"
BEST_DIR = "best"
BEST_MODES = ("copy", "retrain", "none")


def finished_ids(oracle) -> list[str]:
    """Ids of trials that will not run again (completed or failed), as the oracle says."""
    done = []
    for trial in all_trials(oracle):
        if str(trial.status) in ("COMPLETED", "FAILED", "INVALID"):
            done.append(trial.trial_id)
    return done


def all_trials(oracle) -> list:
    trials = getattr(oracle, "trials", None)
    if trials is not None:
        return list(trials.values())
    # A worker's OracleClient: ask the chief for every trial, best first.
    return list(oracle.get_best_trials(1 << 20))



def summary_rows(tuner) -> list[dict[str, Any]]:
    """One row per trial, sorted by ``val_auc`` (best first; failed trials last):
    rank, trial_id, status, val_auc, best_epoch, the other best-epoch metrics, then the
    hyperparameters."""
    names = list(tuner.hypermodel.space.searched)
    rows = []
    for t in all_trials(tuner.oracle):
        metrics = {}
        for name in ("val_auc", "val_pr_auc", "val_loss", "val_accuracy", "best_epoch"):
            if t.metrics.exists(name):
                metrics[name] = t.metrics.get_best_value(name) if name == "val_auc" \
                    else t.metrics.get_last_value(name)
        row = {"trial_id": t.trial_id, "status": str(t.status),
               "val_auc": metrics.pop("val_auc", float("nan"))}
        if "best_epoch" in metrics:
            metrics["best_epoch"] = int(metrics["best_epoch"])
        row.update(metrics)
        values = t.hyperparameters.values
        for n in names:
            row[n] = values.get(n)
        for n in ("tuner/epochs", "tuner/initial_epoch", "tuner/trial_id"):
            if n in values:
                row[n] = values[n]
        rows.append(row)

    def key(r):
        v = r["val_auc"]
        ok = r["status"] == "COMPLETED" and v is not None and not math.isnan(v)
        return (0 if ok else 1, -(v if ok else 0.0), r["trial_id"])

    rows.sort(key=key)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return [{"rank": r.pop("rank"), **r} for r in rows]


def write_summary(directory: str, rows: Sequence[dict],
                  space: space_lib.SearchSpace) -> str:
    """``DIR/summary.csv`` (atomic; columns are the union of the rows' keys, in order),
    then ``DIR/sweep.png`` (:func:`write_sweep_plot`). Returns the CSV path."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in cols})
    path = fileio.write_text(os.path.join(directory, SUMMARY_CSV), buf.getvalue())
    write_sweep_plot(directory, rows, space)
    return path


def write_sweep_plot(directory: str, rows: Sequence[dict],
                     space: space_lib.SearchSpace) -> str | None:
    """``DIR/sweep.png``: each completed trial's ``val_auc`` against every searched
    hyperparameter of ``space`` (``model.plots.plot_sweep``), also an image in
    ``DIR/logs/plots``; None when nothing is searched."""
    searched = {n: p.to_json() for n, p in space.searched.items()}
    if not searched:
        return None
    return plots.write_sweep_plots(os.path.join(directory, SWEEP_PNG), rows, searched,
                                   os.path.join(directory, LOGS))


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def format_summary(rows: Sequence[dict], limit: int = 20) -> str:
    """The summary as a fixed-width text table (best ``limit`` rows)."""
    if not rows:
        return "(no trials)"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    table = [[str(_fmt(r.get(c))) for c in cols] for r in rows[:limit]]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in {SUMMARY_CSV}")
    return "\n".join(lines)


def export_best(tuner, sweep, rows: Sequence[dict]) -> dict | None:
    """Write ``DIR/best`` as a fundus-train model dir from the best completed trial.

    ``copy``: its ``best.keras`` (the best epoch, saved by ``SelectBest``), ``best.json``,
    history and TensorBoard logs, completed by ``training.finish_run`` (validation AUC
    recomputed exactly, SavedModel export, the same run record ``fundus-train`` writes)
    plus ``tuning``. When the trial's model file is absent (pruned, or on another
    machine) it falls back to ``retrain``: ``training.train`` of the trial's config into
    ``DIR/best``. The directory is replaced atomically. Returns the run record, None when
    no trial completed.
    """
    best_row = next((r for r in rows if r["status"] == "COMPLETED"
                     and not math.isnan(r["val_auc"])), None)
    if best_row is None or sweep.best == "none":
        return None
    trial_id = best_row["trial_id"]
    trial_dir = os.path.join(tuner.project_dir, f"trial_{trial_id}")
    trial = tuner.oracle.get_trial(trial_id)
    cfg = tuner.hypermodel.trial_config(trial.hyperparameters)
    out = os.path.join(sweep.directory, BEST_DIR)
    tuning_info = {"trial_id": trial_id, "val_auc_keras": best_row["val_auc"],
                   "hyperparameters": dict(trial.hyperparameters.values),
                   "directory": os.path.abspath(sweep.directory), "tuner": sweep.tuner}
    source = os.path.join(trial_dir, rundir.BEST_MODEL)
    retrain = sweep.best == "retrain" or not os.path.exists(source)
    if retrain and sweep.best == "copy":
        print(f"[fundus-tune] {source} is not here (pruned or on another machine); "
              f"retraining trial {trial_id} into {out}", flush=True)

    def write(tmp: str) -> None:
        if retrain:
            training.train(dataclasses.replace(cfg, model_dir=tmp, overwrite=True),
                           extra={"tuning": {**tuning_info, "mode": "retrain"}})
        else:
            _copy_trial(dataclasses.replace(cfg, model_dir=out), trial_dir, tmp,
                        {**tuning_info, "mode": "copy"})
    fileio.write_dir_atomic(out, write)
    return rundir.read_run_record(out)


def _copy_trial(cfg, trial_dir: str, out: str, tuning_info: dict) -> dict:
    """A fundus-train model dir in ``out`` (the temporary place of ``cfg.model_dir``) from
    a finished trial's files (no training): its model, kept-epoch state, history and logs,
    then ``training.finish_run``."""
    for name in (rundir.BEST_MODEL, rundir.BEST_JSON, rundir.HISTORY_CSV):
        if os.path.exists(os.path.join(trial_dir, name)):
            shutil.copy2(os.path.join(trial_dir, name), os.path.join(out, name))
    logs = os.path.join(os.path.dirname(os.path.dirname(trial_dir)), LOGS,
                        tuning_info["trial_id"])
    if os.path.isdir(logs):
        shutil.copytree(logs, os.path.join(out, rundir.LOGS))
    return training.finish_run(
        cfg, out, train_data.describe_splits(cfg),
        strategy=distribute.make_strategy(cfg.strategy),
        policy=keras.mixed_precision.global_policy().name, extra={"tuning": tuning_info})
