"""The classifier graph: input/output contract, heads, freezing, .keras round trip."""
from __future__ import annotations

import numpy as np
import pytest

import keras

from model import augment, classifier


def _images(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3)).astype("uint8")


def _cfg(**kw) -> classifier.ClassifierConfig:
    base = dict(backbone="tiny", image_size=32, weights="none", dropout=0.2,
                augment=augment.AugmentConfig(seed=3), seed=3)
    base.update(kw)
    return classifier.ClassifierConfig(**base)


def test_graph_contract():
    model = classifier.build_classifier(_cfg())
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)
    names = [layer.name for layer in model.layers]
    assert names.index("augmentation") < names.index("preprocess") < names.index("backbone")
    assert names[-3:] == ["pool", "dropout", "sex"]
    out = model.get_layer("sex")
    assert out.dtype_policy.compute_dtype == "float32"
    p = np.asarray(model(_images(), training=False))
    assert p.shape == (4, 1) and np.all((p >= 0) & (p <= 1))
    # the backbone starts frozen: only the head trains in stage 1
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]


def test_output_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = classifier.build_classifier(_cfg())
        bb = classifier.backbone_of(model)
        assert bb.get_layer("block0_conv0").dtype_policy.name == "mixed_float16"
        assert model.outputs[0].dtype == "float32"
        assert np.asarray(model(_images())).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_augmentation_only_in_training():
    model = classifier.build_classifier(_cfg(dropout=0.0))
    x = _images()
    a = np.asarray(model(x, training=False))
    b = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(a, b)
    aug = model.get_layer("augmentation")
    assert not np.allclose(np.asarray(aug(x, training=True)), x.astype("float32"))


def test_fine_tune_fraction_and_frozen_batchnorm():
    model = classifier.build_classifier(_cfg(freeze_bn_statistics=True))
    bb = classifier.backbone_of(model)
    layers = [l for l in bb.layers if not isinstance(l, keras.layers.InputLayer)]
    assert classifier.set_backbone_trainable(model, 0.0) == 0
    assert not any(l.trainable for l in layers)
    n = classifier.set_backbone_trainable(model, 0.5)
    top = layers[len(layers) - round(0.5 * len(layers)):]
    assert n == sum(not isinstance(l, keras.layers.BatchNormalization) for l in top)
    assert all(not l.trainable for l in layers if isinstance(l, keras.layers.BatchNormalization))
    assert layers[-1].trainable  # the last ReLU is in the top half
    assert bb.get_layer("block3_conv1").trainable and not bb.get_layer("block0_conv0").trainable
    with pytest.raises(ValueError, match="--fine_tune_fraction"):
        classifier.set_backbone_trainable(model, 1.5)
    # random-init backbones learn their BatchNorm statistics and scales
    model = classifier.build_classifier(_cfg())
    classifier.set_backbone_trainable(model, 1.0)
    assert classifier.backbone_of(model).get_layer("block0_bn0").trainable


def test_age_head_and_masked_loss():
    model = classifier.build_classifier(_cfg(age_loss_weight=0.1))
    out = model(_images(), training=False)
    assert set(out) == {"sex", "age"}
    assert np.asarray(out["age"]).shape == (4, 1)
    loss = classifier.MaskedAgeLoss(reduction=None)
    y = np.array([50.0, -1.0, 70.0], "float32")
    p = np.array([[55.0], [99.0], [40.0]], "float32")
    values = np.asarray(loss(y, p))
    np.testing.assert_allclose(values, [0.5 * 0.5 ** 2, 0.0, 3.0 - 0.5], rtol=1e-6)


def test_bad_dropout_names_flag():
    with pytest.raises(ValueError, match="--dropout"):
        classifier.build_classifier(_cfg(dropout=1.0))


def test_keras_round_trip_identical_predictions(tmp_path):
    cfg = _cfg(age_loss_weight=0.5,
               augment=augment.AugmentConfig(seed=1, local_contrast=True))
    model = classifier.build_classifier(cfg)
    classifier.set_backbone_trainable(model, 1.0)
    model.compile("adam", {"sex": "binary_crossentropy", "age": classifier.MaskedAgeLoss()})
    x = _images(8)
    model.fit(x, {"sex": np.arange(8) % 2, "age": np.full(8, 60.0)}, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for key in ("sex", "age"):
        np.testing.assert_array_equal(np.asarray(loaded(x, training=False)[key]),
                                      np.asarray(model(x, training=False)[key]))
    assert loaded.get_layer("backbone").frozen is False
    assert loaded.get_layer("augmentation").cfg.local_contrast
