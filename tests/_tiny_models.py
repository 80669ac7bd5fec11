"""Tiny Keras models for the evaluation/predict/export/explain tests (no training).

``planted_model`` has the classifier's shape -- uint8 input -> Rescaling -> a nested
``backbone`` Model of convolutions -> global average pooling -> Dense ``sex`` (sigmoid) --
with hand-set weights that read the planted signal of ``conftest.synthetic_fundus``: a
bright optic disc (green > ~190) means male. ``constant_model`` outputs one probability.
"""
from __future__ import annotations

import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def planted_model(size: int = 64):
    """Grad-CAM-able model whose probability of male rises with the bright-disc area."""
    import keras

    inp = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    b_in = keras.Input((size, size, 3), name="backbone_input")
    # channel 0: bright green (disc of males); channel 1: the red fundus body
    c1 = keras.layers.Conv2D(2, 1, activation="relu", name="detect")
    h = c1(b_in)
    c2 = keras.layers.Conv2D(2, 3, strides=2, padding="same", activation="relu", name="smooth")
    h = c2(h)
    backbone = keras.Model(b_in, h, name="backbone")
    f = backbone(x, training=False)
    g = keras.layers.GlobalAveragePooling2D(name="pool")(f)
    dense = keras.layers.Dense(1, activation="sigmoid", name="sex")
    out = dense(g)
    model = keras.Model(inp, out, name="planted")
    k1 = np.zeros((1, 1, 3, 2), np.float32)
    k1[0, 0, 1, 0] = 1.0          # green
    k1[0, 0, 0, 1] = 1.0          # red
    c1.set_weights([k1, np.array([-0.75, -0.4], np.float32)])
    k2 = np.zeros((3, 3, 2, 2), np.float32)
    k2[:, :, 0, 0] = 1.0 / 9.0
    k2[:, :, 1, 1] = 1.0 / 9.0
    c2.set_weights([k2, np.zeros(2, np.float32)])
    dense.set_weights([np.array([[800.0], [-0.5]], np.float32), np.array([-2.5], np.float32)])
    return model


def constant_model(size: int = 64, probability: float = 0.7):
    """A model that outputs ``probability`` for every image."""
    import keras

    inp = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inp)
    g = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid", name="sex")
    out = dense(g)
    model = keras.Model(inp, out, name="constant")
    logit = float(np.log(probability / (1.0 - probability)))
    dense.set_weights([np.zeros((3, 1), np.float32), np.array([logit], np.float32)])
    return model


def save_model_dir(model, model_dir: str, **run_info) -> str:
    """Write ``model_dir/best.keras`` and ``model_dir/run.json`` (image_size from the model)."""
    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, "best.keras"))
    info = {"image_size": int(model.inputs[0].shape[1]), "backbone": "tiny"}
    info.update(run_info)
    with open(os.path.join(model_dir, "run.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    return model_dir


def random_model(size: int = 64, seed: int = 0):
    """Randomly initialised conv model (nested ``backbone``) whose probabilities spread
    over (0, 1) and move with fine pixel detail: for exact-agreement checks."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inp = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inp)
    b_in = keras.Input((size, size, 3), name="backbone_input")
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            kernel_initializer=init, name="conv1")(b_in)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            kernel_initializer=keras.initializers.HeNormal(seed=seed + 1),
                            name="conv2")(h)
    f = keras.Model(b_in, h, name="backbone")(x, training=False)
    g = keras.layers.GlobalAveragePooling2D(name="pool")(f)
    out = keras.layers.Dense(1, activation="sigmoid", name="sex",
                             kernel_initializer=keras.initializers.RandomNormal(0, 1.0, seed=seed + 2))(g)
    return keras.Model(inp, out, name=f"random{seed}")
