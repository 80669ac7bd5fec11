"""The GPU precision path (``--precision=mixed_float16``) trained on CPU.

TensorFlow has float16 CPU kernels for every op of the ``tiny`` backbone, the
augmentation block and the head (slower than float32, but the same graph a GPU runs), so
this trains a few steps of the whole ``training.train`` path under ``mixed_float16`` on
CPU. What a CPU cannot show: GPU speed and Tensor Core use, and cuDNN's own float16
kernels (their numerics differ from the CPU's); ``fundus-bench`` on a GPU covers those.
"""
from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from model import augment, classifier, rundir, train_config, training


@pytest.fixture
def restore_policy():
    """``training.train`` sets the global policy; later tests expect it back."""
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


def _convs(model: keras.Model) -> list[keras.layers.Conv2D]:
    """The Conv2D layers of the classifier ``model``'s backbone."""
    return [layer for layer in classifier.backbone_of(model).layers
            if isinstance(layer, keras.layers.Conv2D)]


class _Inspect(keras.callbacks.Callback):
    """What each stage's ``fit`` ran with: the compiled optimizer, the ``sex`` output's
    dtypes, a backbone conv layer's compute dtype, and the loss scale at the end."""

    def __init__(self):
        super().__init__()
        self.stages: list[dict] = []

    def on_train_begin(self, logs=None):
        sex = self.model.get_layer(classifier.SEX_OUTPUT)
        convs = _convs(self.model)
        self.stages.append({
            "optimizer": self.model.optimizer,
            "sex_compute": sex.compute_dtype, "sex_variable": sex.variable_dtype,
            "output": keras.backend.standardize_dtype(self.model.outputs[0].dtype),
            "conv_compute": convs[0].compute_dtype})

    def on_train_end(self, logs=None):
        opt = self.model.optimizer
        scale = getattr(opt, "dynamic_scale", None)
        self.stages[-1]["loss_scale"] = None if scale is None else float(
            keras.ops.convert_to_numpy(scale))


def test_mixed_float16_trains_on_cpu_with_loss_scaling(tiny_data, tmp_path, restore_policy):
    """Two epochs (head, then fine-tune) of the tiny backbone under mixed_float16: Keras
    3's ``model.compile`` wraps ``optim.make_optimizer``'s AdamW in a
    ``LossScaleOptimizer`` (the policy is the model's), the loss stays finite, the ``sex``
    head computes in float32, and the saved ``best.keras`` reloads (under float32 as the
    global policy) with its float16 layers and predicts finite float32 probabilities."""
    cfg = train_config.TrainConfig(
        data=tiny_data, model_dir=str(tmp_path / "m"), backbone="tiny", weights="none",
        image_size=32, batch_size=8, epochs=2, warmup_epochs=1, fine_tune_fraction=1.0,
        learning_rate=3e-3, augment=augment.AugmentConfig(seed=1), image_grid=0,
        verbose=0, seed=1, precision="mixed_float16")
    inspect = _Inspect()
    run = training.train(cfg, callbacks=[inspect])
    assert run["policy"] == "mixed_float16"
    assert [s["conv_compute"] for s in inspect.stages] == ["float16", "float16"]
    for stage in inspect.stages:
        opt = stage["optimizer"]
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
        assert isinstance(opt.inner_optimizer, keras.optimizers.AdamW)
        assert (stage["sex_compute"], stage["sex_variable"], stage["output"]) == (
            "float32", "float32", "float32")
        assert np.isfinite(stage["loss_scale"]) and stage["loss_scale"] >= 1.0

    history = rundir.read_history(os.path.join(cfg.model_dir, rundir.HISTORY_CSV))
    assert len(history) == 2
    for row in history:
        assert np.isfinite(row["loss"]) and np.isfinite(row["val_loss"])
    assert not run["terminated_on_nan"]

    keras.mixed_precision.set_global_policy("float32")
    model = keras.models.load_model(os.path.join(cfg.model_dir, rundir.BEST_MODEL),
                                    compile=False)
    convs = _convs(model)
    assert convs and convs[0].compute_dtype == "float16"     # the policy was saved
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    out = model.predict(images, verbose=0)
    sex = out[classifier.SEX_OUTPUT] if isinstance(out, dict) else out
    assert sex.dtype == np.float32 and sex.shape == (6, 1)
    assert np.all(np.isfinite(sex)) and np.all((sex >= 0.0) & (sex <= 1.0))
