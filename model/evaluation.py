"""Evaluate a model (or an ensemble) on a split of a converted data set.

:func:`evaluate` predicts the split (and the validation records, for the Youden threshold),
computes every metric per image and per patient (:func:`compute_metrics`), and writes

* ``metrics.json``  -- ``image.auc``, ``image.auc_ci95`` [low, high], ``patient.auc``,
  ``patient.auc_ci95``, ``majority_accuracy``, ``n_images``, ``n_patients``, and more;
* ``predictions.csv`` -- file, patient, eye, sex, probability (+ label, member columns);
* ``roc.png`` and ``reliability.png`` (matplotlib, Agg);
* ``tensorboard/`` -- the same scalars and figures (``tf.summary``).

Probabilities are P(male) in [0, 1]; an ensemble's is the mean of its members'. A patient's
probability is the mean of their eyes'. Intervals are 95% percentile intervals of a
bootstrap that resamples patients (both eyes together).

Threshold chosen on validation data (never on the evaluated split): members whose
``run.json`` names a ``val_fold`` on data converted with ``--folds`` contribute their own
out-of-fold predictions (fold == val_fold of the train and val splits); otherwise the
ensemble predicts the ``val`` split. Without validation records the threshold is 0.5 and
``metrics.json`` says so in ``threshold.note``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from model import io as model_io
from model import metrics as M
from pipeline import fileio

CSV_COLUMNS = ["file", "patient", "eye", "sex", "probability"]
OOF = "oof"      # --split=oof: each fold model on its own validation fold
DEFAULT_THRESHOLD = 0.5


# ------------------------------------------------------------------------- prediction

def _text(t) -> str:
    v = t.numpy() if hasattr(t, "numpy") else t
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _read_config(image_size: int, batch_size: int):
    from pipeline import reader  # noqa: PLC0415

    fields = getattr(reader.ReadConfig, "__dataclass_fields__", {})
    kw: dict[str, Any] = {"image_size": image_size, "batch_size": batch_size,
                          "with_meta": True, "normal_only": True}
    if "cache_budget_gb" in fields:
        kw["cache_budget_gb"] = 0.0
    return reader.ReadConfig(**kw)


def _run_pass(models: dict[int, Any], data_dir: str, split, image_size: int,
              batch_size: int, tta: str
              ) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """One read of a split at ``image_size``; every model of that size predicts each batch."""
    from pipeline import reader  # noqa: PLC0415

    cfg = _read_config(image_size, batch_size)
    ds = reader.make_dataset(data_dir, split, False, cfg)
    fns = {i: model_io.make_predict_fn(m, tta) for i, m in models.items()}
    rows: dict[str, list] = {"file": [], "patient": [], "eye": [], "label": []}
    probs: dict[int, list[np.ndarray]] = {i: [] for i in models}
    for images, labels, meta in ds:
        for i, fn in fns.items():
            probs[i].append(fn(images).numpy())
        rows["label"].extend(np.asarray(labels).reshape(-1).tolist())
        rows["file"].extend(_text(v) for v in meta["filename"])
        rows["patient"].extend(_text(v) for v in meta["patient_id"])
        rows["eye"].extend(_text(v) for v in meta["eye"])
    frame = pd.DataFrame(rows)
    out = {i: (np.concatenate(v) if v else np.zeros([0], np.float32)).astype(np.float32)
           for i, v in probs.items()}
    return frame, out


def _keys(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(zip(frame["patient"], frame["eye"], frame["file"]))


def predict_split(members: Sequence[model_io.Member], data_dir: str, split, *,
                  batch_size: int = 32, tta: str = "none") -> pd.DataFrame:
    """Predict every normal-eye record of ``split`` (a name or a ``reader.SplitSpec``):
    one row per image. Columns: ``file, patient, eye, sex ('male'/'female'), label (1.0 male), probability``
    (the ensemble mean) and ``member_k`` for each member when there are several. Members
    of different input sizes each get the records decoded at their own size (one read of
    the split per distinct size); rows are aligned on (patient, eye, file).
    """
    if not members:
        raise ValueError("no models to evaluate")
    base: pd.DataFrame | None = None
    member_p: dict[int, np.ndarray] = {}
    for size in model_io.image_sizes(members):
        models = {i: m.model for i, m in enumerate(members) if m.image_size == size}
        frame, probs = _run_pass(models, data_dir, split, size, batch_size, tta)
        if base is None:
            base = frame
            member_p.update(probs)
            continue
        if _keys(frame) != _keys(base):           # align a pass read in another order
            index = {k: j for j, k in enumerate(_keys(frame))}
            if len(index) != len(frame) or set(index) != set(_keys(base)):
                raise ValueError(f"{data_dir} split {split}: records differ between reads at "
                                 "different image sizes; cannot align ensemble members")
            order = np.array([index[k] for k in _keys(base)], dtype=np.int64)
            probs = {i: p[order] for i, p in probs.items()}
        member_p.update(probs)
    assert base is not None
    base["sex"] = np.where(base["label"] >= 0.5, "male", "female")
    base["probability"] = model_io.ensemble_mean([member_p[i] for i in range(len(members))])
    if len(members) > 1:
        for i in range(len(members)):
            base[f"member_{i}"] = member_p[i]
    return base[CSV_COLUMNS + [c for c in base.columns if c not in CSV_COLUMNS]]


# ------------------------------------------------------------------------- validation

def _val_fold(info: dict) -> int | None:
    """The member's validation fold from run.json (top level or its flags), if any."""
    for src in (info, info.get("flags") or {}, info.get("config") or {}):
        v = src.get("val_fold") if isinstance(src, dict) else None
        if v is not None and str(v).lstrip("-").isdigit() and int(v) >= 0:
            return int(v)
    return None


def _count(data_dir: str, spec) -> int:
    from pipeline import reader  # noqa: PLC0415

    try:
        return reader.count_records(data_dir, spec, normal_only=True)
    except KeyError:                       # the split is not in this data set
        return 0


def _own_fold_frames(members: Sequence[model_io.Member], folds: Sequence[int], data_dir: str,
                     *, batch_size: int, tta: str) -> list[pd.DataFrame]:
    """Each member's predictions on its own validation fold ``folds[i]`` (normal eyes of
    the train+val splits, ``reader.training_split``), with a ``fold`` column; folds with
    no records are left out."""
    from pipeline import reader  # noqa: PLC0415

    parts = []
    for m, f in zip(members, folds):
        spec = reader.training_split(data_dir, f)[1]
        if _count(data_dir, spec):
            parts.append(predict_split([m], data_dir, spec, batch_size=batch_size,
                                       tta=tta).assign(fold=f))
    return parts


def validation_predictions(members: Sequence[model_io.Member], data_dir: str, split: str, *,
                           batch_size: int = 32, tta: str = "none"
                           ) -> tuple[pd.DataFrame | None, str, str | None]:
    """Predictions on the validation records, for choosing a threshold.

    Returns ``(frame or None, source, note)``: out-of-fold predictions of fold members on
    their own ``val_fold`` (data with folds; ``reader.training_split``), else the ensemble
    on the ``val`` split, else ``None`` with a note saying why.
    """
    from pipeline import manifest as manifest_lib  # noqa: PLC0415

    man = manifest_lib.load(data_dir)
    folds = [_val_fold(m.run_info) for m in members]
    k = int(man.get("folds") or 0)
    if k >= 2 and all(f is not None and f < k for f in folds):
        parts = _own_fold_frames(members, folds, data_dir, batch_size=batch_size, tta=tta)
        if parts:
            frame = pd.concat(parts, ignore_index=True)
            src = (f"out-of-fold: each member on its own val_fold (folds "
                   f"{sorted(set(folds))} of the train+val splits)")
            note = None if len(members) == 1 else (
                "ensemble threshold chosen on the members' out-of-fold predictions")
            if split in ("train", "val"):
                note = f"the evaluated split {split!r} overlaps the validation folds"
            return frame, src, note
    if split != "val" and _count(data_dir, "val"):
        return predict_split(members, data_dir, "val", batch_size=batch_size, tta=tta), \
            "val split", None
    why = ("the evaluated split is 'val'" if split == "val"
           else f"no validation records in {data_dir} (empty or no 'val' split, no folds "
                "matching the models' val_fold)")
    return None, "none", f"{why}: Youden threshold not chosen, {DEFAULT_THRESHOLD} used"


def out_of_fold_predictions(members: Sequence[model_io.Member], data_dir: str, *,
                            batch_size: int = 32, tta: str = "none") -> pd.DataFrame:
    """``--split=oof``: every member on its own validation fold (its run.json
    ``val_fold``; normal eyes of the train+val splits, as ``fundus-train`` validated it),
    concatenated, with a ``fold`` column. For a ``fundus-train --cv=K`` dir this is the
    CV's pooled out-of-fold prediction. Raises ValueError naming the member without a
    fold, a fold the data lacks, or a fold given twice."""
    from pipeline import manifest as manifest_lib  # noqa: PLC0415

    k = int(manifest_lib.load(data_dir).get("folds") or 0)
    folds = [_val_fold(m.run_info) for m in members]
    for m, f in zip(members, folds):
        if f is None or f >= k:
            raise ValueError(f"--split=oof: {m.path} has no validation fold of {data_dir} "
                             f"(run.json val_fold {f}, data folds {k}); oof needs the fold "
                             f"models of fundus-train --cv on the data they were trained on")
    if len(set(folds)) != len(folds):
        raise ValueError(f"--split=oof: several models validate on the same fold "
                         f"({sorted(folds)}); give one model per fold")
    parts = _own_fold_frames(members, folds, data_dir, batch_size=batch_size, tta=tta)
    if not parts:
        raise ValueError(f"--split=oof: no normal-fundus records in the models' folds "
                         f"{sorted(folds)} of {data_dir}")
    return pd.concat(parts, ignore_index=True)


def _auc_or_none(y, p) -> float | None:
    try:
        return _num(M.roc_auc(y, p))
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
                     "image_auc": _auc_or_none(y, p), "patient_auc": _auc_or_none(y_pat, p_pat)})
    out: dict[str, Any] = {"folds": rows}
    for key in ("image_auc", "patient_auc"):
        v = np.array([r[key] for r in rows if r[key] is not None], np.float64)
        out[key] = {"mean": _num(v.mean()), "sd": _num(v.std(ddof=1)) if v.size > 1 else 0.0}
    return out


def youden_thresholds(val: pd.DataFrame | None) -> tuple[dict[str, float], str | None]:
    """Youden thresholds per image and per patient from validation predictions.

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


# ------------------------------------------------------------------------- metrics

def _num(v: float | None) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, balanced accuracy, sensitivity (male recall), specificity at a threshold."""
    return {"threshold": _num(threshold),
            "accuracy": _num(M.accuracy(y, p, threshold)),
            "balanced_accuracy": _num(M.balanced_accuracy(y, p, threshold)),
            "sensitivity": _num(M.sensitivity(y, p, threshold)),
            "specificity": _num(M.specificity(y, p, threshold))}


def level_metrics(y: np.ndarray, p: np.ndarray, groups: Sequence, youden: float, *,
                  bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every metric at one level (images or patients); ``groups`` are the patient ids."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    out: dict[str, Any] = {"n": int(y.size), "n_male": int(y.sum()),
                           "n_female": int(y.size - y.sum()),
                           "majority_accuracy": _num(M.majority_accuracy(y))}
    try:
        out["auc"] = _num(M.roc_auc(y, p))
        out["pr_auc"] = _num(M.pr_auc(y, p))
    except ValueError as e:
        out["auc"] = out["pr_auc"] = None
        out["note"] = str(e)
    out["auc_ci95"] = [None, None]
    if out["auc"] is not None and bootstrap > 0:
        try:
            out["auc_ci95"] = [_num(v) for v in M.patient_bootstrap_ci(
                y, p, groups, n=bootstrap, seed=seed)]
        except ValueError as e:
            out["note"] = f"no bootstrap interval: {e}"
    out["brier"] = _num(M.brier(y, p))
    out["ece"] = _num(M.expected_calibration_error(y, p))
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
                    "image_auc": _auc_or_none(frame["label"], frame[col])})
    return out


# ------------------------------------------------------------------------- figures

def _fmt_auc(level: dict) -> str:
    if level.get("auc") is None:
        return "AUC undefined"
    lo, hi = level.get("auc_ci95") or [None, None]
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    return f"AUC {level['auc']:.3f}{ci}"


def plot_roc(frame: pd.DataFrame, metrics: dict, path: str, title: str = "") -> str:
    """ROC curves per image and per patient with AUC + CI in the legend -> PNG ``path``."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    y_pat, p_pat = M.per_patient(y, p, frame["patient"])
    fig, ax = plt.subplots(figsize=(6.0, 6.0), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="chance (AUC 0.5)")
    for (yy, pp), level, name, color, ls in (
            ((y, p), metrics["image"], "per image", "C0", "-"),
            ((y_pat, p_pat), metrics["patient"], "per patient", "C3", "-.")):
        try:
            fpr, tpr, _ = M.roc_curve(yy, pp)
        except ValueError:
            continue
        ax.plot(fpr, tpr, color=color, lw=2, ls=ls, drawstyle="default",
                label=f"{name} (n={level['n']}): {_fmt_auc(level)}")
        t = level["at_youden"]
        if t["sensitivity"] is not None and t["specificity"] is not None:
            ax.plot(1 - t["specificity"], t["sensitivity"], "o", color=color, ms=6,
                    label=f"{name} at threshold {t['threshold']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("False positive rate (1 - specificity; females called male)")
    ax.set_ylabel("True positive rate (sensitivity; males called male)")
    ax.set_title(title or "ROC: probability of male")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    return path


def plot_reliability(frame: pd.DataFrame, metrics: dict, path: str, title: str = "") -> str:
    """Reliability diagram (10 equal-width bins) over a histogram of probabilities -> PNG."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    edges, count, mean_p, frac = M.calibration_bins(y, p)
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6.0, 7.0), dpi=110, sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    centers = (edges[:-1] + edges[1:]) / 2
    ok = count > 0
    ax.bar(centers[ok], frac[ok], width=0.1, edgecolor="k", alpha=0.35, color="C0",
           label="fraction male per bin")
    ax.plot(mean_p[ok], frac[ok], "o-", color="C0", label="mean probability vs fraction male")
    for c, f, n in zip(centers[ok], frac[ok], count[ok]):
        ax.annotate(f"n={n}", (c, min(f + 0.02, 0.95)), ha="center", fontsize=7)
    im = metrics["image"]
    ax.set_ylim(0, 1)
    ax.set_ylabel("Fraction male (observed)")
    ax.set_title(title or f"Reliability per image: ECE {im['ece']:.3f}, Brier {im['brier']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    bins = np.linspace(0, 1, 41)
    hx.hist([p[y == 1], p[y == 0]], bins=bins, stacked=True, color=["C0", "C1"],
            label=["male", "female"])
    hx.set_xlim(0, 1)
    hx.set_xlabel("Predicted probability of male")
    hx.set_ylabel("Images")
    hx.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    return path


def _save_fig(fig, path: str) -> None:
    from matplotlib import pyplot as plt  # noqa: PLC0415

    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- outputs

def _flat_scalars(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_scalars(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[key] = float(v)
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[key + "_low"], out[key + "_high"] = float(v[0]), float(v[1])
    return out


def write_tensorboard(logdir: str, scalars: dict[str, float], pngs: dict[str, str],
                      step: int = 0) -> str:
    """Scalars and rendered PNGs (as ``tf.summary.image``) into a TensorBoard run dir."""
    import tensorflow as tf  # noqa: PLC0415

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name, value in scalars.items():
            tf.summary.scalar(name, value, step=step)
        for name, path in pngs.items():
            with open(path, "rb") as f:
                img = tf.io.decode_png(f.read(), channels=3)
            tf.summary.image(name, img[tf.newaxis], step=step)
    writer.flush()
    writer.close()
    return logdir


def write_json(path: str, obj: Any) -> str:
    """Atomic write of strict JSON (NaN never appears: callers convert to null)."""
    return fileio.write_json(path, obj, sort_keys=False, allow_nan=False)


def write_csv(path: str, frame: pd.DataFrame) -> str:
    return fileio.write_atomic(
        path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6f"))


# ------------------------------------------------------------------------- the job

def evaluate(model_paths: str | Iterable[str] | None, data_dir: str, split: str = "test",
             output_dir: str | None = None, *, tta: str = "none", batch_size: int = 32,
             bootstrap: int = 2000, seed: int = 0,
             members: Sequence[model_io.Member] | None = None) -> dict[str, Any]:
    """Evaluate model(s) on ``split`` of ``data_dir``; write outputs when ``output_dir``.

    ``model_paths``: a model dir, ``.keras`` file, ensemble dir, or several (list or comma
    string); or pass loaded ``members``. ``tta``: none, flip, or auto (flip when every
    member was trained with ``--tta=flip``, :func:`model.io.resolve_tta`); metrics.json
    records the one used. Returns the metrics dict written to metrics.json.
    """
    from pipeline import manifest as manifest_lib  # noqa: PLC0415

    if members is None:
        members = model_io.load_models(model_paths)
    tta = model_io.resolve_tta(tta, members)
    man = manifest_lib.load(data_dir)
    if split == OOF:
        frame = out_of_fold_predictions(members, data_dir, batch_size=batch_size, tta=tta)
        val, source = None, "none"
        note = (f"--split=oof: the predictions are the validation folds themselves: Youden "
                f"threshold not chosen, {DEFAULT_THRESHOLD} used")
    else:
        if split not in man["splits"] or manifest_lib.split_size(man, split) == 0:
            raise ValueError(f"--split={split}: {data_dir} has no records in split "
                             f"{split!r} (splits: {sorted(man['splits'])}, or oof)")
        frame = predict_split(members, data_dir, split, batch_size=batch_size, tta=tta)
        val, source, note = validation_predictions(members, data_dir, split,
                                                   batch_size=batch_size, tta=tta)
    if not len(frame):
        raise ValueError(f"--split={split}: no normal-fundus records in {data_dir}")
    thresholds, tnote = youden_thresholds(val)
    result = compute_metrics(frame, thresholds, bootstrap=bootstrap, seed=seed)
    result = {
        "n_images": result["n_images"], "n_patients": result["n_patients"],
        "majority_accuracy": result["majority_accuracy"],
        "image": result["image"], "patient": result["patient"],
        "threshold": {"image": _num(thresholds["image"]), "patient": _num(thresholds["patient"]),
                      "source": source, "n_validation_images": int(len(val)) if val is not None else 0,
                      "note": tnote or note},
        "data": os.path.abspath(data_dir), "split": split, "tta": tta,
        "bootstrap": {"n": int(bootstrap), "seed": int(seed), "resampled": "patients"},
        "models": [m.path for m in members],
        "members": member_metrics(frame, members) if split != OOF else None,
    }
    if split == OOF:
        result["cv"] = fold_metrics(frame)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        write_csv(os.path.join(output_dir, "predictions.csv"),
                  frame.assign(label=frame["label"].astype(np.int64)))
        name = "ensemble of %d" % len(members) if len(members) > 1 else os.path.basename(
            os.path.dirname(members[0].path)) or members[0].path
        pngs = {
            "roc": plot_roc(frame, result, os.path.join(output_dir, "roc.png"),
                            f"ROC, {split} split, {name}" + (" + flip TTA" if tta == "flip" else "")),
            "reliability": plot_reliability(frame, result,
                                            os.path.join(output_dir, "reliability.png")),
        }
        scalars = _flat_scalars({"image": result["image"], "patient": result["patient"]})
        write_tensorboard(os.path.join(output_dir, "tensorboard"), scalars, pngs)
        result["outputs"] = {"predictions": "predictions.csv", "roc": "roc.png",
                             "reliability": "reliability.png", "tensorboard": "tensorboard"}
        write_json(os.path.join(output_dir, "metrics.json"), result)
    return result


def lookup(metrics: dict, dotted: str) -> Any:
    """``metrics["image"]["auc"]`` as ``lookup(metrics, "image.auc")``."""
    cur: Any = metrics
    for part in dotted.split("."):
        cur = cur[part]
    return cur
