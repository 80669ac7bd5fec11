"""fundus-bench's measurement run: the input pipeline against the old loader, its bounds
and the training step it feeds (the job is :mod:`tools.bench`; the input measurements
are :mod:`pipeline.bench`).

:func:`run_bench` measures ``data`` as given (:func:`pipeline.bench.measure_set`), then a
camera-resolution synthetic set written and converted in a temporary folder
(:func:`pipeline.bench.make_camera_set`) the same way, then, last (it needs the most
memory), a training step fed by the cached pipeline against one fed a constant batch
(:func:`measure_training`). Every figure is images/s; cached and tensor-bound figures are
medians of timings of at least ``min_seconds`` each, with their spread beside them
(:mod:`pipeline.bench`), and the report prints that spread. The epoch figures use one consumer
on the model's device (:func:`make_consumer`): it reduces each batch and, with
augmentation on, first runs the model's augmentation block (:mod:`model.augment`, training
mode) on it. ``augment="auto"`` includes augmentation when a GPU is present (where it runs
in the model, beside the CPU input pipeline) and leaves it out on a CPU-only host (there it
would time the CPU's float throughput, not the input); the baseline's own augmentation is
included exactly when ours is.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import keras
import tensorflow as tf

from model import augment
from model import precision as precision_lib
from pipeline import bench as input_bench
from pipeline import fileio, reader

#: The headline ratios of :func:`run_bench` (``results["ratios"]``).
RATIOS = ("cold_vs_decode_bound", "cached_vs_tensor_bound", "camera_cold_vs_baseline",
          "train_fed_vs_constant")
TRAIN_ARCHS = ("mobilenet_v2", "tiny")


def device_name() -> str:
    """``/GPU:0`` when TensorFlow sees a GPU, else ``/CPU:0``."""
    return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"


def make_consumer(augment_on: bool, device: str) -> Callable:
    """A compiled per-batch consumer on ``device``: (augment, then) reduce the batch.
    Returns a scalar tensor (fetched once at the end of a timed pass)."""
    block = augment.build_augmentation(augment.AugmentConfig()) if augment_on else None

    @tf.function(reduce_retracing=True)
    def consume(images):
        with tf.device(device):
            x = tf.identity(images)
            if block is not None:
                return tf.reduce_max(block(x, training=True))
            return tf.cast(tf.reduce_max(x), tf.float32)
    return consume


def train_model(image_size: int, weights: str, arch: str = "mobilenet_v2") -> keras.Model:
    """MobileNetV2 classifier: uint8 input -> augmentation -> [-1, 1] -> MobileNetV2 ->
    GAP -> Dense(1, sigmoid, float32); compiled with Adam and binary cross-entropy.
    ``arch="tiny"`` swaps the backbone for two convolutions (quick tests only);
    ``weights``: ``none`` or a ``.weights.h5`` file of the backbone."""
    inp = keras.Input((image_size, image_size, 3), dtype="uint8")
    x = augment.build_augmentation(augment.AugmentConfig())(inp)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    if arch == "tiny":
        backbone = keras.Sequential([keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                                     keras.layers.Conv2D(16, 3, strides=2, activation="relu")])
    elif arch == "mobilenet_v2":
        backbone = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3),
                                                  include_top=False, weights=None)
    else:
        raise ValueError(f"--train_arch={arch}: one of {', '.join(TRAIN_ARCHS)}")
    if weights and weights != "none":
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--weights={weights}: no such file")
        backbone.load_weights(weights)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="sex")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    return model


def train_rate(model: keras.Model, dataset, steps: int, warmup: int, batch_size: int) -> float:
    """images/s of ``model.fit`` over ``steps`` steps after ``warmup`` untimed steps."""
    model.fit(dataset, steps_per_epoch=max(1, warmup), epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return input_bench.rate(steps * batch_size, time.perf_counter() - t0)


def measure_training(ds, image_size: int, batch_size: int, steps: int, warmup: int,
                     weights: str, arch: str = "mobilenet_v2",
                     rounds: int = 2) -> dict[str, Any]:
    """Training fed by the (cached) pipeline against one constant batch, same model.

    The two feedings alternate ``rounds`` times (constant, fed, constant, fed, ...) so
    that drift of the machine (other jobs, clocks) hits both alike; each figure is the
    median of its rounds, and every round is kept in ``*_rounds``."""
    return compare_feedings(train_model(image_size, weights, arch), ds, batch_size, steps,
                            warmup, rounds)


def compare_feedings(model: keras.Model, ds, batch_size: int, steps: int, warmup: int,
                     rounds: int = 2) -> dict[str, Any]:
    """``model``'s training images/s fed by ``ds`` (repeated) and by ``ds``'s first batch
    as a constant, alternating ``rounds`` times (constant first); each figure the median
    of its rounds (``*_rounds`` keeps them), and ``train_fed_vs_constant``."""
    images, labels = next(iter(ds))
    constant = tf.data.Dataset.from_tensors((images, labels)).repeat()
    fed = ds.repeat()
    out: dict[str, Any] = {"train_constant_rounds": [], "train_fed_rounds": []}
    for _ in range(max(1, rounds)):
        out["train_constant_rounds"].append(train_rate(model, constant, steps, warmup,
                                                       batch_size))
        out["train_fed_rounds"].append(train_rate(model, fed, steps, warmup, batch_size))
    for key in ("train_constant", "train_fed"):
        out[key] = float(statistics.median(out[f"{key}_rounds"]))
    out["train_fed_vs_constant"] = input_bench.ratio(out["train_fed"], out["train_constant"])
    return out


def check_arguments(*, epochs: int, size_range: tuple[int, int], train_arch: str,
                    weights: str, precision: str, augment_mode: str,
                    min_seconds: float = 2.0) -> None:
    """Raise ``ValueError`` / ``FileNotFoundError`` naming the flag for arguments that
    :func:`run_bench` cannot use (called by it first, and by the job at start-up)."""
    if epochs < 2:
        raise ValueError(f"--epochs={epochs}: need >= 2 (one cold, one cached)")
    lo, hi = size_range
    if not 32 <= lo <= hi:
        raise ValueError(f"--synthetic_size_range={lo},{hi}: need 32 <= MIN <= MAX")
    if train_arch not in TRAIN_ARCHS:
        raise ValueError(f"--train_arch={train_arch}: one of {', '.join(TRAIN_ARCHS)}")
    if weights and weights != "none" and not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights={weights}: no such file (or use none)")
    precision_lib.resolve_policy(precision)
    if augment_mode not in ("auto", "on", "off"):
        raise ValueError(f"--augment={augment_mode}: auto, on or off")
    if not min_seconds >= 0:
        raise ValueError(f"--min_seconds={min_seconds}: need >= 0 (seconds per timing)")


def run_bench(data: str, output: str | None, *, split: str = "train", image_size: int = 384,
              batch_size: int = 64, epochs: int = 6, cache_budget_gb: float = 4.0,
              cold_repeats: int = 3, synthetic_images: int = 512,
              size_range: tuple[int, int] = (1400, 3000),
              train_steps: int = 10, warmup_steps: int = 2, train_rounds: int = 2,
              weights: str = "none",
              train_arch: str = "mobilenet_v2", camera_stored_size: int = 0,
              precision: str = "auto", augment: str = "auto", originals: str | None = None,
              workdir: str | None = None, min_seconds: float = 2.0) -> dict[str, Any]:
    """Run every measurement (see the module doc); print and return the results, and
    write them as JSON to ``output`` when given. Sizes in pixels; ``cache_budget_gb`` in
    GiB; ``camera_stored_size`` 0 means ``image_size``; ``synthetic_images`` 0 skips the
    camera set and ``train_steps`` 0 the training comparison; ``min_seconds``: the least
    duration of each cached / tensor-bound timing (``epochs - 1`` of each per set).
    ``results["ratio_spreads"]`` holds the spread of the per-round cached / tensor ratios."""
    check_arguments(epochs=epochs, size_range=size_range, train_arch=train_arch,
                    weights=weights, precision=precision, augment_mode=augment,
                    min_seconds=min_seconds)
    device = device_name()
    augment_on = augment == "on" or (augment == "auto" and device.startswith("/GPU"))
    policy = precision_lib.set_policy(precision)
    read_cfg = reader.ReadConfig(image_size=image_size, batch_size=batch_size,
                                 cache_budget_gb=cache_budget_gb, normal_only=False, seed=0)
    consume = make_consumer(augment_on, device)
    results: dict[str, Any] = {
        "config": {"data": os.path.abspath(data), "split": split, "image_size": image_size,
                   "batch_size": batch_size, "epochs": epochs, "cold_repeats": cold_repeats,
                   "min_seconds": min_seconds,
                   "cache_budget_gb": cache_budget_gb, "augment_in_epochs": augment_on,
                   "precision": policy, "device": device, "train_arch": train_arch,
                   "camera_stored_size": camera_stored_size or image_size,
                   "cpu_cores": os.cpu_count(),
                   "tensorflow": tf.__version__, "keras": keras.__version__,
                   "python": platform.python_version(), "weights": weights,
                   "command": " ".join(sys.argv)},
        "ratios": {}, "ratio_spreads": {}}
    workdir = tempfile.mkdtemp(prefix="fundus_bench_", dir=workdir)
    try:
        figures, ds = input_bench.measure_set(data, split, read_cfg, epochs, consume,
                                              augment_on, originals, workdir, cold_repeats,
                                              min_seconds)
        results["data"] = figures
        print("data figures:", json.dumps(figures, sort_keys=True), flush=True)
        if synthetic_images > 0:
            camera_dir = input_bench.make_camera_set(synthetic_images, size_range,
                                                     camera_stored_size or image_size,
                                                     workdir)
            cam, cam_ds = input_bench.measure_set(camera_dir, "train", read_cfg, epochs,
                                                  consume, augment_on, None, workdir,
                                                  cold_repeats, min_seconds)
            del cam_ds
            results["camera"] = cam
            print("camera figures:", json.dumps(cam, sort_keys=True), flush=True)
        gc.collect()
        if train_steps > 0:                # last: the training step needs the most memory
            results["train"] = measure_training(ds, image_size, batch_size, train_steps,
                                                warmup_steps, weights, train_arch,
                                                rounds=train_rounds)
        del ds
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    r = results["ratios"]
    r["cold_vs_decode_bound"] = results["data"]["cold_vs_decode_bound"]
    r["cached_vs_tensor_bound"] = results["data"]["cached_vs_tensor_bound"]
    r["camera_cold_vs_baseline"] = (results["camera"]["cold_vs_baseline_first_epoch"]
                                    if "camera" in results else None)
    r["train_fed_vs_constant"] = (results["train"]["train_fed_vs_constant"]
                                  if "train" in results else None)
    if "camera" in results:
        r["camera_cold_vs_decode_bound"] = results["camera"]["cold_vs_decode_bound"]
        r["camera_cached_vs_tensor_bound"] = results["camera"]["cached_vs_tensor_bound"]
    for name, prefix in (("data", ""), ("camera", "camera_")):
        if name in results:
            results["ratio_spreads"][f"{prefix}cached_vs_tensor_bound"] = \
                results[name]["cached_vs_tensor_bound_spread"]
    print(report(results))
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        fileio.write_json(output, results)
    return results


def _spread_text(sp: dict[str, float], digits: int = 1, timing: str = "") -> str:
    """``(min .. max, rel IQR 0.04, 5 x >= 2 s)`` of a :func:`pipeline.bench.spread`."""
    return (f"({sp['min']:.{digits}f} .. {sp['max']:.{digits}f}, rel IQR "
            f"{sp['rel_iqr']:.3f}, {sp['n']} {timing or 'rounds'})")


def report(results: dict[str, Any]) -> str:
    """Human-readable table of the figures (images/s) and ratios; cached and tensor-bound
    figures with their spread over the timings (min .. max, relative IQR)."""
    lines = [f"fundus-bench on {results['config']['device']} "
             f"({results['config']['cpu_cores']} cores), image {results['config']['image_size']}"
             f" px, batch {results['config']['batch_size']}, augmentation in epochs: "
             f"{results['config']['augment_in_epochs']}"]
    keys = ("baseline_first_epoch", "baseline_cached_epoch", "pipeline_cold",
            "pipeline_cached", "decode_bound", "tensor_bound")
    for name in ("data", "camera"):
        if name in results:
            fig = results[name]
            timing = f"timings x >= {fig.get('min_seconds', 0):g} s"
            lines.append(f"  {name} ({fig['images']} images):")
            lines += [f"    {k:24s} {fig[k]:10.1f} images/s"
                      + (f"  {_spread_text(fig[k + '_spread'], 1, timing)}"
                         if k + "_spread" in fig else "") for k in keys]
    if "train" in results:
        lines += [f"  {k:26s} {results['train'][k]:10.1f} images/s"
                  for k in ("train_fed", "train_constant")]
    spreads = results.get("ratio_spreads", {})
    for k, v in results["ratios"].items():
        lines.append(f"  {k:26s} {'n/a' if v is None else f'{v:10.3f}'}"
                     + (f"  rounds {_spread_text(spreads[k], 3)}" if k in spreads else ""))
    return "\n".join(lines)
