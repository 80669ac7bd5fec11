"""Augmentation block: random only in training, identity at inference, surround kept
black, local contrast, flags, and .keras round trips."""
from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from model import augment
from model import backbones  # noqa: F401  (registers the layers augment_v1.keras holds)

SIZE = 48


def toy_fundi(n: int = 6, seed: int = 0) -> np.ndarray:
    """uint8 [n, SIZE, SIZE, 3]: textured disc in the inscribed circle, black outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = (yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2 < (SIZE / 2 - 2) ** 2
    img = rng.integers(60, 200, (n, SIZE, SIZE, 3)).astype(np.uint8)
    img[:, ~inside] = 0
    return img


def test_training_changes_images_inference_is_identity():
    images = toy_fundi()
    layer = augment.build_augmentation(augment.AugmentConfig(seed=1))
    train = layer(images, training=True)
    infer = layer(images, training=False)
    assert train.dtype == tf.float32 and infer.dtype == tf.float32
    assert train.shape == images.shape
    np.testing.assert_array_equal(infer.numpy(), images.astype(np.float32))
    diff = np.abs(train.numpy() - images.astype(np.float32)).mean(axis=(1, 2, 3))
    assert np.all(diff > 1.0)                          # every image changed
    assert 0.0 <= float(tf.reduce_min(train)) and float(tf.reduce_max(train)) <= 255.0
    again = layer(images, training=True)
    assert not np.allclose(again.numpy(), train.numpy())   # fresh randomness per call


def test_surround_stays_black_after_colour_jitter():
    images = toy_fundi()
    cfg = augment.AugmentConfig(brightness=0.5, seed=2)
    out = augment.build_augmentation(cfg)(images, training=True).numpy()
    corners = np.concatenate([out[:, :4, :4], out[:, -4:, -4:]], axis=1)
    assert corners.max() == 0.0
    unmasked = augment.build_augmentation(dataclasses.replace(cfg, restore_mask=False))
    raw = unmasked(images, training=True).numpy()
    assert np.concatenate([raw[:, :4, :4], raw[:, -4:, -4:]], axis=1).max() > 0.0


def test_inside_model_follows_training_flag_and_round_trips(tmp_path):
    inp = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    x = augment.build_augmentation(augment.AugmentConfig(rotation_deg=10.0, seed=3))(inp)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    images = toy_fundi(4)
    infer = model(images, training=False).numpy()
    np.testing.assert_allclose(infer, images.astype(np.float32).mean(axis=(1, 2)), rtol=1e-5)
    assert not np.allclose(model(images, training=True).numpy(), infer)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    block = loaded.get_layer("augmentation")
    assert isinstance(block, augment.FundusAugmentation)
    assert block.cfg == augment.AugmentConfig(rotation_deg=10.0, seed=3)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), infer, rtol=1e-5)


def test_local_contrast_normalises_and_runs_at_inference():
    flat = np.zeros((1, 96, 96, 3), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    inside = (yy - 47.5) ** 2 + (xx - 47.5) ** 2 < 46 ** 2
    flat[:, inside] = (150, 70, 30)
    lc = augment.LocalContrast(sigma_frac=1 / 30)
    out = lc(flat).numpy()
    centre = out[0, 40:56, 40:56]
    np.testing.assert_allclose(centre, 128.0, atol=1.0)   # flat region -> mid grey
    assert out[0, :3, :3].max() == 0.0                    # surround black
    block = augment.build_augmentation(augment.AugmentConfig(local_contrast=True))
    np.testing.assert_allclose(block(flat, training=False).numpy(), out, atol=1e-4)
    edge = flat.copy()
    edge[:, :, 48:] = 0
    edge[:, ~inside] = 0
    sharp = lc(np.where(edge > 0, edge, flat // 2)).numpy()
    assert sharp.max() > 200 and sharp[0, 48, 40:56].min() < 60   # edges amplified
    config = lc.get_config()
    assert augment.LocalContrast.from_config(config).sigma_frac == pytest.approx(1 / 30)


def test_zero_strengths_disable_layers_and_validation():
    cfg = augment.AugmentConfig(flip=False, rotation_deg=0, zoom=0, translate=0,
                                brightness=0, contrast=0, saturation=0, hue=0)
    layer = augment.build_augmentation(cfg)
    assert layer.geometric == [] and layer.photometric == []
    images = toy_fundi(2)
    np.testing.assert_array_equal(layer(images, training=True).numpy(),
                                  images.astype(np.float32))
    with pytest.raises(ValueError, match="--augment_rotation_deg"):
        augment.AugmentConfig(rotation_deg=-1)
    default = augment.build_augmentation()
    assert [type(g).__name__ for g in default.geometric] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"]
    assert default.geometric[0].mode == "horizontal"       # no vertical flip by default


def test_saturation_hue_layer():
    images = toy_fundi(3).astype(np.float32)
    layer = augment.RandomSaturationHue(saturation=0.5, hue=0.1, seed=0)
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images)
    out = layer(images, training=True).numpy()
    assert out.shape == images.shape and not np.allclose(out, images, atol=1.0)
    grey = np.full((1, 8, 8, 3), 100.0, np.float32)      # no saturation: unchanged
    np.testing.assert_allclose(layer(grey, training=True).numpy(), grey, atol=1e-3)


def test_flags_round_trip():
    fv = flags.FlagValues()
    augment.define_flags(fv)
    augment.define_flags(fv)                               # idempotent
    fv(["prog", "--augment_rotation_deg=5", "--noaugment_flip", "--augment_hue=0"])
    cfg = augment.config_from_flags(fv, seed=7)
    assert cfg == augment.AugmentConfig(rotation_deg=5.0, flip=False, hue=0.0, seed=7)


# ------------------------------------------------ models saved before the move still load
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_model_saved_before_the_move_loads():
    """tests/data/augment_v1.keras was saved when the block lived in pipeline/augment.py
    (see tests/data/make_augment_v1.py): same registered names, same predictions."""
    model = keras.models.load_model(os.path.join(DATA, "augment_v1.keras"), compile=False)
    expected = np.load(os.path.join(DATA, "augment_v1_expected.npz"))
    block = model.get_layer("augmentation")
    assert isinstance(block, augment.FundusAugmentation)
    assert block.cfg == augment.AugmentConfig(local_contrast=True, seed=7)
    assert isinstance(block.local_contrast, augment.LocalContrast)
    got = model(expected["images"], training=False).numpy()
    np.testing.assert_allclose(got, expected["probabilities"], atol=1e-5)


# ------------------------------------------- the module's list of its random transforms
LISTED = tuple(field for _, field in augment.RANDOM_TRANSFORMS)


def _bright_fundi(n: int = 8) -> np.ndarray:
    """Like toy_fundi but every disc pixel's max channel is >= 80 (above any mask
    threshold _on_value picks), so only random transforms tell training from inference."""
    img = toy_fundi(n, seed=4)
    img[img > 0] = np.maximum(img[img > 0], 80)
    return img


def _changes_in_training(cfg: augment.AugmentConfig) -> bool:
    """Whether the block's training output differs from its inference output (what an
    activation cache, computed once in inference mode, cannot reproduce)."""
    layer = augment.build_augmentation(cfg)
    images = _bright_fundi()
    infer = layer(images, training=False).numpy()
    return any(not np.allclose(layer(images, training=True).numpy(), infer, atol=1e-3)
               for _ in range(2))


def _on_value(cfg: augment.AugmentConfig, field: dataclasses.Field):
    """A value of ``field`` that differs from ``cfg``'s: the other boolean, a quarter of
    the float range, seed 5."""
    value = getattr(cfg, field.name)
    if field.name == "seed":
        return 5
    if isinstance(value, bool):
        return not value
    assert field.name in augment.RANGES, (
        f"AugmentConfig.{field.name}: add its valid range to augment.RANGES")
    lo, hi = augment.RANGES[field.name]
    return lo + (hi - lo) / 4.0


def _random_transform_list_errors() -> list[str]:
    """Fields whose membership in augment.RANDOM_TRANSFORMS disagrees with what the block
    does with that field switched on alone (every listed transform off otherwise)."""
    listed = tuple(field for _, field in augment.RANDOM_TRANSFORMS)
    fields = dataclasses.fields(augment.AugmentConfig)
    base = augment.AugmentConfig(seed=3, **{
        f.name: (False if isinstance(f.default, bool) else 0.0)
        for f in fields if f.name in listed})
    errors = []
    if augment.active_transforms(base) or _changes_in_training(base):
        errors.append(f"with every listed transform off ({listed}) training still changes "
                      f"the images: a random transform is missing from RANDOM_TRANSFORMS")
    for f in fields:
        cfg = dataclasses.replace(base, **{f.name: _on_value(base, f)})
        random = _changes_in_training(cfg)
        if random != (f.name in listed):
            errors.append(f"{f.name}: changes the images in training: {random}; listed in "
                          f"RANDOM_TRANSFORMS: {f.name in listed}")
        if random and augment.active_transforms(cfg) != (f.name,):
            errors.append(f"{f.name}: active_transforms gives {augment.active_transforms(cfg)}")
    return errors


def test_every_random_transform_is_listed():
    assert _random_transform_list_errors() == []


def test_a_transform_missing_from_the_list_is_caught(monkeypatch):
    forgotten = tuple(t for t in augment.RANDOM_TRANSFORMS if t[1] != "zoom")
    monkeypatch.setattr(augment, "RANDOM_TRANSFORMS", forgotten)
    errors = _random_transform_list_errors()
    assert any(e.startswith("zoom:") for e in errors), errors
    assert any("missing from RANDOM_TRANSFORMS" in e for e in errors), errors


def test_active_transforms_and_check_only():
    assert augment.active_transforms(None) == (
        "flip", "rotation_deg", "zoom", "translate", "brightness", "contrast",
        "saturation", "hue")
    flip_only = augment.AugmentConfig(flip=True, rotation_deg=0, zoom=0, translate=0,
                                      brightness=0, contrast=0, saturation=0, hue=0,
                                      local_contrast=True)
    assert augment.active_transforms(flip_only) == ("flip",)
    augment.check_only(flip_only, allowed=("flip",), why="x")          # no error
    augment.check_only(augment.AugmentConfig(), allowed=LISTED, why="x")
    cfg = dataclasses.replace(flip_only, hue=0.05, vertical_flip=True)
    with pytest.raises(ValueError) as e:
        augment.check_only(cfg, allowed=("flip",), why="only the flip here",
                           alternative="or drop --x")
    off = " ".join(f"--augment_{f}={'false' if f == 'vertical_flip' else 0}"
                   for f in LISTED if f != "flip")
    assert str(e.value) == (f"only the flip here; these are on: --augment_hue=0.05, "
                            f"--augment_vertical_flip=True. Pass {off} (or drop --x)")
    with pytest.raises(ValueError, match="--augment_flip=True"):
        augment.check_only(None, allowed=(), why="none")
