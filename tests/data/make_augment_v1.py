"""How ``augment_v1.keras`` and ``augment_v1_expected.npz`` were made (kept for reference).

Made ONCE, before the augmentation layer moved from ``pipeline/augment.py`` to
``model/augment.py`` (issue 13), with ``from pipeline import augment``: the file pins that
``.keras`` files saved before the move still load (``tests/test_augment.py``,
``test_model_saved_before_the_move_loads``). Do not regenerate it to make a failing test
pass: a failure means old saved models no longer load the same.

The model is ``model.classifier.build_classifier`` (backbone row ``tiny``, 32 px,
``weights=none``, every default augmentation + local contrast, seed 7) with the ``tiny``
row's constructor swapped, for this build only, for an even smaller conv net (two 3x3
convolutions with 8 channels and a BatchNorm) so the file stays ~60 KB; the saved graph
stores that net's layers, not the constructor, so it loads with the real table.
``augment_v1_expected.npz``: ``images`` uint8 [2, 32, 32, 3] (toy fundi) and
``probabilities`` float32 [2, 1], ``model.predict(images)`` (training=False).

Run from the repository root: ``python tests/data/make_augment_v1.py`` (after the move
the same script builds an equivalent file through ``model.augment``).
"""
from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from model import backbones, classifier
from model import augment  # was ``from pipeline import augment`` when the files were made

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 32


def small_cnn(include_top=False, weights=None, input_shape=None, pooling=None, **kwargs):
    """Two 3x3 convolutions (8 channels, stride 2) with a BatchNorm between: ~1 k weights."""
    L = keras.layers
    init = keras.initializers.HeNormal(seed=11)
    inputs = keras.Input(input_shape, name="tiny_input")
    x = L.Conv2D(8, 3, strides=2, padding="same", kernel_initializer=init, name="conv0")(inputs)
    x = L.BatchNormalization(name="bn0")(x)
    x = L.ReLU(name="relu0")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", kernel_initializer=init, name="conv1")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def toy_fundi(n: int = 2, seed: int = 0) -> np.ndarray:
    """uint8 [n, SIZE, SIZE, 3]: textured disc in the inscribed circle, black outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = (yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2 < (SIZE / 2 - 1) ** 2
    img = rng.integers(40, 230, (n, SIZE, SIZE, 3)).astype(np.uint8)
    img[:, ~inside] = 0
    return img


def main() -> None:
    keras.utils.set_random_seed(3)
    row = backbones.BACKBONES["tiny"]
    backbones.BACKBONES["tiny"] = dataclasses.replace(row, constructor=small_cnn)
    try:
        model = classifier.build_classifier(classifier.ClassifierConfig(
            backbone="tiny", image_size=SIZE, weights="none", seed=5,
            augment=augment.AugmentConfig(local_contrast=True, seed=7)))
    finally:
        backbones.BACKBONES["tiny"] = row
    dense = model.get_layer(classifier.SEX_OUTPUT)
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(1)
    dense.set_weights([rng.normal(0, 0.3, kernel.shape).astype(np.float32), bias])
    images = toy_fundi()
    probs = model.predict(images, verbose=0)
    model.save(os.path.join(HERE, "augment_v1.keras"))
    np.savez(os.path.join(HERE, "augment_v1_expected.npz"), images=images,
             probabilities=probs.astype(np.float32))
    print(probs.ravel())


if __name__ == "__main__":
    main()
