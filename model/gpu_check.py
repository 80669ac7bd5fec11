"""``fundus-gpu-check``'s library: one run that shows a GPU machine trains this project right
and how fast (the job is :mod:`tools.gpu_check`).

:func:`run_checks` runs three checks and writes one JSON with every figure:

a. ``mixed_float16``: a few optimizer steps of the classifier (``model.classifier``,
   compiled by ``model.training.compile_model`` with ``model.optim.make_optimizer``)
   under the ``mixed_float16`` policy (``model.precision``), fed by the real pipeline.
   Passes when Keras 3 wrapped the optimizer in ``keras.optimizers.LossScaleOptimizer``,
   every step's loss and the final loss scale are finite, the ``sex`` head computes in
   float32 and its predictions are float32 while the backbone's convolutions compute in
   float16;
b. ``mirrored``: a few steps under ``model.distribute.make_strategy("mirrored")`` fed by
   ``pipeline.reader.distributed_dataset``. Passes when the replicas equal the GPUs (2
   logical CPUs with ``cpu_smoke``) and every step's loss is finite;
c. ``speed``: training images/s of each model of the preset (MobileNetV2 at 384 px and
   EfficientNetV2-S at 512 px on a GPU; weights ``none``, policy ``auto``) fed by the
   pipeline (``pipeline.reader.make_dataset``, training mode) against a constant batch
   (``model.bench.train_rate``, alternating rounds as ``model.bench.measure_training``),
   and the pipeline's cold and cached epoch rates with their bounds
   (``pipeline.bench.measure_set`` through ``model.bench.make_consumer``). Passes when
   every rate is finite and positive.

The data: ``data`` (a ``fundus-convert`` output, its ``train`` split) or a small synthetic
set written (``pipeline.synthetic``) and converted (``pipeline.writer``) in a temporary
folder, removed at the end. A check that raises is recorded as failed with its error and
the other checks still run. Rates are images/s; durations seconds; sizes pixels.

``cpu_smoke`` (:data:`SMOKE`): the same code on CPU at tiny sizes (the ``tiny`` backbone at
32 and 48 px, batch 8, 3 steps, 16 synthetic patients), MirroredStrategy over two
logical CPU devices (:func:`configure_cpu_devices`, called before TensorFlow initialises).
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from model import augment, bench, classifier, distribute, optim, precision, rundir, training
from model.train_config import TrainConfig
from pipeline import bench as input_bench
from pipeline import fileio, reader, synthetic, writer

SMOKE_CPU_DEVICES = 2     # logical CPU devices MirroredStrategy spans with cpu_smoke
CHECKS = ("mixed_float16", "mirrored", "speed")


@dataclasses.dataclass(frozen=True)
class Preset:
    """The sizes of one kind of run.

    Attributes:
      models: (backbone, image size px) pairs whose training images/s are measured.
      check_backbone, check_size: the model of the mixed_float16 and mirrored checks.
      batch_size: GLOBAL batch size of every training step.
      check_steps: optimizer steps of checks a and b (one loss each).
      train_steps, warmup_steps, rounds: timed steps, untimed steps first, alternating
        constant / fed rounds (each figure is the median over rounds).
      patients, photo_size, stored_size: the synthetic set (2 eyes a patient, photo
        widths px, converted size px).
      epochs, min_seconds, cold_repeats: ``pipeline.bench.measure_set``'s timings.
    """

    models: tuple[tuple[str, int], ...]
    check_backbone: str
    check_size: int
    batch_size: int
    check_steps: int
    train_steps: int
    warmup_steps: int
    rounds: int
    patients: int
    photo_size: tuple[int, int]
    stored_size: int
    epochs: int
    min_seconds: float
    cold_repeats: int


GPU = Preset(models=(("mobilenet_v2", 384), ("efficientnet_v2_s", 512)),
             check_backbone="mobilenet_v2", check_size=224, batch_size=64, check_steps=10,
             train_steps=20, warmup_steps=3, rounds=2, patients=128, photo_size=(900, 1200),
             stored_size=512, epochs=3, min_seconds=1.0, cold_repeats=2)
SMOKE = Preset(models=(("tiny", 32), ("tiny", 48)), check_backbone="tiny",
               check_size=32, batch_size=8, check_steps=3, train_steps=3, warmup_steps=1,
               rounds=1, patients=16, photo_size=(128, 160), stored_size=64, epochs=2,
               min_seconds=0.0, cold_repeats=1)


def configure_cpu_devices(n: int = SMOKE_CPU_DEVICES) -> None:
    """Split the CPU into ``n`` logical devices (MirroredStrategy's replicas in the CPU
    smoke run). Must run before TensorFlow initialises its runtime (the first op or
    device listing of logical devices); raises ``RuntimeError`` otherwise."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def gpu_count() -> int:
    """Physical GPUs TensorFlow sees."""
    return len(tf.config.list_physical_devices("GPU"))


def check_arguments(cpu_smoke: bool, data: str | None, originals: str | None,
                    batch_size: int) -> int:
    """Start-up checks; returns the batch size to use. ``ValueError`` naming the flag:
    no GPU without ``--cpu_smoke``, ``--batch_size`` < 0, a ``--data`` train split smaller
    than one batch; ``FileNotFoundError``/``KeyError`` from ``pipeline.bench.check_inputs``
    for a bad ``--data``/``--originals``."""
    if not cpu_smoke and gpu_count() == 0:
        raise ValueError("no GPU visible to TensorFlow; run on a GPU machine, or pass "
                         "--cpu_smoke for the CPU smoke version (tiny sizes)")
    if batch_size < 0:
        raise ValueError(f"--batch_size={batch_size}: need >= 0 (0: the preset's)")
    batch = batch_size or (SMOKE if cpu_smoke else GPU).batch_size
    if data:
        n = input_bench.check_inputs(data, "train", originals)
        if n < batch:
            raise ValueError(f"--data={data}: its train split has {n} records, fewer than "
                             f"one batch of {batch}; lower --batch_size")
    return batch


def make_data(preset: Preset, workdir: str) -> str:
    """A small synthetic set written and converted under ``workdir`` (every eye in the
    train split, every eye kept); returns the converted directory."""
    made = synthetic.make_synthetic(os.path.join(workdir, "synthetic"),
                                    n_patients=preset.patients, formats=("full_df",),
                                    size_range=preset.photo_size, seed=0,
                                    workers=os.cpu_count() or 1)
    out = os.path.join(workdir, "converted")
    writer.convert(writer.ConvertConfig(
        annotations=[made["full_df"]], images=[made["images"]], output=out,
        image_size=preset.stored_size, split=(1.0, 0.0, 0.0), selection="all",
        progress=False))
    return out


def describe_devices() -> dict[str, Any]:
    """Physical and logical devices, and each GPU's name and compute capability."""
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({"name": gpu.name, "device_name": details.get("device_name"),
                     "compute_capability": list(details.get("compute_capability") or [])})
    return {"physical": [d.name for d in tf.config.list_physical_devices()],
            "logical": [d.name for d in tf.config.list_logical_devices()],
            "gpus": gpus, "cpu_cores": os.cpu_count()}


def describe_versions() -> dict[str, Any]:
    """``model.rundir.versions()`` plus TensorFlow's CUDA / cuDNN build versions."""
    out = dict(rundir.versions())
    info = tf.sysconfig.get_build_info()
    for key in ("cuda_version", "cudnn_version", "is_cuda_build"):
        out[key] = info.get(key)
    return out


# ----------------------------------------------------------------------------- pieces

def _train_config(data: str, backbone: str, size: int, batch: int) -> TrainConfig:
    """The ``TrainConfig`` the checks compile with (Adam, constant lr, no regularisers)."""
    return TrainConfig(data=data, backbone=backbone, weights="none", image_size=size,
                       batch_size=batch, optimizer="adam", schedule="constant",
                       learning_rate=1e-3, weight_decay=0.0, dropout=0.0,
                       class_weights=False, verbose=0, seed=0)


def _build(cfg: TrainConfig, augment_on: bool = True) -> keras.Model:
    """The classifier of ``cfg``, whole backbone trainable, compiled as ``fundus-train``
    compiles it (under the current policy and strategy scope)."""
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone=cfg.backbone, image_size=cfg.image_size, weights="none", dropout=0.0,
        augment=augment.AugmentConfig(seed=0) if augment_on else None, seed=0))
    classifier.set_backbone_trainable(model, 1.0)
    training.compile_model(model, cfg, optim.make_optimizer(cfg, cfg.learning_rate))
    return model


def _read_config(size: int, batch: int) -> reader.ReadConfig:
    return reader.ReadConfig(image_size=size, batch_size=batch, normal_only=False, seed=0)


def _finite(values) -> bool:
    return bool(values) and all(math.isfinite(float(v)) for v in values)


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one check; an exception fails it (``error`` holds ``Type: message``)."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - a failed check is a result, the others still run
        out = {"passed": False, "error": f"{type(e).__name__}: {e}"}
    out["seconds"] = time.perf_counter() - t0
    print(f"check {name}: {'passed' if out['passed'] else 'FAILED'} "
          f"({out['seconds']:.1f} s){' ' + out['error'] if 'error' in out else ''}", flush=True)
    keras.backend.clear_session()
    gc.collect()
    return out


# ----------------------------------------------------------------------------- checks

def check_mixed_float16(data: str, preset: Preset, batch: int) -> dict[str, Any]:
    """Check a (module doc): ``check_steps`` steps under ``mixed_float16``."""
    before = keras.mixed_precision.global_policy().name
    try:
        policy = precision.set_policy("mixed_float16")
        cfg = _train_config(data, preset.check_backbone, preset.check_size, batch)
        model = _build(cfg)
        ds = reader.make_dataset(data, "train", True, _read_config(preset.check_size, batch))
        hist = model.fit(ds.repeat(), steps_per_epoch=1, epochs=preset.check_steps,
                         verbose=0)
        opt = model.optimizer
        scale = getattr(opt, "dynamic_scale", None)
        loss_scale = None if scale is None else float(keras.ops.convert_to_numpy(scale))
        sex = model.get_layer(classifier.SEX_OUTPUT)
        convs = [layer for layer in classifier.backbone_of(model).layers
                 if isinstance(layer, keras.layers.Conv2D)]
        images = next(iter(ds))[0]
        pred = model.predict(images, verbose=0)
        losses = [float(v) for v in hist.history["loss"]]
        out = {"policy": policy, "optimizer": type(opt).__name__,
               "inner_optimizer": type(getattr(opt, "inner_optimizer", opt)).__name__,
               "loss": losses, "loss_scale": loss_scale,
               "sex_compute_dtype": sex.compute_dtype,
               "sex_output_dtype": str(np.asarray(pred).dtype),
               "conv_compute_dtype": convs[0].compute_dtype if convs else None,
               "backbone": cfg.backbone, "image_size": cfg.image_size, "batch_size": batch}
        out["passed"] = bool(
            isinstance(opt, keras.optimizers.LossScaleOptimizer) and _finite(losses)
            and loss_scale is not None and math.isfinite(loss_scale)
            and out["sex_compute_dtype"] == "float32" and out["sex_output_dtype"] == "float32"
            and out["conv_compute_dtype"] == "float16" and np.all(np.isfinite(pred)))
        return out
    finally:
        keras.mixed_precision.set_global_policy(before)


def check_mirrored(data: str, preset: Preset, batch: int, expected: int) -> dict[str, Any]:
    """Check b (module doc): ``check_steps`` steps under MirroredStrategy, policy auto."""
    before = keras.mixed_precision.global_policy().name
    try:
        policy = precision.set_policy("auto")
        strategy = distribute.make_strategy("mirrored")
        cfg = _train_config(data, preset.check_backbone, preset.check_size, batch)
        with strategy.scope():
            model = _build(cfg)
        ds = reader.distributed_dataset(strategy, data, "train", True,
                                        _read_config(preset.check_size, batch))
        hist = model.fit(ds, steps_per_epoch=1, epochs=preset.check_steps, verbose=0)
        losses = [float(v) for v in hist.history["loss"]]
        out = {"policy": policy, "strategy": distribute.describe(strategy),
               "replicas": int(strategy.num_replicas_in_sync), "expected_replicas": expected,
               "devices": list(strategy.extended.worker_devices), "loss": losses,
               "backbone": cfg.backbone, "image_size": cfg.image_size, "batch_size": batch}
        out["passed"] = bool(out["replicas"] == expected and _finite(losses))
        return out
    finally:
        keras.mixed_precision.set_global_policy(before)


def measure_model(data: str, backbone: str, size: int, batch: int,
                  preset: Preset) -> dict[str, Any]:
    """Training images/s of one model fed by the pipeline against a constant batch
    (``model.bench.compare_feedings``: the rounds alternate, constant first)."""
    model = _build(_train_config(data, backbone, size, batch))
    ds = reader.make_dataset(data, "train", True, _read_config(size, batch))
    return {"backbone": backbone, "image_size": size, "batch_size": batch,
            "params": int(model.count_params()),
            **bench.compare_feedings(model, ds, batch, preset.train_steps,
                                     preset.warmup_steps, preset.rounds)}


def check_speed(data: str, originals: str | None, preset: Preset, batch: int,
                workdir: str) -> dict[str, Any]:
    """Check c (module doc): every model's training rates, then the input rates."""
    before = keras.mixed_precision.global_policy().name
    try:
        policy = precision.set_policy("auto")
        models = {}
        for backbone, size in preset.models:
            m = models[f"{backbone}@{size}"] = measure_model(data, backbone, size, batch,
                                                             preset)
            print(f"  {backbone} at {size} px: fed {m['train_fed']:.1f}, constant "
                  f"{m['train_constant']:.1f} images/s", flush=True)
            keras.backend.clear_session()
            gc.collect()
        device = bench.device_name()
        augment_on = device.startswith("/GPU")
        size = preset.models[0][1]
        figures, ds = input_bench.measure_set(
            data, "train", _read_config(size, batch), preset.epochs,
            bench.make_consumer(augment_on, device), augment_on, originals,
            tempfile.mkdtemp(prefix="measure_", dir=workdir), preset.cold_repeats,
            preset.min_seconds)
        del ds
        rates = [m[k] for m in models.values() for k in ("train_fed", "train_constant")]
        rates += [figures[k] for k in ("pipeline_cold", "pipeline_cached", "decode_bound",
                                       "tensor_bound")]
        return {"policy": policy, "device": device, "augment_in_epochs": augment_on,
                "models": models, "input": {"image_size": size, **figures},
                "passed": all(math.isfinite(r) and r > 0 for r in rates)}
    finally:
        keras.mixed_precision.set_global_policy(before)


# ----------------------------------------------------------------------------- the run

def run_checks(output: str, *, cpu_smoke: bool = False, data: str | None = None,
               originals: str | None = None, batch_size: int = 0,
               workdir: str | None = None) -> dict[str, Any]:
    """Run checks a-c (module doc), print :func:`report`, write the results as JSON to
    ``output``; returns them (``results["passed"]``: every check passed). ``batch_size``
    0: the preset's. With ``cpu_smoke`` the caller has run :func:`configure_cpu_devices`."""
    t0 = time.perf_counter()
    preset = SMOKE if cpu_smoke else GPU
    batch = check_arguments(cpu_smoke, data, originals, batch_size)
    expected = gpu_count() or SMOKE_CPU_DEVICES       # replicas check b expects
    results: dict[str, Any] = {
        "mode": "cpu_smoke" if cpu_smoke else "gpu", "devices": describe_devices(),
        "versions": describe_versions(),
        "config": {"data": os.path.abspath(data) if data else None, "batch_size": batch,
                   "preset": dataclasses.asdict(preset), "command": " ".join(sys.argv),
                   "host": platform.node()},
        "checks": {}}
    tmp = tempfile.mkdtemp(prefix="fundus_gpu_check_", dir=workdir)
    try:
        t = time.perf_counter()
        data_dir = data or make_data(preset, tmp)
        results["config"]["synthetic_seconds"] = None if data else time.perf_counter() - t
        checks = results["checks"]
        checks["mixed_float16"] = _guarded(
            "mixed_float16", lambda: check_mixed_float16(data_dir, preset, batch))
        checks["mirrored"] = _guarded(
            "mirrored", lambda: check_mirrored(data_dir, preset, batch, expected))
        checks["speed"] = _guarded(
            "speed", lambda: check_speed(data_dir, originals, preset, batch, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["passed"] = all(c["passed"] for c in results["checks"].values())
    results["wall_seconds"] = time.perf_counter() - t0
    print(report(results), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fileio.write_json(output, results)
    return results


def report(results: dict[str, Any]) -> str:
    """A short human-readable summary: devices, each check's verdict and the rates."""
    dev = results["devices"]
    gpus = ", ".join(g["device_name"] or g["name"] for g in dev["gpus"]) or "none"
    v = results["versions"]
    lines = [f"fundus-gpu-check ({results['mode']}): GPUs {gpus}; TF {v['tensorflow']}, "
             f"Keras {v['keras']}, CUDA {v.get('cuda_version')}, cuDNN {v.get('cudnn_version')}"]
    for name in CHECKS:
        c = results["checks"].get(name)
        if c is None:
            continue
        lines.append(f"  {name:14s} {'passed' if c['passed'] else 'FAILED'}"
                     f"  ({c['seconds']:.1f} s){'  ' + c['error'] if 'error' in c else ''}")
        if name == "mixed_float16" and "loss" in c:
            lines.append(f"    {c['optimizer']}, loss scale {c['loss_scale']}, last loss "
                         f"{c['loss'][-1]:.4f}, sex output {c['sex_output_dtype']}")
        if name == "mirrored" and "loss" in c:
            lines.append(f"    {c['replicas']} replicas (expected {c['expected_replicas']}),"
                         f" last loss {c['loss'][-1]:.4f}")
        if name == "speed" and "models" in c:
            for key, m in c["models"].items():
                lines.append(f"    {key:22s} fed {m['train_fed']:9.1f}  constant "
                             f"{m['train_constant']:9.1f} images/s  (fed/constant "
                             f"{m['train_fed_vs_constant'] or float('nan'):.3f})")
            inp = c["input"]
            lines.append(f"    input at {inp['image_size']} px: cold {inp['pipeline_cold']:.1f},"
                         f" cached {inp['pipeline_cached']:.1f}, decode bound "
                         f"{inp['decode_bound']:.1f}, tensor bound {inp['tensor_bound']:.1f}"
                         " images/s")
    lines.append(f"  {'all passed' if results['passed'] else 'SOME CHECKS FAILED'} in "
                 f"{results['wall_seconds']:.0f} s")
    return "\n".join(lines)
