"""A sweep: keras-tuner over :class:`tuning.hypermodel.FundusHyperModel`, and its outputs.

:func:`run_sweep` makes the tuner (``random``, ``bayesian`` or ``hyperband``; objective
``keras_tuner.Objective("val_auc", direction="max")``), with ``distribution_strategy`` =
``model.distribute.make_strategy(base.strategy)``, the strategy ``fundus-train`` uses
(``auto``: MirroredStrategy over all GPUs when there are several), runs the search and
writes the results (:mod:`tuning.results`). Layout of ``--directory`` (``DIR``)::

    DIR/sweep.json          tuner settings, the search space, the base TrainConfig
    DIR/tuner/              keras-tuner's project: oracle.json, tuner*.json and
      trial_<id>/           trial.json (oracle), config.json (the trial's TrainConfig),
                            best.keras + best.json (its best epoch), history.csv,
                            checkpoint.weights.h5 (keras-tuner, best epoch weights)
    DIR/logs/               TensorBoard: HParams experiment + one run per trial
      <id>/train, <id>/validation
    DIR/summary.csv         trials sorted by val_auc, with their hyperparameters
    DIR/events.jsonl        one line per trial start / end (pid, tuner id, RSS)
    DIR/best/               the best trial as a fundus-train model dir (best.keras,
                            run.json, saved_model/, history.csv, logs/): fundus-evaluate
                            --model=DIR/best

Resume: a sweep started again with the same ``DIR`` reloads the oracle (keras-tuner
``overwrite=False``): finished trials are kept, the trial that was running is run again
from its start, then the search goes on to ``max_trials``. ``overwrite=True`` deletes the
project (and ``DIR/logs``, ``DIR/best``, the summary) first.

Distributed tuning (keras-tuner's chief/worker mode over gRPC): set
``KERASTUNER_TUNER_ID`` (``chief`` on the oracle's machine, ``tuner0``, ``tuner1``, ... on
the workers), ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` on every process and
run the same command everywhere. The chief runs the oracle only (no training) and, when
every worker has finished, writes the summary and ``best/``.

``keep_trials=N`` removes the model files (``best.keras``, ``checkpoint.weights.h5``) of
finished trials outside the best N after every trial (hyperband: at the end of the
search, because later rounds continue from earlier trials' checkpoints); configs,
histories and logs stay.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import glob
import json
import os
import shutil
import time

import keras
import keras_tuner

from model import distribute, rundir
from pipeline import fileio
from model.train_config import TrainConfig
from tuning import hypermodel as hm
from tuning import results
from tuning.results import BEST_DIR, BEST_MODES, LOGS, SUMMARY_CSV  # DIR's layout
from tuning import space as space_lib

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "tuner"
SWEEP_JSON = "sweep.json"
EVENTS = "events.jsonl"
MODEL_FILES = (rundir.BEST_MODEL, "checkpoint.weights.h5")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """How the search runs (the ``fundus-tune`` flags that are not training flags).

    Attributes:
      directory: results root (see the module docstring).
      tuner: ``random`` | ``bayesian`` | ``hyperband``.
      max_trials: trials to run in total (hyperband: a cap on its own schedule; 0: none).
      max_epochs: hyperband's largest epoch budget (0: the training ``epochs``).
      factor: hyperband's reduction factor (>= 2).
      hyperband_iterations: hyperband's repetitions of the whole schedule.
      executions_per_trial: trainings per trial (their objective is averaged).
      seed: the oracle's random seed.
      overwrite: start afresh (delete the project and the results).
      keep_trials: keep the model files of the best N finished trials (0: keep all).
      best: ``copy`` the best trial into ``DIR/best`` (from its checkpoint), ``retrain``
        it there with ``fundus-train``'s ``train`` (needs no trial files: a chief without
        shared storage), or ``none``.
      max_consecutive_failed_trials: stop after this many failed trials in a row.
    """

    directory: str
    tuner: str = "random"
    max_trials: int = 10
    max_epochs: int = 0
    factor: int = 3
    hyperband_iterations: int = 1
    executions_per_trial: int = 1
    seed: int = 0
    overwrite: bool = False
    keep_trials: int = 3
    best: str = "copy"
    max_consecutive_failed_trials: int = 3

    def validate(self) -> None:
        checks = [
            (bool(self.directory), "--directory is required: where the sweep's results go"),
            (self.tuner in TUNERS, f"--tuner={self.tuner!r}: use one of {', '.join(TUNERS)}"),
            (self.max_trials >= 0, f"--max_trials={self.max_trials}: must be >= 0"),
            (self.tuner == "hyperband" or self.max_trials >= 1,
             f"--max_trials={self.max_trials}: must be >= 1 for --tuner={self.tuner}"),
            (self.max_epochs >= 0, f"--max_epochs={self.max_epochs}: must be >= 0"),
            (self.factor >= 2, f"--factor={self.factor}: must be >= 2"),
            (self.hyperband_iterations >= 1,
             f"--hyperband_iterations={self.hyperband_iterations}: must be >= 1"),
            (self.executions_per_trial >= 1,
             f"--executions_per_trial={self.executions_per_trial}: must be >= 1"),
            (self.keep_trials >= 0, f"--keep_trials={self.keep_trials}: must be >= 0 "
                                    "(0 keeps every trial's model files)"),
            (self.best in BEST_MODES, f"--best={self.best!r}: use one of "
                                      f"{', '.join(BEST_MODES)}"),
            (self.max_consecutive_failed_trials >= 1,
             f"--max_consecutive_failed_trials={self.max_consecutive_failed_trials}: >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# --------------------------------------------------------------- distributed roles
def role() -> str:
    """``single``, ``chief`` or ``worker`` from the KERASTUNER_* environment variables;
    a clear error when they are set inconsistently."""
    ip = os.environ.get("KERASTUNER_ORACLE_IP")
    if not ip:
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
               if not os.environ.get(v)]
    if missing:
        raise ValueError(f"KERASTUNER_ORACLE_IP={ip} is set but {', '.join(missing)} is not; "
                         "distributed tuning needs all three (see README)")
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"KERASTUNER_ORACLE_PORT={port!r}: not a TCP port number")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def tuner_id() -> str:
    return os.environ.get("KERASTUNER_TUNER_ID", "tuner0")


# ----------------------------------------------------------------- measurements
def rss_mb() -> float:
    """Resident set size of this process now, MiB (Linux ``/proc/self/status``; NaN
    elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def append_event(directory: str, event: dict) -> None:
    """One JSON line in ``DIR/events.jsonl`` (appends are atomic for short lines)."""
    line = json.dumps({"time": round(time.time(), 3), "pid": os.getpid(),
                       "tuner_id": tuner_id(), **event}, default=str) + "\n"
    with open(os.path.join(directory, EVENTS), "a", encoding="utf-8") as f:
        f.write(line)


def read_events(directory: str) -> list[dict]:
    """Every line of ``DIR/events.jsonl`` (JSON lines, not one JSON document)."""
    path = os.path.join(directory, EVENTS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def release_trial_memory() -> int:
    """Free what a finished trial leaves in this process; returns the number of stale
    gradient registrations removed.

    ``keras.backend.clear_session`` and ``gc.collect`` free the model, but on TF 2.21 every
    traced Keras optimizer step also leaves an entry in TensorFlow's process-wide gradient
    registry: the optimizer's ``tf.distribute`` all-reduce is a ``tf.custom_gradient``,
    which in graph mode registers a new ``CustomGradient-<uid>`` gradient function per
    trace and never removes it; each one keeps its whole training graph alive (measured:
    +36 MiB per trial for MobileNetV2 with a frozen backbone, +175 MiB fully trainable;
    BUILD_NOTES.md). Between trials no traced function of the finished trial is used
    again, so those entries are dropped. Then glibc is asked to return freed heap pages
    (``malloc_trim``), so the resident size reflects what is really in use.
    """
    keras.backend.clear_session()
    removed = 0
    try:  # TF's private registry: imported here so another TF layout only skips this
        from tensorflow.python.framework import ops as tf_ops  # noqa: PLC0415
        registry = tf_ops._gradient_registry._registry
        for key in [k for k in registry if str(k).startswith("CustomGradient-")]:
            del registry[key]
            removed += 1
    except (ImportError, AttributeError):      # another TF layout: nothing to drop
        pass
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):          # not glibc
        pass
    return removed


# ------------------------------------------------------------------------- tuners
class _SweepMixin:
    """What every fundus tuner adds to keras-tuner's: the trial call with its dir,
    measurement, pruning and a resume-safe start."""

    sweep: SweepConfig

    def _populate_initial_space(self):
        # Declare the space without building a model (nothing is conditional here): the
        # chief never builds one, workers build only for their trials.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        model = self._try_build(hp)             # clear_session + gc, build in strategy scope
        # hyperband continues a later trial from this trial's model: keras-tuner reads it
        fileio.write_json(self._get_build_config_fname(trial.trial_id),
                          model.get_build_config())
        return self.hypermodel.fit(hp, model, *args, trial_dir=self.get_trial_dir(trial.trial_id),
                                   trial_id=trial.trial_id, **kwargs)

    def on_search_begin(self):
        super().on_search_begin()
        self.save()                              # a sweep killed in trial 1 resumes too

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        append_event(self.sweep.directory, {"event": "begin", "trial_id": trial.trial_id,
                                            "rss_mb": round(rss_mb(), 1)})

    def on_trial_end(self, trial):
        super().on_trial_end(trial)              # oracle.end_trial + save
        release_trial_memory()
        append_event(self.sweep.directory, {
            "event": "end", "trial_id": trial.trial_id, "status": str(trial.status),
            "score": trial.score, "rss_mb": round(rss_mb(), 1),
            "datasets": self.hypermodel.datasets_built})
        if self.sweep.tuner != "hyperband":
            self.prune()

    def on_search_end(self):
        super().on_search_end()
        self.prune()

    def prune(self) -> list[str]:
        """Remove model files of finished trials outside the best ``keep_trials``."""
        if not self.sweep.keep_trials:
            return []
        return prune_trials(self.project_dir, self.oracle, self.sweep.keep_trials)


class FundusRandomSearch(_SweepMixin, keras_tuner.RandomSearch):
    pass


class FundusBayesianOptimization(_SweepMixin, keras_tuner.BayesianOptimization):
    pass


class FundusHyperband(_SweepMixin, keras_tuner.Hyperband):
    pass


def prune_trials(project_dir: str, oracle, keep: int) -> list[str]:
    """Delete :data:`MODEL_FILES` in ``trial_<id>`` dirs of finished trials that are not
    among the best ``keep`` completed ones; returns the removed paths. Running trials are
    never touched. Missing files (another worker pruned first) are fine."""
    best = {t.trial_id for t in oracle.get_best_trials(keep)
            if str(t.status) == "COMPLETED"}
    removed = []
    for trial_id in results.finished_ids(oracle):
        if trial_id in best:
            continue
        for name in MODEL_FILES:
            path = os.path.join(project_dir, f"trial_{trial_id}", name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def make_tuner(sweep: SweepConfig, hypermodel: hm.FundusHyperModel, strategy=None):
    """The keras-tuner tuner of ``sweep.tuner`` over ``hypermodel`` (project ``DIR/tuner``).

    A worker never overwrites (the chief owns the project)."""
    overwrite = sweep.overwrite and role() != "worker"
    common = dict(hypermodel=hypermodel, objective=hm.objective(),
                  distribution_strategy=strategy, directory=sweep.directory,
                  project_name=PROJECT, overwrite=overwrite,
                  executions_per_trial=sweep.executions_per_trial, seed=sweep.seed,
                  max_consecutive_failed_trials=sweep.max_consecutive_failed_trials)
    if sweep.tuner == "random":
        tuner = FundusRandomSearch(max_trials=sweep.max_trials, **common)
    elif sweep.tuner == "bayesian":
        tuner = FundusBayesianOptimization(max_trials=sweep.max_trials, **common)
    else:
        max_epochs = sweep.max_epochs or hypermodel.base.epochs
        tuner = FundusHyperband(max_epochs=max_epochs, factor=sweep.factor,
                                hyperband_iterations=sweep.hyperband_iterations, **common)
        if sweep.max_trials:
            tuner.oracle.max_trials = sweep.max_trials
    tuner.sweep = sweep
    return tuner


# ---------------------------------------------------------------------------- run
def prepare_directory(sweep: SweepConfig) -> None:
    """Create ``DIR``; with ``overwrite`` (not on a worker) remove earlier results."""
    os.makedirs(sweep.directory, exist_ok=True)
    if sweep.overwrite and role() != "worker":
        leftovers = glob.glob(os.path.join(sweep.directory, BEST_DIR + ".tmp*")) + \
            glob.glob(os.path.join(sweep.directory, BEST_DIR + ".old*"))  # fileio's names
        for path in [os.path.join(sweep.directory, n) for n in (LOGS, BEST_DIR)] + leftovers:
            shutil.rmtree(path, ignore_errors=True)
        for name in (SUMMARY_CSV, EVENTS):
            path = os.path.join(sweep.directory, name)
            if os.path.exists(path):
                os.remove(path)


def write_sweep_json(sweep: SweepConfig, base: TrainConfig,
                     space: space_lib.SearchSpace) -> None:
    rundir.write_json(os.path.join(sweep.directory, SWEEP_JSON), {
        "sweep": dataclasses.asdict(sweep), "objective": {"name": hm.OBJECTIVE_NAME,
                                                          "direction": "max"},
        "space": space.to_json(), "base": base.to_json(), "role": role(),
        "versions": rundir.versions()})


def run_sweep(sweep: SweepConfig, base: TrainConfig, space: space_lib.SearchSpace,
              verbose: int = 1) -> dict:
    """Run (or resume) the sweep; returns ``{"rows", "best", "role", "tuner"}``.

    ``base``: the trials' TrainConfig before the searched values (the space's fixed
    overrides already applied). Single process: search, summary, ``best/``. Chief: serve
    the oracle until the workers are done, then summary and ``best/``. Worker: run
    trials the chief hands out, then return (no summary).
    """
    sweep.validate()
    if not space.searched:
        raise ValueError("nothing to search: give --space=FILE, --range or --search")
    hm.check_space(base, space)
    who = role()
    prepare_directory(sweep)
    strategy = distribute.make_strategy(base.strategy) if who != "chief" else None
    logs_root = os.path.join(sweep.directory, LOGS)
    model = hm.FundusHyperModel(base, space, logs_root, strategy)
    tuner = make_tuner(sweep, model, strategy)
    if who != "worker":
        write_sweep_json(sweep, base, space)
        hm.write_hparams_config(logs_root, space)
    if verbose:
        todo = "" if who == "worker" else f"{tuner.remaining_trials} trials to go; "
        print(f"[fundus-tune] {who} ({tuner_id()}): {sweep.tuner} search over "
              f"{', '.join(f'{n}={p.describe()}' for n, p in space.searched.items())}; "
              f"objective val_auc (max); {todo}results in {sweep.directory}", flush=True)
        for note in space.notes:
            print(f"[fundus-tune] note: {note}", flush=True)
    tuner.search(verbose=1 if verbose else 0)
    result = {"role": who, "tuner": tuner, "rows": [], "best": None}
    if who == "worker":
        return result
    rows = results.summary_rows(tuner)
    results.write_summary(sweep.directory, rows, space)
    result["rows"] = rows
    if verbose:
        print(results.format_summary(rows), flush=True)
    result["best"] = results.export_best(tuner, sweep, rows)
    if verbose and result["best"] is not None:
        b = result["best"]
        print(f"[fundus-tune] best trial {b['tuning']['trial_id']}: validation AUC "
              f"{b['val']['auc']:.4f} per image, {b['val']['patient_auc']:.4f} per patient; "
              f"model dir {os.path.join(sweep.directory, BEST_DIR)} "
              f"(fundus-evaluate --model={os.path.join(sweep.directory, BEST_DIR)}); "
              f"TensorBoard: tensorboard --logdir {logs_root}", flush=True)
    return result
