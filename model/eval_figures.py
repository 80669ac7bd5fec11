"""The figures of an evaluation: ``roc.png``, ``reliability.png`` and ``tensorboard/``.

:func:`plot_roc` draws the ROC curves per image and per patient (AUC and its 95% interval
in the legend, the Youden operating point marked); :func:`plot_reliability` a 10-bin
reliability diagram over a histogram of P(male). Both take a predictions frame (``label``
1.0 = male, ``probability`` in [0, 1], ``patient``) and the ``metrics.json`` dict of
:mod:`model.eval_metrics`, and write a PNG atomically (``pipeline.fileio``). Figures are
``matplotlib.figure.Figure`` objects rendered by Agg, independent of pyplot's backend
and state. :func:`write_tensorboard` puts the scalars and those PNGs into a TensorBoard
run dir.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure

from model import metrics as M
from pipeline import fileio


def save_png(fig: Figure, path: str) -> str:
    """Render ``fig`` (Agg) to the PNG ``path`` atomically; returns ``path``."""
    return fileio.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def _fmt_auc(level: dict) -> str:
    if level.get("auc") is None:
        return "AUC undefined"
    lo, hi = level.get("auc_ci95") or [None, None]
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    return f"AUC {level['auc']:.3f}{ci}"


def plot_roc(frame: pd.DataFrame, metrics: dict, path: str, title: str = "") -> str:
    """ROC curves per image and per patient with AUC + CI in the legend -> PNG ``path``
    (660 x 660 px)."""
    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    y_pat, p_pat = M.per_patient(y, p, frame["patient"])
    fig = Figure(figsize=(6.0, 6.0), dpi=110)
    ax = fig.subplots()
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
    return save_png(fig, path)


def plot_reliability(frame: pd.DataFrame, metrics: dict, path: str, title: str = "") -> str:
    """Reliability diagram (10 equal-width bins) over a histogram of probabilities -> PNG
    ``path`` (660 x 770 px)."""
    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    edges, count, mean_p, frac = M.calibration_bins(y, p)
    fig = Figure(figsize=(6.0, 7.0), dpi=110)
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
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
    return save_png(fig, path)


def flat_scalars(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"a/b/c": value}``; a ``[low, high]``
    pair becomes ``..._low`` and ``..._high``; None, bools and strings are left out."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_scalars(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[key] = float(v)
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[key + "_low"], out[key + "_high"] = float(v[0]), float(v[1])
    return out


def write_tensorboard(logdir: str, scalars: dict[str, float], pngs: dict[str, str],
                      step: int = 0) -> str:
    """Scalars and rendered PNGs (as ``tf.summary.image``) into a TensorBoard run dir."""
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
