"""fundus-bench: how fast is the input pipeline, against the old loader and the machine?

    fundus-bench --data=DIR --output=bench.json [--image_size=384 --batch_size=64]

On the same images, in one run, images/s of the earlier attempt's loader (``baseline``),
this pipeline's first and cached epochs, their bounds (JPEG decode on all cores; batches
from an in-memory tensor) and a MobileNetV2 training step fed by the pipeline against one
fed a constant batch; then the same epoch figures on a camera-resolution synthetic set
(``--synthetic_images`` eyes) converted in a temporary folder. Cached and tensor-bound
figures are medians of ``--epochs`` - 1 timings of at least ``--min_seconds`` each (whole
passes repeated), printed and written with their spread (min, max, relative IQR), and the
cached / tensor ratio with the spread of its rounds. What each figure means:
:mod:`pipeline.bench` (input measurements) and :mod:`model.bench` (the run, the training
step, ``--augment``).

Exit status: 0 measured; 2 bad flags or inputs (no manifest, an empty split, original
JPEGs not found, a missing --weights file; the message names the flag and the fix);
1 a failure during the measurements.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

from absl import app, flags

from model import bench
from pipeline import bench as input_bench

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "A fundus-convert output directory to measure.")
flags.DEFINE_string("output", None, "Write every figure and ratio as JSON here.")
flags.DEFINE_string("split", "train", "Split of --data to read.")
flags.DEFINE_integer("image_size", 384, "Training size, pixels.", lower_bound=32)
flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 6, "Pipeline timings: 1 cold epoch + (epochs - 1) cached "
                     "timings; >= 2. The cached figures and the tensor bound are medians "
                     "over epochs - 1 timings of >= --min_seconds each.")
flags.DEFINE_float("min_seconds", 2.0, "Least duration of each cached / tensor-bound "
                   "timing, seconds: whole passes repeat until it has elapsed and the "
                   "images of all count (a cached epoch can last ~0.1 s).", lower_bound=0.0)
flags.DEFINE_integer("cold_repeats", 3, "Cold epochs, each of a freshly built dataset; "
                     "the cold figure is their median.", lower_bound=1)
flags.DEFINE_float("cache_budget_gb", 4.0, "Reader's in-memory cache budget, GiB.")
flags.DEFINE_integer("synthetic_images", 512, "Eyes of the camera-resolution synthetic "
                     "set (0: skip it); a multiple of --batch_size, so that the "
                     "training epoch (drop_remainder) yields every decoded eye.",
                     lower_bound=0)
flags.DEFINE_string("synthetic_size_range", "1400,3000", "Synthetic image widths, px.")
flags.DEFINE_integer("camera_stored_size", 0, "Stored size the camera set is converted "
                     "at, px (0: --image_size, i.e. converted at the training size).",
                     lower_bound=0)
flags.DEFINE_integer("train_steps", 10, "Timed training steps per feeding (0: skip).",
                     lower_bound=0)
flags.DEFINE_integer("warmup_steps", 2, "Untimed training steps first.", lower_bound=0)
flags.DEFINE_integer("train_rounds", 2, "Alternating rounds of constant / fed "
                     "training; each figure is the median over rounds.", lower_bound=1)
flags.DEFINE_enum("train_arch", "mobilenet_v2", list(bench.TRAIN_ARCHS),
                  "Training-step model (tiny: two convolutions, for quick tests).")
flags.DEFINE_string("weights", "none", "MobileNetV2 weights: none or a .weights.h5 path.")
flags.DEFINE_string("precision", "auto", "auto|float32|mixed_float16|mixed_bfloat16.")
flags.DEFINE_enum("augment", "auto", ["auto", "on", "off"],
                  "Augmentation in the epoch figures (auto: on with a GPU).")
flags.DEFINE_string("originals", None, "Folder of the original JPEGs of --data "
                    "(default: the manifest's sources).")
flags.DEFINE_string("workdir", None, "Temporary folder (default: system temp).")
flags.mark_flag_as_required("data")


def _size_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise app.UsageError(f"--synthetic_size_range={text}: two integers MIN,MAX "
                             "expected, e.g. 1400,3000") from None
    return lo, hi


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    size_range = _size_range(FLAGS.synthetic_size_range)
    with _common.checking_inputs():
        bench.check_arguments(epochs=FLAGS.epochs, size_range=size_range,
                              train_arch=FLAGS.train_arch, weights=FLAGS.weights,
                              precision=FLAGS.precision, augment_mode=FLAGS.augment,
                              min_seconds=FLAGS.min_seconds)
        input_bench.check_inputs(FLAGS.data, FLAGS.split, FLAGS.originals)
    bench.run_bench(FLAGS.data, FLAGS.output, split=FLAGS.split, image_size=FLAGS.image_size,
                    batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
                    cold_repeats=FLAGS.cold_repeats, cache_budget_gb=FLAGS.cache_budget_gb,
                    synthetic_images=FLAGS.synthetic_images, size_range=size_range,
                    train_steps=FLAGS.train_steps, warmup_steps=FLAGS.warmup_steps,
                    train_rounds=FLAGS.train_rounds, weights=FLAGS.weights,
                    train_arch=FLAGS.train_arch, camera_stored_size=FLAGS.camera_stored_size,
                    precision=FLAGS.precision, augment=FLAGS.augment,
                    originals=FLAGS.originals, workdir=FLAGS.workdir,
                    min_seconds=FLAGS.min_seconds)
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
