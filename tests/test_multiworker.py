"""``fundus-train --strategy=multi_worker`` (model.multiworker, model.distribute) with real
processes on free 127.0.0.1 ports.

Fast, in this process (nothing connects): TF_CONFIG checks, the refused flags, how the
input is sharded, and the job's exit 2 without TF_CONFIG, with a malformed one, or with a
refused flag. Slow (each task is a process with its own TensorFlow start-up, the tiny
backbone on the synthetic fixture): two tasks train two epochs (both exit 0, only the
chief's model dir has outputs, the other task's temporary checkpoints are gone); one
step's weights on both tasks equal a one-process MirroredStrategy step over the same
global batch and differ from a step on one task's half; a worker killed in epoch 2 and
both restarted resume at epoch 2; a missing peer ends the start-up with exit 1 within
--multi_worker_timeout_s. Every subprocess runs under a timeout: a hang fails the test.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from _train_job import train_main
from conftest import write_tiny_data
from model import distribute, multiworker, rundir
from model.train_config import ConfigError, TrainConfig
from pipeline import reader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone=tiny", "--weights=none", "--image_size=64", "--batch_size=8",
        "--strategy=multi_worker", "--image_grid=4"]
#: everything a finished run leaves in its model dir (backup/ removed)
OUTPUTS = (rundir.BEST_MODEL, rundir.BEST_JSON, rundir.RUN_JSON, rundir.HISTORY_CSV,
           rundir.HISTORY_JSON, rundir.SAVED_MODEL, rundir.LOGS, rundir.CURVES_PNG,
           rundir.VAL_PREDICTIONS)
RUN_TIMEOUT_S = 420          # one two-task job on two shared cores: ~30-60 s measured


# ============================================================================ helpers
def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


@pytest.fixture
def launch():
    """``launch(argv, tf_config, log, tmpdir=None) -> Popen`` of ``python -m tools.train``
    (or of a script: argv[0] ending in .py); every process still running at the end is
    killed (by its pid)."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str], config: str, log: str, tmpdir: str | None = None):
        env = dict(os.environ, TF_CONFIG=config, PYTHONPATH=REPO)
        if not config:                            # a one-process run
            del env["TF_CONFIG"]
        if tmpdir:
            os.makedirs(tmpdir, exist_ok=True)
            env["TMPDIR"] = tmpdir
        cmd = ([sys.executable, *argv] if argv[0].endswith(".py")
               else [sys.executable, "-m", "tools.train", *argv])
        with open(log, "w") as out:
            p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_all(procs: list[subprocess.Popen], logs: list[str],
             timeout: float = RUN_TIMEOUT_S) -> list[int]:
    """Exit codes; fails the test (showing the logs' ends) when one runs past
    ``timeout``."""
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a task hung past {timeout:.0f} s:\n" + tails(logs))
    return [p.returncode for p in procs]


def tails(logs: list[str], n: int = 3000) -> str:
    return "\n".join(f"--- {log}\n{open(log).read()[-n:]}" for log in logs)


def worker_temp_dirs(tmpdir: str) -> list[str]:
    """The multi-worker checkpoint dirs a non-chief task left in its TMPDIR (TensorFlow's
    autograph leaves its own generated files there; they are not ours)."""
    return [n for n in os.listdir(tmpdir) if n.startswith("fundus-train-")]


# ================================================================= fast: config checks
@pytest.mark.parametrize("value, words", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', '"task"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
     "task index 1"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     '"host:port"'),
    ('{"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", '
     '"index": 0}}', "only chief and worker"),
])
def test_tf_config_refused(value, words):
    env = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(ValueError, match="TF_CONFIG") as e:
        distribute.cluster_from_env(env)
    assert words in str(e.value)


def test_cluster_roles():
    workers = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    c = distribute.cluster_from_env({"TF_CONFIG": json.dumps(workers)})
    assert (c.num_workers, c.is_chief, c.task_index) == (2, False, 1)
    assert "worker 1 of 2 tasks (b:2)" in c.name
    chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]},
             "task": {"type": "worker", "index": 0}}
    c = distribute.cluster_from_env({"TF_CONFIG": json.dumps(chief)})
    assert c.num_workers == 2 and not c.is_chief          # worker 0 is not the chief here
    assert c.tasks[0] == ("chief", 0, "c:0")


def _cluster(ports: list[int], index: int, hosts: int | None = None) -> distribute.Cluster:
    tasks = tuple(("worker", i, f"127.0.0.1:{p}") for i, p in enumerate(ports[:hosts]))
    return distribute.Cluster(tasks, "worker", index)


def test_rendezvous_waits_for_every_task_then_frees_the_ports():
    """Each task listens on its own TF_CONFIG port and says hello to the others; a late
    task is waited for; afterwards the ports are free for TensorFlow."""
    ports = free_ports(3)
    errors: list[BaseException] = []

    def task(i: int, delay: float) -> None:
        time.sleep(delay)
        try:
            distribute.rendezvous(_cluster(ports, i), timeout_s=20)
        except BaseException as e:          # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=task, args=(i, 1.5 * (i == 2))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads), errors
    for p in ports:                          # bindable again
        socket.create_server(("", p)).close()


def test_rendezvous_names_the_silent_task_and_a_different_cluster():
    ports = free_ports(3)
    t0 = time.time()
    with pytest.raises(distribute.ClusterUnreachable,
                       match=rf"worker 1 \(127.0.0.1:{ports[1]}\) did not answer \(both "
                             r"ways\) within "
                             r"--multi_worker_timeout_s=1 s"):
        distribute.rendezvous(_cluster(ports, 0, hosts=2), timeout_s=1)
    assert time.time() - t0 < 10
    errors: list[BaseException] = []

    def three_task_cluster() -> None:         # task 1 of another, three-task cluster
        try:
            distribute.rendezvous(_cluster(ports, 1, hosts=3), timeout_s=5)
        except BaseException as e:           # noqa: BLE001 - checked below
            errors.append(e)

    other = threading.Thread(target=three_task_cluster)
    other.start()
    with pytest.raises(ValueError, match="TF_CONFIG list different clusters"):
        distribute.rendezvous(_cluster(ports, 0, hosts=2), timeout_s=5)
    other.join(timeout=20)
    assert len(errors) == 1 and "different clusters" in str(errors[0]), errors


@pytest.mark.parametrize("change, flag", [
    ({"cache_frozen_prefix": True}, "--cache_frozen_prefix"),
    ({"head_init": "logistic"}, "--head_init=logistic"),
    ({"swa_epochs": 1, "select": "last", "patience": 0}, "--swa_epochs=1"),
    ({"schedule": "plateau"}, "--schedule=plateau"),
    ({"age_loss_weight": 0.1}, "--age_loss_weight"),
    ({"profile_batch": 2}, "--profile_batch=2"),
    ({"batch_size": 9}, "--batch_size=9 must be a multiple of the 2 tasks"),
    ({"feature_layers": "block_3_add"}, "--feature_layers=block_3_add"),
])
def test_refused_flags_name_the_flag(change, flag):
    cluster = distribute.Cluster((("worker", 0, "a:1"), ("worker", 1, "b:2")), "worker", 0)
    cfg = TrainConfig(data="d", model_dir="m", **change)
    with pytest.raises(ConfigError) as e:
        multiworker.check_supported(cfg, cluster)
    assert flag in str(e.value)
    with pytest.raises(ConfigError, match="--cv=3 .*--collect"):
        multiworker.check_supported(TrainConfig(data="d", model_dir="m"), cluster, cv=3)


def test_sharding_rule(tmp_path, tiny_data):
    one_shard = write_tiny_data(str(tmp_path / "one"), {"train": 4, "val": 2}, shards=1)
    spec = reader.training_split(tiny_data)[0]
    assert multiworker.sharding(TrainConfig(data=tiny_data), spec, 2) == "file"
    assert multiworker.sharding(TrainConfig(data=tiny_data), spec, 3) == "record"
    assert multiworker.sharding(TrainConfig(data=tiny_data), spec, 1) == "none"
    spec = reader.training_split(one_shard)[0]
    assert multiworker.sharding(TrainConfig(data=one_shard), spec, 2) == "record"


@pytest.mark.parametrize("value, words", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
])
def test_job_without_good_tf_config_exits_2(value, words, tiny_data, tmp_path, monkeypatch,
                                            capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if value is not None:
        monkeypatch.setenv("TF_CONFIG", value)
    rc = train_main([f"--data={tiny_data}", f"--model_dir={tmp_path / 'm'}",
                                *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "fundus-train: error:" in err and words in err, err
    assert "Traceback" not in err and not (tmp_path / "m").exists()


def test_job_refuses_unsupported_flag_exits_2(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 0))
    rc = train_main([f"--data={tiny_data}", f"--model_dir={tmp_path / 'm'}",
                                *TINY, "--cv=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "--cv=3 is not supported with --strategy=multi_worker" in err, err


# =============================================================== slow: real processes
@pytest.mark.slow
def test_unreachable_peer_exits_1_within_timeout(tiny_data, tmp_path, launch):
    ports = free_ports(2)            # nobody listens on the second port
    log = str(tmp_path / "w0.log")
    t0 = time.time()
    p = launch([f"--data={tiny_data}", f"--model_dir={tmp_path / 'm'}", *TINY,
                "--multi_worker_timeout_s=10"], tf_config(ports, 0), log)
    (rc,) = wait_all([p], [log], timeout=180)
    elapsed = time.time() - t0
    out = open(log).read()
    assert rc == 1, out
    assert (f"fundus-train: error: --strategy=multi_worker: worker 1 (127.0.0.1:{ports[1]})"
            f" did not answer (both ways) within --multi_worker_timeout_s=10 s") in out, out
    assert "Traceback" not in out
    assert 10 <= elapsed < 10 + 120, elapsed      # TensorFlow's start-up + the timeout


@pytest.mark.slow
def test_two_workers_train_only_chief_writes(tiny_data, tmp_path, launch):
    ports = free_ports(2)
    chief_dir, other_dir = tmp_path / "run", tmp_path / "worker_model_dir"
    logs = [str(tmp_path / "w0.log"), str(tmp_path / "w1.log")]
    flags = [f"--data={tiny_data}", *TINY, "--epochs=2", "--warmup_epochs=1"]
    procs = [launch(flags + [f"--model_dir={chief_dir}"], tf_config(ports, 0), logs[0]),
             # the other task is given its own --model_dir: it must stay untouched
             launch(flags + [f"--model_dir={other_dir}"], tf_config(ports, 1), logs[1],
                    tmpdir=str(tmp_path / "worker_tmp"))]
    assert wait_all(procs, logs) == [0, 0], tails(logs)                      # (a)
    # (b) only the chief's model dir has outputs; the other task's checkpoints are gone
    assert not other_dir.exists()
    assert worker_temp_dirs(str(tmp_path / "worker_tmp")) == []
    assert sorted(os.listdir(chief_dir)) == sorted(OUTPUTS)
    record = rundir.read_run_record(str(chief_dir))
    assert record["strategy"]["replicas"] == 2
    assert record["multi_worker"]["input_sharding"] == "file"
    history = rundir.read_history(str(chief_dir / rundir.HISTORY_CSV))
    assert [r["epoch"] for r in history] == [0, 1]
    assert all(np.isfinite(r["loss"]) and "val_auc" in r for r in history)
    chief_log = open(logs[0]).read()
    assert "training input sharded by file" in chief_log
    assert "stage head" in chief_log and "stage fine_tune" in chief_log


# one step of model.multiworker's loop on a fixed global batch of 8 (argv: mode, data, out)
STEP_SCRIPT = '''
import os, sys
from tools import _common  # noqa: F401  (quiet TF first)
import tensorflow as tf
mode, data, out = sys.argv[1:4]
if mode == "multi_worker":           # the strategy first: nothing has started TF yet
    from model import distribute
    strategy = distribute.connect_multi_worker(300)
    task = distribute.cluster_from_env().task_index
else:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored"
                else tf.distribute.get_strategy())
    task = 0
import keras
import numpy as np
from model import augment, classifier, multiworker, training
from model.train_config import TrainConfig
from pipeline import reader
off = augment.AugmentConfig(flip=False, rotation_deg=0, zoom=0, translate=0, brightness=0,
                            contrast=0, saturation=0, hue=0, restore_mask=False)
cfg = TrainConfig(data=data, model_dir=out, backbone="tiny", weights="none", image_size=32,
                  batch_size=8, dropout=0.0, augment=off, optimizer="sgd", momentum=0.0,
                  learning_rate=0.5, schedule="constant", weight_decay=0.0,
                  class_weights=False)
keras.utils.set_random_seed(7)
with strategy.scope():
    model = classifier.build_classifier(training.classifier_config(cfg))
training.compile_stage(model, model, cfg, strategy, 1.0, cfg.learning_rate, 1, 1)
with strategy.scope():
    metrics = multiworker.fresh_metrics(model)
step = multiworker.make_train_step(strategy, model, model.optimizer, model.loss, metrics)
images, labels = next(iter(reader.make_dataset(
    data, "train", False, reader.ReadConfig(image_size=32, batch_size=8))))
def half(ctx):                       # replica r (task r, or device r) gets images 4r..4r+3
    r = ctx.replica_id_in_sync_group
    return images[4 * r:4 * r + 4], labels[4 * r:4 * r + 4]
batch = ((images[:4], labels[:4]) if mode == "half"
         else strategy.experimental_distribute_values_from_function(half))
before = [v.numpy() for v in model.trainable_variables]
step(batch)
np.savez(os.path.join(out, f"{mode}{task}.npz"), *before,
         *[v.numpy() for v in model.trainable_variables])
'''


@pytest.mark.slow
def test_one_step_combines_the_workers_gradients(tiny_data, tmp_path, launch):
    """(c) after step 1 both tasks hold the weights of a one-process MirroredStrategy
    step (two replicas, the same halves, BatchNorm statistics per replica as in the
    multi-worker run) over the same global batch, and not those of a step on one half:
    a task that used only its own half's gradient fails this."""
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    ports = free_ports(2)
    logs = [str(tmp_path / f"{name}.log") for name in ("w0", "w1", "mirrored", "half")]
    procs = [launch([str(script), "multi_worker", tiny_data, str(tmp_path)],
                    tf_config(ports, i), logs[i]) for i in range(2)]
    assert wait_all(procs, logs[:2]) == [0, 0], tails(logs[:2])
    for mode, log in zip(("mirrored", "half"), logs[2:]):
        p = launch([str(script), mode, tiny_data, str(tmp_path)], "", log)
        assert wait_all([p], [log]) == [0], tails([log])

    def weights(name):
        with np.load(tmp_path / f"{name}.npz") as z:
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
        n = len(arrays) // 2
        return arrays[:n], arrays[n:]

    def distance(a, b):
        return max(float(np.abs(x - y).max()) for x, y in zip(a, b))

    (b0, w0), (_, w1) = weights("multi_worker0"), weights("multi_worker1")
    (bm, wm), (_, wh) = weights("mirrored0"), weights("half0")
    assert distance(b0, bm) == 0.0                # the same initial weights
    moved = distance(b0, w0)
    assert moved > 0.01                           # the step changed the weights
    assert distance(w0, w1) < 1e-6                # both tasks hold the same weights
    assert distance(w0, wm) < 1e-5 * max(1.0, moved)    # = the combined gradient's step
    assert distance(w0, wh) > 100 * max(distance(w0, wm), 1e-6)   # not one half's


@pytest.mark.slow
def test_killed_worker_restart_resumes_at_epoch_2(tmp_path, launch):
    """(d) worker 1 is killed (SIGKILL) during epoch 2; the chief ends with exit 1
    keeping epoch 1 in backup/; both restarted resume at epoch 2 (the checkpoint of the
    running stage) and finish. One shard file a split: the input is sharded by record."""
    data = write_tiny_data(str(tmp_path / "data"), {"train": 100, "val": 8, "test": 2},
                           shards=1)
    model_dir = tmp_path / "run"
    flags = [f"--data={data}", f"--model_dir={model_dir}", *TINY, "--epochs=2",
             "--warmup_epochs=0"]
    tmpdir = str(tmp_path / "worker_tmp")
    ports = free_ports(2)
    logs = [str(tmp_path / "a0.log"), str(tmp_path / "a1.log")]
    chief = launch(flags, tf_config(ports, 0), logs[0])
    worker = launch(flags, tf_config(ports, 1), logs[1], tmpdir=tmpdir)
    deadline = time.time() + RUN_TIMEOUT_S
    while "epoch 2/2" not in open(logs[1]).read():
        assert worker.poll() is None and time.time() < deadline, tails(logs)
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    (rc,) = wait_all([chief], logs, timeout=120)       # no hang after a task died
    out = open(logs[0]).read()
    assert rc == 1 and "another task stopped answering" in out, out
    assert "restart every task with the same command to resume" in out
    history = rundir.read_history(str(model_dir / rundir.HISTORY_CSV))
    assert [r["epoch"] for r in history] == [0], "epoch 2 finished before the kill"
    assert (model_dir / rundir.BACKUP).exists()

    ports = free_ports(2)
    logs = [str(tmp_path / "b0.log"), str(tmp_path / "b1.log")]
    procs = [launch(flags, tf_config(ports, 0), logs[0]),
             launch(flags, tf_config(ports, 1), logs[1], tmpdir=tmpdir)]
    assert wait_all(procs, logs) == [0, 0], tails(logs)
    for log in logs:
        out = open(log).read()
        assert "resuming at epoch 2" in out and "epoch 1/2" not in out, out
    assert "training input sharded by record" in open(logs[0]).read()
    history = rundir.read_history(str(model_dir / rundir.HISTORY_CSV))
    assert [r["epoch"] for r in history] == [0, 1]
    record = rundir.read_run_record(str(model_dir))
    assert record["resumed"] is True and record["epochs_run"] == 2
    assert sorted(os.listdir(model_dir)) == sorted(OUTPUTS)     # nothing from the worker
    assert worker_temp_dirs(tmpdir) == []
