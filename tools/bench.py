"""fundus-bench: how fast is the input pipeline, against the old loader and the machine?

On the same images, in one run, images/s of

a. ``baseline``: the earlier attempt's loader, ``keras.utils.image_dataset_from_directory``
   over a class-folder tree of links to the *original* JPEGs, ``.cache()``, its
   augmentation layers (flip, rotation, zoom) mapped in tf.data; first and cached epoch;
b. ``pipeline_cold`` / ``pipeline_cached``: :func:`pipeline.reader.make_dataset` over the
   converter's shards (training mode), first epoch (read + decode; the median of
   ``--cold_repeats`` freshly built datasets) and later epochs (median of ``--epochs`` - 1);
c. bounds: ``decode_bound``, JPEG decode + resize (:func:`pipeline.schema.decode_image`,
   the pipeline's own op) of the same stored JPEGs, already in memory, on a thread pool of
   all cores with nothing around it (the faster of cores and 2 x cores threads); and
   ``tensor_bound``, passes over the cached uint8 images producing reshuffled batches
   (a ``tf.gather`` of a random permutation from one in-memory array; median of as many
   passes as cached epochs);
d. ``train_fed`` / ``train_constant``: a MobileNetV2 training step (augmentation block in
   the model) fed by this pipeline (cached epochs), and fed one constant in-memory batch.

Every epoch figure is taken by a consumer on the model's device: it reduces each batch
(so every byte is read, and on a GPU copied to it) and, with ``--augment`` on, runs the
augmentation block (:mod:`pipeline.augment`, training mode) on it first; the tensor bound
uses the same consumer, so ``cached_vs_tensor_bound`` compares like with like.
``--augment=auto`` includes augmentation when a GPU is present (where it runs in the
model, beside the CPU input pipeline) and leaves it out on a CPU-only host (there it
would time the CPU's float throughput, not the input); the baseline's own augmentation is
included exactly when ours is.

``--data`` is measured as given; then a camera-resolution synthetic set
(``--synthetic_images`` eyes, 1,400-3,000 px wide, :func:`tools.synth.make_synthetic`) is
written and converted (:func:`pipeline.writer.convert`, stored at ``--camera_stored_size``,
by default the training size) in a temporary folder and measured the same way, without
the training comparison.

    fundus-bench --data=DIR --output=bench.json [--image_size=384 --batch_size=64]
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from absl import app, flags

FLAGS = flags.FLAGS
RATIOS = ("cold_vs_decode_bound", "cached_vs_tensor_bound", "camera_cold_vs_baseline",
          "train_fed_vs_constant")


def define_flags() -> None:
    flags.DEFINE_string("data", None, "A fundus-convert output directory to measure.")
    flags.DEFINE_string("output", None, "Write every figure and ratio as JSON here.")
    flags.DEFINE_string("split", "train", "Split of --data to read.")
    flags.DEFINE_integer("image_size", 384, "Training size, pixels.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("epochs", 6, "Pipeline epochs: 1 cold + (epochs - 1) cached; >= 2. "
                         "The cached figure and the tensor bound are medians over "
                         "epochs - 1 passes.")
    flags.DEFINE_integer("cold_repeats", 3, "Cold epochs, each of a freshly built dataset; "
                         "the cold figure is their median.")
    flags.DEFINE_float("cache_budget_gb", 4.0, "Reader's in-memory cache budget, GiB.")
    flags.DEFINE_integer("synthetic_images", 512, "Eyes of the camera-resolution synthetic "
                         "set (0: skip it); a multiple of --batch_size, so that the "
                         "training epoch (drop_remainder) yields every decoded eye.")
    flags.DEFINE_string("synthetic_size_range", "1400,3000", "Synthetic image widths, px.")
    flags.DEFINE_integer("camera_stored_size", 0, "Stored size the camera set is converted "
                         "at, px (0: --image_size, i.e. converted at the training size).")
    flags.DEFINE_integer("train_steps", 10, "Timed training steps per feeding (0: skip).")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed training steps first.")
    flags.DEFINE_integer("train_rounds", 2, "Alternating rounds of constant / fed "
                         "training; each figure is the median over rounds.")
    flags.DEFINE_enum("train_arch", "mobilenet_v2", ["mobilenet_v2", "tiny"],
                      "Training-step model (tiny: two convolutions, for quick tests).")
    flags.DEFINE_string("weights", "none", "MobileNetV2 weights: none or a .weights.h5 path.")
    flags.DEFINE_string("precision", "auto", "auto|float32|mixed_float16|mixed_bfloat16.")
    flags.DEFINE_enum("augment", "auto", ["auto", "on", "off"],
                      "Augmentation in the epoch figures (auto: on with a GPU).")
    flags.DEFINE_string("originals", None, "Folder of the original JPEGs of --data "
                        "(default: the manifest's sources).")
    flags.DEFINE_string("workdir", None, "Temporary folder (default: system temp).")


# ------------------------------------------------------------------------ helpers

def _tf():
    import tensorflow as tf  # noqa: PLC0415
    return tf


def device_name() -> str:
    """``/GPU:0`` when TensorFlow sees a GPU, else ``/CPU:0``."""
    return "/GPU:0" if _tf().config.list_physical_devices("GPU") else "/CPU:0"


def make_consumer(augment_on: bool, device: str) -> Callable:
    """A compiled per-batch consumer on ``device``: (augment, then) reduce the batch.
    Returns a scalar tensor (fetched once at the end of a timed pass)."""
    tf = _tf()
    from pipeline import augment  # noqa: PLC0415
    block = augment.build_augmentation(augment.AugmentConfig()) if augment_on else None

    @tf.function(reduce_retracing=True)
    def consume(images):
        with tf.device(device):
            x = tf.identity(images)
            if block is not None:
                return tf.reduce_max(block(x, training=True))
            return tf.cast(tf.reduce_max(x), tf.float32)
    return consume


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


def rate(n: int, seconds: float) -> float:
    return float(n / seconds) if seconds > 0 else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return float(a / b)


# ------------------------------------------------------------------------ sources

def stored_records(data_dir: str, split: str) -> list[dict]:
    """Every record of the split as ``{"jpeg", "filename", "sex"}`` (bytes in memory)."""
    tf = _tf()
    from pipeline import manifest as manifest_lib, schema  # noqa: PLC0415
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
    ``data_dir``). Raises naming the first missing files."""
    from pipeline import manifest as manifest_lib  # noqa: PLC0415
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


def class_tree(paths: list[str], sexes: list[int], root: str) -> str:
    """``root/{female,male}/NNNNN_<name>`` symlinks to ``paths``; returns ``root``."""
    for cls in ("female", "male"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
    for i, (path, sex) in enumerate(zip(paths, sexes)):
        link = os.path.join(root, "male" if sex else "female",
                            f"{i:05d}_{os.path.basename(path)}")
        os.symlink(os.path.abspath(path), link)
    return root


# ------------------------------------------------------------------------ measurements

def baseline_dataset(tree: str, image_size: int, batch_size: int, augment_on: bool):
    """The earlier attempt's loader: image_dataset_from_directory -> cache -> augmentation
    layers in tf.data -> prefetch."""
    import keras  # noqa: PLC0415
    tf = _tf()
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
    tf = _tf()
    from pipeline import schema  # noqa: PLC0415
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


def tensor_bound(images, batch_size: int, consume: Callable, seed: int = 0,
                 passes: int = 1) -> list[float]:
    """images/s of ``passes`` passes, each producing reshuffled batches from one in-memory
    uint8 array ``[N, H, W, 3]`` (gather of a fresh random permutation) through
    ``consume``."""
    tf = _tf()
    n = int(images.shape[0])
    gather = tf.function(lambda idx: tf.gather(images, idx))
    gather(tf.range(batch_size))
    out = []
    for p in range(passes):
        perm = tf.random.shuffle(tf.range(n), seed=seed + p)
        batches = (gather(perm[i:i + batch_size])
                   for i in range(0, n - batch_size + 1, batch_size))
        out.append(rate(*timed_pass(batches, consume)))
    return out


def measure_set(data_dir: str, split: str, read_cfg, epochs: int, consume: Callable,
                augment_on: bool, originals: str | None, workdir: str,
                cold_repeats: int = 3) -> tuple[dict, Any]:
    """Every epoch figure of one converted set; returns (figures, cached pipeline dataset).

    The pipeline's cold figure is the median over ``cold_repeats`` freshly built
    datasets (each decodes the split again); its cached figure the median over
    ``epochs - 1`` cached epochs of the last one, and the tensor bound the median over
    as many passes: single passes on this shared 2-core VM vary by up to 2x."""
    tf = _tf()
    from pipeline import reader  # noqa: PLC0415
    figures: dict[str, Any] = {}
    size = read_cfg.image_size
    float(consume(tf.zeros([read_cfg.batch_size, size, size, 3], tf.uint8)))  # trace once
    recs = stored_records(data_dir, split)
    figures["images"] = len(recs)
    paths = original_paths(data_dir, [r["filename"] for r in recs], originals)
    figures["original_bytes"] = sum(os.path.getsize(p) for p in paths)
    figures["stored_bytes"] = sum(len(r["jpeg"]) for r in recs)

    # a. baseline
    tree = class_tree(paths, [r["sex"] for r in recs],
                      tempfile.mkdtemp(prefix="tree_", dir=workdir))
    base = baseline_dataset(tree, read_cfg.image_size, read_cfg.batch_size, augment_on)
    figures["baseline_first_epoch"] = rate(*timed_pass(base, consume))
    figures["baseline_cached_epoch"] = rate(*timed_pass(base, consume))
    print(f"{data_dir} baseline: {figures['baseline_first_epoch']:.1f} / "
          f"{figures['baseline_cached_epoch']:.1f} images/s", flush=True)
    del base

    # b. this pipeline
    colds = []
    for _ in range(max(1, cold_repeats)):
        ds = None                          # free the previous dataset's cache first
        ds = reader.make_dataset(data_dir, split, True, read_cfg)
        colds.append(timed_pass(ds, consume))
    figures["pipeline_cold_epochs"] = [rate(*c) for c in colds]
    figures["pipeline_cold"] = statistics.median(figures["pipeline_cold_epochs"])
    cached = [timed_pass(ds, consume) for _ in range(max(1, epochs - 1))]
    figures["pipeline_cached_epochs"] = [rate(*c) for c in cached]
    figures["pipeline_cached"] = statistics.median(figures["pipeline_cached_epochs"])
    figures["pipeline_images_per_epoch"] = colds[0][0]

    # c. bounds
    figures["decode_bound_detail"] = decode_bound([r["jpeg"] for r in recs],
                                                  read_cfg.image_size)
    figures["decode_bound"] = figures["decode_bound_detail"]["best"]
    plain = reader.make_dataset(data_dir, split, False, read_cfg)
    images = tf.concat([b[0] for b in plain], axis=0)
    figures["tensor_bound_passes"] = tensor_bound(images, read_cfg.batch_size, consume,
                                                  passes=max(1, epochs - 1))
    figures["tensor_bound"] = statistics.median(figures["tensor_bound_passes"])
    del images, plain
    shutil.rmtree(tree, ignore_errors=True)
    figures["cold_vs_decode_bound"] = ratio(figures["pipeline_cold"], figures["decode_bound"])
    figures["cached_vs_tensor_bound"] = ratio(figures["pipeline_cached"],
                                              figures["tensor_bound"])
    figures["cold_vs_baseline_first_epoch"] = ratio(figures["pipeline_cold"],
                                                    figures["baseline_first_epoch"])
    figures["cached_vs_baseline_cached_epoch"] = ratio(figures["pipeline_cached"],
                                                       figures["baseline_cached_epoch"])
    return figures, ds


def train_model(image_size: int, weights: str, arch: str = "mobilenet_v2"):
    """MobileNetV2 classifier: uint8 input -> augmentation -> [-1, 1] -> MobileNetV2 ->
    GAP -> Dense(1, sigmoid, float32); compiled with Adam and binary cross-entropy.
    ``arch="tiny"`` swaps the backbone for two convolutions (quick tests only)."""
    import keras  # noqa: PLC0415
    from pipeline import augment  # noqa: PLC0415
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
        raise app.UsageError(f"--train_arch={arch}: mobilenet_v2 or tiny")
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


def train_rate(model, dataset, steps: int, warmup: int, batch_size: int) -> float:
    """images/s of ``model.fit`` over ``steps`` steps after ``warmup`` untimed steps."""
    model.fit(dataset, steps_per_epoch=max(1, warmup), epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return rate(steps * batch_size, time.perf_counter() - t0)


def measure_training(ds, image_size: int, batch_size: int, steps: int, warmup: int,
                     weights: str, arch: str = "mobilenet_v2",
                     rounds: int = 2) -> dict[str, float]:
    """Training fed by the (cached) pipeline against one constant batch, same model.

    The two feedings alternate ``rounds`` times (constant, fed, constant, fed, ...) so
    that drift of the machine (other jobs, clocks) hits both alike; each figure is the
    median of its rounds, and every round is kept in ``*_rounds``."""
    tf = _tf()
    model = train_model(image_size, weights, arch)
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
    out["train_fed_vs_constant"] = ratio(out["train_fed"], out["train_constant"])
    return out


def make_camera_set(n_images: int, size_range: tuple[int, int], stored_size: int,
                    workdir: str) -> str:
    """Synthetic camera-resolution set converted with the converter (every eye in the
    train split); returns the converted directory."""
    from pipeline import writer  # noqa: PLC0415
    from tools.synth import make_synthetic  # noqa: PLC0415
    raw = os.path.join(workdir, "camera_raw")
    paths = make_synthetic(raw, n_patients=max(1, -(-n_images // 2)), formats=("full_df",),
                           size_range=size_range,
                           workers=min(os.cpu_count() or 1, max(1, n_images // 32)))
    out = os.path.join(workdir, "camera_converted")
    writer.convert(writer.ConvertConfig(
        annotations=[paths["full_df"]], images=[paths["images"]], output=out,
        image_size=stored_size, split=(1.0, 0.0, 0.0), selection="all", progress=False))
    return out


def run_bench(data: str, output: str | None, *, split: str = "train", image_size: int = 384,
              batch_size: int = 64, epochs: int = 6, cache_budget_gb: float = 4.0,
              cold_repeats: int = 3, synthetic_images: int = 512,
              size_range: tuple[int, int] = (1400, 3000),
              train_steps: int = 10, warmup_steps: int = 2, train_rounds: int = 2,
              weights: str = "none",
              train_arch: str = "mobilenet_v2", camera_stored_size: int = 0,
              precision: str = "auto", augment: str = "auto", originals: str | None = None,
              workdir: str | None = None) -> dict[str, Any]:
    """Run every measurement; print and return (and write to ``output``) the results."""
    tf = _tf()
    import keras  # noqa: PLC0415
    from model import precision as precision_lib  # noqa: PLC0415
    from pipeline import reader  # noqa: PLC0415
    if epochs < 2:
        raise app.UsageError(f"--epochs={epochs}: need >= 2 (one cold, one cached)")
    device = device_name()
    augment_on = augment == "on" or (augment == "auto" and device.startswith("/GPU"))
    policy = precision_lib.set_policy(precision)
    read_cfg = reader.ReadConfig(image_size=image_size, batch_size=batch_size,
                                 cache_budget_gb=cache_budget_gb, normal_only=False, seed=0)
    consume = make_consumer(augment_on, device)
    results: dict[str, Any] = {
        "config": {"data": os.path.abspath(data), "split": split, "image_size": image_size,
                   "batch_size": batch_size, "epochs": epochs, "cold_repeats": cold_repeats,
                   "cache_budget_gb": cache_budget_gb, "augment_in_epochs": augment_on,
                   "precision": policy, "device": device, "train_arch": train_arch,
                   "camera_stored_size": camera_stored_size or image_size,
                   "cpu_cores": os.cpu_count(),
                   "tensorflow": tf.__version__, "keras": keras.__version__,
                   "python": platform.python_version(), "weights": weights,
                   "command": " ".join(sys.argv)},
        "ratios": {}}
    workdir = tempfile.mkdtemp(prefix="fundus_bench_", dir=workdir)
    try:
        figures, ds = measure_set(data, split, read_cfg, epochs, consume, augment_on,
                                  originals, workdir, cold_repeats)
        results["data"] = figures
        print("data figures:", json.dumps(figures, sort_keys=True), flush=True)
        if synthetic_images > 0:
            camera_dir = make_camera_set(synthetic_images, size_range,
                                         camera_stored_size or image_size, workdir)
            cam, cam_ds = measure_set(camera_dir, "train", read_cfg, epochs, consume,
                                      augment_on, None, workdir, cold_repeats)
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
    print(report(results))
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        from pipeline import fileio  # noqa: PLC0415
        fileio.write_json(output, results)
    return results


def report(results: dict[str, Any]) -> str:
    """Human-readable table of the figures (images/s) and ratios."""
    lines = [f"fundus-bench on {results['config']['device']} "
             f"({results['config']['cpu_cores']} cores), image {results['config']['image_size']}"
             f" px, batch {results['config']['batch_size']}, augmentation in epochs: "
             f"{results['config']['augment_in_epochs']}"]
    keys = ("baseline_first_epoch", "baseline_cached_epoch", "pipeline_cold",
            "pipeline_cached", "decode_bound", "tensor_bound")
    for name in ("data", "camera"):
        if name in results:
            fig = results[name]
            lines.append(f"  {name} ({fig['images']} images):")
            lines += [f"    {k:24s} {fig[k]:10.1f} images/s" for k in keys]
    if "train" in results:
        lines += [f"  {k:26s} {results['train'][k]:10.1f} images/s"
                  for k in ("train_fed", "train_constant")]
    for k, v in results["ratios"].items():
        lines.append(f"  {k:26s} {'n/a' if v is None else f'{v:10.3f}'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.data:
        raise app.UsageError("--data: a fundus-convert output directory is required")
    try:
        lo, hi = (int(v) for v in FLAGS.synthetic_size_range.split(","))
    except ValueError:
        raise app.UsageError(f"--synthetic_size_range={FLAGS.synthetic_size_range}: "
                             "two integers MIN,MAX expected") from None
    run_bench(FLAGS.data, FLAGS.output, split=FLAGS.split, image_size=FLAGS.image_size,
              batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
              cold_repeats=FLAGS.cold_repeats,
              cache_budget_gb=FLAGS.cache_budget_gb, synthetic_images=FLAGS.synthetic_images,
              size_range=(lo, hi), train_steps=FLAGS.train_steps,
              warmup_steps=FLAGS.warmup_steps, train_rounds=FLAGS.train_rounds,
              weights=FLAGS.weights,
              train_arch=FLAGS.train_arch, camera_stored_size=FLAGS.camera_stored_size,
              precision=FLAGS.precision, augment=FLAGS.augment, originals=FLAGS.originals,
              workdir=FLAGS.workdir)
    return 0


def run() -> None:
    """Console script ``fundus-bench``; flags are defined here, not at import, so importing
    this module next to other jobs defines no clashing flags."""
    if "synthetic_images" not in FLAGS:
        define_flags()
    _common.entry(main)()


if __name__ == "__main__":
    run()
