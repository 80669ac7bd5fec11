"""``--orient=disc_left``: mirror each photo so its optic disc is on the left.

A right eye's fundus photo is (nearly) the mirror image of a left eye's: the optic disc
sits on the nasal side, right of centre for a right eye. Features of a backbone that is
not mirror-invariant then mix two layouts; mirroring right eyes so every eye looks like a
left one raised the frozen multi-depth probe's 5-fold CV AUC (MobileNetV2, 384 px, C =
3e-3, 3 fold seeds) from 0.604 to 0.621 (``docs/experiments.md``). The eye's side is in
the records but not in a photo handed to ``fundus-predict``, so the model finds the disc
itself, from the image alone::

    image [B, S, S, 3] (0..255, any dtype)
      -> luminance (mean of R, G, B), zeroed outside the disc of radius 0.42 S around the
         centre (the bright rim and reflections of the camera's field stop)
      -> average pool in cells of S/32 x S/32 pixels (cell = 8 px at 256 px)
      -> the brightest cell: the disc (its column's centre right of S/2 -> mirror)

On the 1,813 normal non-test eyes of the dev data this agrees with the recorded side for
93.2 % (``docs/experiments.md``; pool 16 cells 91.5 %, no mask 90.8 %). The layer is part
of the saved model, so training, evaluation, prediction and the exports all see the same
orientation. A random horizontal flip after it (``--augment_flip``) would undo it: the
training configuration refuses that pair.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

CHOICES = ("none", "disc_left")
MASK_RADIUS = 0.42        # fraction of the image side
CELLS = 32                # pooling cells per side


def disc_on_right(images) -> tf.Tensor:
    """bool ``[B]``: the brightest masked cell of each image lies right of the centre.
    Plain TensorFlow ops of TFLite's builtin set (Keras' argmax and casts bring bitwise
    ops TFLite lacks)."""
    x = tf.reduce_mean(tf.cast(images, tf.float32), axis=-1)             # [B, S, S]
    size = int(images.shape[1])
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2) / size < MASK_RADIUS)
    x = x * tf.constant(mask.astype(np.float32))
    cell = max(1, size // CELLS)
    pooled = tf.nn.avg_pool2d(x[..., None], cell, cell, padding="VALID")[..., 0]
    width = int(pooled.shape[2])
    # the brightest cell's column = the column of the largest column maximum
    column = tf.argmax(tf.reduce_max(pooled, axis=1), axis=-1, output_type=tf.int32)
    return tf.cast(column, tf.float32) + 0.5 > width / 2


@keras.saving.register_keras_serializable(package="fundus")
class DiscLeft(keras.layers.Layer):
    """Mirror (left-right) the images whose optic disc is right of centre; dtype and
    shape unchanged. Deterministic, the same in training and inference."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        # x + m (mirror(x) - x) with m in {0, 1}: exact for 0..255 values, and only ops
        # that TFLite's builtin set has (no select on uint8)
        m = tf.cast(disc_on_right(inputs), tf.float32)[:, None, None, None]
        x = tf.cast(inputs, tf.float32)
        out = x + m * (tf.reverse(x, axis=[2]) - x)
        return tf.cast(out, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
