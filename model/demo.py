"""The demo chain on a synthetic ODIR-shaped data set: synthesise, convert, train, evaluate.

:func:`run_demo` is what ``fundus-demo`` runs (README's first set-up command): synthetic
camera-style photos with a planted sex signal (``pipeline.synthetic``), their conversion
(``pipeline.writer``), a ``fundus-train`` run of the small ``tiny`` backbone from random
weights (:func:`demo_train_config`, ``model.training``) and ``fundus-evaluate`` of the
test split (``model.evaluation``), each in its own folder of the work dir. The planted
signal is strong, so a working chain reaches a validation AUC above :data:`AUC_TARGET`.
"""
from __future__ import annotations

import dataclasses
import os
import time

from model import augment, evaluation, training
from model.train_config import TrainConfig
from pipeline import synthetic, writer

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


def demo_train_config(cfg: DemoConfig, data: str, model_dir: str) -> TrainConfig:
    """The ``fundus-train`` settings of the demo: the small ``tiny`` backbone trained
    from random weights in one stage (no frozen warmup: there is nothing pretrained to
    protect), Adam with warmup + cosine, mild augmentation."""
    return TrainConfig(
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
    run = training.train(demo_train_config(cfg, paths["data"], paths["model"]))
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
