"""The numbers of ``metrics.json``: every metric of an evaluation, per image and per patient.

:func:`compute_metrics` turns a predictions frame (``label`` 1.0 = male, ``probability`` =
P(male) in [0, 1], ``patient``) into the ``image`` and ``patient`` levels: ROC and PR AUC,
a 95% percentile interval of the ROC AUC from a bootstrap that resamples patients, Brier
score, expected calibration error, and accuracy / balanced accuracy / sensitivity /
specificity at 0.5 and at the Youden threshold (:func:`youden_thresholds`, chosen on
validation predictions). :func:`fold_metrics` summarises an out-of-fold frame per fold.
Values are JSON-safe: NaN and infinities become ``None`` (:func:`json_float`). The metric
formulas themselves live in :mod:`model.metrics`; the predictions come from
:mod:`model.evaluation`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from model import io as model_io
from model import metrics as M
from model import rundir

DEFAULT_THRESHOLD = 0.5   # probability threshold used when no Youden threshold is defined


def json_float(v: float | None) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def auc_or_none(y, p) -> float | None:
    """ROC AUC in [0, 1] of labels ``y`` and probabilities ``p``; None with one class only."""
    try:
        return json_float(M.roc_auc(y, p))
    except ValueError:          # one class only
        return None


def fold_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    """Per fold of an ``oof`` frame: image and patient AUC (None where a fold has one
    class only), and each one's mean and sample sd over the folds where it is defined
    (the figures ``fundus-train --cv`` writes to cv.json)."""
    rows = []
    for f in sorted(frame["fold"].unique()):
        part = frame[frame["fold"] == f]
        y, p = part["label"].to_numpy(), part["probability"].to_numpy()
        y_pat, p_pat = M.per_patient(y, p, part["patient"])
        rows.append({"fold": int(f), "n_images": int(len(part)),
                     "image_auc": auc_or_none(y, p), "patient_auc": auc_or_none(y_pat, p_pat)})
    out: dict[str, Any] = {"folds": rows}
    for key in ("image_auc", "patient_auc"):
        v = np.array([r[key] for r in rows if r[key] is not None], np.float64)
        out[key] = {"mean": json_float(v.mean()),
                    "sd": json_float(v.std(ddof=1)) if v.size > 1 else 0.0}
    return out


def youden_thresholds(val: pd.DataFrame | None) -> tuple[dict[str, float], str | None]:
    """Youden thresholds (probabilities in [0, 1]) per image and per patient from
    validation predictions.

    Returns ``({"image": t, "patient": t}, note)``; 0.5 with a note where undefined.
    """
    if val is None or not len(val):
        return {"image": DEFAULT_THRESHOLD, "patient": DEFAULT_THRESHOLD}, None
    try:
        y_pat, p_pat = M.per_patient(val["label"], val["probability"], val["patient"])
        return {"image": M.youden_threshold(val["label"], val["probability"]),
                "patient": M.youden_threshold(y_pat, p_pat)}, None
    except ValueError as e:
        return ({"image": DEFAULT_THRESHOLD, "patient": DEFAULT_THRESHOLD},
                f"Youden threshold undefined on validation data ({e}); {DEFAULT_THRESHOLD} used")


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, balanced accuracy, sensitivity (male recall), specificity at a threshold
    (fractions in [0, 1])."""
    return {"threshold": json_float(threshold),
            "accuracy": json_float(M.accuracy(y, p, threshold)),
            "balanced_accuracy": json_float(M.balanced_accuracy(y, p, threshold)),
            "sensitivity": json_float(M.sensitivity(y, p, threshold)),
            "specificity": json_float(M.specificity(y, p, threshold))}


def level_metrics(y: np.ndarray, p: np.ndarray, groups: Sequence, youden: float, *,
                  bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every metric at one level (images or patients); ``groups`` are the patient ids,
    ``bootstrap`` the number of patient resamples for ``auc_ci95`` (0: no interval)."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    out: dict[str, Any] = {"n": int(y.size), "n_male": int(y.sum()),
                           "n_female": int(y.size - y.sum()),
                           "majority_accuracy": json_float(M.majority_accuracy(y))}
    try:
        out["auc"] = json_float(M.roc_auc(y, p))
        out["pr_auc"] = json_float(M.pr_auc(y, p))
    except ValueError as e:
        out["auc"] = out["pr_auc"] = None
        out["note"] = str(e)
    out["auc_ci95"] = [None, None]
    if out["auc"] is not None and bootstrap > 0:
        try:
            out["auc_ci95"] = [json_float(v) for v in M.patient_bootstrap_ci(
                y, p, groups, n=bootstrap, seed=seed)]
        except ValueError as e:
            out["note"] = f"no bootstrap interval: {e}"
    out["brier"] = json_float(M.brier(y, p))
    out["ece"] = json_float(M.expected_calibration_error(y, p))
    out["at_0_5"] = threshold_metrics(y, p, DEFAULT_THRESHOLD)
    out["at_youden"] = threshold_metrics(y, p, youden)
    return out


def compute_metrics(frame: pd.DataFrame, thresholds: dict[str, float] | None = None, *,
                    bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``{"image": ..., "patient": ..., "n_images", "n_patients", "majority_accuracy"}``.

    ``frame`` has ``label``, ``probability`` and ``patient`` columns (predict_split's).
    """
    thresholds = thresholds or {"image": DEFAULT_THRESHOLD, "patient": DEFAULT_THRESHOLD}
    y, p, g = frame["label"].to_numpy(), frame["probability"].to_numpy(), frame["patient"]
    y_pat, p_pat = M.per_patient(y, p, g)
    ids = M.patient_ids(g)
    image = level_metrics(y, p, g.to_numpy(), thresholds["image"], bootstrap=bootstrap, seed=seed)
    patient = level_metrics(y_pat, p_pat, ids, thresholds["patient"],
                            bootstrap=bootstrap, seed=seed)
    patient["probability"] = "mean of the patient's eye probabilities"
    return {"n_images": int(len(frame)), "n_patients": int(ids.size),
            "majority_accuracy": image["majority_accuracy"], "image": image, "patient": patient}


def member_metrics(frame: pd.DataFrame, members: Sequence[model_io.Member]) -> list[dict]:
    """Per-member image AUC (only meaningful for ensembles)."""
    out = []
    for i, m in enumerate(members):
        col = f"member_{i}" if f"member_{i}" in frame else "probability"
        out.append({"path": m.path, "image_size": m.image_size,
                    "image_auc": auc_or_none(frame["label"], frame[col])})
    return out


def pooled_oof(run_dirs: Sequence[str], n_boot: int = 2000, seed: int = 0
               ) -> dict[str, Any] | None:
    """The folds' validation predictions pooled: exact ROC AUC per image and per patient
    and the per-image AUC's patient-bootstrap 95% interval (``ci95``, None when
    undefined). None when a fold has no ``rundir.VAL_PREDICTIONS``."""
    parts = [rundir.read_val_predictions(d) for d in run_dirs]
    if not parts or any(p is None for p in parts):
        return None
    y = np.concatenate([p["y"] for p in parts])
    p = np.concatenate([p["p"] for p in parts])
    pid = np.concatenate([p["patient_id"] for p in parts])
    out: dict[str, Any] = {"images": int(y.size), "patients": int(np.unique(pid).size),
                           "bootstrap": int(n_boot)}
    try:
        out["auc"] = M.roc_auc(y, p)
        out["patient_auc"] = M.roc_auc(*M.per_patient(y, p, pid))
    except ValueError:
        return None
    try:
        out["ci95"] = list(M.bootstrap_auc_ci(y, p, pid, n=n_boot, seed=seed))
    except ValueError:
        out["ci95"] = None
    return out
