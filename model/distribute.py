"""Strategy selection: ``--strategy=auto|mirrored|one_device|multi_worker``.

* ``auto``: ``MirroredStrategy`` over all GPUs when there are two or more, else the
  default strategy (one GPU, or the CPU);
* ``mirrored``: ``MirroredStrategy`` over all GPUs, or over all logical CPU devices when
  there is no GPU (tests configure two logical CPUs);
* ``one_device``: ``OneDeviceStrategy`` on the first GPU, else ``/cpu:0``;
* ``multi_worker``: ``MultiWorkerMirroredStrategy``; the cluster comes from the
  ``TF_CONFIG`` environment variable (:func:`cluster_from_env` checks it). Build it with
  :func:`connect_multi_worker` FIRST in the process: TensorFlow refuses to configure
  collective ops once its runtime started ("Collective ops must be configured at program
  startup"), and listing logical devices, creating a tensor or reading a dataset starts
  it. :func:`connect_multi_worker` first waits for every task (:func:`rendezvous`, with
  a timeout: TensorFlow itself waits for ever). ``fundus-train`` trains with it through
  :mod:`model.multiworker` (Keras 3's ``Model.fit`` fails under this strategy on TF
  2.21).

Build the model and its optimizer inside ``strategy.scope()``; batch sizes are GLOBAL
(split across replicas).

One strategy object per name per process: :func:`make_strategy` returns the same object
on every call. Two ``MirroredStrategy`` instances in one process (e.g. the folds of a CV
run) can pair up each other's collective all-reduces and fail with "Shape mismatch in
the collective instance" (seen on TF 2.21 with two logical CPUs).
"""
from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import socket
import threading
import time
from typing import Mapping, Sequence

import tensorflow as tf

CHOICES = ("auto", "mirrored", "one_device", "multi_worker")
_STRATEGIES: dict[str, tf.distribute.Strategy] = {}
ROLES = ("chief", "worker")          # the TF_CONFIG task types MultiWorkerMirrored uses
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Return the ``tf.distribute.Strategy`` for ``--strategy=name`` (cached per name)."""
    key = str(name).strip().lower()
    if key not in CHOICES:
        raise ValueError(f"--strategy={name!r} is not one of {', '.join(CHOICES)}")
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _new_strategy(key)
    return _STRATEGIES[key]


def _new_strategy(key: str) -> tf.distribute.Strategy:
    if key == "multi_worker":       # before anything lists devices (starts the runtime)
        cluster_from_env()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if key == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.get_strategy()
    if key == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


# ===================================================================== multi-worker
@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a ``TF_CONFIG`` cluster.

    ``tasks``: every ``(type, index, "host:port")`` in TensorFlow's worker order (the
    chief first when there is one); ``task_type`` / ``task_index``: this process.
    """

    tasks: tuple[tuple[str, int, str], ...]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        """Processes training together (one replica each on a CPU or one-GPU machine)."""
        return len(self.tasks)

    @property
    def is_chief(self) -> bool:
        """The task that writes the model dir: ``chief``, else ``worker`` 0."""
        if any(t[0] == "chief" for t in self.tasks):
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def name(self) -> str:
        """``worker 1 of 2 (127.0.0.1:2223)``-style description of this task."""
        address = next(a for t, i, a in self.tasks
                       if (t, i) == (self.task_type, self.task_index))
        return (f"{self.task_type} {self.task_index} of {self.num_workers} tasks "
                f"({address}{', chief' if self.is_chief else ''})")


def cluster_from_env(environ: Mapping[str, str] | None = None) -> Cluster:
    """Parse and check ``TF_CONFIG`` (default: ``os.environ``) for
    ``--strategy=multi_worker``; ``ValueError`` naming TF_CONFIG and the fix when it is
    unset, not JSON, or lacks a ``cluster`` of ``chief``/``worker`` ``host:port`` lists
    or a ``task`` in it."""
    env = os.environ if environ is None else environ
    fix = f"set it on every machine, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (same cluster " \
          f"everywhere, each machine its own task)"
    text = (env.get("TF_CONFIG") or "").strip()
    if not text:
        raise ValueError(f"--strategy=multi_worker needs the TF_CONFIG environment "
                         f"variable; {fix}")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG is not valid JSON ({e}); "
                         f"{fix}") from e
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG has no \"cluster\" object; "
                         f"{fix}")
    other = sorted(set(cluster) - set(ROLES))
    if other:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG cluster has {other}; "
                         f"MultiWorkerMirroredStrategy takes only {' and '.join(ROLES)}")
    tasks = []
    for role in ROLES:
        addresses = cluster.get(role, [])
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0]
                for a in addresses):
            raise ValueError(f"--strategy=multi_worker: TF_CONFIG cluster.{role} must be a "
                             f"list of \"host:port\" strings, not {addresses!r}")
        tasks += [(role, i, a) for i, a in enumerate(addresses)]
    if not tasks or len(cluster.get("chief", [])) > 1:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG cluster needs at least one "
                         f"worker and at most one chief; {fix}")
    task = cfg.get("task")
    if not isinstance(task, dict) or task.get("type") not in ROLES:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG needs \"task\": {{\"type\": "
                         f"\"chief\" or \"worker\", \"index\": i}} naming this machine; "
                         f"got {task!r}")
    index = task.get("index", 0)
    n = len(cluster.get(task["type"], []))
    if not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"--strategy=multi_worker: TF_CONFIG task index {index!r} is not "
                         f"one of the {n} {task['type']} addresses of the cluster")
    return Cluster(tuple(tasks), task["type"], index)


class ClusterUnreachable(RuntimeError):
    """Some task of ``TF_CONFIG`` did not answer within the start-up timeout."""


def rendezvous(cluster: Cluster, timeout_s: float) -> None:
    """Wait until every task of ``cluster`` runs, for at most ``timeout_s`` seconds,
    before TensorFlow takes this task's port: each task listens on its own ``TF_CONFIG``
    port and says hello to every other; it is done once it has reached every task and
    heard from every task (so no task still needs its port when it closes it).

    TensorFlow's own start-up waits for missing workers without a limit, inside C++ that
    holds the interpreter lock (no Python thread, exception or SIGTERM gets through), so
    the wait happens here. Raises :class:`ClusterUnreachable` naming the silent tasks,
    ``ValueError`` when this task's port is taken or a task's TF_CONFIG lists another
    cluster."""
    me = cluster.tasks.index(next(t for t in cluster.tasks
                                  if t[:2] == (cluster.task_type, cluster.task_index)))
    mine = [list(t) for t in cluster.tasks]
    port = int(cluster.tasks[me][2].rpartition(":")[2])
    try:
        server = (socket.create_server(("", port), family=socket.AF_INET6,
                                       dualstack_ipv6=True)
                  if socket.has_dualstack_ipv6() else socket.create_server(("", port)))
    except OSError as e:
        raise ValueError(f"--strategy=multi_worker: this task's TF_CONFIG address "
                         f"{cluster.tasks[me][2]} cannot be bound ({e}); free the port or "
                         f"change TF_CONFIG") from e
    server.settimeout(0.2)
    heard: set[int] = set()
    others: list[str] = []             # tasks whose TF_CONFIG lists another cluster
    done = threading.Event()

    def serve() -> None:                       # answer every task's hello
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:                    # timeout, or closed
                continue
            with conn:
                try:
                    conn.settimeout(5.0)
                    hello = json.loads(conn.makefile("r").readline())
                    same = hello["tasks"] == mine
                    conn.sendall(b"ok\n" if same else b"other cluster\n")
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                if same:
                    heard.add(int(hello["from"]))
                else:
                    others.append(f"task {hello.get('from')} sent {hello['tasks']}")

    listener = threading.Thread(target=serve, daemon=True)
    listener.start()
    hello = (json.dumps({"tasks": mine, "from": me}) + "\n").encode()
    reached: set[int] = set()
    peers = set(range(len(mine))) - {me}
    deadline = time.monotonic() + timeout_s
    try:
        while (reached != peers or not peers <= heard) and not others:
            if time.monotonic() > deadline:
                break
            for j in sorted(peers - reached):
                host, _, p = mine[j][2].rpartition(":")
                try:
                    with socket.create_connection((host.strip("[]"), int(p)),
                                                  timeout=2.0) as c:
                        c.settimeout(5.0)
                        c.sendall(hello)
                        answer = c.makefile("r").readline().strip()
                except OSError:
                    continue
                if answer == "ok":
                    reached.add(j)
                elif answer == "other cluster":
                    others.append(f"{mine[j][0]} {mine[j][1]} ({mine[j][2]}) answered "
                                  f"{answer!r}")
            time.sleep(0.2)
    finally:
        done.set()
        listener.join()
        server.close()
    if others:
        raise ValueError(f"--strategy=multi_worker: the tasks' TF_CONFIG list different "
                         f"clusters (this task's: {mine}; {others[0]}); give every machine "
                         f"the same cluster")
    silent = sorted(peers - (reached & heard))
    if silent:
        names = ", ".join(f"{mine[j][0]} {mine[j][1]} ({mine[j][2]})" for j in silent)
        raise ClusterUnreachable(
            f"--strategy=multi_worker: {names} did not answer (both ways) within "
            f"--multi_worker_timeout_s={timeout_s:g} s (this is {cluster.name}): start "
            f"fundus-train with the same flags and TF_CONFIG cluster on every machine and "
            f"check that the addresses are reachable")


def connect_multi_worker(timeout_s: float) -> tf.distribute.Strategy:
    """The ``MultiWorkerMirroredStrategy`` of ``TF_CONFIG`` (:func:`make_strategy`), once
    every task answered :func:`rendezvous` within ``timeout_s`` seconds, checked by one
    all-reduce. Call it before anything starts the TensorFlow runtime.

    Should TensorFlow still wait after the rendezvous (a task died in between), a
    C-level watchdog (``faulthandler``: the only timer that runs while TensorFlow holds
    the interpreter lock) ends the process with exit status 1 after another
    ``timeout_s``, printing the stacks of its threads."""
    rendezvous(cluster_from_env(), timeout_s)
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    try:
        strategy = make_strategy("multi_worker")
        strategy.reduce(tf.distribute.ReduceOp.SUM,
                        strategy.run(lambda: tf.constant(1.0)), axis=None)
    finally:
        faulthandler.cancel_dump_traceback_later()
    return strategy


def gather(strategy: tf.distribute.Strategy, values: Sequence[float]) -> list[list[float]]:
    """Every replica's ``values``, one row per replica in replica order (a collective:
    every task calls it, with as many values)."""
    v = tf.constant([[float(x) for x in values]], tf.float64)
    return strategy.gather(strategy.run(lambda: v), axis=0).numpy().tolist()


def any_task(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True when ``flag`` is True on any task (a collective)."""
    return any(row[0] for row in gather(strategy, [float(flag)]))


def describe(strategy: tf.distribute.Strategy) -> dict:
    """A JSON-able description for ``run.json``: class name and replica count."""
    return {"name": type(strategy).__name__,
            "replicas": int(strategy.num_replicas_in_sync)}


def is_chief() -> bool:
    """True unless TF_CONFIG names this task a non-chief worker (worker index > 0);
    True without TF_CONFIG. Only the chief writes the model directory in multi-worker
    runs."""
    if not (os.environ.get("TF_CONFIG") or "").strip():
        return True
    return cluster_from_env().is_chief
