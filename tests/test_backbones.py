"""Backbone registry: sizes, weights handling, the preprocess layer, frozen statistics."""
from __future__ import annotations

import os

import numpy as np
import pytest

import keras

from model import backbones, classifier, rundir

SHARED_MNV2 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights",
                           "mobilenet_v2_1.0_imagenet_no_top.weights.h5")
REQUIRED = ("xception", "inception_v3", "mobilenet_v2", "efficientnet_v2_s", "resnet50",
            "convnext_tiny", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_registry_rows():
    for name in REQUIRED:
        assert name in backbones.BACKBONES
    for name, bb in backbones.BACKBONES.items():
        assert bb.min_size <= bb.default_size, name
        assert bb.preprocess in ("tf", "caffe", "torch", "lite", "in-model"), name
        assert callable(bb.build_fn()) and callable(bb.preprocess_fn()), name
    assert backbones.BACKBONES["xception"].min_size == 71
    assert backbones.BACKBONES["inception_v3"].min_size == 75
    assert backbones.BACKBONES["efficientnet_v2_s"].default_size == 384
    assert backbones.BACKBONES["efficientnet_lite2"].default_size == 260
    assert not backbones.BACKBONES["tiny"].has_imagenet
    assert all(bb.has_imagenet for n, bb in backbones.BACKBONES.items() if n != "tiny")


def test_bad_backbone_and_size_name_the_flag():
    with pytest.raises(ValueError, match="--backbone='vgg99'.*mobilenet_v2"):
        backbones.get("vgg99")
    with pytest.raises(ValueError, match="--image_size=64.*minimum of 71"):
        backbones.check_image_size("xception", 64)
    assert backbones.check_image_size("xception", 0) == 299
    assert backbones.check_image_size("xception", 71) == 71


def test_weights_argument(tmp_path):
    assert backbones.normalise_weights("none") is None
    assert backbones.normalise_weights("imagenet") == "imagenet"
    with pytest.raises(FileNotFoundError, match="--weights=.*no such file"):
        backbones.normalise_weights(str(tmp_path / "missing.weights.h5"))
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="--weights=.*weights.h5"):
        backbones.normalise_weights(str(other))
    with pytest.raises(ValueError, match="--weights=imagenet.*no ImageNet"):
        backbones.build_backbone("tiny", 32, "imagenet")


@pytest.mark.skipif(not os.path.exists(SHARED_MNV2), reason="shared ImageNet weights absent")
def test_mobilenet_v2_loads_shared_imagenet_weights():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    pretrained = backbones.build_backbone("mobilenet_v2", 64, SHARED_MNV2)
    random = backbones.build_backbone("mobilenet_v2", 64, "none")
    a, b = np.asarray(pretrained(x)), np.asarray(random(x))
    assert a.shape == b.shape == (2, 2, 2, 1280)
    assert np.abs(a - b).mean() > 1e-2          # loaded weights change the features
    # the same file is refused by another architecture, naming the flag
    with pytest.raises(ValueError, match="--weights=.*does not match backbone 'tiny'"):
        backbones.build_backbone("tiny", 32, SHARED_MNV2)


def test_preprocess_layer_modes_and_config():
    x = np.full((1, 4, 4, 3), [255.0, 0.0, 128.0], "float32")
    tf_mode = np.asarray(backbones.BackbonePreprocess("mobilenet_v2")(x.astype("uint8")))
    np.testing.assert_allclose(tf_mode[0, 0, 0], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    caffe = np.asarray(backbones.BackbonePreprocess("resnet50")(x))
    # BGR order, ImageNet means subtracted
    np.testing.assert_allclose(caffe[0, 0, 0], [128 - 103.939, 0 - 116.779, 255 - 123.68],
                               atol=1e-4)
    same = np.asarray(backbones.BackbonePreprocess("efficientnet_v2_s")(x))
    np.testing.assert_allclose(same, x)
    layer = backbones.BackbonePreprocess.from_config(
        backbones.BackbonePreprocess("resnet50").get_config())
    assert layer.backbone_name == "resnet50" and layer.dtype_policy.name == "float32"


def _bn_stats_after_fit(frozen: bool) -> tuple[float, float]:
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="tiny", image_size=32, dropout=0.0, freeze_bn_statistics=frozen))
    classifier.set_backbone_trainable(model, 1.0)
    bb = classifier.backbone_of(model)
    bn = bb.get_layer("block0_bn0")
    conv = bb.get_layer("block3_conv1")
    mean0, kernel0 = np.array(bn.moving_mean.numpy()), np.array(conv.kernel.numpy())
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    x = np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3)).astype("uint8")
    model.fit(x, np.arange(8) % 2, epochs=1, batch_size=8, verbose=0)
    return (float(np.abs(bn.moving_mean.numpy() - mean0).max()),
            float(np.abs(conv.kernel.numpy() - kernel0).max()))


def test_frozen_statistics_keep_bn_while_weights_train():
    bn_change, w_change = _bn_stats_after_fit(frozen=True)
    assert bn_change == 0.0 and w_change > 1e-4
    bn_change, w_change = _bn_stats_after_fit(frozen=False)
    assert bn_change > 0.0 and w_change > 1e-4


def _build_train_save(name: str, tmp_path) -> None:
    size = backbones.BACKBONES[name].min_size
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone=name, image_size=size, weights="none", dropout=0.1))
    classifier.set_backbone_trainable(model, 1.0)
    model.compile(keras.optimizers.SGD(1e-3), "binary_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (2, size, size, 3)).astype("uint8")
    logs = model.train_on_batch(x, np.array([0.0, 1.0], "float32"), return_dict=True)
    assert np.isfinite(logs["loss"])
    path = str(tmp_path / f"{name}.keras")
    rundir.save_model(model, path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_tiny_builds_trains_and_saves_at_min_size(tmp_path):
    _build_train_save("tiny", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(backbones.BACKBONES) - {"tiny"}))
def test_every_backbone_builds_trains_and_saves_at_min_size(name, tmp_path):
    _build_train_save(name, tmp_path)
