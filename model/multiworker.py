"""``fundus-train --strategy=multi_worker``: one model trained by several processes
(machines) under ``MultiWorkerMirroredStrategy``, in a custom training loop.

Why a loop of its own: Keras 3's ``Model.fit`` fails under this strategy on TF 2.21 /
Keras 3.15 (``TensorFlowTrainer._maybe_symbolic_build`` reduces a ``PerReplica`` batch,
then "Invalid reduction dimension 0" inside the step; keras-team/keras#20585, #20329).
This module is TensorFlow's documented loop for the strategy: ``strategy.run`` per step,
``strategy.reduce`` of the loss, ``tf.train.CheckpointManager`` for resume. Everything
else is ``fundus-train``'s own: the model (``training.classifier_config`` ->
``classifier.build_classifier``), the stages (``cfg.stages()``; ``training.compile_stage``:
the trainable fraction, the optimizer and schedule of ``model.optim``, the loss and
metrics of ``training.compile_model``, read back from the compiled model), the inputs
(``train_data.describe_splits`` / ``read_config``, ``pipeline.reader.make_dataset`` with
the strategy's input context), the chief's callbacks (``callbacks.stage_callbacks``:
learning-rate and majority columns, ``SelectBest`` -> ``best.keras`` / ``best.json`` and
early stopping, ``history.csv``, TensorBoard; ``ImageGrid``) and the end
(``training.finish_run``: validation figures, SavedModel, ``run.json``, plots).

Every task runs the same steps in the same order (each collective must be met by all)::

    start   the chief locks and prepares model_dir; all tasks agree on steps per epoch
            and the resume point (else ConfigError: --model_dir must be shared)
    epoch   splits.steps global batches; each task reads its own share of the split
            (shard files dealt over the tasks when there are at least as many files as
            tasks, else every task-th record; logged) and batch_size / replicas images
            per step; gradients are summed over replicas by the optimizer
            -> training metrics (synchronised on read: summed over all tasks)
            -> chief only: validation, callbacks; the others wait at the next collective
            -> stop flag (early stopping, NaN loss): the chief's, all-reduced
            -> checkpoint (model, optimizer, next epoch): the chief's in
               model_dir/backup/<stage>.multi_worker/, every other task's in its own
               temporary dir, deleted right after (TensorFlow's multi-worker guide)
    end     chief: finish_run, backup/ removed; the others write nothing in model_dir

Resume: a killed task makes the others fail within seconds (``PeerLost``, exit 1);
restart every task with the same command: all read the chief's latest checkpoint (so
``--model_dir`` must be one directory all tasks see, e.g. a bucket or NFS path) and go on
at the epoch after the last finished one; a finished stage is kept as
``backup/<stage>.multi_worker.done.weights.h5`` and skipped.

Differences from ``Model.fit`` (by design): validation runs on the chief alone; a NaN
loss stops at the end of the epoch, not the batch; an epoch is ``splits.steps`` steps of
each task's repeated input (a task's share may end mid-step). Refused with a message
naming the flag (:func:`check_supported`): ``--cv``, ``--cache_frozen_prefix``,
``--head_init=logistic``, ``--swa_epochs``, ``--schedule=plateau``,
``--age_loss_weight``, ``--profile_batch``, ``--feature_layers``, ``--epochs=0`` and a
batch not divisible by the tasks.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from typing import Callable, Sequence

import keras
import tensorflow as tf

from model import callbacks as callbacks_lib
from model import classifier, distribute, optim, precision, rundir, train_data, training
from model.train_config import ConfigError, TrainConfig
from pipeline import integrity, reader
from pipeline import manifest as manifest_lib

CKPT_SUFFIX = ".multi_worker"            # backup/<stage>.multi_worker/: TF checkpoints
#: TensorFlow's errors when another task of the cluster died or became unreachable
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError, tf.errors.AbortedError)
SUM = tf.distribute.ReduceOp.SUM


class PeerLost(RuntimeError):
    """Another task stopped answering during the run (killed, crashed, unreachable)."""


# ============================================================================ checks
def check_supported(cfg: TrainConfig, cluster: distribute.Cluster, cv: int = 0) -> None:
    """``ConfigError`` naming the flag when ``cfg`` asks for something this loop does not
    do (see the module docstring), or when ``--batch_size`` is not a multiple of the
    cluster's tasks."""
    why = "is not supported with --strategy=multi_worker"
    refused = [
        (cv, f"--cv={cv} {why}: train one fold per job (--val_fold=i "
             f"--model_dir=DIR/fold_i), then --cv={cv} --collect"),
        (cfg.cache_frozen_prefix, f"--cache_frozen_prefix {why}; drop it"),
        (cfg.head_init != "random", f"--head_init={cfg.head_init} {why}; use random"),
        (cfg.swa_epochs, f"--swa_epochs={cfg.swa_epochs} {why}; use 0"),
        (cfg.schedule == "plateau", f"--schedule=plateau {why} (only the chief sees the "
                                    f"validation split); use cosine, step or constant"),
        (cfg.age_loss_weight > 0, f"--age_loss_weight={cfg.age_loss_weight:g} {why}; use 0"),
        (cfg.profile_batch, f"--profile_batch={cfg.profile_batch} {why}; use 0"),
        (getattr(cfg, "feature_layers", ""),       # fitted on the data before stage 1
         f"--feature_layers={getattr(cfg, 'feature_layers', '')} {why}; drop it"),
        (not cfg.stages(), f"--epochs={cfg.epochs} {why} (nothing to train); use >= 1"),
        (cfg.batch_size % cluster.num_workers,
         f"--batch_size={cfg.batch_size} must be a multiple of the {cluster.num_workers} "
         f"tasks of TF_CONFIG (each task trains on batch_size / tasks images a step)"),
    ]
    for bad, message in refused:
        if bad:
            raise ConfigError(message)


def sharding(cfg: TrainConfig, spec: reader.SplitSpec, tasks: int) -> str:
    """How ``pipeline.reader.make_dataset`` deals ``spec``'s records over ``tasks`` input
    pipelines: ``"file"`` (shard files dealt round-robin, at least one each), ``"record"``
    (fewer files than tasks: every task reads all files, keeps every task-th record) or
    ``"none"`` (one task)."""
    if tasks <= 1:
        return "none"
    files = reader.shard_files(cfg.data, manifest_lib.load(cfg.data), spec)
    return "file" if len(files) >= tasks else "record"       # make_dataset's own rule


# ============================================================================ the step
def fresh_metrics(model: keras.Model) -> list:
    """``[loss tracker, *the metrics compiled into model]``: new objects with the
    compiled metrics' configuration (``training.compile_model``'s list)."""
    config = model.get_compile_config()["metrics"]
    return [keras.metrics.Mean(name="loss")] + [keras.metrics.deserialize(m) for m in config]


def _finite_everywhere(optimizer, grads: list) -> list:
    """Under loss scaling: NaN gradients on every replica unless all replicas' are
    finite, so every ``LossScaleOptimizer`` takes the same branch (the one that applies
    gradients holds an all-reduce; replicas that disagreed would wait for ever)."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return grads
    bad = 1.0 - tf.cast(optimizer.check_finite(grads), tf.float32)
    everywhere = tf.distribute.get_replica_context().all_reduce(SUM, bad) < 0.5
    gate = tf.where(everywhere, 1.0, float("nan"))
    return [None if g is None else g * tf.cast(gate, g.dtype) for g in grads]


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model, optimizer,
                    loss_fn, metrics: Sequence) -> Callable:
    """``step(batch) -> global mean loss`` (a ``tf.function``): one optimizer step over
    the replicas' batches (``(images, labels[, weights])`` per replica, e.g.
    ``next(iterator)`` of a distributed dataset). The Keras loss returns the replica's
    batch mean divided by the replicas and the optimizer sums gradients over replicas,
    so the update is the mean gradient of the global batch (as ``fit`` under
    ``MirroredStrategy``). ``metrics``: :func:`fresh_metrics` made in the strategy's
    scope (updated per replica, summed over replicas when read)."""
    replicas = strategy.num_replicas_in_sync
    tracker, others = metrics[0], list(metrics[1:])

    def replica_step(images, labels, weights=None):
        y = tf.reshape(labels, [-1, 1])
        with tf.GradientTape() as tape:
            p = model(images, training=True)
            loss = loss_fn(y, p, sample_weight=weights)
            if model.losses:
                loss += tf.add_n(model.losses) / replicas
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = _finite_everywhere(optimizer, tape.gradient(scaled, variables))
        optimizer.apply_gradients(zip(grads, variables))
        tracker.update_state(loss * replicas, sample_weight=tf.shape(y)[0])
        for m in others:
            m.update_state(y, p)
        return loss

    @tf.function
    def step(batch):
        return strategy.reduce(SUM, strategy.run(replica_step, args=tuple(batch)), axis=None)
    return step


def validate(predict: Callable, dataset, loss_fn, metrics: Sequence) -> dict[str, float]:
    """``{"val_loss", "val_<metric>"}`` of ``predict`` (images -> probabilities) over one
    pass of ``dataset``, with :func:`fresh_metrics` made outside any strategy scope."""
    for m in metrics:
        m.reset_state()
    tracker, others = metrics[0], metrics[1:]
    for images, labels in dataset:
        y = tf.reshape(labels, [-1, 1])
        p = predict(images)
        tracker.update_state(loss_fn(y, p), sample_weight=tf.shape(y)[0])
        for m in others:
            m.update_state(y, p)
    return {f"val_{m.name}": float(m.result()) for m in metrics}


# ========================================================================== agreement
def agree(strategy: tf.distribute.Strategy, values: dict[str, float]) -> None:
    """``ConfigError`` unless every task holds the same ``values`` (steps per epoch, the
    resume point): a task that cannot see the chief's ``backup/`` or reads other data
    would otherwise wait for ever in a collective the others never reach."""
    rows = distribute.gather(strategy, list(values.values()))
    differ = [f"{k} ({' vs '.join(f'{row[i]:g}' for row in rows)} on the "
              f"{len(rows)} replicas)" for i, k in enumerate(values)
              if len({row[i] for row in rows}) > 1]
    if differ:
        raise ConfigError(
            f"--strategy=multi_worker: the tasks disagree on {', '.join(differ)}: every "
            f"task needs the same flags and --data, and --model_dir must be one directory "
            f"all tasks see (they resume from the chief's {rundir.BACKUP}/)")


# ======================================================================== checkpoints
def _ckpt_dir(backup_root: str, stage: str) -> str:
    return os.path.join(backup_root, stage + CKPT_SUFFIX)


def _done_file(backup_root: str, stage: str) -> str:
    return os.path.join(backup_root, f"{stage}{CKPT_SUFFIX}.done.weights.h5")


def resume_point(cfg: TrainConfig, backup_root: str) -> tuple[int, int]:
    """``(finished stages, first epoch to run)`` from the chief's ``backup_root``."""
    stages = cfg.stages()
    done = 0
    while done < len(stages) and os.path.exists(_done_file(backup_root, stages[done][0])):
        done += 1
    if done == len(stages):
        return done, stages[-1][2]
    latest = tf.train.latest_checkpoint(_ckpt_dir(backup_root, stages[done][0]))
    if latest is None:
        return done, stages[done][1]
    epoch = tf.train.load_checkpoint(latest).get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")
    return done, int(epoch)


# ============================================================================ the run
class _Run:
    """One multi-worker training run's state shared by its stages."""

    def __init__(self, cfg: TrainConfig, cluster: distribute.Cluster, strategy, splits,
                 image_size: int, model, callbacks: Sequence):
        self.cfg, self.cluster, self.strategy = cfg, cluster, strategy
        self.splits, self.model = splits, model
        self.chief = cluster.is_chief
        self.backup_root = os.path.join(cfg.model_dir, rundir.BACKUP)
        self.logs_dir = os.path.join(cfg.model_dir, rundir.LOGS)
        self.extra = keras.callbacks.CallbackList(list(callbacks), model=model)
        rc = train_data.read_config(cfg, image_size, True)
        self.inputs = iter(strategy.distribute_datasets_from_function(
            lambda ctx: reader.make_dataset(cfg.data, splits.train_spec, True, rc,
                                            input_context=ctx).repeat()))
        self.val_ds = reader.make_dataset(   # validation: the chief's alone
            cfg.data, splits.val_spec, False, train_data.read_config(cfg, image_size, False)
        ) if self.chief else None
        self.predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self.stopped_early = self.terminated_nan = False

    def say(self, text: str) -> None:
        if self.cfg.verbose:
            print(f"[fundus-train] {text}", flush=True)

    def chief_callbacks(self, name: str, first: int, peak: float, grid) -> list:
        cbs = [cb for cb in callbacks_lib.stage_callbacks(
                   self.cfg, name, first, peak, run_dir=self.cfg.model_dir,
                   logs_dir=self.logs_dir, majorities=self.splits.majorities,
                   target=self.model, keep=self.cfg.select)
               # the step schedule runs on every task (below); NaN: the epoch's loss
               if not isinstance(cb, (keras.callbacks.LearningRateScheduler,
                                      keras.callbacks.TerminateOnNaN))]
        if grid is not None:
            cbs.append(callbacks_lib.ImageGrid(os.path.join(self.logs_dir, "images"), grid))
        return cbs

    def stage(self, name: str, first: int, end: int, fraction: float, peak: float,
              grid) -> bool:
        """Train epochs ``first .. end - 1`` of one stage (resuming inside it); True
        when training stops here (early stopping or a NaN loss)."""
        cfg, strategy, model = self.cfg, self.strategy, self.model
        n_trainable = training.compile_stage(model, model, cfg, strategy, fraction, peak,
                                             self.splits.steps, end - first)
        optimizer = model.optimizer
        with strategy.scope():
            optimizer.build(model.trainable_variables)
            metrics = fresh_metrics(model)
        epoch_var = tf.Variable(first, dtype=tf.int64, trainable=False)
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
        chief_dir = _ckpt_dir(self.backup_root, name)
        write_dir = chief_dir if self.chief else tempfile.mkdtemp(
            prefix=f"fundus-train-{self.cluster.task_type}{self.cluster.task_index}-")
        manager = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=1)
        latest = tf.train.latest_checkpoint(chief_dir)
        if latest:
            ckpt.restore(latest).expect_partial()
        start = int(epoch_var.numpy())
        step = make_train_step(strategy, model, optimizer, model.loss, metrics)
        val_metrics = fresh_metrics(model) if self.chief else []
        cbs = keras.callbacks.CallbackList(
            self.chief_callbacks(name, first, peak, grid) if self.chief else [], model=model)
        if self.chief:
            self.say(f"stage {name}: epochs {start + 1}..{end}, {n_trainable} backbone "
                     f"layers trainable, peak lr {peak:g}")
        model.stop_training = False
        cbs.on_train_begin()
        stop = False
        try:
            for epoch in range(start, end):
                t0 = time.time()
                if cfg.schedule == "step":           # every task: same rate everywhere
                    optimizer.learning_rate = optim.step_schedule(cfg, peak, first)(epoch)
                for m in metrics:
                    m.reset_state()
                self.say(f"{self.cluster.name}: epoch {epoch + 1}/{cfg.epochs}")
                cbs.on_epoch_begin(epoch)
                self.extra.on_epoch_begin(epoch)
                for b in range(self.splits.steps):
                    step(next(self.inputs))
                    self.extra.on_train_batch_end(b)
                logs = {m.name: float(m.result()) for m in metrics}  # summed over tasks
                seconds = time.time() - t0
                nan = not math.isfinite(logs["loss"])
                if self.chief:
                    logs.update(validate(self.predict, self.val_ds, model.loss, val_metrics))
                    cbs.on_epoch_end(epoch, logs)
                    stop = bool(model.stop_training) or nan
                    self.say(f"epoch {epoch + 1}/{cfg.epochs}: {seconds:.1f} s "
                             f"({1000 * seconds / self.splits.steps:.0f} ms/step), " +
                             ", ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())))
                stop = distribute.any_task(strategy, stop)
                epoch_var.assign(epoch + 1)
                manager.save()
                if not self.chief:
                    shutil.rmtree(write_dir, ignore_errors=True)
                if stop:
                    self.terminated_nan, self.stopped_early = nan, not nan
                    break
        finally:
            if not self.chief:
                shutil.rmtree(write_dir, ignore_errors=True)
        cbs.on_train_end()
        if self.chief:
            rundir.save_weights(model, _done_file(self.backup_root, name))
            shutil.rmtree(chief_dir, ignore_errors=True)
        return stop


def train(cfg: TrainConfig, cluster: distribute.Cluster, strategy: tf.distribute.Strategy,
          callbacks: Sequence = ()) -> dict | None:
    """Train ``cfg`` as task ``cluster`` of a multi-worker cluster (``strategy``: from
    ``distribute.connect_multi_worker``, built before anything else touched TensorFlow).
    The chief (which must hold ``--model_dir``'s lock) writes the model dir and returns
    the ``run.json`` dict; the other tasks write nothing there and return None.
    ``callbacks``: Keras callbacks every task calls (epoch begin, batch end: e.g.
    ``StopOnRequest``). Raises ``ConfigError`` (bad flags or inputs, tasks that
    disagree), :class:`PeerLost` (another task died), ``integrity.DataError``."""
    check_supported(cfg, cluster)
    started = time.time()
    read: tuple[str, ...] = ()
    try:
        policy = precision.set_policy(cfg.precision)
        splits = train_data.describe_splits(cfg)
        read = splits.train_spec.splits + splits.val_spec.splits
        manifest_lib.check_shards(cfg.data, read)
        image_size = cfg.input_size()
        if cfg.batch_size % strategy.num_replicas_in_sync:
            raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the "
                             f"{strategy.num_replicas_in_sync} replicas of the cluster")
        resumed = False
        if cluster.is_chief:
            os.makedirs(cfg.model_dir, exist_ok=True)
            resumed = rundir.prepare_model_dir(cfg.model_dir, cfg.to_json(), cfg.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        raise ConfigError(str(e)) from e
    shards = sharding(cfg, splits.train_spec, cluster.num_workers)
    try:
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            model = classifier.build_classifier(training.classifier_config(cfg))
        run = _Run(cfg, cluster, strategy, splits, image_size, model, callbacks)
        run.say(f"{cluster.name}: {strategy.num_replicas_in_sync} replicas, global batch "
                f"{cfg.batch_size} ({cfg.batch_size // strategy.num_replicas_in_sync} per "
                f"replica), {splits.steps} steps per epoch; training input sharded by "
                f"{shards}")
        distribute.gather(strategy, [0.0])        # a barrier: the chief prepared model_dir
        done, epoch = resume_point(cfg, run.backup_root)
        agree(strategy, {"steps per epoch": splits.steps, "finished stages": done,
                         "resume epoch": epoch})
        stages = cfg.stages()
        if done:
            model.load_weights(_done_file(run.backup_root, stages[done - 1][0]))
        if epoch > 0:
            run.say(f"{cluster.name}: resuming at epoch {epoch + 1}")
        grid = None
        if cluster.is_chief and epoch == 0 and cfg.image_grid > 0:
            grid = train_data.sample_images(cfg, splits.train_spec, image_size)
        run.extra.on_train_begin()
        with integrity.reading(cfg.data, read):
            for name, first, end, fraction, peak in stages[done:]:
                if run.stage(name, first, end, fraction, peak, grid if first == 0 else None):
                    break
        run.extra.on_train_end()
    except PEER_ERRORS as e:
        raise PeerLost(
            f"--strategy=multi_worker: another task stopped answering ({type(e).__name__}"
            f"; TensorFlow's lines above say more); the chief's --model_dir={cfg.model_dir} "
            f"keeps the last finished epoch in {rundir.BACKUP}/: restart every task with "
            f"the same command to resume") from e
    if not cluster.is_chief:
        run.say(f"{cluster.name}: done; the chief writes {cfg.model_dir}")
        return None
    outcome = training.StagesOutcome(run.stopped_early, run.terminated_nan)
    record = training.finish_run(
        cfg, cfg.model_dir, splits, strategy=strategy, policy=policy, outcome=outcome,
        resumed=resumed, started=started,
        extra={"multi_worker": {"tasks": [list(t) for t in cluster.tasks],
                                "input_sharding": shards}})
    shutil.rmtree(run.backup_root, ignore_errors=True)
    run.say(f"{cfg.select} epoch {record['best']['epoch']}: validation AUC "
            f"{record['val']['auc']:.4f} per image; model "
            f"{cfg.model_dir}/{rundir.BEST_MODEL}")
    return record
