"""Training, CV and sweep plots: ``curves.png``, ``cv.png``, ``sweep.png`` (and TensorBoard).

* :func:`plot_curves`: a model dir's training and validation ROC AUC and loss by epoch,
  the stages shaded and named, the kept epoch marked (``training.finish_run`` writes it
  into every model dir: ``fundus-train``, each ``--cv`` fold, the tuner's ``best/``,
  the demo);
* :func:`plot_cv`: a ``--cv`` dir's folds: each fold's validation AUC by epoch and their
  mean, and each fold's kept-model AUC (per image, per patient) against the pooled
  out-of-fold AUC and its patient-bootstrap 95% interval (:func:`pooled_oof`, from the
  folds' ``model.rundir.VAL_PREDICTIONS`` files);
* :func:`plot_sweep`: a sweep's validation AUC against each searched hyperparameter,
  one panel each (categorical axis for choices, log axis for log ranges).

Each ``write_*`` function also puts its PNG into TensorBoard (run ``<logs>/plots``,
replaced on every write) through ``model.eval_figures``. Figures are
``matplotlib.figure.Figure`` objects rendered by Agg (no pyplot state), written atomically
by ``eval_figures.save_png``. AUC axes are ROC AUC in [0, 1]; losses are the training
loss (binary cross-entropy, plus the weighted age loss when that head is on).
"""
from __future__ import annotations

import math
import os
import shutil
import textwrap
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model import eval_figures, rundir
from model.train_config import TrainConfig

PLOTS_RUN = "plots"                        # TensorBoard run dir of the plots, in logs/


# ===================================================================== helpers
def _finite(xs: Sequence, ys: Sequence) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float))
             and math.isfinite(float(y))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def to_tensorboard(logs_dir: str, name: str, png: str) -> None:
    """``png`` as the image ``plots/<name>`` of the TensorBoard run ``logs_dir/plots``
    (that run dir is replaced)."""
    run = os.path.join(logs_dir, PLOTS_RUN)
    shutil.rmtree(run, ignore_errors=True)
    eval_figures.write_tensorboard(run, {}, {f"plots/{name}": png})


# ===================================================================== curves
def plot_curves(history: Sequence[Mapping], path: str, *, auc_key: str = "auc",
                stages: Sequence[tuple] = (), kept_epoch: int | None = None,
                kept_label: str = "", title: str = "") -> str:
    """Training and validation ROC AUC (left) and loss (right) by epoch -> PNG ``path``
    (1210 x 473 px). ``history``: ``history.csv`` rows (``epoch`` 0-based, ``auc_key`` /
    ``val_<auc_key>``, ``loss`` / ``val_loss``); ``stages``: ``TrainConfig.stages()``
    tuples ``(name, first, end, ...)`` (0-based, end exclusive), shaded and named;
    ``kept_epoch``: 1-based epoch of the kept model, marked."""
    epochs = [int(r["epoch"]) + 1 for r in history]
    fig = Figure(figsize=(11.0, 4.3), dpi=110)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], auc_key, "ROC AUC", (0.0, 1.0)),
              (axes[1], "loss", "loss (binary cross-entropy)", None))
    for ax, key, ylabel, ylim in panels:
        for name, k, color in (("training", key, "C0"), ("validation", f"val_{key}", "C1")):
            xs, ys = _finite(epochs, [r.get(k) for r in history])
            if xs:
                ax.plot(xs, ys, "o-", color=color, ms=3.5, lw=1.6, label=name)
        if ylim:
            ax.axhline(0.5, color="0.6", lw=0.8, ls=":", label="chance (0.5)")
            ax.set_yticks(np.linspace(ylim[0], ylim[1], 6))
        else:
            ax.autoscale_view()
            ylim = ax.get_ylim()
        ax.set_ylim(ylim[0], ylim[1] + 0.12 * (ylim[1] - ylim[0]))   # room for stage names
        for i, (name, first, end, *_) in enumerate(stages):
            if i % 2 == 0:
                ax.axvspan(first + 0.5, end + 0.5, color="0.92", zorder=0)
            if i > 0:
                ax.axvline(first + 0.5, color="0.4", lw=1.0, ls="--")
            ax.text((first + end) / 2 + 0.5, 0.98, name.replace("_", "-"), ha="center",
                    va="top", fontsize=8, color="0.3", transform=ax.get_xaxis_transform())
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="C2", lw=1.5, ls=":", label=kept_label or
                       f"kept: epoch {kept_epoch}")
            xs, ys = _finite(epochs, [r.get(f"val_{key}") for r in history])
            if kept_epoch in xs:
                ax.plot([kept_epoch], [ys[xs.index(kept_epoch)]], "*", color="C2", ms=12)
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
            step = max(1, int(math.ceil(len(epochs) / 12)))
            ax.set_xticks(list(range(min(epochs), max(epochs) + 1, step)))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("ROC AUC by epoch (Keras, 1000 thresholds)", fontsize=10)
    axes[1].set_title("loss by epoch", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels) or 1, fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.06, 1.0, 1.0))
    return eval_figures.save_png(fig, path)


def kept_label(record: Mapping) -> str:
    """Legend text of the kept epoch of a run record (``best``, ``val``)."""
    best = record.get("best") or {}
    epoch = best.get("epoch")
    if best.get("swa_epochs"):
        text = f"kept: mean of the last {best['swa_epochs']} epochs' weights"
    else:
        text = f"kept: epoch {epoch}"
    auc = (record.get("val") or {}).get("auc")
    if isinstance(auc, float) and math.isfinite(auc):
        text += f" (exact val AUC {auc:.3f})"
    return text


def write_run_plots(cfg: TrainConfig, run_dir: str, record: Mapping,
                    history: Sequence[Mapping], logs_dir: str) -> str:
    """``run_dir/curves.png`` of a finished run and its TensorBoard image; returns the
    PNG path."""
    name = os.path.basename(os.path.normpath(cfg.model_dir or run_dir))
    path = plot_curves(history, os.path.join(run_dir, rundir.CURVES_PNG),
                       auc_key=cfg.metric_key("auc", False), stages=cfg.stages(),
                       kept_epoch=(record.get("best") or {}).get("epoch"),
                       kept_label=kept_label(record),
                       title=f"{name}: {cfg.backbone} at {record.get('image_size')} px, "
                             f"{len(history)} epochs")
    to_tensorboard(logs_dir, "curves", path)
    return path


# ========================================================================= CV
def plot_cv(folds: Sequence[Mapping], mean_curve: Sequence[float], path: str,
            oof: Mapping | None = None, title: str = "") -> str:
    """A CV's folds -> PNG ``path`` (1210 x 440 px). ``folds``: ``cv.json`` entries
    (``fold``, ``val_auc_by_epoch``, ``best_epoch`` 1-based, ``auc``, ``patient_auc``);
    ``mean_curve``: the mean validation AUC by epoch over folds; ``oof``:
    :func:`pooled_oof`."""
    fig = Figure(figsize=(11.0, 4.0), dpi=110)
    left, right = fig.subplots(1, 2)
    for i, f in enumerate(folds):
        curve = list(f.get("val_auc_by_epoch") or [])
        xs = list(range(1, len(curve) + 1))
        left.plot(xs, curve, "-", color=f"C{i % 10}", lw=1.0, alpha=0.7,
                  label=f"fold {f['fold']}")
        kept = f.get("best_epoch")
        if kept and 1 <= kept <= len(curve):
            left.plot([kept], [curve[kept - 1]], "*", color=f"C{i % 10}", ms=9)
    if len(mean_curve):
        left.plot(range(1, len(mean_curve) + 1), mean_curve, "o-", color="k", lw=2.2, ms=3,
                  label="mean over folds")
    left.axhline(0.5, color="0.6", lw=0.8, ls=":")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylim(0.0, 1.05)
    left.set_xlabel("epoch")
    left.set_ylabel("validation ROC AUC (Keras)")
    left.set_title("validation AUC by epoch (* kept epoch)", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(loc="lower right", fontsize=8, ncol=2)

    x = np.arange(len(folds))
    right.plot(x - 0.08, [f["auc"] for f in folds], "o", color="C0", ms=7, label="per image")
    right.plot(x + 0.08, [f["patient_auc"] for f in folds], "s", color="C3", ms=6,
               label="per patient")
    right.axhline(float(np.mean([f["auc"] for f in folds])), color="C0", lw=1.0, ls="--",
                  label="mean of folds (per image)")
    if oof is not None and oof.get("auc") is not None:
        ci = oof.get("ci95")
        text = f"pooled out-of-fold: {oof['auc']:.3f}"
        if ci:
            right.axhspan(ci[0], ci[1], color="C2", alpha=0.2, lw=0)
            text += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
        right.axhline(oof["auc"], color="C2", lw=2.0, label=text)
    right.set_xticks(x)
    right.set_xticklabels([f"fold {f['fold']}" for f in folds])
    right.set_xlim(-0.6, len(folds) - 0.4)
    right.set_ylim(0.0, 1.05)
    right.set_ylabel("exact ROC AUC of the kept model")
    right.set_title("per-fold validation AUC; band: patient-bootstrap 95% CI", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    right.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return eval_figures.save_png(fig, path)


def write_cv_plots(cv_dir: str, summary: Mapping, logs_dir: str) -> str:
    """``cv_dir/cv.png`` of a ``cv.json`` summary (its ``oof`` when present) and its
    TensorBoard image; returns the PNG path."""
    a = summary["auc"]
    path = plot_cv(summary["folds"], summary.get("val_auc_by_epoch_mean") or [],
                   os.path.join(cv_dir, rundir.CV_PNG), summary.get("oof"),
                   title=f"{os.path.basename(os.path.normpath(cv_dir))}: {summary['k']}-fold "
                         f"CV, validation AUC {a['mean']:.3f} ± {a['sd']:.3f} per image")
    to_tensorboard(logs_dir, "cv", path)
    return path


# ====================================================================== sweep
def plot_sweep(rows: Sequence[Mapping], params: Mapping[str, Mapping], path: str,
               metric: str = "val_auc", title: str = "") -> str:
    """Validation AUC of every completed trial against each searched hyperparameter ->
    PNG ``path`` (one 360 x 330 px panel each, three per row). ``rows``: ``summary.csv``
    rows (``status``, ``metric``, one column per hyperparameter); ``params``: name ->
    the space's JSON form (``{"choice": [...]}`` or ``{"min", "max", "sampling"}``)."""
    done = [r for r in rows if r.get("status", "COMPLETED") == "COMPLETED"
            and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    names = list(params) or ["(nothing searched)"]
    ncols = min(3, len(names))
    nrows = int(math.ceil(len(names) / ncols))
    fig = Figure(figsize=(3.6 * ncols + 0.4, 3.3 * nrows + 0.5), dpi=100)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    best = max(done, key=lambda r: r[metric]) if done else None
    for ax, name in zip(axes, names):
        spec = params.get(name, {})
        pts = [(r.get(name), r[metric], r is best) for r in done if r.get(name) is not None]
        if "choice" in spec:
            choices = list(spec["choice"])
            pos = {str(c): i for i, c in enumerate(choices)}
            # the k-th trial of a choice at offset -0.2..0.2, not on top of the others
            seen: dict[str, int] = {}
            xs = []
            for v, _, _ in pts:
                k = seen[str(v)] = seen.get(str(v), -1) + 1
                xs.append(pos.get(str(v), np.nan) + 0.1 * ((k % 5) - 2))
            ax.set_xticks(range(len(choices)))
            ax.set_xticklabels([str(c) for c in choices], fontsize=8,
                               rotation=30 if len(choices) > 3 else 0,
                               ha="right" if len(choices) > 3 else "center")
            ax.set_xlim(-0.5, len(choices) - 0.5)
        else:
            xs = [float(v) for v, _, _ in pts]
            if spec.get("sampling") == "log":
                ax.set_xscale("log")
            elif spec.get("type") == "int":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if spec.get("min") is not None and spec.get("max") is not None:
                lo, hi = float(spec["min"]), float(spec["max"])
                pad = (hi / lo) ** 0.05 if spec.get("sampling") == "log" and lo > 0 else None
                ax.set_xlim(*((lo / pad, hi * pad) if pad else
                              (lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1))))
        ys = [y for _, y, _ in pts]
        ax.plot(xs, ys, "o", color="C0", ms=6, alpha=0.75)
        for x, (v, y, is_best) in zip(xs, pts):
            if is_best:
                ax.plot([x], [y], "*", color="C3", ms=14, label="best trial")
        ax.set_xlabel(name + (" (log scale)" if spec.get("sampling") == "log" else ""),
                      fontsize=9)
        ax.set_ylabel("validation ROC AUC", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if ys:
            lo, hi = min(ys), max(ys)
            pad = max(0.02, 0.1 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(1.02, hi + pad))
        else:
            ax.set_ylim(0.0, 1.0)
            ax.text(0.5, 0.5, "no completed trial", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if best is not None:
        axes[0].legend(loc="lower right", fontsize=8)
    title = title or (f"{len(done)} completed trials: best epoch's validation ROC AUC "
                      f"against each searched hyperparameter")
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)), fontsize=10)
    fig.tight_layout()
    return eval_figures.save_png(fig, path)


def write_sweep_plots(path: str, rows: Sequence[Mapping], params: Mapping[str, Mapping],
                      logs_dir: str) -> str:
    """The sweep plot at ``path`` and its TensorBoard image; returns ``path``."""
    path = plot_sweep(rows, params, path)
    to_tensorboard(logs_dir, "sweep", path)
    return path
