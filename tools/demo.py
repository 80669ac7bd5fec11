"""fundus-demo: the whole chain on a synthetic ODIR-shaped data set, on a CPU, in minutes.

    fundus-demo --workdir=/tmp/fundus-demo

1. ``DIR/synth``: synthetic camera-style photos + ODIR-5K annotations with a planted sex
   signal (:func:`pipeline.synthetic.make_synthetic`);
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

import dataclasses
import os
import tempfile
import time

from absl import app, flags

from model import augment, evaluation, training
from model import train_config as train_config_lib
from pipeline import synthetic, writer

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

AUC_TARGET = 0.9


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs (sizes in pixels)."""

    workdir: str
    patients: int = 200
    image_size: int = 64
    epochs: int = 10
    seed: int = 0
    workers: int = 2
    bootstrap: int = 500
    photo_size: tuple[int, int] = (300, 500)     # synthetic photo widths, pixels
    normal_fraction: float = 0.8


def train_config(cfg: DemoConfig, data: str, model_dir: str):
    """The ``fundus-train`` settings of the demo: the small ``tiny`` backbone trained
    from random weights in one stage (no frozen warmup: there is nothing pretrained to
    protect), Adam with warmup + cosine, mild augmentation."""
    return train_config_lib.TrainConfig(
        data=data, model_dir=model_dir, backbone="tiny", weights="none",
        image_size=cfg.image_size, batch_size=16, epochs=cfg.epochs, warmup_epochs=0,
        fine_tune_fraction=1.0, optimizer="adam", learning_rate=3e-3,
        fine_tune_learning_rate=3e-3, schedule="cosine", lr_warmup_fraction=0.1,
        weight_decay=1e-4, dropout=0.2, patience=0, seed=cfg.seed, overwrite=True,
        precision="float32", strategy="auto", verbose=2,
        augment=augment.AugmentConfig(rotation_deg=10.0, zoom=0.05, translate=0.03,
                                      brightness=0.05, contrast=0.05, saturation=0.05,
                                      hue=0.01, seed=cfg.seed))


def run_demo(cfg: DemoConfig) -> dict:
    """Synthesise, convert, train, evaluate; returns a summary dict (AUCs, paths, times)."""
    d = os.path.abspath(cfg.workdir)
    paths = {k: os.path.join(d, k) for k in ("synth", "data", "model", "eval")}
    times: dict[str, float] = {}

    t = time.time()
    made = synthetic.make_synthetic(paths["synth"], n_patients=cfg.patients,
                                    formats=("per_patient_csv",), signal=1.0, seed=cfg.seed,
                                    size_range=cfg.photo_size,
                                    normal_fraction=cfg.normal_fraction,
                                    workers=cfg.workers, overwrite=True)
    times["synth"] = time.time() - t
    _say(f"1/4 synthetic data: {cfg.patients} patients in {paths['synth']} "
         f"({times['synth']:.0f} s)")

    t = time.time()
    writer.convert(writer.ConvertConfig(
        annotations=[made["per_patient_csv"]], images=[made["images"]],
        output=paths["data"], image_size=cfg.image_size, split=(0.6, 0.2, 0.2),
        seed=cfg.seed, workers=cfg.workers, overwrite=True, progress=False))
    times["convert"] = time.time() - t
    _say(f"2/4 converted: {paths['data']} ({times['convert']:.0f} s)")

    t = time.time()
    run = training.train(train_config(cfg, paths["data"], paths["model"]))
    times["train"] = time.time() - t
    _say(f"3/4 trained: {paths['model']} ({times['train']:.0f} s)")

    t = time.time()
    metrics = evaluation.evaluate(paths["model"], paths["data"], "test", paths["eval"],
                                  bootstrap=cfg.bootstrap, seed=cfg.seed)
    times["evaluate"] = time.time() - t
    _say(f"4/4 evaluated the test split: {paths['eval']} ({times['evaluate']:.0f} s)")

    return {"workdir": d, "paths": paths, "times": times,
            "val_auc": run["val"]["auc"], "val_patient_auc": run["val"]["patient_auc"],
            "val_images": run["val"]["images"],
            "test_auc": metrics["image"]["auc"], "test_auc_ci95": metrics["image"]["auc_ci95"],
            "test_patient_auc": metrics["patient"]["auc"],
            "tensorboard": os.path.join(paths["model"], "logs")}


def _say(message: str) -> None:
    print(f"[fundus-demo] {message}", flush=True)


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
    cfg = DemoConfig(workdir=workdir, patients=FLAGS.patients, image_size=FLAGS.image_size,
                     epochs=FLAGS.epochs, seed=FLAGS.seed, workers=FLAGS.workers,
                     bootstrap=FLAGS.bootstrap)
    t0 = time.time()
    out = run_demo(cfg)
    ok = out["val_auc"] > AUC_TARGET
    print(f"\nvalidation AUC {out['val_auc']:.3f} per image, {out['val_patient_auc']:.3f} "
          f"per patient ({out['val_images']} images) -- "
          f"{'above' if ok else 'NOT above'} {AUC_TARGET}")
    print(f"test AUC {out['test_auc']:.3f}{_ci(out['test_auc_ci95'])} per image, "
          f"{out['test_patient_auc']:.3f} per patient")
    print(f"outputs: {out['workdir']}/{{synth,data,model,eval}}  "
          f"({time.time() - t0:.0f} s in all)")
    print(f"TensorBoard: tensorboard --logdir {out['tensorboard']}", flush=True)
    if not ok:
        raise _common.RunError(f"validation AUC {out['val_auc']:.3f} is not above "
                               f"{AUC_TARGET}: the chain did not learn the planted signal")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
