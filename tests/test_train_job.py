"""fundus-train as a job: bad flags at start-up, --flagfile, and kill -9 during epoch 3
then restart (it resumes at epoch 3)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from _train_job import train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNV2 = os.path.join(ROOT, "..", "shared", "weights",
                           "mobilenet_v2_1.0_imagenet_no_top.weights.h5")
TINY_FLAGS = ["--backbone=tiny", "--weights=none", "--image_size=32", "--batch_size=8",
              "--learning_rate=0.003", "--verbose=2", "--image_grid=4"]


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def _job(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.train", *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, message", [
    (["--backbone=xception", "--image_size=64"],
     "--image_size=64 is below xception's minimum of 71 px; use --image_size>=71"),
    (["--optimizer=sgd", "--fine_tune_fraction=1.5"], "--fine_tune_fraction=1.5"),
    (["--augment_zoom=2.0"], "--augment_zoom=2.0 is outside"),
])
def test_bad_flags_fail_at_startup(argv, message, tiny_data, tmp_path, capsys):
    model_dir = tmp_path / "m"
    rc = train_main([f"--data={tiny_data}", f"--model_dir={model_dir}", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not model_dir.exists()


def test_data_without_manifest_and_foreign_weights(tmp_path, tiny_data, capsys):
    empty = tmp_path / "not_converted"
    empty.mkdir()
    assert train_main([f"--data={empty}", f"--model_dir={tmp_path / 'm'}", *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert f"--data={empty}: no manifest.json" in err and "fundus-convert" in err
    if os.path.exists(SHARED_MNV2):
        assert train_main([f"--data={tiny_data}", f"--model_dir={tmp_path / 'm'}",
                      "--backbone=tiny", f"--weights={SHARED_MNV2}", "--image_size=32"]) == 2
        err = capsys.readouterr().err
        assert "--weights=" in err and "does not match backbone 'tiny'" in err
        assert "change --backbone" in err


def test_unknown_backbone_is_refused_by_the_job(tiny_data, tmp_path):
    proc = _job([f"--data={tiny_data}", f"--model_dir={tmp_path / 'm'}", "--backbone=vgg16"],
                timeout=300)
    assert proc.returncode == 2
    assert "--backbone" in proc.stderr and "mobilenet_v2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def _rows(path: str) -> list[int]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_during_epoch_3_resumes_at_epoch_3(tiny_data, tmp_path):
    """SIGKILL while epoch 3 runs (the first fine-tuning epoch: 2 warmup epochs), restart
    with the same flags (from a --flagfile): the job prints epoch 3 first, not 1."""
    model_dir = str(tmp_path / "m")
    flagfile = tmp_path / "train.flags"
    flagfile.write_text("\n".join([f"--data={tiny_data}", f"--model_dir={model_dir}",
                                   "--epochs=5", "--warmup_epochs=2",
                                   "--fine_tune_fraction=1", *TINY_FLAGS]) + "\n")
    history = os.path.join(model_dir, "history.csv")
    head_done = os.path.join(model_dir, "backup", "head.done.weights.h5")
    proc = subprocess.Popen([sys.executable, "-m", "tools.train", f"--flagfile={flagfile}"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        # epoch 2 is committed once the head stage's weights are kept; epoch 3 then runs
        while not os.path.exists(head_done) and proc.poll() is None and \
                time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        first_log = proc.communicate()[0]
    assert _rows(history) == [0, 1], first_log[-3000:]   # epochs 1 and 2 done, epoch 3 running
    assert os.path.isdir(os.path.join(model_dir, "backup"))

    again = _job([f"--flagfile={flagfile}"])
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    out = again.stdout + again.stderr
    epochs = [int(line.split()[1].split("/")[0]) for line in out.splitlines()
              if line.startswith("Epoch ")]
    assert epochs and epochs[0] == 3, out[-3000:]
    assert "stage head" not in out                   # the finished stage is not rerun
    assert "stage fine_tune: epochs 3..5" in out
    assert _rows(history) == [0, 1, 2, 3, 4]
    run = json.load(open(os.path.join(model_dir, "run.json")))
    assert run["resumed"] is True and run["epochs_run"] == 5
    assert not os.path.exists(os.path.join(model_dir, "backup"))
