"""``--head_init=logistic``: start the ``sex`` head from a fitted linear probe.

A Keras head trained for a few hundred steps on unstandardised pooled features of a frozen
backbone fits poorly and differently per fold (the fine-tune then starts from wherever it
landed); an L2 logistic regression on the same features, standardised, is the classic
linear probe and is solved exactly. This module fits it and writes it into the head::

    pooled features X [N, D] (frozen backbone, inference mode; float64)
    standardise: z = (X - mean) / sd            (sd of constant features: 1)
    minimise  0.5 * |w|^2 + C * sum_i s_i * logloss(y_i, sigmoid(z_i . w + b))
              (scikit-learn's C convention; s_i: class-balancing sample weights)
    head: kernel = w / sd, bias = b - sum(w * mean / sd)   (the same logits from X)

so the model's output equals the probe's probability before any fine-tuning. Solved with
scipy's L-BFGS-B (analytic gradient), which is a pinned dependency anyway (the tuner's
Bayesian oracle).
"""
from __future__ import annotations

import time
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf
from scipy import optimize

from model import metrics as metrics_lib

CHOICES = ("random", "logistic")


def pooled_features(features: keras.Model, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """``(X float64 [N, D], y float64 [N])`` of ``features`` (inference mode) over
    ``batches`` of ``(inputs, labels[, ...])``."""
    run = tf.function(lambda x: features(x, training=False), reduce_retracing=True)
    xs, ys = [], []
    for b in batches:
        xs.append(np.asarray(run(b[0]), np.float64))
        ys.append(np.asarray(b[1], np.float64).reshape(-1))
    if not xs:
        raise ValueError("--head_init=logistic: the training split gave no batches")
    return np.concatenate(xs), np.concatenate(ys)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float,
                 sample_weight: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """L2 logistic regression on standardised ``x`` (see the module docstring).

    ``y`` in {0, 1}; ``c`` > 0 (smaller: stronger L2). Returns ``{"kernel" [D], "bias"}``
    acting on the RAW features, and ``"mean"``, ``"sd"``, ``"w"``, ``"b"`` (standardised)."""
    if c <= 0:
        raise ValueError(f"--head_init_c={c}: must be > 0")
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z = (x - mean) / sd
    s = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, np.float64)
    d = z.shape[1]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        logits = z @ w + b
        # log(1 + e^l) - y l, stable
        nll = np.logaddexp(0.0, logits) - y * logits
        r = s * (1.0 / (1.0 + np.exp(-logits)) - y)
        loss = 0.5 * w @ w + c * float(s @ nll)
        grad = np.concatenate([w + c * (z.T @ r), [c * r.sum()]])
        return loss, grad

    res = optimize.minimize(loss_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                            options={"maxiter": 1000})
    w, b = res.x[:d], float(res.x[d])
    return {"kernel": w / sd, "bias": b - float(np.sum(w * mean / sd)),
            "mean": mean, "sd": sd, "w": w, "b": b, "converged": bool(res.success)}


def init_head(features: keras.Model, head: keras.layers.Dense, train_batches: Iterable,
              val_batches: Iterable | None, c: float,
              class_weights: tuple[float, float] | None,
              train_xy: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Fit the probe on ``train_batches`` features and write it into ``head`` (a
    ``Dense(1)`` on the pooled features). ``class_weights``: ``(female, male)`` sample
    weights or None. Returns what ``run.json`` records: the probe's ROC AUC on the
    training and (when given) validation features, ``c``, feature count, seconds.
    ``train_xy``: the training features and labels already computed (``train_batches``
    is then not read)."""
    t0 = time.time()
    x, y = train_xy if train_xy is not None else pooled_features(features, train_batches)
    s = None if class_weights is None else np.where(y > 0.5, class_weights[1],
                                                     class_weights[0])
    fit = fit_logistic(x, y, c, s)
    kernel, bias = head.get_weights()
    head.set_weights([fit["kernel"].reshape(kernel.shape).astype(kernel.dtype),
                      np.full(bias.shape, fit["bias"], bias.dtype)])
    info = {"method": "logistic", "c": c, "features": int(x.shape[1]),
            "train_images": int(x.shape[0]), "converged": fit["converged"],
            "train_auc": metrics_lib.roc_auc(y, x @ fit["kernel"] + fit["bias"])}
    if val_batches is not None:
        xv, yv = pooled_features(features, val_batches)
        info["val_auc"] = metrics_lib.roc_auc(yv, xv @ fit["kernel"] + fit["bias"])
    info["seconds"] = round(time.time() - t0, 1)
    return info
