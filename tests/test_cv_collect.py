"""``fundus-train --cv=K --collect``: the CV summary of folds trained as separate jobs
(one ``--val_fold=i --model_dir=RUN/fold_i`` per machine), and its refusals (exit 2) of
a fold trained with other flags or data and of a missing or unfinished fold."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

import _hparams_reader as hpr
from _train_job import train_main
from model import augment, cv_summary, rundir, train_config, training
from pipeline import fileio


def _cfg(data: str, model_dir: str, **kw) -> train_config.TrainConfig:
    base = dict(data=data, model_dir=model_dir, backbone="tiny", weights="none",
                image_size=32, batch_size=8, epochs=2, warmup_epochs=1,
                fine_tune_fraction=1.0, learning_rate=3e-3, fine_tune_lr_scale=0.3,
                augment=augment.AugmentConfig(seed=1), image_grid=0, verbose=0, seed=1)
    base.update(kw)
    return train_config.TrainConfig(**base)


@pytest.fixture(scope="module")
def folds(tmp_path_factory, tiny_fold_data) -> dict:
    """Three folds trained as three separate ``train`` calls into ``RUN/fold_i`` (fold 2
    from a copy of the data at another path, as on another machine), and fold 1 again
    with another learning rate into ``OTHER/fold_1``."""
    root = tmp_path_factory.mktemp("cv_collect")
    vm_data = str(root / "other_machine_data")
    shutil.copytree(tiny_fold_data, vm_data)
    run = str(root / "RUN")
    for i in range(3):
        training.train(_cfg(vm_data if i == 2 else tiny_fold_data,
                            cv_summary.fold_dir(run, i), val_fold=i))
    other = str(root / "OTHER")
    training.train(_cfg(tiny_fold_data, cv_summary.fold_dir(other, 1), val_fold=1,
                        learning_rate=1e-3))
    return {"run": run, "other": other, "data": tiny_fold_data}


def _copy(folds: dict, tmp_path) -> str:
    d = str(tmp_path / "RUN")
    shutil.copytree(folds["run"], d)
    return d


def _collect(d: str, data: str, k: int = 3) -> int:
    return train_main([f"--data={data}", f"--model_dir={d}", f"--cv={k}", "--collect"])


@pytest.mark.slow
def test_collect_writes_the_cv_summary_of_separately_trained_folds(folds, tmp_path,
                                                                    capsys):
    d = _copy(folds, tmp_path)
    records = [rundir.read_run_record(cv_summary.fold_dir(d, i)) for i in range(3)]
    assert records[2]["data"]["dir"] != records[0]["data"]["dir"]   # data path may differ
    kept = {i: os.path.getmtime(os.path.join(cv_summary.fold_dir(d, i), rundir.BEST_MODEL))
            for i in range(3)}
    assert _collect(d, folds["data"]) == 0
    assert "±" in capsys.readouterr().out                        # format_cv's table
    summary = fileio.read_json(os.path.join(d, rundir.CV_JSON))
    for i, (f, run) in enumerate(zip(summary["folds"], records)):
        assert f["fold"] == i and f["model_dir"] == f"fold_{i}"
        assert (f["auc"], f["patient_auc"], f["val_images"], f["val_patients"]) == (
            run["val"]["auc"], run["val"]["patient_auc"], run["val"]["images"],
            run["val"]["patients"])
        assert f["best_epoch"] == run["best"]["epoch"]
        history = rundir.read_history(os.path.join(cv_summary.fold_dir(d, i),
                                                   rundir.HISTORY_CSV))
        assert f["val_auc_by_epoch"] == [r["val_auc"] for r in history]
    aucs = [r["val"]["auc"] for r in records]
    assert summary["auc"]["mean"] == pytest.approx(sum(aucs) / 3)
    assert summary["oof"]["images"] == sum(r["val"]["images"] for r in records)
    assert (summary["select"], summary["tta"]) == ("best", "none")   # the folds' flags
    # nothing trained: the folds' models untouched
    assert kept == {i: os.path.getmtime(os.path.join(cv_summary.fold_dir(d, i),
                                                     rundir.BEST_MODEL)) for i in range(3)}
    hpr.assert_nontrivial_png(os.path.join(d, rundir.CV_PNG), min_width=1000,
                              min_height=400)
    assert hpr.tensorboard_images(os.path.join(d, rundir.LOGS, "plots")) == ["plots/cv"]
    groups, exp = hpr.hparams_sessions(os.path.join(d, rundir.LOGS))
    cv_group = [g for g in groups if "cv" in g.hparams]
    assert len(cv_group) == 1 and cv_group[0].hparams["cv"].number_value == 3
    assert cv_group[0].hparams["learning_rate"].number_value == pytest.approx(3e-3)
    vals = hpr.metric_values(cv_group[0], exp)
    assert vals["validation ROC AUC, exact"] == pytest.approx(summary["auc"]["mean"])
    assert vals["validation ROC AUC"] == pytest.approx(       # the folds' kept values
        sum(r["best"]["value"] for r in records) / 3)
    # the summary fundus-train --cv=3 writes over the same finished folds is the same
    same = str(tmp_path / "same")
    shutil.copytree(folds["run"], same)
    by_train_cv = training.train_cv(_cfg(folds["data"], same), 3)
    assert json.loads(json.dumps(by_train_cv)) == summary


@pytest.mark.slow
def test_collect_refuses_a_fold_trained_with_another_learning_rate(folds, tmp_path,
                                                                    capsys):
    d = _copy(folds, tmp_path)
    shutil.rmtree(cv_summary.fold_dir(d, 1))
    shutil.copytree(cv_summary.fold_dir(folds["other"], 1), cv_summary.fold_dir(d, 1))
    assert _collect(d, folds["data"]) == 2
    err = capsys.readouterr().err
    assert f"{cv_summary.fold_dir(d, 1)} was trained with other flags than " \
           f"{cv_summary.fold_dir(d, 0)}: --learning_rate=0.003 vs 0.001" in err
    assert "--data" not in err.split("--learning_rate")[1]    # the only flag named
    assert "fold_2" not in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(d, rundir.CV_JSON))


@pytest.mark.slow
def test_collect_refuses_missing_unfinished_and_foreign_folds(folds, tmp_path, capsys):
    d = _copy(folds, tmp_path)
    shutil.rmtree(cv_summary.fold_dir(d, 1))                     # never copied here
    os.remove(os.path.join(cv_summary.fold_dir(d, 2), rundir.RUN_JSON))   # still running
    assert _collect(d, folds["data"]) == 2
    err = capsys.readouterr().err
    assert f"{cv_summary.fold_dir(d, 1)}: missing" in err
    assert "--val_fold=1 --model_dir=" in err
    assert f"{cv_summary.fold_dir(d, 2)}: unfinished (no run.json" in err
    assert f"{cv_summary.fold_dir(d, 0)}:" not in err
    assert not os.path.exists(os.path.join(d, rundir.CV_JSON))

    # other data: a fold's recorded manifest differs (a fold trained on another conversion)
    d = str(tmp_path / "RUN2")
    shutil.copytree(folds["run"], d)
    path = os.path.join(cv_summary.fold_dir(d, 2), rundir.RUN_JSON)
    record = fileio.read_json(path)
    record["data"]["manifest_sha256"] = "0" * 64
    fileio.write_json(path, record)
    assert _collect(d, folds["data"]) == 2
    err = capsys.readouterr().err
    assert f"{cv_summary.fold_dir(d, 2)} was trained on other data than " \
           f"{cv_summary.fold_dir(d, 0)}" in err
    # the wrong K, and --collect without --cv
    assert _collect(d, folds["data"], k=2) == 2
    assert "3 folds" in capsys.readouterr().err
    assert train_main([f"--data={folds['data']}", f"--model_dir={d}", "--collect"]) == 2
    assert "--collect needs --cv=K" in capsys.readouterr().err


def test_recipe_flags_ignore_the_fold_its_dir_the_data_path_and_resume_free_flags():
    cfg = _cfg("/a/data", "/runs/cv/fold_0", val_fold=0)
    other = dataclasses.replace(cfg, data="/b/data", model_dir="/x/fold_2", val_fold=2,
                                verbose=2, strategy="one_device", image_grid=4)
    a = cv_summary.recipe_flags({"flags": cfg.to_json()})
    assert a == cv_summary.recipe_flags({"flags": other.to_json()})
    assert "augment_zoom" in a and "augment_seed" not in a and "learning_rate" in a
    changed = dataclasses.replace(cfg, augment=augment.AugmentConfig(seed=1, zoom=0.2))
    assert cv_summary.recipe_flags({"flags": changed.to_json()})["augment_zoom"] == 0.2
    # a record's flags give back the config that wrote them
    assert cv_summary.config_of_record({"flags": cfg.to_json()}) == cfg
