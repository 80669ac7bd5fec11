"""Progress of long jobs: pipeline.progress (Progress lines on a non-terminal, RunClock's
estimate and h:mm:ss), fundus-evaluate's per-member lines and --noprogress, and the
fold/stage lines of fundus-train --cv with the whole run's elapsed and remaining time."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

import _tiny_models as tm
from model import augment, train_config, training
from pipeline import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK = r"elapsed \d+:\d\d:\d\d, remaining (estimating|~\d+:\d\d:\d\d)"


class FakeTime:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_hms():
    assert progress.format_hms(0) == "0:00:00"
    assert progress.format_hms(59.6) == "0:01:00"
    assert progress.format_hms(3725.4) == "1:02:05"
    assert progress.format_hms(100 * 3600 + 61) == "100:01:01"
    assert progress.format_hms(-5) == "0:00:00"
    assert progress.format_hms(None) == progress.format_hms(float("inf")) == "?"


def test_run_clock_estimates_from_units_done_since_its_first_estimate():
    now = FakeTime()
    clock = progress.RunClock(10, now=now)
    now.t += 30                 # start-up; 4 units were already done (a resumed run)
    assert clock.remaining(4) is None                      # the baseline: no measurement
    assert clock.status(4) == "elapsed 0:00:30, remaining estimating"
    now.t += 20                 # 2 units in 20 s: 10 s a unit, 4 left
    assert clock.remaining(6) == pytest.approx(40.0)
    assert clock.status(6) == "elapsed 0:00:50, remaining ~0:00:40"
    assert clock.elapsed() == pytest.approx(50.0)
    assert clock.remaining(10) == 0.0 and clock.remaining(12) == 0.0


def test_progress_lines_on_a_non_terminal():
    now, out = FakeTime(), io.StringIO()
    bar = progress.Progress("job", "photos", 100, stream=out, interval=10.0, now=now)
    bar.update(0)
    now.t += 4
    bar.update(20, skipped=1)
    assert out.getvalue() == ""                              # the interval has not passed
    now.t += 7
    bar.update(40, skipped=2)                                # 11 s after the first update
    now.t += 2
    bar.update(50, note="shard 3")
    lines = out.getvalue().splitlines()
    assert lines == ["job [############..................] 40/100 photos, 3.6/s, "
                     "2 skipped, eta 16s"]
    now.t += 2
    bar.close()                                              # the final line, always
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("job [###############...............] "
                                                   "50/100 photos, 3.3/s, 2 skipped")
    assert lines[1].endswith(", shard 3")
    bar.update(60, force=True)                               # force: a line at once
    assert len(out.getvalue().splitlines()) == 3


def test_progress_silent_when_disabled_or_empty_and_redrawn_on_a_terminal():
    for bar in (progress.Progress("job", "x", 5, enabled=False, stream=io.StringIO()),
                progress.Progress("job", "x", 0, stream=io.StringIO())):
        bar.update(3, force=True)
        bar.close()
        assert bar.stream.getvalue() == ""
    now, tty = FakeTime(), Terminal()
    bar = progress.Progress("job", "x", 4, stream=tty, now=now)
    bar.update(0, force=True, note="a long note")
    bar.update(2, force=True)
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "eta ?" in text.split("\r")[1]                   # no rate yet: no ETA


def _evaluate(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "tools.evaluate", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_evaluate_prints_member_progress_and_noprogress_silences_it(tiny_fold_data,
                                                                    tmp_path):
    ens = tmp_path / "cv"
    for k in range(3):
        tm.save_model_dir(tm.planted_model(64), str(ens / f"fold_{k}"), flags={"val_fold": k})
    base = [f"--data={tiny_fold_data}", f"--model={ens}", "--bootstrap=0"]
    r = _evaluate([*base, f"--output={tmp_path / 'a'}"])
    assert r.returncode == 0, r.stderr[-2000:]
    # the test split read once for the 3 models, then each fold by its model(s)
    assert re.search(r"^fundus-evaluate test, 3 models, 64 px \[#+\] 16/16 images, ",
                     r.stderr, re.M), r.stderr[-2000:]
    for k in range(3):
        assert re.search(rf"^fundus-evaluate fold {k} \({k + 1}/3\) train\+val\[fold in {k}\], "
                         rf"fold_{k}, 64 px \[#+\] \d+/\d+ images", r.stderr, re.M)
    assert "AUC" in r.stdout and "fundus-evaluate" not in r.stdout
    r = _evaluate([*base, f"--output={tmp_path / 'b'}", "--noprogress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fundus-evaluate" not in r.stderr and " images, " not in r.stderr
    assert "AUC" in r.stdout


def test_cv_prints_fold_and_stage_lines_with_the_whole_run_clock(tiny_fold_data, tmp_path,
                                                                 capsys):
    cfg = train_config.TrainConfig(
        data=tiny_fold_data, model_dir=str(tmp_path / "cv"), backbone="tiny",
        weights="none", image_size=32, batch_size=16, epochs=2, warmup_epochs=1,
        fine_tune_fraction=1.0, augment=augment.AugmentConfig(seed=1), image_grid=0,
        verbose=2, seed=1)
    training.train_cv(cfg, 3)
    out = capsys.readouterr().out
    folds = re.findall(rf"^\[fundus-train\] fold (\d)/3 \(fold_\d\): ({CLOCK})$", out, re.M)
    assert [f[0] for f in folds] == ["1", "2", "3"], out[-3000:]
    assert folds[0][1].endswith("remaining estimating")      # nothing measured yet
    assert all("remaining ~" in f[1] for f in folds[1:])      # the folds done give the rate
    stages = re.findall(rf"^\[fundus-train\] stage (\w+): epochs .*; ({CLOCK})$", out, re.M)
    assert [s[0] for s in stages] == ["head", "fine_tune"] * 3
    assert stages[0][1].endswith("remaining estimating")
    assert all("remaining ~" in s[1] for s in stages[1:])     # the whole CV's estimate
