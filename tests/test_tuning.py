"""Search-space parsing (pure) and the HyperModel/tuner library on the tiny data set."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

import _hparams_reader as hpr
from tuning import results
from tuning import space as space_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- search-space parsing

def test_parse_range_kinds():
    p = space_lib.parse_range("learning_rate=1e-5..1e-3:log")
    assert (p.kind, p.min, p.max, p.sampling) == ("float", 1e-5, 1e-3, "log")
    p = space_lib.parse_range("warmup_epochs=0..3")
    assert (p.kind, p.min, p.max, p.step) == ("int", 0, 3, None)
    p = space_lib.parse_range("dropout=0.1..0.5:step=0.1")
    assert (p.kind, p.step) == ("float", 0.1)
    p = space_lib.parse_range("image_size=384|512")
    assert p.kind == "choice" and p.values == (384, 512)
    p = space_lib.parse_range("optimizer=adam|sgd")
    assert p.values == ("adam", "sgd")
    p = space_lib.parse_range("epochs=3")
    assert p.kind == "fixed" and p.values == (3,)


@pytest.mark.parametrize("text, match", [
    ("learning_rate=0..1e-3:log", "log sampling needs min > 0"),
    ("dropout=0.5..0.1", "min <= max"),
    ("dropout", "NAME=RANGE"),
    ("dropout=0.1..x", "not a number"),
    ("dropout=0.1..0.5:cubic", "unknown option"),
    ("warmup_epochs=0..3:int:step=0.5", "integer"),
    ("optimizer=adam|adam", "duplicate"),
])
def test_parse_range_errors(text, match):
    with pytest.raises(ValueError, match=match):
        space_lib.parse_range(text)


def test_space_file_and_search_selection(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({
        "_comment": "ignored",
        "learning_rate": {"min": 1e-5, "max": 1e-3, "sampling": "log"},
        "optimizer": {"choice": ["adam", "sgd"]},
        "dropout": {"min": 0.2, "max": 0.6, "step": 0.1},
        "epochs": 2,
    }))
    s = space_lib.load(str(path))
    assert list(s.searched) == ["optimizer", "learning_rate", "dropout"]  # TUNABLES order
    assert s.fixed == {"epochs": 2}
    # --search narrows: dropout's range is ignored (noted), batch_size takes its default.
    s = space_lib.load(str(path), ["optimizer=adamw|rmsprop"], "optimizer,batch_size")
    assert list(s.searched) == ["optimizer", "batch_size"]
    assert s.searched["optimizer"].values == ("adamw", "rmsprop")        # flag beats file
    assert s.searched["batch_size"].source == "default"
    assert any(n.startswith("dropout") for n in s.notes)
    assert s.fixed == {"epochs": 2}


def test_space_errors(tmp_path):
    with pytest.raises(ValueError, match="not a searchable"):
        space_lib.load(None, [], "epochs")
    with pytest.raises(ValueError, match="fixes it"):
        space_lib.load(None, ["dropout=0.3"], "dropout")
    with pytest.raises(ValueError, match="takes string values"):
        space_lib.load(None, ["optimizer=1..3"], None)
    with pytest.raises(ValueError, match="given twice"):
        space_lib.load(None, ["dropout=0..0.5", "dropout=0..0.4"], None)
    bad = tmp_path / "bad.json"
    bad.write_text('{"dropout": [0.1, 0.2]}')
    with pytest.raises(ValueError, match=r"bad\.json: dropout: a list is ambiguous"):
        space_lib.load(str(bad))
    bad.write_text('{"dropout": {"min": 0.1}}')
    with pytest.raises(ValueError, match="needs both"):
        space_lib.load(str(bad))
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        space_lib.load(str(bad))
    with pytest.raises(ValueError, match="YAML"):
        space_lib.load(str(tmp_path / "space.yaml"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        space_lib.load(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("name", ["search_tiny.json", "odir_search.json"])
def test_shipped_space_files_parse(name):
    s = space_lib.load(os.path.join(REPO, "configs", name))
    assert s.searched
    for p in s.searched.values():
        assert p.name in space_lib.TUNABLES


def test_declare_on_keras_tuner():
    import keras_tuner as kt
    s = space_lib.load(None, ["learning_rate=1e-5..1e-3:log", "warmup_epochs=0..3",
                              "image_size=32|48"])
    hp = kt.HyperParameters()
    values = {n: space_lib.declare(hp, p) for n, p in s.searched.items()}
    assert values == {"learning_rate": 1e-5, "warmup_epochs": 0, "image_size": 32}
    assert {h.name for h in hp.space} == set(values)


# ------------------------------------------------------- values -> the training config

def _base(data: str = "DATA", **kw):
    from model import train_config
    args = dict(data=data, model_dir="unused", weights="none", image_size=32, batch_size=16,
                epochs=1, warmup_epochs=1, verbose=0, image_grid=0, patience=0,
                precision="float32")
    args.update(kw)
    return train_config.TrainConfig(**args)


def test_apply_values_sets_training_and_augment_flags():
    from tuning import hypermodel as hm
    base = _base()
    cfg = hm.apply_values(base, {"learning_rate": 3e-4, "warmup_epochs": 2.0,
                                 "optimizer": "sgd", "augment_rotation_deg": 5,
                                 "tuner/epochs": 7})
    assert (cfg.learning_rate, cfg.warmup_epochs, cfg.optimizer) == (3e-4, 2, "sgd")
    assert isinstance(cfg.warmup_epochs, int)
    assert cfg.augment.rotation_deg == 5.0 and isinstance(cfg.augment.rotation_deg, float)
    assert cfg.augment.seed == base.seed                 # as train(): seeded by --seed
    assert cfg.epochs == base.epochs                     # tuner/* entries are not flags
    assert base.learning_rate != 3e-4                    # base untouched (frozen)
    with pytest.raises(ValueError, match="not a fundus-train flag"):
        hm.apply_values(base, {"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="expects an integer"):
        hm.apply_values(base, {"warmup_epochs": 1.5})
    with pytest.raises(ValueError, match="expects a string"):
        hm.apply_values(base, {"optimizer": 3})


def test_check_space_validates_every_corner(tiny_data):
    from tuning import hypermodel as hm
    base = _base(tiny_data)
    hm.check_space(base, space_lib.load(os.path.join(REPO, "configs", "odir_search.json")))
    bad = space_lib.load(None, ["label_smoothing=0..0.8"])
    with pytest.raises(ValueError, match=r"label_smoothing=0\.8.*must be in \[0, 0\.5\]"):
        hm.check_space(base, bad)
    bad = space_lib.load(None, ["optimizer=adam|lamb"])
    with pytest.raises(ValueError, match="optimizer='lamb'"):
        hm.check_space(base, bad)
    # fundus-train flags a trial would not apply are refused, set or searched
    space = space_lib.load(None, ["dropout=0.1|0.3"])
    with pytest.raises(ValueError, match="--cache_frozen_prefix=True, --select=last, "
                                         "--swa_epochs=2: fundus-train flags that "
                                         "fundus-tune trials do not apply"):
        hm.check_space(dataclasses.replace(base, cache_frozen_prefix=True, select="last",
                                           patience=0, swa_epochs=2), space)
    with pytest.raises(ValueError, match="--strategy=multi_worker.*chief/worker"):
        hm.check_space(dataclasses.replace(base, strategy="multi_worker"), space)
    with pytest.raises(ValueError, match="--feature_layers=multi"):
        hm.check_space(dataclasses.replace(base, feature_layers="multi"), space)


def test_summary_rows_sorted_by_val_auc_failed_last():
    import keras_tuner as kt

    def trial(tid, status, auc, lr):
        hp = kt.HyperParameters()
        hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        hp.values["learning_rate"] = lr
        t = kt.engine.trial.Trial(hp, trial_id=tid, status=status)
        if auc is not None:
            t.metrics.register("val_auc", direction="max")
            t.metrics.update("val_auc", auc)
        return t

    class Oracle:
        trials = {t.trial_id: t for t in [trial("0", "COMPLETED", 0.61, 1e-3),
                                          trial("1", "FAILED", None, 2e-3),
                                          trial("2", "COMPLETED", 0.83, 3e-3),
                                          trial("3", "COMPLETED", 0.70, 4e-3)]}

    class Tuner:
        oracle = Oracle()

        class hypermodel:
            space = space_lib.load(None, ["learning_rate=1e-4..1e-2:log"])

    rows = results.summary_rows(Tuner())
    assert [r["trial_id"] for r in rows] == ["2", "3", "0", "1"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["learning_rate"] == 3e-3 and rows[-1]["status"] == "FAILED"
    text = results.format_summary(rows)
    assert text.splitlines()[1].split()[1] == "2"


def test_prune_keeps_best_and_running_trials(tmp_path):
    from tuning import search

    class T:
        def __init__(self, tid, status, score):
            self.trial_id, self.status, self.score = tid, status, score

    trials = [T("0", "COMPLETED", 0.6), T("1", "COMPLETED", 0.9), T("2", "FAILED", None),
              T("3", "COMPLETED", 0.7), T("4", "RUNNING", None)]

    class Oracle:
        def __init__(self):
            self.trials = {t.trial_id: t for t in trials}

        def get_best_trials(self, n):
            done = sorted((t for t in trials if t.status == "COMPLETED"),
                          key=lambda t: -t.score)
            return done[:n]

    for t in trials:
        d = tmp_path / f"trial_{t.trial_id}"
        d.mkdir()
        for name in search.MODEL_FILES + ("trial.json", "history.csv"):
            (d / name).write_text("x")
    removed = search.prune_trials(str(tmp_path), Oracle(), keep=2)
    left = {t.trial_id for t in trials
            if (tmp_path / f"trial_{t.trial_id}" / "best.keras").exists()}
    assert left == {"1", "3", "4"}                       # best two + the running one
    assert len(removed) == 2 * len(search.MODEL_FILES)
    assert (tmp_path / "trial_0" / "history.csv").exists()   # records stay
    assert search.prune_trials(str(tmp_path), Oracle(), keep=2) == []   # idempotent


def test_role_from_environment(monkeypatch):
    from tuning import search
    for v in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(v, raising=False)
    assert search.role() == "single"
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(ValueError, match="KERASTUNER_ORACLE_PORT, KERASTUNER_TUNER_ID"):
        search.role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "80x")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    with pytest.raises(ValueError, match="not a TCP port"):
        search.role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    assert search.role() == "chief"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    assert search.role() == "worker"


# ------------------------------------------------------------- a 3-trial random sweep

@pytest.fixture(scope="module")
def sweep(tiny_data, tmp_path_factory):
    """One 3-trial random search on the tiny set (the registry's ``tiny`` CPU backbone,
    random weights, 32/48 px, 1 epoch), keeping the model files of the best trial only."""
    from tuning import search
    directory = str(tmp_path_factory.mktemp("sweep"))
    space = space_lib.load(os.path.join(REPO, "configs", "search_tiny.json"))
    cfg = search.SweepConfig(directory=directory, tuner="random", max_trials=3, seed=1,
                             keep_trials=1)
    result = search.run_sweep(cfg, _base(tiny_data, backbone="tiny"), space, verbose=0)
    return directory, result


def test_sweep_summary_and_trials_run_once(sweep):
    import pandas as pd
    from tuning import search
    directory, result = sweep
    table = pd.read_csv(os.path.join(directory, "summary.csv"), dtype={"trial_id": str})
    assert len(table) == 3 and set(table["status"]) == {"COMPLETED"}
    assert list(table["val_auc"]) == sorted(table["val_auc"], reverse=True)
    for col in ("optimizer", "learning_rate", "dropout", "image_size", "best_epoch"):
        assert col in table.columns
    assert table["learning_rate"].between(1e-4, 1e-2).all()
    begins = [e["trial_id"] for e in search.read_events(directory) if e["event"] == "begin"]
    assert sorted(begins) == ["0", "1", "2"]
    # Datasets: one per input configuration (image size here), not one per trial.
    ends = [e for e in search.read_events(directory) if e["event"] == "end"]
    assert ends[-1]["datasets"] == table["image_size"].nunique()


def test_keep_trials_prunes_all_but_the_best(sweep):
    import pandas as pd
    directory, _ = sweep
    table = pd.read_csv(os.path.join(directory, "summary.csv"), dtype={"trial_id": str})
    have = {t for t in table["trial_id"]
            if os.path.exists(os.path.join(directory, "tuner", f"trial_{t}", "best.keras"))}
    assert have == {table["trial_id"].iloc[0]}
    for t in table["trial_id"]:                          # configs and histories stay
        assert os.path.exists(os.path.join(directory, "tuner", f"trial_{t}", "config.json"))


def test_best_dir_is_a_model_dir_that_evaluates(sweep, tiny_data):
    import pandas as pd
    from model import evaluation
    directory, result = sweep
    best = os.path.join(directory, "best")
    for name in ("best.keras", "run.json", "history.csv", "saved_model/saved_model.pb"):
        assert os.path.exists(os.path.join(best, name)), name
    with open(os.path.join(best, "run.json")) as f:
        run = json.load(f)
    table = pd.read_csv(os.path.join(directory, "summary.csv"), dtype={"trial_id": str})
    assert run["tuning"]["trial_id"] == table["trial_id"].iloc[0]
    assert run["image_size"] == int(table["image_size"].iloc[0])
    assert run["flags"]["optimizer"] == table["optimizer"].iloc[0]
    metrics = evaluation.evaluate(best, tiny_data, "test", bootstrap=50)
    assert metrics["n_images"] == 16 and 0.0 <= metrics["image"]["auc"] <= 1.0


def test_hparams_plugin_lists_every_trial(sweep):
    """TensorBoard's HParams plugin over the sweep's logs: one session per trial with its
    searched values and, as ``validation ROC AUC``, the value the trial was ranked by
    (its best epoch's val AUC = the oracle's objective = summary.csv ``val_auc``)."""
    import pandas as pd
    directory, _ = sweep
    groups, exp = hpr.hparams_sessions(os.path.join(directory, "logs"))
    searched = {"optimizer", "learning_rate", "dropout", "image_size"}
    assert {h.name for h in exp.hparam_infos} >= searched | {"backbone", "epochs"}
    assert {h.name for h in exp.hparam_infos if h.differs} == searched
    names = {m.display_name for m in exp.metric_infos}
    assert {"validation ROC AUC", "last-epoch validation ROC AUC", "validation loss",
            "wall time (s)"} <= names
    table = pd.read_csv(os.path.join(directory, "summary.csv"), dtype={"trial_id": str})
    by_trial = {g.name: g for g in groups}
    assert set(by_trial) == set(table["trial_id"])
    for _, row in table.iterrows():
        g = by_trial[row["trial_id"]]
        assert g.hparams["optimizer"].string_value == row["optimizer"]
        assert g.hparams["learning_rate"].number_value == pytest.approx(row["learning_rate"],
                                                                        rel=1e-5)
        assert g.hparams["backbone"].string_value == "tiny"     # the whole recipe
        vals = hpr.metric_values(g, exp)
        assert vals["validation ROC AUC"] == pytest.approx(row["val_auc"], abs=1e-5)
        assert vals["kept epoch"] == row["best_epoch"]
        assert vals["wall time (s)"] > 0


def test_hparams_trial_metric_is_the_best_epoch_not_the_last(tmp_path):
    """A trial whose last epoch is worse than its best: ``validation ROC AUC`` is the best
    epoch's value, the last epoch's has its own name."""
    from tuning import hypermodel as hm
    cfg = _base(backbone="tiny", epochs=3)
    history = [{"epoch": 0, "val_auc": 0.70, "val_loss": 0.6},
               {"epoch": 1, "val_auc": 0.88, "val_loss": 0.5},
               {"epoch": 2, "val_auc": 0.85, "val_loss": 0.55}]
    best = {"epoch": 1, "value": 0.88, "logs": {"val_loss": 0.5, "auc": 0.9}}
    logdir = str(tmp_path / "logs" / "7")
    hm.write_hparams_config(str(tmp_path / "logs"), space_lib.load(None, ["dropout=0..0.5"]))
    hm.write_trial_hparams(logdir, cfg)
    hm.write_trial_metrics(logdir, cfg, best, history, 12.5)
    (group,), exp = hpr.hparams_sessions(str(tmp_path / "logs"))
    vals = hpr.metric_values(group, exp)
    assert vals["validation ROC AUC"] == pytest.approx(0.88)
    assert vals["last-epoch validation ROC AUC"] == pytest.approx(0.85)
    assert vals["validation loss"] == pytest.approx(0.5)
    assert vals["training ROC AUC"] == pytest.approx(0.9)
    assert vals["kept epoch"] == 2 and vals["wall time (s)"] == pytest.approx(12.5)
    assert group.sessions[0].status == 1                 # STATUS_SUCCESS


def test_sweep_plot_and_best_dir_in_one_tensorboard_root(sweep):
    """``sweep.png`` (one panel per searched hyperparameter, also in TensorBoard) and, with
    ``tensorboard --logdir DIR``, the trials' sessions next to ``best/``'s run session."""
    import pandas as pd
    directory, _ = sweep
    png = os.path.join(directory, "sweep.png")
    hpr.assert_nontrivial_png(png, min_width=700, min_height=500, data=("C3",))
    assert hpr.tensorboard_images(os.path.join(directory, "logs", "plots")) == ["plots/sweep"]
    hpr.assert_nontrivial_png(os.path.join(directory, "best", "curves.png"), data=("C0", "C1"))
    groups, exp = hpr.hparams_sessions(directory)
    by_name = {g.name: g for g in groups}
    table = pd.read_csv(os.path.join(directory, "summary.csv"), dtype={"trial_id": str})
    assert set(by_name) == {f"logs/{t}" for t in table["trial_id"]} | {"best/logs"}
    # shown first whichever experiment TensorBoard picks (the sweep's or best/'s)
    assert {h.name for h in exp.hparam_infos if h.differs} == {"optimizer", "learning_rate",
                                                               "dropout", "image_size"}
    with open(os.path.join(directory, "best", "run.json")) as f:
        run = json.load(f)
    vals = hpr.metric_values(by_name["best/logs"], exp)
    # best/ was kept by the trial's best epoch: the same value as the trial's row
    assert vals["validation ROC AUC"] == pytest.approx(run["best"]["value"], abs=1e-6)
    assert vals["validation ROC AUC"] == pytest.approx(table["val_auc"].iloc[0], abs=1e-5)
    assert vals["validation ROC AUC, exact"] == pytest.approx(run["val"]["auc"], abs=1e-6)
    assert vals["validation ROC AUC per patient"] == pytest.approx(run["val"]["patient_auc"],
                                                                   abs=1e-6)
    assert by_name["best/logs"].hparams["optimizer"].string_value == run["flags"]["optimizer"]


def test_best_retrain_writes_a_fundus_train_model_dir(sweep, tmp_path):
    """``--best=retrain`` (and the fallback when the best checkpoint is not on this
    machine): fundus-train's own ``train`` of the best trial's config into DIR/best."""
    from tuning import search
    directory, result = sweep
    cfg = search.SweepConfig(directory=str(tmp_path), best="retrain")
    run = results.export_best(result["tuner"], cfg, result["rows"])
    best = tmp_path / "best"
    assert (best / "best.keras").exists() and (best / "saved_model").is_dir()
    assert run["tuning"]["mode"] == "retrain"
    assert run["tuning"]["trial_id"] == result["rows"][0]["trial_id"]
    with open(best / "run.json") as f:
        saved = json.load(f)
    assert saved["flags"]["learning_rate"] == pytest.approx(result["rows"][0]["learning_rate"])
    assert "backup" not in os.listdir(best)              # a finished fundus-train dir


@pytest.mark.parametrize("tuner, extra", [("bayesian", {"max_trials": 2}),
                                          ("hyperband", {"max_trials": 3, "max_epochs": 2,
                                                         "factor": 2})])
def test_bayesian_and_hyperband_run(tuner, extra, tiny_data, tmp_path):
    """The other two tuners on the same HyperModel; hyperband's later rounds continue an
    earlier trial's checkpoint (``tuner/trial_id``), so pruning waits for the end."""
    from tuning import search
    space = space_lib.load(None, ["learning_rate=1e-3..1e-2:log", "dropout=0..0.5"])
    cfg = search.SweepConfig(directory=str(tmp_path), tuner=tuner, seed=2, keep_trials=1,
                             best="none", **extra)
    result = search.run_sweep(cfg, _base(tiny_data, backbone="tiny", warmup_epochs=0,
                                         fine_tune_fraction=1.0), space, verbose=0)
    rows = result["rows"]
    assert len(rows) == extra["max_trials"]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert all(0.0 <= r["val_auc"] <= 1.0 for r in rows)
    kept = [r for r in rows if os.path.exists(
        os.path.join(str(tmp_path), "tuner", f"trial_{r['trial_id']}", "best.keras"))]
    assert [r["trial_id"] for r in kept] == [rows[0]["trial_id"]]
    if tuner == "hyperband":                             # 2 trials of 1 epoch, then the
        assert sorted(r["tuner/epochs"] for r in rows) == [1, 1, 2]   # best continued
        cont = [r for r in rows if r["tuner/epochs"] == 2][0]
        assert cont["tuner/trial_id"] in {r["trial_id"] for r in rows if r["tuner/epochs"] == 1}
