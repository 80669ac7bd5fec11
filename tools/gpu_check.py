"""fundus-gpu-check: does this GPU machine train the project right, and how fast?

    fundus-gpu-check --output=gpu_check.json [--data=DIR] [--batch_size=64]
    fundus-gpu-check --cpu_smoke --output=smoke.json      (the same run on CPU, tiny sizes)

One run (under 8 minutes on one GPU): (a) a few steps under mixed_float16 with loss
scaling (the optimizer a LossScaleOptimizer, the loss finite, the ``sex`` output float32);
(b) a few steps under MirroredStrategy over all GPUs (replicas = GPUs, loss finite); (c)
training images/s of MobileNetV2 at 384 px and EfficientNetV2-S at 512 px fed by the input
pipeline against a constant batch, and the pipeline's cold and cached epoch rates. The data
is a small synthetic set made and converted in a temporary folder, or ``--data``. Every
figure, the devices, the versions and each check's verdict go to ``--output`` (JSON); a
short report is printed. What each check does: :mod:`model.gpu_check`.

Exit status: 0 every check passed; 2 bad flags or inputs (no GPU without --cpu_smoke, a
bad --data or --originals, a --data train split smaller than one batch); 1 a check failed
(the JSON is still written, the failing check holds its error) or a failure during the run.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

from absl import app, flags

from model import gpu_check

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Write every figure, the devices, the versions and "
                    "each check's verdict as JSON here.")
flags.DEFINE_bool("cpu_smoke", False, "Run on CPU at tiny sizes (the tiny backbone at "
                  "32 and 48 px, batch 8, 3 steps; MirroredStrategy over 2 logical "
                  "CPU devices): checks the command itself, not a GPU.")
flags.DEFINE_string("data", None, "A fundus-convert output whose train split feeds the "
                    "checks (default: a small synthetic set made in a temporary folder).")
flags.DEFINE_string("originals", None, "Folder of the original JPEGs of --data (the "
                    "input figures' baseline loader; default: the manifest's sources).")
flags.DEFINE_integer("batch_size", 0, "GLOBAL batch size of every training step (0: 64 on "
                     "a GPU, 8 with --cpu_smoke).", lower_bound=0)
flags.DEFINE_string("workdir", None, "Temporary folder (default: system temp).")
flags.mark_flag_as_required("output")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.cpu_smoke:        # before TensorFlow's runtime starts (no op has run yet)
        gpu_check.configure_cpu_devices()
    with _common.checking_inputs():
        gpu_check.check_arguments(FLAGS.cpu_smoke, FLAGS.data, FLAGS.originals,
                                  FLAGS.batch_size)
    results = gpu_check.run_checks(FLAGS.output, cpu_smoke=FLAGS.cpu_smoke, data=FLAGS.data,
                                   originals=FLAGS.originals, batch_size=FLAGS.batch_size,
                                   workdir=FLAGS.workdir)
    if not results["passed"]:
        failed = [k for k, c in results["checks"].items() if not c["passed"]]
        raise _common.RunError(f"check(s) failed: {', '.join(failed)} (see {FLAGS.output})")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
