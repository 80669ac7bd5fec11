"""Strategy selection: ``--strategy=auto|mirrored|one_device|multi_worker``.

* ``auto``: ``MirroredStrategy`` over all GPUs when there are two or more, else the
  default strategy (one GPU, or the CPU);
* ``mirrored``: ``MirroredStrategy`` over all GPUs, or over all logical CPU devices when
  there is no GPU (tests configure two logical CPUs);
* ``one_device``: ``OneDeviceStrategy`` on the first GPU, else ``/cpu:0``;
* ``multi_worker``: ``MultiWorkerMirroredStrategy``; the cluster comes from the
  ``TF_CONFIG`` environment variable (an error when it is unset).

Build the model and its optimizer inside ``strategy.scope()``; batch sizes are GLOBAL
(split across replicas).

One strategy object per name per process: :func:`make_strategy` returns the same object
on every call. Two ``MirroredStrategy`` instances in one process (e.g. the folds of a CV
run) can pair up each other's collective all-reduces and fail with "Shape mismatch in
the collective instance" (seen on TF 2.21 with two logical CPUs).
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

CHOICES = ("auto", "mirrored", "one_device", "multi_worker")
_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Return the ``tf.distribute.Strategy`` for ``--strategy=name`` (cached per name)."""
    key = str(name).strip().lower()
    if key not in CHOICES:
        raise ValueError(f"--strategy={name!r} is not one of {', '.join(CHOICES)}")
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _new_strategy(key)
    return _STRATEGIES[key]


def _new_strategy(key: str) -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if key == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.get_strategy()
    if key == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if key == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         "(cluster spec and task); see tf.distribute.MultiWorkerMirroredStrategy")
    try:
        json.loads(tf_config)
    except json.JSONDecodeError as e:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG is not valid JSON ({e})") from e
    return tf.distribute.MultiWorkerMirroredStrategy()


def describe(strategy: tf.distribute.Strategy) -> dict:
    """A JSON-able description for ``run.json``: class name and replica count."""
    return {"name": type(strategy).__name__,
            "replicas": int(strategy.num_replicas_in_sync)}


def is_chief() -> bool:
    """True unless TF_CONFIG names this task a non-chief worker (worker index > 0).

    Only the chief writes the model directory's final outputs in multi-worker runs.
    """
    cfg = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = cfg.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    if "chief" in cfg.get("cluster", {}):
        return kind == "chief"
    return kind in ("chief", "worker") and index == 0
