"""The model directory: its file names, the run record (``run.json``), history, resume.

A model dir is what ``fundus-train`` (one run or one CV fold) and the tuner's ``best/``
leave behind, and what every other job reads (``model.io``, evaluation, prediction,
export)::

    D/best.keras     the kept model (inference artifact: no optimizer state)
    D/best.json      the kept epoch {epoch, value, monitor, logs[, swa_epochs]} (restart-safe)
    D/run.json       the run record (:func:`write_run_record`; the ONE writer)
    D/history.csv    Keras CSV log, one row per epoch;  D/history.json the same as JSON
    D/saved_model/   serving export;  D/logs/ TensorBoard;  D/backup/ resume state
    D/curves.png     learning curves;  D/val_predictions.csv the kept model's validation
                     predictions (a CV pools them: D/../cv.png, cv.json "oof")

This module owns those names, the atomic ``.keras`` save, the history reader, the resume
check of an interrupted run (:func:`prepare_model_dir`) and the run record: one function
writes ``run.json`` (:func:`write_run_record`, called by ``model.training.finish_run`` for
``fundus-train`` and the tuner alike) and every reader goes through
:func:`read_run_record` and the accessors below (:func:`image_size`, :func:`val_fold`,
:func:`val_tta`, :func:`data_dir`, :func:`stored_format`, :func:`youden_threshold`), so a
key is read where it is written. Pure file handling: nothing here trains or predicts.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from pipeline import fileio

BEST_MODEL = "best.keras"
BEST_JSON = "best.json"
RUN_JSON = "run.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
CONFIG_JSON = "config.json"          # backup/config.json: the flags a resume must share
CV_JSON = "cv.json"
CV_PNG = "cv.png"                    # a CV dir's folds plot (model.plots)
CURVES_PNG = "curves.png"            # learning curves of the run (model.plots)
VAL_PREDICTIONS = "val_predictions.csv"  # the kept model's validation predictions
LOGS = "logs"
SAVED_MODEL = "saved_model"
BACKUP = "backup"
# flags a resumed run may change (they do not change what is trained)
RESUME_FREE = ("overwrite", "verbose", "profile_batch", "cache_dir", "cache_budget_gb",
               "image_grid", "strategy")
# keys every run record has (write_run_record refuses a record without them)
RECORD_KEYS = ("flags", "versions", "data", "backbone", "image_size", "policy", "strategy",
               "stages", "epochs_run", "best", "val", "val_tta", "outputs")


# ======================================================================= plain files
def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else: str)."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json(path: str, obj: Any) -> str:
    """Atomic JSON write that accepts numpy values (:func:`json_default`)."""
    return fileio.write_json(path, obj, default=json_default)


def save_model(model: keras.Model, path: str) -> str:
    """Save ``model`` to a ``.keras`` file atomically, as an inference artifact: no
    optimizer state and no compile config (a third of the size with Adam; resuming uses
    ``backup/``, not this file). ``keras.models.load_model`` returns it uncompiled."""
    optimizer, compiled = getattr(model, "optimizer", None), getattr(model, "compiled", False)

    def write(tmp: str) -> None:
        try:
            model.optimizer, model.compiled = None, False
            model.save(tmp, overwrite=True)
        finally:
            model.optimizer, model.compiled = optimizer, compiled
    return fileio.write_atomic(path, write, suffix=".keras")


def save_weights(model: keras.Model, path: str) -> str:
    """``model.save_weights`` to a ``.weights.h5`` file atomically."""
    return fileio.write_atomic(path, model.save_weights, suffix=".weights.h5")


def read_history(path: str) -> list[dict]:
    """Rows of ``history.csv`` (one per epoch; a re-run epoch after a restart replaces
    the earlier row), numbers as floats, ``epoch`` as int (0-based), sorted by epoch."""
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


def nan_in_history(model_dir: str) -> bool:
    """True when the last epoch of ``model_dir/history.csv`` has a non-finite loss."""
    rows = read_history(os.path.join(model_dir, HISTORY_CSV))
    return bool(rows) and isinstance(rows[-1].get("loss"), float) and \
        not math.isfinite(rows[-1]["loss"])


def versions() -> dict:
    """Software versions recorded with every run and sweep."""
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


# =========================================================================== resume
def resume_key(flags: dict) -> dict:
    """The flags (``TrainConfig.to_json()``) a resumed run must share with the
    interrupted one: all but :data:`RESUME_FREE`, as JSON values."""
    d = {k: v for k, v in flags.items() if k not in RESUME_FREE}
    return json.loads(json.dumps(d, default=json_default))


def prepare_model_dir(model_dir: str, flags: dict, overwrite: bool) -> bool:
    """Create ``model_dir`` for a run with ``flags``; returns True when it resumes an
    interrupted run (``backup/config.json`` there, same :func:`resume_key`).

    Raises ``FileExistsError`` for a finished run or a partial run without backup state
    (unless ``overwrite``, which removes the earlier run's outputs first) and
    ``ValueError`` naming the flags that differ from an interrupted run's."""
    backup = os.path.join(model_dir, BACKUP)
    run_json = os.path.join(model_dir, RUN_JSON)
    saved = fileio.read_json(os.path.join(backup, CONFIG_JSON))
    if overwrite:
        for name in (BACKUP, LOGS, SAVED_MODEL):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
        for name in (RUN_JSON, BEST_MODEL, BEST_JSON, HISTORY_CSV, HISTORY_JSON, CURVES_PNG,
                     VAL_PREDICTIONS):
            path = os.path.join(model_dir, name)
            if os.path.exists(path):
                os.remove(path)
        saved = None
    elif saved is None and os.path.exists(run_json):
        raise FileExistsError(f"--model_dir={model_dir} holds a finished run ({RUN_JSON}); "
                              f"use a new --model_dir or pass --overwrite")
    elif saved is None and os.path.exists(os.path.join(model_dir, HISTORY_CSV)):
        raise FileExistsError(f"--model_dir={model_dir} holds a partial run without "
                              f"backup state; use a new --model_dir or pass --overwrite")
    mine = resume_key(flags)
    if saved is not None and saved != mine:
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise ValueError(f"--model_dir={model_dir} holds an interrupted run with other "
                         f"flags ({', '.join('--' + d for d in diff)}); rerun with the same "
                         f"flags to resume, or pass --overwrite to start again")
    os.makedirs(backup, exist_ok=True)
    write_json(os.path.join(backup, CONFIG_JSON), mine)
    return saved is not None


# ============================================================ validation predictions
def write_val_predictions(run_dir: str, pred: Mapping[str, np.ndarray]) -> str:
    """``run_dir/val_predictions.csv`` from ``{"y", "p", "patient_id"}`` (one row per
    validation image, evaluation order)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["patient_id", "label", "probability"])
    for pid, y, p in zip(pred["patient_id"], pred["y"], pred["p"]):
        w.writerow([pid, f"{float(y):g}", f"{float(p):.8g}"])
    return fileio.write_text(os.path.join(run_dir, VAL_PREDICTIONS), buf.getvalue())


def read_val_predictions(run_dir: str) -> dict[str, np.ndarray] | None:
    """The predictions :func:`write_val_predictions` wrote (None when absent)."""
    path = os.path.join(run_dir, VAL_PREDICTIONS)
    if not os.path.exists(path):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"patient_id": np.asarray([r["patient_id"] for r in rows], dtype=str),
            "y": np.asarray([float(r["label"]) for r in rows], dtype=np.float64),
            "p": np.asarray([float(r["probability"]) for r in rows], dtype=np.float64)}


# ======================================================================= run record
def write_run_record(model_dir: str, record: dict) -> str:
    """Write ``model_dir/run.json`` (atomic): THE writer of the run record.

    ``record`` is built by ``model.training.finish_run``; a record missing one of
    :data:`RECORD_KEYS` is a programming error (``KeyError``), so readers can rely on
    them."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise KeyError(f"run record for {model_dir} lacks {', '.join(missing)}")
    return write_json(os.path.join(model_dir, RUN_JSON), record)


def run_json_path(path: str) -> str:
    """``run.json`` of a model dir, or the one beside a ``.keras`` file."""
    if os.path.isdir(path):
        return os.path.join(path, RUN_JSON)
    return os.path.join(os.path.dirname(os.path.abspath(path)), RUN_JSON)


def read_run_record(path: str) -> dict:
    """The run record of a model dir or of the ``.keras`` file ``path`` (``{}`` when there
    is none: a bare ``.keras`` file). ``ValueError`` names a file that is not a JSON
    object."""
    file = run_json_path(path)
    info = fileio.read_json(file, missing={})
    if not isinstance(info, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return info


def _flags(info: dict) -> dict:
    flags = info.get("flags")
    return flags if isinstance(flags, dict) else {}


def image_size(info: dict) -> int | None:
    """The model's square input size, pixels (None when the record has none)."""
    v = info.get("image_size")
    return int(v) if v else None


def val_fold(info: dict) -> int | None:
    """The fold the run validated on (``--val_fold``; a ``--cv`` fold), else None."""
    v = _flags(info).get("val_fold")
    if v is None or isinstance(v, bool) or not str(v).lstrip("-").isdigit():
        return None
    return int(v) if int(v) >= 0 else None


def val_tta(info: dict) -> str:
    """The test-time augmentation the run's validation figures used (``none``/``flip``)."""
    return str(info.get("val_tta") or "none")


def data_dir(info: dict) -> str | None:
    """The training data dir the run names (absolute ``data.dir``, else ``--data``)."""
    data = info.get("data")
    if isinstance(data, dict) and isinstance(data.get("dir"), str) and data["dir"]:
        return data["dir"]
    v = _flags(info).get("data")
    return v if isinstance(v, str) and v else None


def stored_format(info: dict) -> tuple[int, int] | None:
    """``(stored size px, JPEG quality)`` of the training data's records, as the run
    recorded them from its manifest (``data.stored_size``, ``data.jpeg_quality``)."""
    data = info.get("data")
    if not isinstance(data, dict) or not data.get("stored_size") \
            or not data.get("jpeg_quality"):
        return None
    return int(data["stored_size"]), int(data["jpeg_quality"])


def youden_threshold(info: dict) -> float | None:
    """The probability threshold maximising sensitivity + specificity on the run's
    validation images (``val.youden_threshold``), else None."""
    val = info.get("val")
    v = val.get("youden_threshold") if isinstance(val, dict) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
