"""Numpy metrics for a binary classifier (1.0 = male), plus the Keras metric list.

Everything here but :func:`keras_metrics` is pure numpy (no scikit-learn): ``y`` is a 1-D
array of 0/1 labels, ``p`` a 1-D array of probabilities in [0, 1] of the positive class,
same length.

* :func:`roc_auc` is the Mann-Whitney rank statistic with average ranks for ties, so a tie
  between a positive and a negative counts 0.5 and a constant predictor scores exactly 0.5.
* :func:`patient_bootstrap_ci` resamples *patients* (both eyes of a patient together) with
  replacement, the honest interval when eyes of one person are correlated.
* :func:`per_patient` averages a patient's eye probabilities.
"""
from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def _check(y: Sequence[float], p: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64 1-D arrays of equal length; labels must be 0/1."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if y.size == 0:
        raise ValueError("no samples: labels and probabilities are empty")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:10]}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{int(np.sum(~np.isfinite(p)))} probabilities are not finite")
    return y, p


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (ascending) with the average rank for ties (float64)."""
    x = np.asarray(x).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values in the sorted array.
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], xs.size]              # exclusive
    avg = (starts + ends + 1) / 2.0                 # mean of 1-based ranks start+1..end
    run_id = np.cumsum(new) - 1
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def roc_auc(y: Sequence[float], p: Sequence[float]) -> float:
    """Area under the ROC curve in [0, 1] = P(p_pos > p_neg) + 0.5 P(p_pos == p_neg).

    Raises ``ValueError`` when only one class is present (the AUC is undefined).
    """
    y, p = _check(y, p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC is undefined with one class only: {n_pos} positive, "
                         f"{n_neg} negative samples")
    ranks = rankdata(p)
    u = ranks[y == 1.0].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y: Sequence[float], p: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` for the rule ``p >= t``, from (0, 0) to (1, 1).

    ``thresholds[0]`` is ``inf`` (nothing positive); the others are the distinct scores in
    decreasing order. Raises ``ValueError`` with one class only.
    """
    y, p = _check(y, p)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC curve is undefined with one class only")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[ps[1:] != ps[:-1], True]          # last index of each run of equal scores
    tps = np.cumsum(ys)[last]
    fps = np.cumsum(1.0 - ys)[last]
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, ps[last]]
    return fpr, tpr, thr


def pr_auc(y: Sequence[float], p: Sequence[float]) -> float:
    """Average precision in [0, 1]: sum over distinct thresholds of (R_k - R_{k-1}) * P_k.

    The step-wise (not trapezoidal) area under the precision-recall curve, as
    scikit-learn's ``average_precision_score``; tied scores form one threshold.
    Raises ``ValueError`` when there is no positive sample.
    """
    y, p = _check(y, p)
    n_pos = y.sum()
    if n_pos == 0:
        raise ValueError("average precision is undefined without positive samples")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[ps[1:] != ps[:-1], True]
    tps = np.cumsum(ys)[last]
    fps = np.cumsum(1.0 - ys)[last]
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(y: Sequence[float], p: Sequence[float], threshold: float = 0.5) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` of the rule ``p >= threshold`` -> positive."""
    y, p = _check(y, p)
    pred = p >= threshold
    pos = y == 1.0
    return {"tp": int(np.sum(pred & pos)), "fp": int(np.sum(pred & ~pos)),
            "tn": int(np.sum(~pred & ~pos)), "fn": int(np.sum(~pred & pos))}


def _ratio(a: int, b: int) -> float:
    return float(a / b) if b else float("nan")


def sensitivity(y: Sequence[float], p: Sequence[float], threshold: float = 0.5) -> float:
    """True-positive rate tp / (tp + fn) at ``threshold``; NaN without positives."""
    c = confusion(y, p, threshold)
    return _ratio(c["tp"], c["tp"] + c["fn"])


def specificity(y: Sequence[float], p: Sequence[float], threshold: float = 0.5) -> float:
    """True-negative rate tn / (tn + fp) at ``threshold``; NaN without negatives."""
    c = confusion(y, p, threshold)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def accuracy(y: Sequence[float], p: Sequence[float], threshold: float = 0.5) -> float:
    """Fraction in [0, 1] of samples whose ``p >= threshold`` matches the label."""
    c = confusion(y, p, threshold)
    return _ratio(c["tp"] + c["tn"], sum(c.values()))


def balanced_accuracy(y: Sequence[float], p: Sequence[float], threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity at ``threshold`` (0.5 for any constant rule)."""
    return float((sensitivity(y, p, threshold) + specificity(y, p, threshold)) / 2.0)


def youden_threshold(y: Sequence[float], p: Sequence[float]) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 for ``p >= t``.

    Every ``t`` in ``(s_next, s]`` gives the same J, where ``s`` is the best distinct score
    (the larger one among equal J) and ``s_next`` the next lower distinct score; the
    midpoint ``(s + s_next) / 2`` is returned (``s`` itself when it is the lowest score),
    a probability in [0, 1]. Raises ``ValueError`` with one class only.
    """
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr[1:] - fpr[1:]
    scores = thr[1:]                               # distinct scores, decreasing
    k = int(np.argmax(j))                          # first max = largest threshold
    if k + 1 < scores.size:
        return float((scores[k] + scores[k + 1]) / 2.0)
    return float(scores[k])


def brier(y: Sequence[float], p: Sequence[float]) -> float:
    """Mean squared error of the probabilities, in [0, 1] (0.25 for a constant 0.5)."""
    y, p = _check(y, p)
    return float(np.mean((p - y) ** 2))


def calibration_bins(y: Sequence[float], p: Sequence[float], n_bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins on [0, 1] (the last includes 1.0).

    Returns ``(edges [n_bins+1], count [n_bins], mean_p [n_bins], frac_pos [n_bins])``;
    ``mean_p`` and ``frac_pos`` are NaN for empty bins.
    """
    y, p = _check(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    return edges, count.astype(np.int64), mean_p, frac


def expected_calibration_error(y: Sequence[float], p: Sequence[float], n_bins: int = 10) -> float:
    """ECE in [0, 1]: sum over equal-width bins of (n_b / N) * |mean(y_b) - mean(p_b)|."""
    _, count, mean_p, frac = calibration_bins(y, p, n_bins)
    nz = count > 0
    return float(np.sum(count[nz] / count.sum() * np.abs(frac[nz] - mean_p[nz])))


def majority_accuracy(y: Sequence[float]) -> float:
    """Accuracy in [0.5, 1] of always predicting the split's more frequent class."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("majority accuracy of an empty split is undefined")
    m = float(y.mean())
    return max(m, 1.0 - m)


def _group_index(groups: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_ids, inverse)`` of group labels (any hashable, compared as str)."""
    g = np.asarray([str(v) for v in np.asarray(groups).reshape(-1)])
    return np.unique(g, return_inverse=True)


def per_patient(y: Sequence[float], p: Sequence[float], groups: Sequence
                ) -> tuple[np.ndarray, np.ndarray]:
    """Collapse eyes to patients: ``(y_pat, p_pat)``, p = mean of the eyes' probabilities.

    Patients are in sorted order of their id (as str). Raises when a patient's eyes carry
    different labels (sex is per person) or when lengths disagree.
    """
    y, p = _check(y, p)
    ids, inv = _group_index(groups)
    if inv.size != y.size:
        raise ValueError(f"groups has {inv.size} entries, labels {y.size}")
    count = np.bincount(inv).astype(np.float64)
    y_pat = np.bincount(inv, weights=y) / count
    bad = (y_pat != 0.0) & (y_pat != 1.0)
    if np.any(bad):
        raise ValueError(f"patients with eyes of different sex labels: {list(ids[bad][:10])}")
    p_pat = np.bincount(inv, weights=p) / count
    return y_pat, p_pat


def patient_ids(groups: Sequence) -> np.ndarray:
    """The patient ids in the order :func:`per_patient` returns them."""
    return _group_index(groups)[0]


def bootstrap_distribution(y: Sequence[float], p: Sequence[float], groups: Sequence,
                           metric: Metric = roc_auc, n: int = 2000, seed: int = 0
                           ) -> tuple[np.ndarray, int]:
    """Metric values on ``n`` patient-level bootstrap resamples.

    Each resample draws as many patients as there are, with replacement, and takes all
    their eyes. Resamples where the metric is undefined (``ValueError``, e.g. one class)
    are skipped and counted. Returns ``(values [n - skipped], skipped)``.
    """
    y, p = _check(y, p)
    _, inv = _group_index(groups)
    if inv.size != y.size:
        raise ValueError(f"groups has {inv.size} entries, labels {y.size}")
    order = np.argsort(inv, kind="mergesort")
    counts = np.bincount(inv)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    n_groups = counts.size
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(int(n)):
        pick = rng.integers(0, n_groups, n_groups)
        lens = counts[pick]
        ends = np.cumsum(lens)
        # positions starts[g] .. starts[g] + counts[g] - 1 of every picked patient, in order
        idx = order[np.repeat(starts[pick] - ends + lens, lens) + np.arange(ends[-1])]
        try:
            values.append(metric(y[idx], p[idx]))
        except ValueError:
            skipped += 1
    return np.asarray(values, dtype=np.float64), skipped


def patient_bootstrap_ci(y: Sequence[float], p: Sequence[float], groups: Sequence,
                         metric: Metric = roc_auc, n: int = 2000, seed: int = 0,
                         alpha: float = 0.05) -> tuple[float, float]:
    """Percentile ``(low, high)`` interval (level 1 - alpha) of ``metric`` by patient bootstrap.

    Raises ``ValueError`` when fewer than half of the resamples give a defined metric
    (too few patients of one class for an interval to mean anything).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values, skipped = bootstrap_distribution(y, p, groups, metric, n, seed)
    if values.size < max(1, n // 2):
        raise ValueError(f"bootstrap undefined in {skipped} of {n} resamples "
                         "(too few patients of one class)")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_auc_ci(y: Sequence[float], p: Sequence[float], groups: Sequence,
                     n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """ROC AUC interval by patient bootstrap (the design-contract name)."""
    return patient_bootstrap_ci(y, p, groups, roc_auc, n=n, seed=seed, alpha=alpha)


def keras_metrics(prefix: str = "") -> list:
    """The metrics compiled into the classifier's ``sex`` head: ROC AUC, accuracy.

    ``keras.metrics.AUC`` approximates the ROC AUC with 1000 thresholds; the exact value
    is :func:`roc_auc` (used by evaluation).
    """
    return [keras.metrics.AUC(num_thresholds=1000, curve="ROC", name=f"{prefix}auc"),
            keras.metrics.BinaryAccuracy(threshold=0.5, name=f"{prefix}accuracy")]
