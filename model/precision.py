"""Precision policy: ``--precision=auto|float32|mixed_float16|mixed_bfloat16``.

``auto`` is ``mixed_float16`` when TensorFlow sees a GPU and ``float32`` otherwise (CPUs
gain nothing from float16 and bfloat16 is only fast on some of them). The classifier keeps
its output layer in float32 (``dtype="float32"``), so probabilities and the loss are
computed in float32 under every policy. Loss scaling is Keras 3's own: ``model.compile``
wraps the optimizer in ``keras.optimizers.LossScaleOptimizer`` automatically when the
global policy is ``mixed_float16`` (bfloat16 has float32's exponent range and needs none).
"""
from __future__ import annotations

import keras
import tensorflow as tf

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CHOICES = ("auto",) + POLICIES


def resolve_policy(name: str = "auto") -> str:
    """Map a ``--precision`` value to a Keras dtype policy name.

    Args:
      name: one of ``auto``, ``float32``, ``mixed_float16``, ``mixed_bfloat16``
        (case-insensitive).
    Returns:
      ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
    Raises:
      ValueError: an unknown name (the message names ``--precision`` and the choices).
    """
    key = str(name).strip().lower()
    if key not in CHOICES:
        raise ValueError(f"--precision={name!r} is not one of {', '.join(CHOICES)}")
    if key != "auto":
        return key
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def set_policy(name: str = "auto") -> str:
    """Resolve ``name`` and make it Keras' global dtype policy; returns the policy name.

    Call before building the model (layers read the global policy when they are built).
    """
    policy = resolve_policy(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy
