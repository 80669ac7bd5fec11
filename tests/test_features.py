"""Multi-depth features (--feature_layers): the spec, the classifier's graph and its saved
form, the standardisation fitted by fundus-train, the cached prefix and the logistic head
on them, and fundus-probe's repeated patient CV."""
import dataclasses
import json
import os

import keras
import numpy as np
import pandas as pd
import pytest

from model import augment, classifier, features, io as model_io, prefix_cache, probe, train_config
from model import training

TINY_LAYERS = ("block2_relu1", features.LAST)


def _tiny(layers=TINY_LAYERS, size=32):
    return classifier.build_classifier(classifier.ClassifierConfig(
        backbone="tiny", image_size=size, weights="none", feature_layers=layers, seed=0))


def test_parse_spec():
    assert features.parse_spec("", "mobilenet_v2") == ()
    assert features.parse_spec(None, "tiny") == ()
    assert features.parse_spec("multi", "mobilenet_v2") == (
        "block_10_project_BN", "block_13_project_BN", "block_16_project_BN", "last")
    assert features.parse_spec("multi", "efficientnet_lite2") == (
        "block10_out", "block14_out", "block19_out", "last")   # the 88-, 120-, 208-wide stages
    assert features.parse_spec(" a, b ,last", "tiny") == ("a", "b", "last")
    with pytest.raises(ValueError, match="named twice"):
        features.parse_spec("a,a", "tiny")
    with pytest.raises(ValueError, match="no preset"):
        features.parse_spec("multi", "resnet50")
    assert not features.is_multi(("last",)) and features.is_multi(TINY_LAYERS)


def test_classifier_graph_and_unknown_layer():
    model = _tiny()
    assert classifier.head_layer_names(model) == ["pool_0", "pool_1", "features",
                                                  "standardize"]
    assert classifier.head_input_name(model) == "standardize"
    assert classifier.raw_features_name(model) == "features"
    # 64 (block 2) + 96 (last) pooled channels
    assert model.get_layer("standardize").output.shape[-1] == 160
    assert model(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 1)
    # the plain classifier keeps its old graph
    plain = _tiny(layers=())
    assert classifier.head_layer_names(plain) == ["pool"]
    assert classifier.raw_features_name(plain) is None
    # set_backbone_trainable counts the shared layers
    assert classifier.set_backbone_trainable(model, 1.0) == \
        classifier.set_backbone_trainable(plain, 1.0)
    with pytest.raises(ValueError, match="--feature_layers.*no layer 'block9_relu1'"):
        _tiny(layers=("block9_relu1", "last"))


def test_standardize_statistics_survive_saving(tmp_path):
    model = _tiny()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    raw = keras.Model(model.input, model.get_layer("features").output)
    labels = np.zeros((4,), np.float32)
    info = features.fit_standardize(model, raw, [(images[:4], labels), (images[4:], labels)])
    assert info == {"features": 160, "images": 8}
    z = keras.Model(model.input, model.get_layer("standardize").output)(images).numpy()
    varying = raw(images).numpy().std(axis=0) > 1e-4
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z[:, varying].std(axis=0), 1, atol=1e-3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = model_io.load_model(path).model
    np.testing.assert_allclose(np.asarray(back(images)), np.asarray(model(images)), atol=1e-6)
    np.testing.assert_allclose(back.get_layer("standardize").get_weights()[0],
                               model.get_layer("standardize").get_weights()[0])


def test_cached_prefix_cuts_below_the_lowest_feature_layer():
    model = _tiny()
    cut = prefix_cache.find_cut(model, 0.2)
    bb = classifier.backbone_of(model)
    order = [l.name for l in bb.layers]
    assert order.index(cut) < order.index("block2_relu1")
    prefix, suffix = prefix_cache.split_backbone(model, cut)
    tail = prefix_cache.build_tail(model, suffix)
    enc = prefix_cache.build_encoder(model, prefix)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(tail(enc(images))), np.asarray(model(images)),
                               atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_train_fits_the_standardisation_and_the_probe(tiny_data, tmp_path, cached):
    flip_only = augment.AugmentConfig(flip=True, rotation_deg=0, zoom=0, translate=0,
                                      brightness=0, contrast=0, saturation=0, hue=0, seed=1)
    cfg = train_config.TrainConfig(
        data=tiny_data, model_dir=str(tmp_path / "m"), backbone="tiny", weights="none",
        image_size=32, batch_size=8, epochs=1, warmup_epochs=0,
        fine_tune_fraction=0.5 if cached else 1.0, feature_layers="multi",
        head_init="logistic", head_init_c=0.1, image_grid=0, cache_frozen_prefix=cached,
        augment=flip_only if cached else None, verbose=0)
    prefix_cache._MEMO.clear()
    run = training.train(cfg)
    info = run["head_init"]
    assert info["standardize"]["features"] == 160 == info["features"]
    assert info["standardize"]["images"] == info["train_images"] == \
        run["data"]["train"]["records"]
    kept = model_io.load_model(os.path.join(cfg.model_dir, "best.keras")).model
    mean, sd = kept.get_layer("standardize").get_weights()
    assert np.any(mean != 0) and np.any(sd != 1)
    assert json.load(open(tmp_path / "m" / "run.json"))["flags"]["feature_layers"] == "multi"


def test_config_refuses_a_bad_spec(tiny_data, tmp_path):
    with pytest.raises(train_config.ConfigError, match="--feature_layers"):
        training.train(train_config.TrainConfig(
            data=tiny_data, model_dir=str(tmp_path / "x"), backbone="tiny", weights="none",
            image_size=32, feature_layers="block2_relu1,block2_relu1"))


def test_probe_repeated_cv_finds_a_signal(tiny_data):
    spec = probe.parse_specs(["tiny@32"], {"tiny": "none"}, "multi")[0]
    fs = probe.extract(spec, tiny_data, show_progress=False)
    assert fs.x.shape == (fs.y.size, 160) and set(fs.eye) <= {"left", "right"}
    # a planted signal: one feature shifted by the label must be found in every repetition
    rng = np.random.default_rng(0)
    planted = probe.FeatureSet(np.c_[fs.x, fs.y * 2.0 + rng.normal(size=fs.y.size)],
                               fs.y, fs.patient, fs.eye, fs.filename, 0.0)
    result = probe.repeated_cv(planted, k=3, seeds=(0, 1), c=1.0, n_boot=200)
    assert len(result["per_image"]["folds"]) == 6 and len(result["oof"]) == 2
    assert result["per_image"]["mean"] > 0.75 and result["oof"][0]["ci"][0] > 0.6
    # folds are patient-grouped: no patient in two folds
    folds = probe.patient_folds(fs.patient, fs.y, 3, 0)
    for pid in np.unique(fs.patient):
        assert len(set(folds[fs.patient == pid])) == 1
    # an ensemble of two probes' out-of-fold predictions is their mean, scored alike
    a = planted_result = result
    frames = [pd.DataFrame({"file": fs.filename, "patient": fs.patient, "eye": fs.eye,
                            "label": fs.y, **{f"p_seed{s}": p * w for s, p in
                                              a["oof_predictions"].items()}})
              for w in (1.0, 0.5)]
    mean, seeds = probe.average_oof([frames[0], frames[1].iloc[::-1]])
    assert seeds == [0, 1]
    np.testing.assert_allclose(mean.set_index("file").loc[fs.filename, "p_seed1"],
                               a["oof_predictions"][1] * 0.75)
    again = probe.scores(mean["label"].to_numpy(), mean["patient"].to_numpy(),
                         {s: mean[f"p_seed{s}"].to_numpy() for s in seeds}, 3, n_boot=50)
    for x, y in zip(again["oof"], planted_result["oof"]):   # 0.75 p ranks eyes as p does
        assert x["auc"] == pytest.approx(y["auc"]) and x["patient_auc"] == \
            pytest.approx(y["patient_auc"])
    with pytest.raises(ValueError, match="different eyes"):
        probe.average_oof([frames[0], frames[1].iloc[1:]])
    # noise alone: no signal claimed
    noise = probe.FeatureSet(rng.normal(size=(fs.y.size, 20)), fs.y, fs.patient, fs.eye,
                             fs.filename, 0.0)
    assert probe.repeated_cv(noise, k=3, seeds=(0,), n_boot=200)["per_image"]["mean"] < 0.7


def test_epochs_0_keeps_the_probe_as_the_model(tiny_fold_data, tmp_path):
    """--epochs=0 --head_init=logistic: no gradient step; each fold's kept model is the
    fitted probe (its validation AUC recorded exactly), and a CV of such folds completes
    with its summary and plots."""
    cfg = train_config.TrainConfig(
        data=tiny_fold_data, model_dir=str(tmp_path / "cv"), backbone="tiny",
        weights="none", image_size=32, batch_size=8, epochs=0, warmup_epochs=0,
        feature_layers="multi", head_init="logistic", head_init_c=0.1, image_grid=0,
        verbose=0)
    summary = training.train_cv(cfg, 3)
    assert len(summary["folds"]) == 3
    for i in range(3):
        run = json.load(open(tmp_path / "cv" / f"fold_{i}" / "run.json"))
        assert run["epochs_run"] == 0 and run["stages"] == []
        assert run["best"]["value"] == pytest.approx(run["head_init"]["val_auc"])
        assert run["val"]["auc"] == pytest.approx(run["head_init"]["val_auc"], abs=1e-6)
    assert os.path.exists(tmp_path / "cv" / "cv.json")
    with pytest.raises(train_config.ConfigError, match="--epochs=0.*--head_init=logistic"):
        training.train(dataclasses.replace(cfg, head_init="random",
                                           model_dir=str(tmp_path / "x")))


def test_review_guards(tiny_data, tmp_path):
    """The cached-prefix key includes the orientation; --epochs=0 refuses the age head;
    fundus-probe refuses weights for a backbone it does not probe."""
    base = train_config.TrainConfig(data=tiny_data, model_dir=str(tmp_path / "m"),
                                    backbone="tiny", weights="none", image_size=32)
    keys = {prefix_cache._memo_key(dataclasses.replace(base, orient=o), tiny_data, "c", 32,
                                   ("train",)) for o in ("none", "disc_left")}
    assert len(keys) == 2
    with pytest.raises(ValueError, match="--epochs=0 with --age_loss_weight"):
        dataclasses.replace(base, epochs=0, head_init="logistic", age_loss_weight=0.1,
                            augment=None).validate()
    with pytest.raises(ValueError, match="--weights: mobilenetv2 is not among"):
        probe.parse_specs(["tiny@32"], {"mobilenetv2": "x"}, "multi")
