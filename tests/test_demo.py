"""fundus-demo end to end (synthetic data -> convert -> train -> evaluate) on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import _hparams_reader as hpr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_reaches_validation_auc_above_0_9(tmp_path):
    workdir = tmp_path / "demo"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "tools.demo", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("validation AUC ")][-1]
    assert float(line.split()[2]) > 0.9
    assert f"tensorboard --logdir {workdir}/model/logs" in proc.stdout
    run = json.load(open(workdir / "model" / "run.json"))
    assert run["val"]["auc"] > 0.9 and run["data"]["test_read"] is False
    assert os.path.exists(workdir / "data" / "manifest.json")
    metrics = json.load(open(workdir / "eval" / "metrics.json"))
    assert metrics["split"] == "test" and metrics["image"]["auc"] > 0.8
    assert os.listdir(workdir / "model" / "logs" / "train")
    hpr.assert_nontrivial_png(str(workdir / "model" / "curves.png"), min_width=1000,
                              min_height=400, data=("C0", "C1"))
