"""Input-pipeline measurements: how fast the converter and the reader are against their
bounds and against the earlier attempt's loader (the library of ``fundus-bench`` and of
``fundus-convert --bench_bound``).

Every epoch figure is images/s taken by a caller-supplied ``consume(images)`` (built by
:func:`model.bench.make_consumer`: it reduces each batch on the model's device, so every
byte is read and, on a GPU, copied there). For one converted set :func:`measure_set`
times

a. ``baseline``: ``keras.utils.image_dataset_from_directory`` over a class-folder tree of
   links to the *original* JPEGs, ``.cache()``, flip/rotation/zoom layers mapped in
   tf.data (when augmentation is on); first and cached epoch;
b. ``pipeline_cold`` / ``pipeline_cached``: :func:`pipeline.reader.make_dataset` in
   training mode, the median of ``cold_repeats`` freshly built datasets' first epochs and
   of ``epochs - 1`` cached timings;
c. ``decode_bound``: :func:`pipeline.schema.decode_image` over the stored JPEGs, already
   in memory, on a thread pool of all cores (the faster of cores and 2 x cores threads);
   ``tensor_bound``: reshuffled batches gathered from one in-memory uint8 array, through
   the same consumer.

Cached figures are short: a cached epoch of 1,495 images at 160 px lasts ~0.1 s, so one
epoch's rate is mostly noise (two runs on the same day gave cached/tensor ratios of 1.04
and 0.50). Every cached and tensor-bound figure (``baseline_cached_epoch``,
``pipeline_cached``, ``tensor_bound``) is therefore the median of ``epochs - 1``
*timings*, each repeating whole passes until at least ``min_seconds`` (default 2 s) have
elapsed and counting the images of all of them (:func:`timing`); the pipeline's cached
timings alternate with the tensor bound's (round r: cached, then tensor), so drift of the
machine hits both alike. Each figure has ``<figure>_timings`` (images, seconds, passes,
rate per timing) and ``<figure>_spread`` (:func:`spread`: min, median, max, relative
IQR). ``cached_vs_tensor_bound`` is the median of the rounds' own ratios (each round's
cached timing over its tensor timing: drift slower than a round cancels), listed in
``cached_vs_tensor_bound_rounds`` with their spread in ``cached_vs_tensor_bound_spread``.
Cold figures are single first epochs of freshly built datasets (their median over
``cold_repeats``), as before.

:func:`bench_bound` is the converter's bound: :func:`pipeline.fundus.prepare_file` alone
on a process pool. :func:`make_camera_set` writes and converts a camera-resolution
synthetic set (:mod:`pipeline.synthetic`).
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import keras
import tensorflow as tf

from pipeline import fundus
from pipeline import manifest as manifest_lib
from pipeline import reader, schema, synthetic, writer


# ------------------------------------------------------------------------ helpers

def timed_pass(batches: Iterable, consume: Callable) -> tuple[int, float]:
    """(images, seconds) of one pass: each batch's first element through ``consume``."""
    t0 = time.perf_counter()
    n, last = 0, None
    for b in batches:
        images = b[0] if isinstance(b, (tuple, list)) else b
        last = consume(images)
        n += int(images.shape[0])
    if last is not None:
        float(last)                       # wait for the device
    return n, time.perf_counter() - t0


def timing(make_pass: Callable[[int], Iterable], consume: Callable,
           min_seconds: float) -> dict[str, float]:
    """One timing: passes ``make_pass(0)``, ``make_pass(1)``, ... through ``consume`` (as
    :func:`timed_pass`) until at least ``min_seconds`` have elapsed, at least one pass.

    Returns ``{"images", "seconds", "passes", "rate"}``: images and seconds summed over
    the passes, ``rate`` = images / seconds (images/s)."""
    images, seconds, passes = 0, 0.0, 0
    while passes == 0 or seconds < min_seconds:
        n, t = timed_pass(make_pass(passes), consume)
        images, seconds, passes = images + n, seconds + t, passes + 1
    return {"images": images, "seconds": seconds, "passes": passes,
            "rate": rate(images, seconds)}


def spread(values: list[float]) -> dict[str, float]:
    """``{"n", "min", "median", "max", "rel_iqr"}`` of repeated figures; ``rel_iqr`` is the
    interquartile range over the median (inclusive quartiles; 0 for one value, NaN for a
    zero median)."""
    vals = sorted(float(v) for v in values)
    med = statistics.median(vals)
    q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 \
        else (vals[0],) * 3
    return {"n": len(vals), "min": vals[0], "median": med, "max": vals[-1],
            "rel_iqr": float((q3 - q1) / med) if med else float("nan")}


def add_timings(figures: dict[str, Any], name: str, timings: list[dict]) -> None:
    """``figures[name]`` = the median rate of ``timings``, with ``name + "_timings"`` and
    ``name + "_spread"`` beside it."""
    rates = [t["rate"] for t in timings]
    figures[name] = statistics.median(rates)
    figures[f"{name}_timings"] = timings
    figures[f"{name}_spread"] = spread(rates)


def rate(n: int, seconds: float) -> float:
    """Images per second (NaN for a zero duration)."""
    return float(n / seconds) if seconds > 0 else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing, NaN or ``b`` is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return float(a / b)


# ------------------------------------------------------------------------ sources

def stored_records(data_dir: str, split: str) -> list[dict]:
    """Every record of the split as ``{"jpeg", "filename", "sex"}`` (bytes in memory).
    Raises ``ValueError`` for an empty split, ``KeyError`` for an unknown one."""
    man = manifest_lib.load(data_dir)
    out = []
    for raw in tf.data.TFRecordDataset(manifest_lib.shard_paths(data_dir, man, split)):
        rec = schema.decode_record_from_bytes(raw.numpy())
        out.append({"jpeg": rec["image/encoded"], "filename": rec["image/filename"].decode(),
                    "sex": int(rec["patient/sex"])})
    if not out:
        raise ValueError(f"--data={data_dir}: split {split!r} holds no records")
    return out


def original_paths(data_dir: str, filenames: list[str], originals: str | None) -> list[str]:
    """The original JPEG of every stored filename: in ``originals`` or in the manifest's
    source image folders (relative ones tried from the working directory and from
    ``data_dir``). Raises ``FileNotFoundError`` naming the first missing files."""
    if originals:
        dirs = [originals]
    else:
        dirs = []
        for src in manifest_lib.load(data_dir).get("sources", []):
            d = src.get("images")
            if not d:
                continue
            dirs += [d] if os.path.isabs(d) else [os.path.abspath(d),
                                                  os.path.join(data_dir, d)]
    found, missing = [], []
    for name in filenames:
        hit = next((os.path.join(d, name) for d in dirs
                    if os.path.isfile(os.path.join(d, name))), None)
        (found if hit else missing).append(hit or name)
    if missing:
        raise FileNotFoundError(
            f"--originals: {len(missing)} original JPEGs of {data_dir} not found in "
            f"{dirs or '(no source folders in the manifest)'}, e.g. {missing[:3]}")
    return found


def check_inputs(data_dir: str, split: str, originals: str | None) -> int:
    """Start-up check of a set to measure: the manifest, a non-empty ``split`` and every
    original JPEG; returns the split's record count. Raises as :func:`stored_records`
    and :func:`original_paths`."""
    recs = stored_records(data_dir, split)
    original_paths(data_dir, [r["filename"] for r in recs], originals)
    return len(recs)


def class_tree(paths: list[str], sexes: list[int], root: str) -> str:
    """``root/{female,male}/NNNNN_<name>`` symlinks to ``paths``; returns ``root``."""
    for cls in ("female", "male"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
    for i, (path, sex) in enumerate(zip(paths, sexes)):
        link = os.path.join(root, "male" if sex else "female",
                            f"{i:05d}_{os.path.basename(path)}")
        os.symlink(os.path.abspath(path), link)
    return root


def make_camera_set(n_images: int, size_range: tuple[int, int], stored_size: int,
                    workdir: str) -> str:
    """A synthetic camera-resolution set of ``n_images`` eyes (widths in ``size_range``
    px) converted at ``stored_size`` px, every eye in the train split; returns the
    converted directory (under ``workdir``)."""
    raw = os.path.join(workdir, "camera_raw")
    paths = synthetic.make_synthetic(raw, n_patients=max(1, -(-n_images // 2)),
                                     formats=("full_df",), size_range=size_range,
                                     workers=min(os.cpu_count() or 1, max(1, n_images // 32)))
    out = os.path.join(workdir, "camera_converted")
    writer.convert(writer.ConvertConfig(
        annotations=[paths["full_df"]], images=[paths["images"]], output=out,
        image_size=stored_size, split=(1.0, 0.0, 0.0), selection="all", progress=False))
    return out


# ------------------------------------------------------------------------ measurements

def baseline_dataset(tree: str, image_size: int, batch_size: int, augment_on: bool):
    """The earlier attempt's loader: image_dataset_from_directory -> cache -> augmentation
    layers in tf.data -> prefetch."""
    ds = keras.utils.image_dataset_from_directory(
        tree, labels="inferred", label_mode="binary", image_size=(image_size, image_size),
        batch_size=batch_size, shuffle=True, seed=0, verbose=False)
    ds = ds.cache()
    if augment_on:
        layers = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                   keras.layers.RandomRotation(15.0 / 360.0),
                                   keras.layers.RandomZoom(0.1)])
        ds = ds.map(lambda x, y: (layers(x, training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def decode_bound(jpegs: list[bytes], image_size: int) -> dict[str, float]:
    """images/s of :func:`pipeline.schema.decode_image` over in-memory JPEGs on a thread
    pool (TF ops release the GIL), for cores and 2 x cores threads; ``best`` is the max."""
    fn = tf.function(lambda b: schema.decode_image(b, image_size))
    fn(tf.constant(jpegs[0]))
    cores = os.cpu_count() or 1
    out = {}
    for threads in sorted({cores, 2 * cores}):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(lambda j: fn(tf.constant(j)).shape, jpegs):
                pass
        out[f"threads_{threads}"] = rate(len(jpegs), time.perf_counter() - t0)
    out["best"] = max(out.values())
    return out


def tensor_bound(images, batch_size: int, seed: int = 0) -> Callable[[int], Iterable]:
    """The tensor bound's passes: ``make_pass(p)`` yields the batches of pass ``p``,
    gathered from one in-memory uint8 array ``[N, H, W, 3]`` along a fresh random
    permutation (seed ``seed + p``), full batches only; time them with :func:`timing`."""
    n = int(images.shape[0])
    gather = tf.function(lambda idx: tf.gather(images, idx))
    gather(tf.range(batch_size))

    def make_pass(p: int):
        perm = tf.random.shuffle(tf.range(n), seed=seed + p)
        return (gather(perm[i:i + batch_size])
                for i in range(0, n - batch_size + 1, batch_size))
    return make_pass


def measure_set(data_dir: str, split: str, read_cfg: reader.ReadConfig, epochs: int,
                consume: Callable, augment_on: bool, originals: str | None, workdir: str,
                cold_repeats: int = 3, min_seconds: float = 2.0) -> tuple[dict, Any]:
    """Every epoch figure of one converted set; returns (figures, cached pipeline dataset).

    The pipeline's cold figure is the median over ``cold_repeats`` freshly built
    datasets (each decodes the split again). The cached figures (the baseline's, the
    pipeline's of the last dataset) and the tensor bound are medians over ``epochs - 1``
    timings of at least ``min_seconds`` seconds each (see the module doc); the pipeline's
    and the tensor bound's alternate. ``*_epochs`` / ``tensor_bound_passes`` keep each
    timing's rate (images/s), ``*_timings`` and ``*_spread`` the detail."""
    figures: dict[str, Any] = {}
    repeats = max(1, epochs - 1)
    size = read_cfg.image_size
    float(consume(tf.zeros([read_cfg.batch_size, size, size, 3], tf.uint8)))  # trace once
    recs = stored_records(data_dir, split)
    figures["images"] = len(recs)
    figures["min_seconds"] = float(min_seconds)
    paths = original_paths(data_dir, [r["filename"] for r in recs], originals)
    figures["original_bytes"] = sum(os.path.getsize(p) for p in paths)
    figures["stored_bytes"] = sum(len(r["jpeg"]) for r in recs)

    # a. baseline
    tree = class_tree(paths, [r["sex"] for r in recs],
                      tempfile.mkdtemp(prefix="tree_", dir=workdir))
    base = baseline_dataset(tree, read_cfg.image_size, read_cfg.batch_size, augment_on)
    figures["baseline_first_epoch"] = rate(*timed_pass(base, consume))
    add_timings(figures, "baseline_cached_epoch",
                [timing(lambda p, b=base: b, consume, min_seconds)
                 for _ in range(repeats)])
    print(f"{data_dir} baseline: {figures['baseline_first_epoch']:.1f} / "
          f"{figures['baseline_cached_epoch']:.1f} images/s", flush=True)
    del base

    # b. this pipeline, cold
    colds = []
    for _ in range(max(1, cold_repeats)):
        ds = None                          # free the previous dataset's cache first
        ds = reader.make_dataset(data_dir, split, True, read_cfg)
        colds.append(timed_pass(ds, consume))
    figures["pipeline_cold_epochs"] = [rate(*c) for c in colds]
    figures["pipeline_cold"] = statistics.median(figures["pipeline_cold_epochs"])
    figures["pipeline_images_per_epoch"] = colds[0][0]

    # c. bounds; the cached pipeline and the tensor bound in alternating rounds
    figures["decode_bound_detail"] = decode_bound([r["jpeg"] for r in recs],
                                                  read_cfg.image_size)
    figures["decode_bound"] = figures["decode_bound_detail"]["best"]
    plain = reader.make_dataset(data_dir, split, False, read_cfg)
    images = tf.concat([b[0] for b in plain], axis=0)
    tensor_passes = tensor_bound(images, read_cfg.batch_size)
    cached, tensor = [], []
    for r in range(repeats):
        cached.append(timing(lambda p, d=ds: d, consume, min_seconds))
        tensor.append(timing(lambda p, r=r, t=tensor_passes: t(r * 1000 + p), consume,
                             min_seconds))
    add_timings(figures, "pipeline_cached", cached)
    add_timings(figures, "tensor_bound", tensor)
    figures["pipeline_cached_epochs"] = [t["rate"] for t in cached]
    figures["tensor_bound_passes"] = [t["rate"] for t in tensor]
    figures["baseline_cached_epochs"] = [t["rate"]
                                         for t in figures["baseline_cached_epoch_timings"]]
    del images, plain, tensor_passes
    shutil.rmtree(tree, ignore_errors=True)
    rounds = [ratio(c["rate"], t["rate"]) for c, t in zip(cached, tensor)]
    figures["cached_vs_tensor_bound_rounds"] = rounds
    valid = [v for v in rounds if v is not None]
    figures["cached_vs_tensor_bound_spread"] = spread(valid or [float("nan")])
    figures["cold_vs_decode_bound"] = ratio(figures["pipeline_cold"], figures["decode_bound"])
    # the median of the rounds' paired ratios: a drift of the machine slower than a round
    # cancels within it (ratios of the two medians took values from different rounds)
    figures["cached_vs_tensor_bound"] = statistics.median(valid) if valid else None
    figures["cold_vs_baseline_first_epoch"] = ratio(figures["pipeline_cold"],
                                                    figures["baseline_first_epoch"])
    figures["cached_vs_baseline_cached_epoch"] = ratio(figures["pipeline_cached"],
                                                       figures["baseline_cached_epoch"])
    return figures, ds


# ------------------------------------------------------------------------ converter bound

def _bound_task(task: tuple[str, int, int]) -> int:
    """Pool task of :func:`bench_bound`: the work only, nothing sent back but a length."""
    path, size, quality = task
    try:
        return len(fundus.prepare_file(path, size, quality))
    except fundus.FundusError:
        return 0


def bench_bound(paths: Iterable[str], image_size: int, jpeg_quality: int,
                workers: int | None = None) -> dict[str, float]:
    """The conversion's upper bound: :func:`pipeline.fundus.prepare_file` (decode + crop +
    resize + encode) over ``paths`` on ``workers`` processes (default all cores), nothing
    else (no hashing, no transfer of the JPEGs, no TFRecord writing).

    Returns ``{"images", "seconds", "images_per_s"}`` (pool start-up excluded)."""
    paths = list(paths)
    workers = int(workers or os.cpu_count() or 1)
    tasks = [(p, image_size, jpeg_quality) for p in paths]
    pool = writer.process_pool(workers)
    try:
        t = time.monotonic()
        for _ in (map(_bound_task, tasks) if pool is None else
                  pool.imap_unordered(_bound_task, tasks,
                                      chunksize=writer.chunksize(len(tasks), workers))):
            pass
        seconds = time.monotonic() - t
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return {"images": len(tasks), "seconds": seconds,
            "images_per_s": len(tasks) / seconds if seconds > 0 else float("inf")}
