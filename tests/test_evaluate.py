"""fundus-evaluate / model.evaluation / model.io on tiny synthetic data and tiny models."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import _tiny_models as tm
from conftest import write_tiny_data
from model import evaluation
from model import io as model_io
from model import metrics as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    return tm.save_model_dir(tm.planted_model(64), str(tmp_path_factory.mktemp("planted")))


@pytest.fixture(scope="module")
def planted_eval(planted_dir, tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval_out"))
    return evaluation.evaluate(planted_dir, tiny_data, "test", out, bootstrap=300), out


def test_planted_signal_auc_and_outputs(planted_eval, tiny_data):
    m, out = planted_eval
    for key in ("image.auc", "image.auc_ci95", "patient.auc", "patient.auc_ci95",
                "majority_accuracy", "n_images", "n_patients"):
        evaluation.lookup(m, key)
    assert m["n_images"] == 16 and m["n_patients"] == 8
    assert m["image"]["auc"] > 0.9 and m["image"]["auc_ci95"][0] > 0.5
    assert m["patient"]["auc"] > 0.9 and m["patient"]["auc_ci95"][0] > 0.5
    assert m["image"]["auc_ci95"][0] <= m["image"]["auc"] <= m["image"]["auc_ci95"][1]
    # threshold chosen on the val split, not on test
    assert m["threshold"]["source"] == "val split" and m["threshold"]["n_validation_images"] == 16
    assert 0.0 < m["threshold"]["image"] < 1.0
    assert m["image"]["at_youden"]["threshold"] == m["threshold"]["image"]
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk["image"]["auc"] == m["image"]["auc"]
    pred = pd.read_csv(os.path.join(out, "predictions.csv"), dtype={"patient": str})
    assert list(pred.columns[:5]) == ["file", "patient", "eye", "sex", "probability"]
    assert len(pred) == 16 and set(pred["sex"]) == {"male", "female"}
    assert set(pred["eye"]) == {"left", "right"}
    # metrics recomputed from the CSV agree (the CSV is the evidence behind the numbers)
    y = (pred["sex"] == "male").to_numpy(float)
    assert M.roc_auc(y, pred["probability"]) == pytest.approx(m["image"]["auc"])
    males = pred[pred["sex"] == "male"]["probability"]
    assert males.min() > pred[pred["sex"] == "female"]["probability"].max()


def test_plots_are_real_images_and_tensorboard_has_them(planted_eval):
    _, out = planted_eval
    for name in ("roc.png", "reliability.png"):
        with Image.open(os.path.join(out, name)) as img:
            assert img.format == "PNG" and img.width >= 500 and img.height >= 500
            arr = np.asarray(img.convert("L"))
        assert arr.std() > 10          # not a blank canvas
    assert not glob.glob(os.path.join(out, "*.tmp*"))
    import tensorflow as tf
    events = glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    assert len(events) == 1
    tags = set()
    for rec in tf.data.TFRecordDataset(events[0]):
        ev = tf.compat.v1.Event.FromString(rec.numpy())
        tags.update(v.tag for v in ev.summary.value)
    assert {"roc", "reliability", "image/auc", "patient/auc"} <= tags


def test_constant_model_auc_half_accuracy_majority(tmp_path):
    # 7 test patients: 4 male, 3 female -> majority accuracy 4/7; no val split records.
    data = write_tiny_data(str(tmp_path / "data"), {"train": 2, "val": 0, "test": 7}, shards=1)
    mdir = tm.save_model_dir(tm.constant_model(64, 0.7), str(tmp_path / "const"))
    m = evaluation.evaluate(mdir, data, "test", str(tmp_path / "out"), bootstrap=100)
    assert m["image"]["auc"] == 0.5 and m["patient"]["auc"] == 0.5
    assert m["image"]["auc_ci95"] == [0.5, 0.5]
    assert m["majority_accuracy"] == pytest.approx(4 / 7)
    assert m["image"]["at_0_5"]["accuracy"] == pytest.approx(m["majority_accuracy"])
    assert m["image"]["at_0_5"]["balanced_accuracy"] == pytest.approx(0.5)
    # empty validation: say so and fall back to 0.5
    assert m["threshold"]["source"] == "none" and m["threshold"]["image"] == 0.5
    assert "0.5 used" in m["threshold"]["note"]
    assert m["image"]["brier"] == pytest.approx(np.mean((0.7 - np.array([1] * 8 + [0] * 6)) ** 2),
                                                abs=1e-6)


def test_ensemble_of_different_sizes_is_the_mean(planted_dir, tiny_data, tmp_path):
    const = tm.save_model_dir(tm.constant_model(48, 0.3), str(tmp_path / "c48"))
    members = model_io.load_models(f"{planted_dir},{const}")
    assert [m.image_size for m in members] == [64, 48]
    frame = evaluation.predict_split(members, tiny_data, "test", batch_size=5)
    np.testing.assert_allclose(frame["member_1"], 0.3, atol=1e-6)
    np.testing.assert_allclose(frame["probability"], (frame["member_0"] + 0.3) / 2, atol=1e-6)
    alone = evaluation.predict_split(members[:1], tiny_data, "test")
    np.testing.assert_allclose(alone["probability"], frame["member_0"], atol=1e-6)
    assert list(alone["file"]) == list(frame["file"])


def test_flip_tta_averages_mirror():
    import keras
    inp = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    model = keras.Model(inp, keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=1),
        name="sex")(x))
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    p = model_io.predict_arrays(model, x)
    q = model_io.predict_arrays(model, x[:, :, ::-1].copy())
    f = model_io.predict_arrays(model, x, tta="flip", batch_size=2)
    np.testing.assert_allclose(f, (p + q) / 2, atol=1e-6)
    assert np.abs(p - q).max() > 1e-3
    with pytest.raises(ValueError, match="tta"):
        model_io.make_predict_fn(model, "rot90")


def test_auto_tta_follows_the_training_runs():
    """auto: flip only when every member's run.json says it was validated with flip."""
    flip = model_io.Member(None, {"path": "a", "image_size": 8, "val_tta": "flip"})
    plain = model_io.Member(None, {"path": "b", "image_size": 8, "val_tta": "none"})
    old = model_io.Member(None, {"path": "c", "image_size": 8})    # before --tta existed
    assert model_io.resolve_tta("auto", [flip, flip]) == "flip"
    assert model_io.resolve_tta("auto", [flip, plain]) == "none"
    assert model_io.resolve_tta("auto", [old]) == "none"
    assert model_io.resolve_tta("none", [flip]) == "none"
    assert model_io.resolve_tta("flip", [plain]) == "flip"
    with pytest.raises(ValueError, match="--tta='rot90'"):
        model_io.resolve_tta("rot90", [flip])


def test_fold_ensemble_dir_uses_out_of_fold_threshold(tiny_fold_data, tmp_path):
    ens = tmp_path / "cv"
    for k in range(3):
        tm.save_model_dir(tm.planted_model(64), str(ens / f"fold_{k}"),
                          flags={"val_fold": k})
    assert model_io.is_ensemble_dir(str(ens))
    files = model_io.resolve_model_files(str(ens))
    assert [os.path.basename(os.path.dirname(f)) for f in files] == ["fold_0", "fold_1", "fold_2"]
    m = evaluation.evaluate(str(ens), tiny_fold_data, "test", None, bootstrap=0)
    assert m["threshold"]["source"].startswith("out-of-fold")
    # every train+val record is in exactly one validation fold: 32 patients, 2 eyes
    assert m["threshold"]["n_validation_images"] == 64
    assert len(m["members"]) == 3 and m["image"]["auc"] > 0.9
    assert m["image"]["auc_ci95"] == [None, None]        # --bootstrap=0


def test_oof_split_pools_each_fold_model_on_its_own_fold(tiny_fold_data, tmp_path):
    """--split=oof: fold k's model predicts exactly fold k's validation records, every
    train+val record once; per-fold AUCs and their mean are reported; errors name the
    problem."""
    from pipeline import reader
    ens = tmp_path / "cv"
    for k in range(3):
        tm.save_model_dir(tm.planted_model(64), str(ens / f"fold_{k}"),
                          flags={"val_fold": k})
    m = evaluation.evaluate(str(ens), tiny_fold_data, "oof", str(tmp_path / "out"),
                            bootstrap=20)
    frame = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(frame) == 64 and frame["file"].is_unique
    assert sorted(frame["fold"].unique()) == [0, 1, 2]
    for k in range(3):
        spec = reader.training_split(tiny_fold_data, k)[1]
        want = evaluation.predict_split(model_io.load_models(str(ens / f"fold_{k}")),
                                        tiny_fold_data, spec)
        assert sorted(frame.loc[frame["fold"] == k, "file"]) == sorted(want["file"])
    cv = m["cv"]
    assert [f["fold"] for f in cv["folds"]] == [0, 1, 2]
    assert sum(f["n_images"] for f in cv["folds"]) == 64
    assert cv["image_auc"]["mean"] == pytest.approx(
        np.mean([f["image_auc"] for f in cv["folds"]]))
    assert m["image"]["auc"] > 0.9 and m["image"]["auc_ci95"][0] is not None
    assert m["threshold"]["image"] == 0.5 and "oof" in m["threshold"]["note"]
    assert m["members"] is None
    with pytest.raises(ValueError, match="fold_0.*no validation fold"):
        evaluation.evaluate(str(ens / "fold_0"), write_tiny_data(str(tmp_path / "no_folds")),
                            "oof", None, bootstrap=0)
    twice = f"{ens / 'fold_1'},{ens / 'fold_1'}"
    with pytest.raises(ValueError, match="same fold"):
        evaluation.evaluate(twice, tiny_fold_data, "oof", None, bootstrap=0)


def test_diverse_ensemble_dir_averages_recipes_per_fold(tiny_fold_data, tmp_path):
    """A dir of two CV runs (different recipes and input sizes) is one ensemble: all its
    fold models; --split=oof averages each fold's two models, one row per eye; a fold
    model missing from one recipe is refused, as is an unfinished nested run."""
    ens = tmp_path / "diverse"
    for k in range(3):
        tm.save_model_dir(tm.planted_model(64), str(ens / "a" / f"fold_{k}"),
                          flags={"val_fold": k})
        tm.save_model_dir(tm.random_model(48, seed=k), str(ens / "b" / f"fold_{k}"),
                          flags={"val_fold": k})
    files = model_io.resolve_model_files(str(ens))
    assert [os.path.relpath(f, ens) for f in files] == [
        f"{r}/fold_{k}/best.keras" for r in "ab" for k in range(3)]
    members = model_io.load_models(str(ens))
    frame = evaluation.out_of_fold_predictions(members, tiny_fold_data)
    assert len(frame) == 64 and frame["file"].is_unique
    for k in range(3):
        part = frame[frame["fold"] == k]
        np.testing.assert_allclose(part["probability"],
                                   (part["member_0"] + part["member_1"]) / 2, atol=1e-6)
    one = model_io.load_models(str(ens / "a"))
    alone = evaluation.out_of_fold_predictions(one, tiny_fold_data).set_index("file")
    np.testing.assert_allclose(frame.set_index("file").loc[alone.index, "member_0"],
                               alone["probability"], atol=1e-6)
    with pytest.raises(ValueError, match="different numbers of models"):
        evaluation.out_of_fold_predictions(members[:5], tiny_fold_data)
    (ens / "b" / "fold_3").mkdir()
    with pytest.raises(FileNotFoundError, match="unfinished.*b/fold_3"):
        model_io.resolve_model_files(str(ens))


def test_load_models_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_io.load_models(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*not a model"):
        model_io.load_models(str(tmp_path / "empty"))
    cv = tmp_path / "cv"
    tm.save_model_dir(tm.constant_model(16), str(cv / "fold_0"))
    (cv / "fold_1").mkdir()
    with pytest.raises(FileNotFoundError, match="unfinished CV run.*fold_1"):
        model_io.load_models(str(cv))
    assert len(model_io.load_models(str(cv / "fold_0"))) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "best.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="best.keras: cannot load"):
        model_io.load_models(str(bad))


def test_real_classifier_round_trip(tmp_path):
    """The project's classifier (custom layers, nested backbone) loads and predicts."""
    classifier = pytest.importorskip("model.classifier")
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="mobilenet_v2", image_size=32, weights="none", age_loss_weight=1.0))
    mdir = tm.save_model_dir(model, str(tmp_path / "clf"), backbone="mobilenet_v2")
    (member,) = model_io.load_models(mdir)
    assert member.image_size == 32 and len(member.model.outputs) == 1   # age head dropped
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    p = model_io.predict_arrays(member.model, x)
    ref = model(x, training=False)["sex"].numpy().reshape(-1)
    np.testing.assert_allclose(p, ref, atol=1e-6)


def test_cli_writes_outputs_and_fails_clearly(planted_dir, tiny_data, tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "tools.evaluate", f"--data={tiny_data}",
                        f"--model={planted_dir}", f"--output={out}", "--bootstrap=100",
                        "--tta=flip"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "AUC" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["tta"] == "flip" and m["image"]["auc"] > 0.9
    r = subprocess.run([sys.executable, "-m", "tools.evaluate", f"--data={tiny_data}",
                        f"--model={tmp_path / 'missing'}", f"--output={tmp_path / 'x'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "missing does not exist" in r.stderr   # bad input
