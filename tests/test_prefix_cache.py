"""--cache_frozen_prefix: the cut, the tail, and a cached training run (tiny data)."""
from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from model import augment, backbones, classifier, prefix_cache, train_config, training
from pipeline import reader

FLIP_ONLY = augment.AugmentConfig(flip=True, rotation_deg=0, zoom=0, translate=0,
                                  brightness=0, contrast=0, saturation=0, hue=0, seed=1)


def _fraction_from(model, layer_name: str) -> float:
    """The --fine_tune_fraction whose first unfrozen layer is ``layer_name``."""
    names = [l.name for l in prefix_cache._backbone_layers(model)]
    return (len(names) - names.index(layer_name)) / len(names)


@pytest.fixture(scope="module")
def mnv2():
    keras.utils.set_random_seed(0)
    return classifier.build_classifier(classifier.ClassifierConfig(
        backbone="mobilenet_v2", image_size=64, weights="none", dropout=0.3,
        augment=FLIP_ONLY, freeze_bn_statistics=True, seed=0))


def test_cut_is_clean_and_snaps_down(mnv2):
    assert prefix_cache.find_cut(mnv2, _fraction_from(mnv2, "block_13_expand")) == \
        "block_12_add"
    # first unfrozen layer inside block 12 (after its add's second input): snap to block 11
    assert prefix_cache.find_cut(mnv2, _fraction_from(mnv2, "block_12_project_BN")) == \
        "block_11_add"
    with pytest.raises(ValueError, match="--fine_tune_fraction"):
        prefix_cache.find_cut(mnv2, 0.0)


def test_tail_on_cached_activations_reproduces_the_model(mnv2):
    cut = prefix_cache.find_cut(mnv2, _fraction_from(mnv2, "block_13_expand"))
    prefix, suffix = prefix_cache.split_backbone(mnv2, cut)
    encoder = prefix_cache.build_encoder(mnv2, prefix)
    tail = prefix_cache.build_tail(mnv2, suffix)
    x = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3)).astype(np.uint8)
    acts = encoder(x, training=False)
    assert tuple(acts.shape) == (4, 4, 4, 96)
    want = np.asarray(mnv2(x, training=False))
    got = np.asarray(tail(np.asarray(acts).astype(np.float16).astype(np.float32),
                          training=False))
    np.testing.assert_allclose(got, want, atol=2e-3)
    # shared objects: the tail's head is the classifier's head
    assert tail.get_layer(classifier.SEX_OUTPUT) is mnv2.get_layer(classifier.SEX_OUTPUT)


def test_non_flip_augmentation_is_a_clear_error(tiny_fold_data, tmp_path):
    cfg = train_config.TrainConfig(data=tiny_fold_data, model_dir=str(tmp_path / "m"),
                               backbone="mobilenet_v2", weights="none", image_size=32,
                               cache_frozen_prefix=True, fine_tune_fraction=0.2,
                               augment=augment.AugmentConfig(seed=1), verbose=0)
    with pytest.raises(train_config.ConfigError, match="--augment_rotation_deg"):
        training.train(cfg)
    assert not os.path.exists(tmp_path / "m")


def test_check_augment_message_and_flip_only():
    prefix_cache.check_augment(FLIP_ONLY)                         # the flip is replayed
    prefix_cache.check_augment(dataclasses.replace(FLIP_ONLY, local_contrast=True))
    off = ("--augment_rotation_deg=0 --augment_zoom=0 --augment_translate=0 "
           "--augment_brightness=0 --augment_contrast=0 --augment_saturation=0 "
           "--augment_hue=0 --augment_vertical_flip=false")
    with pytest.raises(ValueError) as e:
        prefix_cache.check_augment(dataclasses.replace(FLIP_ONLY, zoom=0.2,
                                                       vertical_flip=True))
    assert str(e.value) == (
        "--cache_frozen_prefix trains on cached activations, where only the horizontal "
        "flip (--augment_flip) is possible; these are on: --augment_zoom=0.2, "
        f"--augment_vertical_flip=True. Pass {off} (or drop --cache_frozen_prefix)")
    with pytest.raises(ValueError, match="--augment_rotation_deg=15.0"):
        prefix_cache.check_augment(None)                          # the defaults rotate


def _toy_cache(flip: bool) -> prefix_cache.ActivationCache:
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(5, 2, 2, 3)).astype(np.float16)
    return prefix_cache.ActivationCache(
        acts, -acts if flip else None, np.array([0, 1, 1, 0, 1]), np.ones(5, np.int64),
        np.array([0, 1, 2, -1, 0]), np.array(["1", "2", "3", "4", "5"]),
        np.array([f"{i}_left.jpg" for i in range(5)]), np.array(["train"] * 4 + ["val"]),
        "block_12_add", 1.5)


@pytest.mark.parametrize("flip", [False, True])
def test_disk_cache_round_trip(flip, tmp_path):
    key = json.dumps({"data": "d", "cut": "block_12_add", "flip": flip})
    assert prefix_cache.load_cache(str(tmp_path), key) is None
    cache = _toy_cache(flip)
    path = prefix_cache.save_cache(cache, str(tmp_path), key)
    assert os.listdir(tmp_path) == [os.path.basename(path)]     # no temporary left
    got = prefix_cache.load_cache(str(tmp_path), key)
    for name in prefix_cache.CACHE_ARRAYS:
        a, b = getattr(cache, name), getattr(got, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    assert got.cut == "block_12_add" and got.seconds == 1.5
    other = json.dumps({"data": "d", "cut": "block_15_add", "flip": flip})
    assert prefix_cache.load_cache(str(tmp_path), other) is None
    # a directory whose key.json names another configuration is an error, not a reuse
    os.rename(path, os.path.join(tmp_path, prefix_cache.disk_key(other)))
    with pytest.raises(ValueError, match="another configuration"):
        prefix_cache.load_cache(str(tmp_path), other)
    # saving a key already on disk keeps that cache (another job wrote it first)
    kept = prefix_cache.save_cache(_toy_cache(not flip), str(tmp_path), other)
    assert prefix_cache.load_cache(str(tmp_path), key) is None
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(kept)]
    with pytest.raises(ValueError, match="another configuration"):   # not overwritten
        prefix_cache.load_cache(str(tmp_path), other)
    os.remove(os.path.join(kept, prefix_cache.KEY_JSON))
    with pytest.raises(ValueError, match="no valid key.json"):
        prefix_cache.load_cache(str(tmp_path), other)


def test_prefix_cache_dir_needs_the_prefix_cache(tiny_fold_data, tmp_path):
    cfg = train_config.TrainConfig(data=tiny_fold_data, model_dir=str(tmp_path / "m"),
                               prefix_cache_dir=str(tmp_path / "c"), verbose=0)
    with pytest.raises(train_config.ConfigError, match="--prefix_cache_dir.*--cache_frozen"):
        training.train(cfg)


@pytest.mark.slow   # three folds, each exporting a SavedModel: minutes on 2 busy cores
def test_cached_cv_run_trains_the_full_model(tiny_fold_data, tmp_path):
    keras.utils.set_random_seed(5)
    bb = backbones.build_backbone("mobilenet_v2", 32, "none")
    # calibrate BatchNorm statistics so frozen-statistics activations neither vanish nor
    # explode (random init with unit statistics vanishes: no gradient reaches the top)
    for layer in bb.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    bb(np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32),
       training=True)
    wfile = str(tmp_path / "mnv2.weights.h5")
    bb.save_weights(wfile)
    start = {l.name: [w.copy() for w in l.get_weights()] for l in bb.layers}
    probe = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="mobilenet_v2", image_size=32, weights=wfile))
    frac = _fraction_from(probe, "block_13_expand")
    cfg = train_config.TrainConfig(
        data=tiny_fold_data, model_dir=str(tmp_path / "cv"), backbone="mobilenet_v2",
        weights=wfile, image_size=32, batch_size=8, epochs=1, warmup_epochs=0,
        fine_tune_fraction=frac, learning_rate=1e-2, augment=FLIP_ONLY, image_grid=4,
        cache_frozen_prefix=True, patience=0, verbose=0, seed=1,
        prefix_cache_dir=str(tmp_path / "acts"), select="last", head_init="logistic")
    prefix_cache._MEMO.clear()
    summary = training.train_cv(cfg, 3)
    assert len(summary["folds"]) == 3 and summary["select"] == "last"
    assert [len(f["val_auc_by_epoch"]) for f in summary["folds"]] == [1, 1, 1]
    assert len(summary["val_auc_by_epoch_mean"]) == 1
    runs = [json.load(open(tmp_path / "cv" / f"fold_{i}" / "run.json")) for i in range(3)]
    info = [r["cache_frozen_prefix"] for r in runs]
    assert info[0]["cut_layer"] == "block_12_add" and info[0]["mirrored"]
    assert not info[0]["cache_reused"] and info[1]["cache_reused"] and info[2]["cache_reused"]
    assert info[0]["cache_build_seconds"] >= 0 and info[0]["cached_images"] == 64
    # the logistic head is fitted on the cached rows of each fold's training split
    assert [r["head_init"]["train_images"] for r in runs] == \
        [r["data"]["train"]["records"] for r in runs]
    # the saved artifact is the FULL uint8 classifier, with trained top / frozen prefix
    model = keras.models.load_model(tmp_path / "cv" / "fold_0" / "best.keras", compile=False)
    assert model.input.dtype == "uint8" and model.input.shape[1:] == (32, 32, 3)
    p = np.asarray(model(np.zeros((2, 32, 32, 3), np.uint8), training=False))
    assert p.shape == (2, 1) and np.all((p >= 0) & (p <= 1))
    bb_after = classifier.backbone_of(model)

    def changed(name):
        return any(not np.allclose(a, b) for a, b in
                   zip(bb_after.get_layer(name).get_weights(), start[name]))

    assert changed("Conv_1") and changed("block_13_expand")
    assert not changed("block_12_expand") and not changed("Conv1")
    assert os.path.isdir(tmp_path / "cv" / "fold_0" / "saved_model")
    # --select=last: the kept model is the last epoch's
    assert json.load(open(tmp_path / "cv" / "fold_0" / "best.json"))["epoch"] == 0
    # a later job (empty process memo) loads the activations from --prefix_cache_dir
    prefix_cache._MEMO.clear()
    assert len(os.listdir(tmp_path / "acts")) == 1
    fold0 = dataclasses.replace(cfg, val_fold=0)
    train_spec, val_spec = reader.training_split(cfg.data, 0)
    again = prefix_cache.prepare(classifier.build_classifier(classifier.ClassifierConfig(
        backbone="mobilenet_v2", image_size=32, weights=wfile, augment=FLIP_ONLY)), fold0,
        train_spec, val_spec, 32, None)
    assert again.info["cache_reused"] and again.info["cached_images"] == 64
    assert again.info["train_rows"] == runs[0]["data"]["train"]["records"]
