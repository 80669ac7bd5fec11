"""model.plots on made-up histories, folds and sweeps (the plots of real runs, CVs and
sweeps are checked where those are trained: test_training.py, test_tuning.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import _hparams_reader as hpr
from model import metrics as metrics_lib
from model import eval_metrics, plots, rundir


def _history(n: int, gap: int | None = None) -> list[dict]:
    rows = []
    for e in range(n):
        r = {"epoch": e, "auc": 0.5 + 0.4 * e / n, "val_auc": 0.5 + 0.3 * math.sqrt(e / n),
             "loss": 0.7 - 0.3 * e / n, "val_loss": 0.7 - 0.1 * e / n + 0.01 * e}
        if e == gap:
            r["val_auc"] = float("nan")
        rows.append(r)
    return rows


@pytest.mark.parametrize("n, stages, kept, label", [
    (4, [("head", 0, 1), ("fine_tune", 1, 4)], 3, ""),
    (30, [("head", 0, 2), ("fine_tune", 2, 30)], 30, "kept: mean of the last 5 epochs"),
    (1, [("head", 0, 1)], 1, ""),
])
def test_curves(tmp_path, n, stages, kept, label):
    path = plots.plot_curves(_history(n, gap=1 if n > 2 else None), str(tmp_path / "c.png"),
                             stages=stages, kept_epoch=kept, kept_label=label, title="t")
    hpr.assert_nontrivial_png(path, min_width=1000, min_height=400, data=("C0", "C1"))


def test_the_png_check_fails_on_plots_without_data(tmp_path):
    """The non-trivial check must tell a plot with data from axes, grid and labels only."""
    empty = plots.plot_curves([], str(tmp_path / "empty.png"), stages=[], kept_epoch=None,
                              kept_label="", title="t")
    with pytest.raises(AssertionError):
        hpr.assert_nontrivial_png(empty, min_width=1000, min_height=400)


def test_kept_label():
    assert plots.kept_label({"best": {"epoch": 3}, "val": {"auc": 0.8123}}) == \
        "kept: epoch 3 (exact val AUC 0.812)"
    assert "mean of the last 2" in plots.kept_label({"best": {"epoch": 9, "swa_epochs": 2}})


def test_val_predictions_pooled_out_of_fold(tmp_path):
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(3):
        pid = np.repeat([f"{i}-{j}" for j in range(10)], 2)
        y = np.repeat(np.arange(10) % 2, 2).astype(np.float64)
        p = np.clip(0.3 * y + rng.uniform(0, 0.7, y.size), 0, 1)
        d = tmp_path / f"fold_{i}"
        d.mkdir()
        rundir.write_val_predictions(str(d), {"y": y, "p": p, "patient_id": pid})
        back = rundir.read_val_predictions(str(d))
        np.testing.assert_allclose(back["p"], p, rtol=1e-7)
        assert list(back["patient_id"]) == list(pid)
        dirs.append(str(d))
    parts = [rundir.read_val_predictions(d) for d in dirs]
    y = np.concatenate([q["y"] for q in parts])
    p = np.concatenate([q["p"] for q in parts])
    oof = eval_metrics.pooled_oof(dirs, n_boot=200)
    assert oof["auc"] == pytest.approx(metrics_lib.roc_auc(y, p))
    assert oof["images"] == 60 and oof["patients"] == 30
    assert oof["ci95"][0] < oof["auc"] < oof["ci95"][1]
    assert eval_metrics.pooled_oof(dirs + [str(tmp_path)]) is None      # a fold without the file


@pytest.mark.parametrize("with_oof", [True, False])
def test_cv(tmp_path, with_oof):
    folds = [{"fold": i, "val_auc_by_epoch": [0.6, 0.7 + 0.05 * i, 0.75], "best_epoch": 2,
              "auc": 0.7 + 0.05 * i, "patient_auc": 0.72 + 0.05 * i} for i in range(5)]
    oof = {"auc": 0.74, "ci95": [0.7, 0.78]} if with_oof else None
    path = plots.plot_cv(folds, [0.6, 0.8, 0.75], str(tmp_path / "cv.png"), oof, title="t")
    hpr.assert_nontrivial_png(path, min_width=1000, min_height=400)


def test_sweep(tmp_path):
    params = {"optimizer": {"choice": ["adam", "sgd"]},
              "learning_rate": {"min": 1e-5, "max": 1e-2, "sampling": "log", "type": "float"},
              "warmup_epochs": {"min": 0, "max": 3, "type": "int"},
              "image_size": {"choice": [224, 384]}}
    rng = np.random.default_rng(1)
    rows = [{"trial_id": str(i), "status": "COMPLETED", "val_auc": float(rng.uniform(.6, .9)),
             "optimizer": ["adam", "sgd"][i % 2], "learning_rate": 10 ** rng.uniform(-5, -2),
             "warmup_epochs": i % 4, "image_size": [224, 384][i % 2]} for i in range(7)]
    rows.append({"trial_id": "7", "status": "FAILED", "val_auc": float("nan"),
                 "optimizer": "adam", "learning_rate": 1e-3, "warmup_epochs": 1,
                 "image_size": 224})
    path = plots.plot_sweep(rows, params, str(tmp_path / "sweep.png"))
    hpr.assert_nontrivial_png(path, min_width=700, min_height=500, data=("C3",))  # best: a star
    # no completed trial yet: empty panels, still a readable figure
    path = plots.plot_sweep(rows[-1:], {"dropout": {"min": 0, "max": 0.5}},
                            str(tmp_path / "empty.png"))
    hpr.assert_nontrivial_png(path, min_width=300, min_height=300, data=())
    with pytest.raises(AssertionError):                       # and no data drawn
        hpr.assert_nontrivial_png(path, min_width=300, min_height=300, data=("C3",))


def test_plots_go_to_tensorboard(tmp_path):
    path = plots.plot_curves(_history(3), str(tmp_path / "c.png"))
    plots.to_tensorboard(str(tmp_path / "logs"), "curves", path)
    plots.to_tensorboard(str(tmp_path / "logs"), "curves", path)      # replaced, not added
    assert hpr.tensorboard_images(str(tmp_path / "logs" / "plots")) == ["plots/curves"]
    assert len(list((tmp_path / "logs" / "plots").iterdir())) == 1
