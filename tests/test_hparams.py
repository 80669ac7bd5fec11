"""model.hparams: the recipe a session carries, and sessions of several model dirs and a
sweep under one TensorBoard root, read back with TensorBoard's own reader (no training:
the trainings that write sessions are checked in test_training.py and test_tuning.py)."""
from __future__ import annotations

import os

import pytest

import _hparams_reader as hpr
from model import augment, hparams, train_config


def _cfg(**kw) -> train_config.TrainConfig:
    args = dict(data="/data/odir", model_dir="/runs/a", backbone="tiny", weights="none",
                image_size=32, epochs=3, verbose=0, cache_dir="/tmp/cache", overwrite=True)
    args.update(kw)
    return train_config.TrainConfig(**args)


def test_recipe_hparams_are_what_is_trained():
    hp = hparams.recipe_hparams(_cfg(augment=augment.AugmentConfig(rotation_deg=5.0, seed=3)))
    for absent in hparams.NOT_RECIPE + ("val_fold", "cv", "augment_seed"):
        assert absent not in hp, absent
    assert hp["backbone"] == "tiny" and hp["epochs"] == 3 and hp["nesterov"] is True
    assert hp["augment_rotation_deg"] == 5.0 and hp["augment_flip"] is True
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())
    assert set(hp) <= set(hparams.recipe_names())
    # the effective size, the weights file's name, a fold, a whole CV
    hp = hparams.recipe_hparams(_cfg(image_size=0, weights="/w/mnv2.weights.h5", val_fold=2),
                                cv=None)
    assert hp["image_size"] == train_config.TrainConfig(backbone="tiny").input_size()
    assert hp["weights"] == "mnv2.weights.h5" and hp["val_fold"] == 2
    assert hparams.recipe_hparams(_cfg(), cv=5)["cv"] == 5


def test_experiment_is_the_same_whoever_writes_it():
    """Runs and sweeps declare the same hyperparameters and metrics (TensorBoard shows the
    first experiment it finds); a sweep only marks its searched names as differing."""
    run = hparams.experiment_pb().value[0].metadata.plugin_data.content
    sweep = hparams.experiment_pb(varied=["dropout"]).value[0].metadata.plugin_data.content
    from tensorboard.plugins.hparams import metadata
    run, sweep = (metadata.parse_experiment_plugin_data(c) for c in (run, sweep))
    assert {h.name for h in run.hparam_infos} == {h.name for h in sweep.hparam_infos} == \
        set(hparams.recipe_names())
    assert [m.display_name for m in run.metric_infos] == \
        [m.display_name for m in sweep.metric_infos] == [m.name for m in hparams.METRICS]
    assert {h.name for h in sweep.hparam_infos if h.differs} == {"dropout"}
    assert {h.name for h in run.hparam_infos if h.differs} == set(hparams.FIRST)


def test_sessions_of_several_dirs_under_one_root_do_not_clash(tmp_path):
    """Two model dirs with the same recipe and a sweep trial under one root: three
    sessions, each with its own metrics; a session written again replaces the first."""
    record = {"val": {"auc": 0.81, "patient_auc": 0.84}, "wall_seconds": 60.0,
              "best": {"epoch": 2, "value": 0.8, "logs": {"val_loss": 0.5, "auc": 0.9}}}
    history = [{"epoch": 0, "val_auc": 0.7}, {"epoch": 1, "val_auc": 0.8},
               {"epoch": 2, "val_auc": 0.75}]
    for name, auc in (("a", 0.81), ("b", 0.66)):
        cfg = _cfg(model_dir=str(tmp_path / name))
        logs = str(tmp_path / name / "logs")
        first = {**record, "val": {"auc": 0.5}, "best": {**record["best"], "value": 0.5}}
        hparams.write_run_session(cfg, logs, first, history)
        hparams.write_run_session(cfg, logs, {**record, "val": {"auc": auc},
                                              "best": {**record["best"], "value": auc - 0.01}},
                                  history)
        assert len([f for f in os.listdir(logs) if f.endswith(hparams.SUFFIX)]) == 2
    hparams.write_experiment(str(tmp_path / "sweep" / "logs"), varied=["dropout"])
    hparams.write_session_start(str(tmp_path / "sweep" / "logs" / "0"),
                                hparams.recipe_hparams(_cfg(dropout=0.1)), experiment=False)
    groups, exp = hpr.hparams_sessions(str(tmp_path))
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"a/logs", "b/logs", "sweep/logs/0"}
    assert all(len(g.sessions) == 1 for g in groups)
    a, b = (hpr.metric_values(by_name[n], exp) for n in ("a/logs", "b/logs"))
    assert a["validation ROC AUC"] == pytest.approx(0.80)          # best.value: kept by
    assert b["validation ROC AUC"] == pytest.approx(0.65)
    assert a["validation ROC AUC, exact"] == pytest.approx(0.81)   # val.auc
    assert b["validation ROC AUC, exact"] == pytest.approx(0.66)
    assert a["last-epoch validation ROC AUC"] == pytest.approx(0.75)
    assert a["kept epoch"] == 2 and a["wall time (s)"] == pytest.approx(60.0)
    assert a["validation loss"] == pytest.approx(0.5)
    assert by_name["sweep/logs/0"].sessions[0].status == 0     # STATUS_UNKNOWN: no end yet
    assert by_name["sweep/logs/0"].hparams["dropout"].number_value == pytest.approx(0.1)


def test_cv_metrics_mean_oof_and_wall_time():
    summary = {"auc": {"mean": 0.8, "sd": 0.1}, "patient_auc": {"mean": 0.85, "sd": 0.1},
               "oof": {"auc": 0.78}}
    records = [{"wall_seconds": 10.0, "best": {"value": 0.7, "logs": {"val_loss": 0.4}}},
               {"wall_seconds": 20.0, "best": {"value": 0.9, "logs": {"val_loss": 0.6}}}]
    m = hparams.cv_metrics(summary, records)
    assert m[hparams.VAL_AUC] == pytest.approx(0.8)          # mean of the folds' kept values
    assert m[hparams.TAGS["validation ROC AUC, exact"]] == 0.8
    assert m[hparams.TAGS["out-of-fold ROC AUC"]] == 0.78
    assert m[hparams.TAGS["validation loss"]] == pytest.approx(0.5)
    assert m[hparams.TAGS["wall time (s)"]] == 30.0
    m = hparams.cv_metrics({**summary, "oof": None}, records[:1] + [{}])
    assert m[hparams.TAGS["out-of-fold ROC AUC"]] is None
    assert m[hparams.TAGS["wall time (s)"]] is None         # a fold without its time


def test_kept_metrics_use_the_age_head_keys():
    cfg = _cfg(age_loss_weight=0.1)
    m = hparams.kept_metrics(cfg, {"epoch": 0, "logs": {"sex_auc": 0.7, "val_loss": 1.2}},
                             [{"epoch": 0, "val_sex_auc": 0.66}])
    assert m[hparams.TAGS["training ROC AUC"]] == 0.7
    assert m[hparams.TAGS["last-epoch validation ROC AUC"]] == 0.66
    assert m[hparams.TAGS["kept epoch"]] == 1
