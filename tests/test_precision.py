"""Precision policy names and mixed_bfloat16 on CPU (output stays float32)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import precision


@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


def test_resolve_names():
    assert precision.resolve_policy("float32") == "float32"
    assert precision.resolve_policy("Mixed_BFloat16") == "mixed_bfloat16"
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert precision.resolve_policy("auto") == ("mixed_float16" if gpu else "float32")
    with pytest.raises(ValueError, match="--precision='half'"):
        precision.resolve_policy("half")


def test_mixed_bfloat16_output_is_float32(restore_policy):
    assert precision.set_policy("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="sex")(x)
    model = keras.Model(inp, out)
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.layers[1].variable_dtype == "float32"
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x_np = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)
    y_np = (np.arange(8) % 2).astype(np.float32)
    loss = model.train_on_batch(x_np, y_np)
    assert np.isfinite(loss)
    pred = model(x_np)
    assert pred.dtype == tf.float32 and pred.shape == (8, 1)
