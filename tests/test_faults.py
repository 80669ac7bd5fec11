"""Data you can trust and faults that end cleanly (issue 14, items 4 and 5).

* ``fundus-convert --verify``: every shard re-hashed, each mismatch named by shard;
* the start-up shard check of training and evaluation (exit 2, the shard and the fix);
* a damaged record met while training or evaluating: ``DataError`` naming the shard,
  exit 1, the model dir still resumable;
* a full disk (``RLIMIT_FSIZE`` in a subprocess: writes fail with EFBIG) while converting
  or training: exit 1 with a message, what was there before still readable, resumable;
* one run per output dir (``pipeline.lock``): a second convert / train refuses (exit 2);
* Ctrl-C during training: exit 130, backup kept, the same command resumes.

Each test copies the session-scoped ``tiny_data`` fixture before damaging anything.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf

from model import callbacks, evaluation, rundir, training
from pipeline import integrity, lock as lock_lib
from pipeline import manifest as manifest_lib
from pipeline import writer
from pipeline.synthetic import make_synthetic
from tools import _common

import _tiny_models
from _train_job import Crash, train_main
from _train_job import train_config as job_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone=tiny", "--weights=none", "--image_size=32", "--batch_size=8",
        "--learning_rate=0.003", "--verbose=2", "--image_grid=0"]


# ----------------------------------------------------------------------------- helpers
def _copy(tiny_data: str, tmp_path, bytes_field: bool = False) -> str:
    data = str(tmp_path / "data")
    shutil.copytree(tiny_data, data)
    if bytes_field:                   # what fundus-convert writes since issue 14
        man = manifest_lib.load(data)
        for split in man["splits"].values():
            for s in split["shards"]:
                s["bytes"] = os.path.getsize(os.path.join(data, s["path"]))
        manifest_lib.save(data, man)
    return data


def _shard(data: str, split: str, i: int = 0) -> str:
    return manifest_lib.shard_paths(data, manifest_lib.load(data), split)[i]


def _flip(path: str) -> None:
    """Invert 8 bytes in the middle of a file (its size is unchanged)."""
    b = bytearray(open(path, "rb").read())
    mid = len(b) // 2
    b[mid:mid + 8] = bytes(x ^ 0xFF for x in b[mid:mid + 8])
    open(path, "wb").write(bytes(b))


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
                CUDA_VISIBLE_DEVICES="")


def _job(job: str, args: list[str], *, fsize: int | None = None, timeout: int = 300
         ) -> subprocess.CompletedProcess:
    """``python -m tools.<job>``; ``fsize``: no file may grow past that many bytes (a full
    disk: a write past it fails with EFBIG, SIGXFSZ ignored)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([sys.executable, "-m", f"tools.{job}", *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if fsize else None)


def _sha(path: str) -> str:
    return manifest_lib.sha256_file(path)


# ------------------------------------------------------------------ 4. data you can trust
def test_verify_names_each_damaged_shard(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    good = _job("convert", [f"--verify={data}"])
    assert good.returncode == 0, good.stderr[-2000:]
    assert "all 6 shards match" in good.stdout

    _flip(_shard(data, "train", 1))                       # bit rot: same size, other bytes
    val = _shard(data, "val", 0)
    with open(val, "r+b") as f:                           # cut short: fewer records
        f.truncate(os.path.getsize(val) - 100)
    os.remove(_shard(data, "test", 1))
    bad = _job("convert", [f"--verify={data}"])
    assert bad.returncode == 1, bad.stderr[-2000:]
    lines = {line.split()[2].rstrip(":"): line for line in bad.stdout.splitlines()
             if line[:3] in ("ok ", "BAD")}
    assert len(lines) == 6
    assert "sha256 differs" in lines["train-00001-of-00002.tfrecord"]
    assert "past the end of the file" in lines["val-00000-of-00002.tfrecord"]
    assert "missing" in lines["test-00001-of-00002.tfrecord"]
    assert sum(v.startswith("BAD") for v in lines.values()) == 3
    err = [x for x in bad.stderr.splitlines() if x.startswith("fundus-convert:")]
    assert len(err) == 1 and "3 of 6 shards do not match" in err[0], bad.stderr
    assert "Traceback" not in bad.stderr

    nothing = _job("convert", [f"--verify={tmp_path / 'nowhere'}"])
    assert nothing.returncode == 2 and "no manifest" in nothing.stderr


def test_count_and_check_shards(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path, bytes_field=True)
    man = manifest_lib.load(data)
    for report in manifest_lib.verify_shards(data):
        assert report.ok, report
        assert manifest_lib.count_records(os.path.join(data, report.path)) == \
            (report.records, None)
    manifest_lib.check_shards(data)                       # all there, all the right size
    path = _shard(data, "train", 0)
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(manifest_lib.ShardError) as e:
        manifest_lib.check_shards(data, ["train", "val"])
    msg = str(e.value)
    assert path in msg and "records" in msg and f"fundus-convert --verify={data}" in msg
    manifest_lib.check_shards(data, ["val", "test"])      # other splits are not checked
    # a manifest written before the bytes field: existence only
    old = _copy(tiny_data, tmp_path / "old")
    with open(_shard(old, "train", 0), "ab") as f:
        f.write(b"\0")
    manifest_lib.check_shards(old)
    os.remove(_shard(old, "val", 1))
    with pytest.raises(manifest_lib.ShardError, match="val-00001-of-00002.tfrecord is missing"):
        manifest_lib.check_shards(old)
    assert man["splits"]["train"]["shards"][0]["bytes"] > 0


def test_startup_check_of_training_and_evaluation_exits_2(tiny_data, tmp_path, capsys):
    data = _copy(tiny_data, tmp_path, bytes_field=True)
    train_shard, test_shard = _shard(data, "train", 1), _shard(data, "test", 0)
    for path in (train_shard, test_shard):
        with open(path, "r+b") as f:
            f.truncate(1000)
    model_dir = tmp_path / "m"
    rc = train_main([f"--data={data}", f"--model_dir={model_dir}", *TINY])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert train_shard in err and "1000 bytes" in err and "fundus-convert" in err
    assert not model_dir.exists()                         # nothing written

    members_dir = _tiny_models.save_model_dir(_tiny_models.constant_model(64),
                                              str(tmp_path / "const"))
    with pytest.raises(manifest_lib.ShardError, match="test-00000-of-00002"):
        evaluation.evaluate(members_dir, data, "test", str(tmp_path / "eval"), bootstrap=0,
                            progress=False)
    assert not (tmp_path / "eval").exists()

    def main(argv):                                       # how fundus-evaluate ends then
        evaluation.evaluate(members_dir, data, "test", None, bootstrap=0, progress=False)
    assert _common.call(main, ["x"], name="fundus-evaluate") == 2
    assert test_shard in capsys.readouterr().err


def test_damaged_record_in_evaluation_names_the_shard(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    members_dir = _tiny_models.save_model_dir(_tiny_models.planted_model(64),
                                              str(tmp_path / "planted"))
    bad = _shard(data, "test", 1)
    _flip(bad)
    with pytest.raises(integrity.DataError) as e:
        evaluation.evaluate(members_dir, data, "test", None, bootstrap=0, progress=False)
    assert bad in str(e.value) and "DataLossError" in str(e.value)
    assert f"fundus-convert --verify={data}" in str(e.value)
    # the job: exit 1, one message line naming the shard, no traceback, no output
    out = tmp_path / "eval"
    r = _job("evaluate", [f"--data={data}", f"--model={members_dir}", f"--output={out}",
                          "--bootstrap=0", "--noprogress"])
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("fundus-evaluate: error:")]
    assert len(lines) == 1 and bad in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_read_errors_of_sound_data_pass_through(tiny_data):
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a data problem"):
        with integrity.reading(tiny_data, ["train"]):
            raise tf.errors.InvalidArgumentError(None, None, "not a data problem")
    with pytest.raises(integrity.DataError, match="train-00000-of-00002"):   # named
        with integrity.reading(tiny_data, ["train"]):
            raise tf.errors.DataLossError(
                None, None, f"corrupted record in {tiny_data}/train-00000-of-00002.tfrecord")


def test_damaged_record_in_training_exits_1_and_stays_resumable(tiny_data, tmp_path, capsys):
    data = _copy(tiny_data, tmp_path)
    bad = _shard(data, "train", 1)
    original = open(bad, "rb").read()
    _flip(bad)
    model_dir = tmp_path / "m"
    argv = [f"--data={data}", f"--model_dir={model_dir}", "--epochs=2", "--warmup_epochs=1",
            *TINY]
    rc = train_main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    line = [x for x in err.splitlines() if x.startswith("fundus-train: error:")]
    assert len(line) == 1 and "damaged shard " + bad in line[0], err
    assert "rerun the same command once the data is repaired" in line[0]
    assert "Traceback" not in err
    assert (model_dir / "backup" / "config.json").exists()     # resumable
    assert not (model_dir / "run.json").exists()
    open(bad, "wb").write(original)                             # the shard restored
    assert train_main(argv) == 0
    run = json.load(open(model_dir / "run.json"))
    assert run["resumed"] is True and run["epochs_run"] == 2


# ---------------------------------------------------------------------- 5. faults end cleanly
def test_dir_lock(tmp_path):
    d = str(tmp_path / "out")
    with lock_lib.DirLock(d, "job-a", "--output") as held:
        assert os.path.isdir(d) and lock_lib.holder(d) == f"pid {os.getpid()} (job-a)"
        with pytest.raises(lock_lib.LockedError) as e:
            lock_lib.DirLock(d, "job-b", "--output").acquire()
        assert f"--output={d} is in use" in str(e.value) and str(os.getpid()) in str(e.value)
        assert held.directory == d
    assert not os.path.exists(d)                  # created by the lock, left empty: removed
    os.makedirs(d)
    with lock_lib.DirLock(d, "job-a"):
        open(os.path.join(d, "kept"), "w").close()
    assert os.listdir(d) == ["kept"] and lock_lib.holder(d) is None

    # a holder killed with SIGKILL leaves the file but not the lock
    code = ("import sys, time; from pipeline import lock; lock.DirLock(sys.argv[1], 'x')"
            ".acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, d], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert lock_lib.holder(d) == f"pid {proc.pid} (x)"
    finally:
        proc.kill()
        proc.wait()
    assert os.path.exists(lock_lib.lock_path(d)) and lock_lib.holder(d) is None
    with lock_lib.DirLock(d, "job-c"):
        assert lock_lib.holder(d) == f"pid {os.getpid()} (job-c)"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict:
    return make_synthetic(str(tmp_path_factory.mktemp("synth")), n_patients=12,
                          size_range=(160, 220), seed=5, formats=("full_df",))


def _convert_args(synth, out) -> list[str]:
    return [f"--annotations={synth['full_df']}", f"--images={synth['images']}",
            f"--output={out}", "--image_size=64", "--workers=1", "--noprogress"]


def test_second_conversion_on_the_same_dir_refuses(synth, tmp_path):
    out = str(tmp_path / "out")
    code = ("import sys, time; from pipeline import lock; lock.DirLock(sys.argv[1], "
            "'fundus-convert').acquire(); print('held', flush=True); time.sleep(600)")
    first = subprocess.Popen([sys.executable, "-c", code, out], cwd=ROOT, env=_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        second = _job("convert", _convert_args(synth, out))
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"--output={out} is in use by another run: pid {first.pid} (fundus-convert)" \
        in second.stderr
    assert os.listdir(out) == [lock_lib.LOCK_NAME]          # the second wrote nothing


def test_second_training_on_the_same_dir_refuses(tiny_data, tmp_path, capsys):
    model_dir = str(tmp_path / "m")
    with lock_lib.DirLock(model_dir, "fundus-train"):
        rc = train_main([f"--data={tiny_data}", f"--model_dir={model_dir}", *TINY])
        assert os.listdir(model_dir) == [lock_lib.LOCK_NAME]
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--model_dir={model_dir} is in use by another run: pid {os.getpid()}" in err


class _Killed(Exception):
    pass


def test_disk_full_during_conversion_keeps_finished_shards(synth, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = writer.ConvertConfig(annotations=[synth["full_df"]], images=[synth["images"]],
                               output=str(out), image_size=64, workers=1, progress=False)

    def die(name):
        # the conversion holds --output's lock while it writes
        assert lock_lib.holder(str(out)) == f"pid {os.getpid()} (fundus-convert)"
        raise _Killed(name)
    monkeypatch.setattr(writer, "_after_shard", die)
    with pytest.raises(_Killed):                   # an earlier run, killed after 1 shard
        writer.convert(cfg)
    monkeypatch.setattr(writer, "_after_shard", lambda name: None)
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert writer.PROGRESS_NAME in before and len(before) == 2

    full = _job("convert", _convert_args(synth, out), fsize=4000)   # each shard > 4 kB
    assert full.returncode == 1, full.stderr[-2000:]
    err = [x for x in full.stderr.splitlines() if x.startswith("fundus-convert:")]
    assert len(err) == 1 and "out of disk space" in err[0] and "rerun" in err[0], full.stderr
    assert "Traceback" not in full.stderr
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # nothing lost
    res = writer.convert_with_status(cfg)                                  # space again
    assert res.status == "resumed"
    assert all(r.ok for r in manifest_lib.verify_shards(str(out)))


@pytest.mark.slow
def test_disk_full_during_training_keeps_the_model_dir(tiny_data, tmp_path, capsys):
    model_dir = tmp_path / "m"
    argv = [f"--data={tiny_data}", f"--model_dir={model_dir}", "--epochs=4",
            "--warmup_epochs=4", *TINY]
    with pytest.raises(RuntimeError, match="preempted in epoch 3"):   # an earlier run
        training.train(job_config(argv), callbacks=[Crash(2)])
    backup = model_dir / "backup" / "head"
    kept = {p: _sha(str(p)) for p in (model_dir / "best.keras",
                                      backup / "latest.weights.h5",
                                      backup / "training_metadata.json")}

    full = _job("train", argv, fsize=200_000)      # the model's files are ~1 MB
    assert full.returncode == 1, full.stderr[-3000:]
    err = [x for x in full.stderr.splitlines() if x.startswith("fundus-train:")]
    assert len(err) == 1 and "out of disk space" in err[0], full.stderr[-3000:]
    assert "rerun the same command to resume" in err[0]
    assert {p: _sha(str(p)) for p in kept} == kept            # the earlier run's files
    assert not [n for n in os.listdir(model_dir) if ".tmp" in n or ".old" in n]
    keras.models.load_model(model_dir / "best.keras", compile=False)

    capsys.readouterr()
    assert train_main(argv) == 0                               # space again: resumes
    out = capsys.readouterr().out
    epochs = [int(x.split()[1].split("/")[0]) for x in out.splitlines()
              if x.startswith("Epoch ")]
    assert epochs and epochs[0] == 3, out[-3000:]
    run = json.load(open(model_dir / "run.json"))
    assert run["resumed"] is True and run["epochs_run"] == 4


@pytest.mark.slow
def test_ctrl_c_keeps_the_backup_and_the_same_command_resumes(tiny_data, tmp_path, capsys):
    model_dir = tmp_path / "m"
    argv = [f"--data={tiny_data}", f"--model_dir={model_dir}", "--epochs=8",
            "--warmup_epochs=8", *TINY]
    meta = model_dir / "backup" / "head" / "training_metadata.json"
    proc = subprocess.Popen([sys.executable, "-m", "tools.train", *argv], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while not meta.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)                  # the first epoch's backup is complete
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        # the running job holds --model_dir's lock for the whole run
        assert lock_lib.holder(str(model_dir)) == f"pid {proc.pid} (fundus-train)"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "fundus-train: interrupted (Ctrl-C)" in err and "rerun the same command" in err
    assert "Traceback" not in err
    saved = json.loads(meta.read_text())["epoch"]          # epochs finished and backed up
    assert saved >= 1
    assert (model_dir / "backup" / "head" / "latest.weights.h5").exists()
    assert not (model_dir / "run.json").exists() and lock_lib.holder(str(model_dir)) is None

    capsys.readouterr()
    assert train_main(argv) == 0                            # the same command
    out = capsys.readouterr().out
    epochs = [int(x.split()[1].split("/")[0]) for x in out.splitlines()
              if x.startswith("Epoch ")]
    assert epochs and epochs[0] == saved + 1, out[-3000:]
    assert [r["epoch"] for r in rundir.read_history(str(model_dir / "history.csv"))] == \
        list(range(8))
    assert json.load(open(model_dir / "run.json"))["resumed"] is True


def test_stop_on_request_stops_after_the_batch_or_at_once():
    """Ctrl-C's callback: during a fit the first request waits for the batch's end (and
    says so), a second raises at once; outside a fit a request raises at once."""
    said = []
    stop = callbacks.StopOnRequest(say=said.append)
    with pytest.raises(KeyboardInterrupt):                 # not fitting: at once
        stop.request()
    stop.on_train_begin()
    stop.request()                                         # fitting: after this batch
    assert stop.requested and said and "after this batch" in said[0]
    with pytest.raises(KeyboardInterrupt):
        stop.on_train_batch_end(0)
    with pytest.raises(KeyboardInterrupt):                 # pressed again: at once
        stop.request()
