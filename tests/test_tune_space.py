"""fundus-tune's default space (tuning.space.default_space): which backbones it offers
for each --weights value, and the Keras cache file names it looks for."""
from __future__ import annotations

import os
import warnings

import keras
import pytest
from keras.src.utils import file_utils

from model import backbones
from tuning import space as space_lib

ALL = space_lib.DEFAULT_SPACE["backbone"].values
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                      "shared", "weights", "mobilenet_v2_1.0_imagenet_no_top.weights.h5")


def _cache(folder, *names, image_size=0) -> str:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        with open(os.path.join(folder, backbones.imagenet_cache_file(name, image_size)),
                  "wb") as f:
            f.write(b"stub")
    return str(folder)


def test_backbones_offered_per_weights(tmp_path):
    empty = _cache(tmp_path / "empty")
    # none: every backbone of the default space (random init always loads)
    assert space_lib.default_backbones("none", models_dir=empty)[0] == ALL
    # imagenet: only those whose no-top file is in the Keras cache
    two = _cache(tmp_path / "two", "resnet50", "mobilenet_v2")
    names, notes = space_lib.default_backbones("imagenet", models_dir=two)
    assert names == ("mobilenet_v2", "resnet50")
    assert any("xception" in n and "Keras cache" in n for n in notes)
    # MobileNetV2's cache file depends on the size: the 224 file does not serve 128 px
    assert space_lib.default_backbones("imagenet", 128, models_dir=two)[0] == ("resnet50",)
    with pytest.raises(ValueError, match="--weights=imagenet: no backbone .* --weights=none"):
        space_lib.default_backbones("imagenet", models_dir=empty)
    # a PATH holds one architecture: --backbone only
    weights = tmp_path / "b.weights.h5"
    weights.write_bytes(b"")
    assert space_lib.default_backbones(str(weights), backbone="resnet50",
                                       models_dir=two)[0] == ("resnet50",)
    with pytest.raises(FileNotFoundError, match="--weights=/no/such.weights.h5"):
        space_lib.default_backbones("/no/such.weights.h5")
    # --image_size below a backbone's minimum leaves it out, with a note
    names, notes = space_lib.default_backbones("none", 64, models_dir=empty)
    assert "xception" not in names and "inception_v3" not in names and len(names) == 4
    assert any("xception left out (--image_size=64" in n for n in notes)


def test_keras_models_dir_follows_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert backbones.keras_models_dir() == os.path.join(str(tmp_path), "models")
    _cache(tmp_path / "models", "convnext_tiny", "efficientnet_v2_s")
    assert space_lib.default_backbones("imagenet")[0] == ("efficientnet_v2_s",
                                                         "convnext_tiny")


def test_default_space_searches_backbone_optimizer_learning_rate(tmp_path):
    empty = _cache(tmp_path / "empty")
    sp = space_lib.default_space("none", models_dir=empty)
    assert list(sp.searched) == ["backbone", "optimizer", "learning_rate"]
    assert sp.searched["backbone"].values == ALL and not sp.fixed
    lr = sp.searched["learning_rate"]
    assert (lr.min, lr.max, lr.sampling) == (1e-4, 3e-3, "log")
    line = space_lib.default_line(sp, {"weights": "none", "backbone": "mobilenet_v2"})
    assert line.startswith("no --space/--range/--search: searching the default space "
                           "backbone={mobilenet_v2, efficientnet_v2_s, xception")
    assert "learning_rate=0.0001..0.003:log" in line and "random init" in line
    # a flag given on the command line is not searched
    sp = space_lib.default_space("none", given={"backbone": "tiny"}, models_dir=empty)
    assert list(sp.searched) == ["optimizer", "learning_rate"]
    assert "fixed: backbone=tiny" in space_lib.default_line(sp, {"backbone": "tiny",
                                                                 "weights": "none"})
    # one cached backbone: fixed (not a one-value choice), and it replaces --backbone
    one = _cache(tmp_path / "one", "resnet50")
    sp = space_lib.default_space("imagenet", backbone="mobilenet_v2", models_dir=one)
    assert sp.fixed == {"backbone": "resnet50"} and "backbone" not in sp.searched
    with pytest.raises(ValueError, match="nothing of the default space is left"):
        space_lib.default_space("none", given={"backbone": "tiny", "optimizer": "sgd",
                                               "learning_rate": 1e-3})


@pytest.mark.skipif(not os.path.isfile(SHARED), reason="no shared MobileNetV2 weights")
def test_shared_weights_file_searches_its_backbone_only():
    sp = space_lib.default_space(SHARED, 224, "mobilenet_v2")
    assert list(sp.searched) == ["optimizer", "learning_rate"] and not sp.fixed


class _Asked(Exception):
    pass


def test_cache_file_names_are_the_ones_keras_asks_for(monkeypatch):
    """Each backbone built with weights='imagenet' asks keras.utils.get_file for exactly
    the file :func:`imagenet_cache_file` names (stopped there: nothing downloads)."""
    asked = []

    def get_file(fname=None, origin=None, **kwargs):
        asked.append((fname, kwargs.get("cache_subdir")))
        raise _Asked()

    monkeypatch.setattr(file_utils, "get_file", get_file)
    for name, size in [(n, 0) for n in backbones.IMAGENET_CACHE_FILES] + [
            ("mobilenet_v2", 128), ("mobilenet_v2", 384)]:
        bb = backbones.get(name)        # smallest build; MobileNetV2's file follows the size
        built = size or (bb.default_size if name == "mobilenet_v2" else bb.min_size)
        asked.clear()
        with pytest.raises(_Asked), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)    # 384 px: "224 weights loaded"
            bb.build_fn()(weights="imagenet", include_top=False, pooling=None,
                          input_shape=(built, built, 3))
        assert asked == [(backbones.imagenet_cache_file(name, size), "models")], name
        keras.backend.clear_session()
