"""fundus-demo: the whole chain on a synthetic ODIR-shaped data set, on a CPU, in minutes.

    fundus-demo --workdir=/tmp/fundus-demo

1. ``DIR/synth``: synthetic camera-style photos + ODIR-5K annotations with a planted sex
   signal (:func:`pipeline.synthetic.make_synthetic`); the chain is :func:`model.demo.run_demo`;
2. ``DIR/data``: converted TFRecords + manifest (:func:`pipeline.writer.convert`);
3. ``DIR/model``: a ``fundus-train`` model dir (the small ``tiny`` backbone from random
   weights, a few epochs; :func:`model.training.train`), with TensorBoard logs in
   ``DIR/model/logs``;
4. ``DIR/eval``: ``fundus-evaluate`` output on the test split (:mod:`model.evaluation`).

Prints the validation AUC (must exceed 0.9 on this planted signal), the test AUC with its
patient-bootstrap interval, and the TensorBoard command. ``--workdir`` defaults to a new
temporary folder.

Exit status: 0 on success; 2 bad flags (e.g. ``--workdir`` is a file; the message names
the flag and the fix); 1 when the validation AUC is not above 0.9, or a step failed.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import os
import tempfile
import time

from absl import app, flags

from model import demo

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output folder (default: a new temporary folder).")
flags.DEFINE_integer("patients", 200, "Synthetic patients (two eyes each).", lower_bound=40)
flags.DEFINE_integer("image_size", 64, "Converted and training image size, pixels.",
                     lower_bound=32)
flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the data, splits and training.")
flags.DEFINE_integer("workers", 2, "Processes rendering and converting photos.",
                     lower_bound=1)
flags.DEFINE_integer("bootstrap", 500, "Patient-bootstrap resamples of the test AUC CI.",
                     lower_bound=0)

def _ci(ci) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.workdir and os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
        raise _common.InputError(f"--workdir={FLAGS.workdir}: exists and is not a folder; "
                                 "give a folder (created when absent)")
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="fundus-demo-")
    cfg = demo.DemoConfig(workdir=workdir, patients=FLAGS.patients, image_size=FLAGS.image_size,
                     epochs=FLAGS.epochs, seed=FLAGS.seed, workers=FLAGS.workers,
                     bootstrap=FLAGS.bootstrap)
    t0 = time.time()
    out = demo.run_demo(cfg)
    ok = out["val_auc"] > demo.AUC_TARGET
    print(f"\nvalidation AUC {out['val_auc']:.3f} per image, {out['val_patient_auc']:.3f} "
          f"per patient ({out['val_images']} images) -- "
          f"{'above' if ok else 'NOT above'} {demo.AUC_TARGET}")
    print(f"test AUC {out['test_auc']:.3f}{_ci(out['test_auc_ci95'])} per image, "
          f"{out['test_patient_auc']:.3f} per patient")
    print(f"outputs: {out['workdir']}/{{synth,data,model,eval}}  "
          f"({time.time() - t0:.0f} s in all)")
    print(f"TensorBoard: tensorboard --logdir {out['tensorboard']}", flush=True)
    if not ok:
        raise _common.RunError(f"validation AUC {out['val_auc']:.3f} is not above "
                               f"{demo.AUC_TARGET}: the chain did not learn the planted signal")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
