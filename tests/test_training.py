"""model.training: schedules, optimizers, stage plan, start-up checks, a full (interrupted
and resumed) run and its outputs, MirroredStrategy parity, CV."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras

import _hparams_reader as hpr
from _train_job import Crash
from model import augment, callbacks, optim, rundir, train_config, training
from pipeline import manifest as manifest_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNV2 = os.path.join(ROOT, "..", "shared", "weights",
                           "mobilenet_v2_1.0_imagenet_no_top.weights.h5")


def _cfg(data: str = "", model_dir: str = "", **kw) -> train_config.TrainConfig:
    base = dict(data=data, model_dir=model_dir, backbone="tiny", weights="none",
                image_size=32, batch_size=8, epochs=4, warmup_epochs=1,
                fine_tune_fraction=1.0, learning_rate=3e-3, fine_tune_lr_scale=0.3,
                augment=augment.AugmentConfig(seed=1), image_grid=4, verbose=0, seed=1)
    base.update(kw)
    return train_config.TrainConfig(**base)


# ------------------------------------------------------------------ pure pieces
def test_warmup_cosine_schedule_and_serialization():
    s = optim.warmup_cosine(1.0, warmup_steps=10, total_steps=110)
    lr = [float(s(i)) for i in (0, 4, 9, 10, 60, 109, 500)]
    assert lr[0] == pytest.approx(0.1) and lr[1] == pytest.approx(0.5)
    assert lr[2] == pytest.approx(1.0) and lr[3] == pytest.approx(1.0)
    assert lr[4] == pytest.approx(0.5, abs=1e-6)
    assert lr[5] < 0.01 and lr[6] == pytest.approx(0.0, abs=1e-7)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert float(restored(60)) == pytest.approx(0.5, abs=1e-6)


def test_step_schedule_and_stage_plan(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, str(tmp_path), epochs=10, warmup_epochs=2, step_epochs=3,
               step_factor=0.5, learning_rate=1e-3, fine_tune_learning_rate=0.0,
               fine_tune_lr_scale=0.1, fine_tune_fraction=0.25)
    fn = optim.step_schedule(cfg, 1e-4, first_epoch=2)
    assert [fn(e) for e in (2, 4, 5, 8)] == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5])
    assert cfg.stages() == [("head", 0, 2, 0.0, 1e-3), ("fine_tune", 2, 10, 0.25, 1e-4)]
    assert dataclasses.replace(cfg, fine_tune_fraction=0.0).stages() == [
        ("head", 0, 10, 0.0, 1e-3)]
    assert dataclasses.replace(cfg, warmup_epochs=0, fine_tune_learning_rate=5e-4).stages() \
        == [("fine_tune", 0, 10, 0.25, 5e-4)]


@pytest.mark.parametrize("name", train_config.OPTIMIZERS)
def test_optimizers_with_weight_decay(name, tiny_data, tmp_path):
    cfg = _cfg(tiny_data, str(tmp_path), optimizer=name, weight_decay=1e-4, momentum=0.8)
    opt = optim.make_optimizer(cfg, 0.01)
    assert opt.weight_decay == pytest.approx(1e-4)
    if name == "sgd":
        assert opt.nesterov and opt.momentum == pytest.approx(0.8)
    # decay skips biases (and normalisation scales)
    kernel, bias = keras.Variable(np.ones((2, 2)), name="kernel"), keras.Variable(
        np.ones(2), name="bias")
    opt.build([kernel, bias])
    assert opt._use_weight_decay(kernel) and not opt._use_weight_decay(bias)


def test_select_last_keeps_every_epoch_best_keeps_the_maximum(tmp_path):
    """keep=last saves after every epoch whatever the monitor did; keep=best only on a
    gain."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    values = [0.6, 0.5, 0.55]
    for keep, want_epoch in (("best", 0), ("last", 2)):
        cb = callbacks.SelectBest(str(tmp_path / f"{keep}.keras"),
                                 str(tmp_path / f"{keep}.json"), "val_auc", 0, 0,
                                 keep=keep)
        cb.set_model(model)
        cb.on_train_begin()
        for e, v in enumerate(values):
            cb.on_epoch_end(e, {"val_auc": v})
        state = json.load(open(tmp_path / f"{keep}.json"))
        assert state["epoch"] == want_epoch and state["value"] == values[want_epoch]


def test_image_grid_and_history_dedupe(tmp_path):
    grid = callbacks.image_grid(np.full((5, 8, 6, 3), 255, np.uint8), columns=4)
    assert tuple(grid.shape) == (16, 24, 3)
    assert float(grid[0, 0, 0]) == 1.0 and float(grid[15, 23, 0]) == 0.0   # padding
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.9\n1,0.8\n1,0.7\n2,0.6\n")
    rows = rundir.read_history(str(path))
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[1]["loss"] == 0.7


def test_startup_errors_name_the_flag(tiny_data, tmp_path):
    def err(match: str, **kw):
        kw.setdefault("data", tiny_data)
        with pytest.raises(train_config.ConfigError, match=match):
            training.train(_cfg(model_dir=str(tmp_path / "m"), **kw))
    err(r"--backbone='vgg'", backbone="vgg")
    err(r"--image_size=70 is below xception's minimum of 71", backbone="xception",
        image_size=70)
    empty = tmp_path / "empty"
    empty.mkdir()
    err(r"--data=.*no manifest.json.*fundus-convert", data=str(empty))
    err(r"--batch_size=64 is larger than the training split", batch_size=64)
    err(r"--optimizer='lion'", optimizer="lion")
    err(r"--val_fold=0: .* no folds", val_fold=0)
    err(r"--select=last with --patience=5: .* --patience=0", select="last", patience=5)
    err(r"--select=first", select="first")
    err(r"--swa_epochs=2 .* needs --select=last", swa_epochs=2)
    err(r"--swa_epochs=4: the last stage \(fine_tune\) has only 3 epochs", swa_epochs=4,
        select="last", patience=0)
    err(r"--tta=rotate", tta="rotate")
    if os.path.exists(SHARED_MNV2):
        err(r"--weights=.*does not match backbone 'tiny'", weights=SHARED_MNV2)
    assert not (tmp_path / "m" / "backup").exists()   # nothing written on a bad start


def test_weight_average_is_the_mean_of_the_last_epochs_and_restart_safe(tmp_path):
    """Epochs 0..4 with weights 0, 1, 2, 3, 4 and K = 3 (first averaged epoch 2): the
    model ends at mean(2, 3, 4) = 3, saved to the path; a run killed after epoch 3 and
    resumed (epoch 3 repeated with other weights) counts epoch 3 once."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    kernel, bias = model.trainable_weights
    path, state = str(tmp_path / "best.keras"), str(tmp_path / "best.json")
    rundir.write_json(state, {"epoch": 4})

    def epochs(cb, values, first_epoch):
        cb.set_model(model)
        cb.on_train_begin()
        for e, v in enumerate(values, start=first_epoch):
            kernel.assign(np.full((2, 1), v, np.float32))
            bias.assign(np.full((1,), -v, np.float32))
            cb.on_epoch_end(e, {})

    def make():
        return callbacks.WeightAverage(model, 2, path, state, str(tmp_path))

    epochs(make(), [0, 1, 2, 3], 0)          # killed after epoch 3 (0-based)
    assert not os.path.exists(path)          # nothing averaged is written before the end
    cb = make()
    epochs(cb, [30, 4], 3)                   # resumed: epoch 3 again (not counted), 4
    cb.on_train_end()
    np.testing.assert_allclose(kernel.numpy(), np.full((2, 1), 3.0))
    np.testing.assert_allclose(bias.numpy(), [-3.0])
    saved = keras.models.load_model(path)
    np.testing.assert_allclose(saved.trainable_weights[0].numpy(), np.full((2, 1), 3.0))
    assert json.load(open(state)) == {"epoch": 4, "swa_epochs": [3, 5]}


class _Weights(keras.callbacks.Callback):
    """Records the target's trainable weights after every epoch."""

    def __init__(self, target_of):
        super().__init__()
        self.target_of, self.by_epoch = target_of, {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch[epoch] = [w.numpy().copy() for w in self.target_of().trainable_weights]


def test_swa_run_keeps_the_mean_of_the_last_epochs_and_flip_tta(tiny_data, tmp_path):
    """--swa_epochs=2 --tta=flip: best.keras holds the mean of epochs 2 and 3's
    trainable weights, and run.json's validation AUC is the flip-TTA prediction."""
    from model import evaluation
    from model import io as model_io
    from model import metrics as metrics_lib
    cfg = _cfg(tiny_data, str(tmp_path / "m"), epochs=3, select="last", patience=0,
               swa_epochs=2, tta="flip", image_grid=0)
    holder = {}
    rec = _Weights(lambda: holder["model"])

    class _Grab(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            holder.setdefault("model", self.model)
    run = training.train(cfg, callbacks=[_Grab(), rec])
    assert run["best"]["swa_epochs"] == [2, 3] and run["val_tta"] == "flip"
    best = keras.models.load_model(os.path.join(cfg.model_dir, "best.keras"))
    names = [w.path for w in holder["model"].trainable_weights]
    by_path = {w.path: w.numpy() for w in best.weights}
    for i, name in enumerate(names):
        want = (rec.by_epoch[1][i] + rec.by_epoch[2][i]) / 2
        np.testing.assert_allclose(by_path[name], want, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(rec.by_epoch[1], rec.by_epoch[2]))
    member = model_io.Member(model_io.sex_model(best), {"path": "x", "image_size": 32})
    frame = evaluation.predict_split([member], tiny_data, "val", tta="flip")
    assert run["val"]["auc"] == pytest.approx(metrics_lib.roc_auc(
        frame["label"].to_numpy(float), frame["probability"].to_numpy(float)))
    assert not os.path.exists(os.path.join(cfg.model_dir, "backup"))


# ------------------------------------------------------------ interrupted + resumed run
class _Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def resumed_run(tiny_data, tmp_path_factory):
    """4 epochs (1 head + 3 fine-tune) killed in epoch 3, then restarted.

    The data copy has no test shards at all: training must never need them."""
    data = str(tmp_path_factory.mktemp("no_test") / "data")
    shutil.copytree(tiny_data, data)
    man = manifest_lib.load(data)
    for path in manifest_lib.shard_paths(data, man, "test"):
        os.remove(path)
    model_dir = str(tmp_path_factory.mktemp("run") / "model")
    cfg = _cfg(data, model_dir, patience=0)
    first = _Seen()
    with pytest.raises(RuntimeError, match="preempted in epoch 3"):
        training.train(cfg, callbacks=[first, Crash(2)])
    rows_at_kill = rundir.read_history(os.path.join(model_dir, "history.csv"))
    changed = None
    try:
        training.train(dataclasses.replace(cfg, learning_rate=1e-2))
    except train_config.ConfigError as e:
        changed = str(e)
    second = _Seen()
    run = training.train(cfg, callbacks=[second])
    return {"dir": model_dir, "first": first.epochs, "second": second.epochs,
            "rows_at_kill": rows_at_kill, "changed_flags_error": changed, "run": run,
            "cfg": cfg}


def test_resume_starts_at_the_interrupted_epoch(resumed_run):
    assert resumed_run["first"] == [0, 1, 2]
    assert [r["epoch"] for r in resumed_run["rows_at_kill"]] == [0, 1]
    assert resumed_run["second"] == [2, 3]              # epoch 3 of 4, not epoch 1
    assert "--learning_rate" in resumed_run["changed_flags_error"]
    history = rundir.read_history(os.path.join(resumed_run["dir"], "history.csv"))
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert resumed_run["run"]["resumed"] is True


def test_run_outputs(resumed_run):
    d, run = resumed_run["dir"], resumed_run["run"]
    for name in ("best.keras", "best.json", "history.csv", "history.json", "run.json",
                 "saved_model/saved_model.pb"):
        assert os.path.exists(os.path.join(d, name)), name
    assert not os.path.exists(os.path.join(d, "backup"))
    for sub in ("train", "validation", "images"):
        assert os.listdir(os.path.join(d, "logs", sub)), sub
    on_disk = json.load(open(os.path.join(d, "run.json")))
    assert on_disk["flags"]["learning_rate"] == pytest.approx(3e-3)
    assert on_disk["flags"]["augment"]["seed"] == 1
    assert set(on_disk["versions"]) >= {"python", "tensorflow", "keras"}
    assert on_disk["data"]["manifest_sha256"] == manifest_lib.manifest_sha256(
        resumed_run["cfg"].data)
    assert on_disk["data"]["test_read"] is False
    assert on_disk["image_size"] == 32 and on_disk["backbone"] == "tiny"
    assert [s["name"] for s in on_disk["stages"]] == ["head", "fine_tune"]
    best = on_disk["best"]
    history = json.load(open(os.path.join(d, "history.json")))
    assert best["value"] == pytest.approx(max(r["val_auc"] for r in history))
    for key in ("val_auc", "val_pr_auc", "val_accuracy", "val_precision", "val_recall",
                "val_majority_accuracy", "majority_accuracy", "learning_rate"):
        assert key in best["logs"], key
    assert best["logs"]["val_majority_accuracy"] == pytest.approx(0.5)
    assert 0.0 <= run["val"]["auc"] <= 1.0 and 0.0 <= run["val"]["patient_auc"] <= 1.0
    assert run["val"]["images"] == 16 and run["val"]["patients"] == 8
    # the fine-tune stage runs at the lower learning rate (3e-3 * 0.3), cosine-decayed
    assert [s["peak_learning_rate"] for s in on_disk["stages"]] == pytest.approx([3e-3, 9e-4])
    ft = [r["learning_rate"] for r in history[1:]]
    assert max(ft) <= 9e-4 * (1 + 1e-5) and ft == sorted(ft, reverse=True)


def test_run_curves_predictions_and_hparams_session(resumed_run):
    """finish_run's extras: ``curves.png`` (also a TensorBoard image), the kept model's
    ``val_predictions.csv`` (its exact AUC is run.json's) and the run's HParams session,
    whose ``validation ROC AUC`` is the kept epoch's value (run.json ``best.value``, what
    the run was kept by, as a trial's) and ``validation ROC AUC, exact`` ``val.auc``."""
    import pandas as pd
    from model import metrics as metrics_lib
    d, run = resumed_run["dir"], resumed_run["run"]
    hpr.assert_nontrivial_png(os.path.join(d, "curves.png"), min_width=1000, min_height=400,
                              data=("C0", "C1"))
    assert hpr.tensorboard_images(os.path.join(d, "logs", "plots")) == ["plots/curves"]
    pred = pd.read_csv(os.path.join(d, "val_predictions.csv"), dtype={"patient_id": str})
    assert len(pred) == run["val"]["images"]
    assert metrics_lib.roc_auc(pred["label"], pred["probability"]) == pytest.approx(
        run["val"]["auc"])
    (group,), exp = hpr.hparams_sessions(os.path.join(d, "logs"))
    vals = hpr.metric_values(group, exp)
    assert vals["validation ROC AUC"] == pytest.approx(run["best"]["value"], abs=1e-6)
    assert vals["validation ROC AUC, exact"] == pytest.approx(run["val"]["auc"], abs=1e-6)
    assert vals["validation ROC AUC per patient"] == pytest.approx(run["val"]["patient_auc"],
                                                                   abs=1e-6)
    assert vals["kept epoch"] == run["best"]["epoch"]
    history = rundir.read_history(os.path.join(d, "history.csv"))
    assert vals["last-epoch validation ROC AUC"] == pytest.approx(history[-1]["val_auc"])
    assert vals["wall time (s)"] == pytest.approx(run["wall_seconds"], abs=0.1)
    assert group.hparams["learning_rate"].number_value == pytest.approx(3e-3)
    assert group.hparams["augment_rotation_deg"].number_value == pytest.approx(15.0)
    for absent in ("data", "model_dir", "verbose", "overwrite", "cache_dir", "val_fold"):
        assert absent not in group.hparams, absent


def test_best_model_and_saved_model_agree(resumed_run, tiny_data):
    import tensorflow as tf
    from pipeline import reader
    d = resumed_run["dir"]
    model = keras.models.load_model(os.path.join(d, "best.keras"))
    images, _ = next(iter(reader.make_dataset(
        tiny_data, "val", False, reader.ReadConfig(image_size=32, batch_size=6))))
    p_keras = np.asarray(model(images, training=False)).reshape(-1)
    served = tf.saved_model.load(os.path.join(d, "saved_model"))
    p_served = np.asarray(served.serve(images)).reshape(-1)
    np.testing.assert_allclose(p_served, p_keras, atol=1e-5)


def test_finished_run_is_not_overwritten_silently(resumed_run):
    with pytest.raises(train_config.ConfigError, match="finished run.*--overwrite"):
        training.train(resumed_run["cfg"])


# ------------------------------------------------------------------ MirroredStrategy
MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from model import classifier, distribute, optim, train_config, training
    from pipeline import reader

    data, model_dir = sys.argv[1], sys.argv[2]
    cfg = train_config.TrainConfig(data=data, model_dir=model_dir, backbone="tiny",
                               weights="none", image_size=32, batch_size=8, epochs=1,
                               fine_tune_fraction=1.0, warmup_epochs=0, optimizer="adam",
                               schedule="constant", learning_rate=0.01, weight_decay=0.0,
                               dropout=0.0, class_weights=False, verbose=0, seed=3,
                               image_grid=0, strategy="mirrored")
    images, labels = next(iter(reader.make_dataset(
        data, "train", False, reader.ReadConfig(image_size=32, batch_size=8))))

    def one_step(strategy):
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = classifier.build_classifier(classifier.ClassifierConfig(
                backbone="tiny", image_size=32, dropout=0.0, freeze_bn_statistics=True))
            classifier.set_backbone_trainable(model, 1.0)
            training.compile_model(model, cfg, optim.make_optimizer(cfg, 0.01))
        ds = tf.data.Dataset.from_tensors((images, labels))
        before = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
        model.fit(ds, epochs=1, verbose=0)
        after = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
        return before, after

    mirrored = distribute.make_strategy("mirrored")
    out = {"replicas": mirrored.num_replicas_in_sync,
           "mirrored": one_step(mirrored),
           "one_device": one_step(distribute.make_strategy("one_device"))}
    run = training.train(cfg)          # a whole run under MirroredStrategy
    out["run_replicas"] = run["strategy"]["replicas"]
    out["run_auc"] = run["val"]["auc"]
    print("RESULT " + json.dumps(out))
""")


def test_mirrored_two_cpus_matches_one_device(tiny_data, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(script), tiny_data, str(tmp_path / "m")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["replicas"] == 2 and out["run_replicas"] == 2
    m_before, m_after = out["mirrored"]
    o_before, o_after = out["one_device"]
    assert m_before == pytest.approx(o_before, rel=1e-5)
    assert m_after == pytest.approx(o_after, rel=1e-4, abs=1e-6)
    assert abs(o_after - o_before) > 1e-4          # the step changed something
    assert 0.0 <= out["run_auc"] <= 1.0


# -------------------------------------------------------------------------------- CV
def test_cv_flag_errors(tiny_data, tiny_fold_data, tmp_path):
    with pytest.raises(train_config.ConfigError, match="--cv=3: .* no folds"):
        training.train_cv(_cfg(tiny_data, str(tmp_path / "cv")), 3)
    with pytest.raises(train_config.ConfigError, match="--cv=2: .* 3 folds.*--cv=3"):
        training.train_cv(_cfg(tiny_fold_data, str(tmp_path / "cv")), 2)
    with pytest.raises(train_config.ConfigError, match="--val_fold=3: must be in 0..2"):
        training.train(_cfg(tiny_fold_data, str(tmp_path / "f"), val_fold=3))


@pytest.mark.slow
def test_cross_validation_writes_every_fold_and_cv_json(tiny_fold_data, tmp_path,
                                                         resumed_run):
    cfg = _cfg(tiny_fold_data, str(tmp_path / "cv"), epochs=1, fine_tune_fraction=0.0)
    summary = training.train_cv(cfg, 3)
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2]
    for i in range(3):
        run = json.load(open(tmp_path / "cv" / f"fold_{i}" / "run.json"))
        assert run["flags"]["val_fold"] == i
        assert run["data"]["val"]["spec"] == f"train+val[fold in {i}]"
        assert run["data"]["train"]["spec"] == f"train+val[fold not in {i}]"
    on_disk = json.load(open(tmp_path / "cv" / "cv.json"))
    aucs = [f["auc"] for f in on_disk["folds"]]
    assert on_disk["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert on_disk["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert "patient_auc" in on_disk and "±" in training.format_cv(on_disk)
    # a second call finds every fold finished and trains nothing
    again = training.train_cv(cfg, 3)
    assert again["folds"] == summary["folds"]
    # the pooled out-of-fold AUC of the folds' val_predictions.csv, cv.png
    oof = on_disk["oof"]
    assert oof["images"] == sum(f["val_images"] for f in on_disk["folds"])
    assert oof["ci95"][0] <= oof["auc"] <= oof["ci95"][1]
    hpr.assert_nontrivial_png(str(tmp_path / "cv" / "cv.png"), min_width=1000,
                              min_height=400)
    assert hpr.tensorboard_images(str(tmp_path / "cv" / "logs" / "plots")) == ["plots/cv"]
    # one TensorBoard root over a run and a CV: every fold, the CV and the run are
    # sessions of one HParams table (the CV's written twice, listed once)
    shutil.copytree(resumed_run["dir"], tmp_path / "run")
    groups, exp = hpr.hparams_sessions(str(tmp_path))
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"cv/logs", "cv/fold_0/logs", "cv/fold_1/logs", "cv/fold_2/logs",
                            "run/logs"}
    for i, f in enumerate(on_disk["folds"]):
        g = by_name[f"cv/fold_{i}/logs"]
        assert g.hparams["val_fold"].number_value == i
        fold_run = rundir.read_run_record(str(tmp_path / "cv" / f"fold_{i}"))
        assert hpr.metric_values(g, exp)["validation ROC AUC"] == pytest.approx(
            fold_run["best"]["value"])
        assert hpr.metric_values(g, exp)["validation ROC AUC, exact"] == pytest.approx(
            f["auc"])
    cv_vals = hpr.metric_values(by_name["cv/logs"], exp)
    assert by_name["cv/logs"].hparams["cv"].number_value == 3
    assert cv_vals["validation ROC AUC, exact"] == pytest.approx(on_disk["auc"]["mean"])
    assert cv_vals["out-of-fold ROC AUC"] == pytest.approx(oof["auc"])
    assert hpr.metric_values(by_name["run/logs"], exp)["validation ROC AUC, exact"] == \
        pytest.approx(resumed_run["run"]["val"]["auc"])
