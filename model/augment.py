"""Augmentation inside the model (so it runs on the accelerator with the model).

:func:`build_augmentation` returns one Keras layer, :class:`FundusAugmentation`, placed
right after the model's uint8 input. With ``training=True`` it applies, per image:

1. horizontal flip (``flip``), rotation by up to ``rotation_deg`` degrees, zoom by up to
   ``zoom`` (fraction of the side, in or out), translation by up to ``translate``
   (fraction of the side); empty space is filled with black;
2. brightness (``brightness``: shift of up to that fraction of 255), contrast, saturation
   and hue (``hue``: fraction of the colour circle) jitter;
3. the dark surround restored (``restore_mask``): the fundus mask of the *input* image
   (max channel > ``mask_threshold``) goes through the same geometric transforms as the
   image (as a fourth channel) and the result is multiplied by it, so colour jitter never
   lights up the black surround and no fundus tissue appears outside the transformed disc.

With ``training=False`` (inference, evaluation, export) it is the identity apart from the
cast to float32. Output: float32 ``[B, H, W, 3]`` in 0..255 in both modes.

Optional fundus normalisation (``local_contrast``, applied in training *and* inference,
before the random transforms): :class:`LocalContrast`, the classic diabetic-retinopathy
preprocessing ``4*img - 4*GaussianBlur(img, sigma) + 128`` (sigma = side * ``sigma_frac``),
clipped to 0..255 and zero outside the fundus. The blur is tensorflow-io's pure-TF
``tfio.experimental.filter.gaussian`` applied separably (a ``[k, 1]`` then a ``[1, k]``
kernel: 2k instead of k^2 multiplies a pixel), so it is plain TF ops that run on the GPU.

Vertical flips and large rotations are off by default: the anatomy (optic disc left or
right of the fovea, the vessel arcades above and below) carries the signal.

This module owns the list of its random transforms (:data:`RANDOM_TRANSFORMS`, each with
the :class:`AugmentConfig` field that switches it on): :func:`active_transforms` names the
ones a configuration turns on and :func:`check_only` refuses a configuration that turns on
more than a caller can honour (``--cache_frozen_prefix`` trains on activations computed
once in inference mode, where only the horizontal flip can be replayed). A test builds
the block with each field on alone, so a random transform missing from the list fails it.

Every strength is an absl flag (:func:`define_flags`, :func:`config_from_flags`) so the
training job and the tuner share one definition. All layers are registered under the
Keras package ``"fundus"`` and round-trip through ``.keras`` files (the block lived in
``pipeline/augment.py`` before; the registered names did not change, so models saved then
still load).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import tensorflow as tf
from absl import flags

from model import tfio_compat

PACKAGE = "fundus"
FLAG_PREFIX = "augment_"     # AugmentConfig field f is the flag --augment_<f> (not seed)

# The random transforms of FundusAugmentation (training=True only), as
# (transform, AugmentConfig field that switches it on); a field is "on" when truthy. Every
# field that adds a random layer must be here (tests/test_augment.py checks it).
RANDOM_TRANSFORMS: tuple[tuple[str, str], ...] = (
    ("horizontal_flip", "flip"),
    ("rotation", "rotation_deg"),
    ("zoom", "zoom"),
    ("translation", "translate"),
    ("brightness", "brightness"),
    ("contrast", "contrast"),
    ("saturation", "saturation"),
    ("hue", "hue"),
    ("vertical_flip", "vertical_flip"),
)
# valid range of every float field of AugmentConfig, [lo, hi]
RANGES: dict[str, tuple[float, float]] = {
    "rotation_deg": (0.0, 180.0), "zoom": (0.0, 0.99), "translate": (0.0, 1.0),
    "brightness": (0.0, 1.0), "contrast": (0.0, 1.0), "saturation": (0.0, 1.0),
    "hue": (0.0, 0.5), "local_contrast_sigma_frac": (1e-4, 1.0),
    "mask_threshold": (0.0, 254.0)}


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths. Every zero strength disables that transform.

    Attributes:
      flip: random horizontal (left-right) flip.
      rotation_deg: maximal rotation, degrees, 0..180 (uniform in [-r, r]).
      zoom: maximal zoom, fraction of the side, 0..<1 (uniform in [-z, z]; in and out).
      translate: maximal shift, fraction of the side, 0..1, both axes.
      brightness: maximal brightness shift, fraction of 255, 0..1.
      contrast: maximal contrast change, fraction, 0..1 (factor in [1-c, 1+c]).
      saturation: maximal saturation change, fraction, 0..1 (factor in [1-s, 1+s]).
      hue: maximal hue shift, fraction of the colour circle, 0..0.5.
      vertical_flip: random up-down flip as well (off: anatomy is not up-down symmetric).
      restore_mask: keep the dark surround black after the transforms.
      local_contrast: apply :class:`LocalContrast` (training and inference).
      local_contrast_sigma_frac: Gaussian sigma of the local contrast, fraction of the
        side (1/30: 12.8 px at 384 px).
      mask_threshold: fundus mask threshold on the max channel, 0..255.
      seed: seed of the random layers (None: nondeterministic).
    """

    flip: bool = True
    rotation_deg: float = 15.0
    zoom: float = 0.1
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    vertical_flip: bool = False
    restore_mask: bool = True
    local_contrast: bool = False
    local_contrast_sigma_frac: float = 1.0 / 30.0
    mask_threshold: float = 15.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, (lo, hi) in RANGES.items():
            value = float(getattr(self, name))
            if not lo <= value <= hi:
                raise ValueError(f"--augment_{name}={value} is outside [{lo}, {hi}]")


def fundus_mask(images: tf.Tensor, threshold: float) -> tf.Tensor:
    """float32 ``[B, H, W, 1]``: 1.0 where the max channel of ``images`` (0..255) is above
    ``threshold``, else 0.0 (the dark surround)."""
    peak = tf.reduce_max(tf.cast(images, tf.float32), axis=-1, keepdims=True)
    return tf.cast(peak > threshold, tf.float32)


def circle_mask(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """float32 ``[1, H, W, 1]``: 1.0 inside the circle inscribed in the image, else 0.0.

    The converter crops the fundus bounding box and pads it to a centred square, so the
    fundus lies in this circle."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    y = tf.range(h, dtype=tf.float32)[:, None] + 0.5 - h / 2.0
    x = tf.range(w, dtype=tf.float32)[None, :] + 0.5 - w / 2.0
    r = tf.minimum(h, w) / 2.0
    inside = tf.cast(y * y + x * x <= r * r, tf.float32)
    return inside[None, :, :, None]


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering +-3 sigma (pixels)."""
    return 2 * int(math.ceil(3.0 * sigma)) + 1


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalContrast(keras.layers.Layer):
    """``clip(4*x - 4*Gaussian(x, sigma) + 128, 0, 255)`` inside the fundus, 0 outside.

    Input: uint8 or float ``[B, H, W, 3]`` in 0..255 with static H, W. Output: float32
    ``[B, H, W, 3]`` in 0..255. ``sigma = sigma_frac * min(H, W)`` pixels. Deterministic;
    the same in training and inference. The fundus region is the inscribed circle times
    the input's own mask (max channel > ``mask_threshold``) unless ``fundus`` (float32
    ``[B, H, W, 1]``, 0..1) is given.
    """

    def __init__(self, sigma_frac: float = 1.0 / 30.0, mask_threshold: float = 15.0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.sigma_frac = float(sigma_frac)
        self.mask_threshold = float(mask_threshold)

    def call(self, images: tf.Tensor, fundus: tf.Tensor | None = None) -> tf.Tensor:
        tfio = tfio_compat.tfio()
        x = tf.cast(images, tf.float32)
        side = min(int(x.shape[1]), int(x.shape[2]))
        sigma = self.sigma_frac * side
        k = min(gaussian_kernel_size(sigma), 2 * side - 1)   # REFLECT pad must be < side
        gauss = tfio.experimental.filter.gaussian
        blur = gauss(x, ksize=[k, 1], sigma=[sigma, sigma], mode="REFLECT")
        blur = gauss(blur, ksize=[1, k], sigma=[sigma, sigma], mode="REFLECT")
        out = tf.clip_by_value(4.0 * x - 4.0 * blur + 128.0, 0.0, 255.0)
        if fundus is None:
            fundus = fundus_mask(x, self.mask_threshold)
        return out * fundus * circle_mask(tf.shape(x)[1], tf.shape(x)[2])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(sigma_frac=self.sigma_frac, mask_threshold=self.mask_threshold)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomSaturationHue(keras.layers.Layer):
    """Per-image saturation factor in ``[1-saturation, 1+saturation]`` and hue shift in
    ``[-hue, hue]`` (fraction of the colour circle). float ``[B, H, W, 3]`` 0..255 in and
    out; identity unless ``training=True``."""

    def __init__(self, saturation: float = 0.1, hue: float = 0.02, seed: int | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        if not training:
            return x
        shape = (tf.shape(x)[0], 1, 1)
        s = keras.random.uniform(shape, 1.0 - self.saturation, 1.0 + self.saturation,
                                 seed=self.seed_generator)
        h = keras.random.uniform(shape, -self.hue, self.hue, seed=self.seed_generator)
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
        hue = tf.math.floormod(hsv[..., 0] + h, 1.0)
        sat = tf.clip_by_value(hsv[..., 1] * s, 0.0, 1.0)
        rgb = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1))
        return rgb * 255.0

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(saturation=self.saturation, hue=self.hue, seed=self.seed)
        return config


def _seed(seed: int | None, offset: int) -> int | None:
    return None if seed is None else int(seed) + offset


@keras.saving.register_keras_serializable(package=PACKAGE)
class FundusAugmentation(keras.layers.Layer):
    """The augmentation block (see the module docstring). Constructor arguments are the
    fields of :class:`AugmentConfig`; ``get_config`` returns them, so ``.keras`` files
    rebuild the same block."""

    def __init__(self, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(AugmentConfig)}
        cfg_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("name", "augmentation")
        super().__init__(**kwargs)
        self.cfg = AugmentConfig(**cfg_kwargs)
        self.geometric = self._geometric_layers(self.cfg)
        self.photometric = self._photometric_layers(self.cfg)
        self.local_contrast = (
            LocalContrast(self.cfg.local_contrast_sigma_frac, self.cfg.mask_threshold,
                          name="local_contrast")
            if self.cfg.local_contrast else None)

    @staticmethod
    def _geometric_layers(cfg: AugmentConfig) -> list[keras.layers.Layer]:
        L = keras.layers
        fill = dict(fill_mode="constant", fill_value=0.0, interpolation="bilinear")
        out: list[keras.layers.Layer] = []
        mode = ("horizontal_and_vertical" if cfg.flip and cfg.vertical_flip else
                "horizontal" if cfg.flip else "vertical" if cfg.vertical_flip else None)
        if mode:
            out.append(L.RandomFlip(mode, seed=_seed(cfg.seed, 1), dtype="float32",
                                    name="flip"))
        if cfg.rotation_deg > 0:
            out.append(L.RandomRotation(cfg.rotation_deg / 360.0, seed=_seed(cfg.seed, 2),
                                        dtype="float32", name="rotation", **fill))
        if cfg.zoom > 0:
            out.append(L.RandomZoom((-cfg.zoom, cfg.zoom), seed=_seed(cfg.seed, 3),
                                    dtype="float32", name="zoom", **fill))
        if cfg.translate > 0:
            out.append(L.RandomTranslation(cfg.translate, cfg.translate,
                                           seed=_seed(cfg.seed, 4), dtype="float32",
                                           name="translation", **fill))
        return out

    @staticmethod
    def _photometric_layers(cfg: AugmentConfig) -> list[keras.layers.Layer]:
        L = keras.layers
        out: list[keras.layers.Layer] = []
        if cfg.brightness > 0:
            out.append(L.RandomBrightness(cfg.brightness, value_range=(0, 255),
                                          seed=_seed(cfg.seed, 5), dtype="float32",
                                          name="brightness"))
        if cfg.contrast > 0:
            out.append(L.RandomContrast(cfg.contrast, value_range=(0, 255),
                                        seed=_seed(cfg.seed, 6), dtype="float32",
                                        name="contrast"))
        if cfg.saturation > 0 or cfg.hue > 0:
            out.append(RandomSaturationHue(cfg.saturation, cfg.hue, seed=_seed(cfg.seed, 7),
                                           name="saturation_hue"))
        return out

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        for layer in self.geometric:
            if not layer.built:
                layer.build(shape[:-1] + (4 if self.cfg.restore_mask else shape[-1],))
        for layer in self.photometric:
            if not layer.built:
                layer.build(shape)
        if self.local_contrast is not None and not self.local_contrast.built:
            self.local_contrast.build(shape)
        self.built = True

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        mask = None
        if self.cfg.restore_mask or self.local_contrast is not None:
            mask = fundus_mask(x, self.cfg.mask_threshold)
        if self.local_contrast is not None:
            x = self.local_contrast(x, fundus=mask)
        if not training:
            return x
        if self.cfg.restore_mask:
            x = tf.concat([x, mask * 255.0], axis=-1)   # same transform for the mask
        for layer in self.geometric:
            x = layer(x, training=True)
        if self.cfg.restore_mask:
            x, mask = x[..., :3], tf.clip_by_value(x[..., 3:] / 255.0, 0.0, 1.0)
        for layer in self.photometric:
            x = layer(x, training=True)
        x = tf.clip_by_value(x, 0.0, 255.0)
        if self.cfg.restore_mask:
            x = x * mask
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(dataclasses.asdict(self.cfg))
        return config


def build_augmentation(cfg: AugmentConfig | None = None) -> FundusAugmentation:
    """The augmentation block for ``cfg`` (defaults when None): uint8/float ``[B,H,W,3]``
    0..255 -> float32 ``[B,H,W,3]`` 0..255; random only with ``training=True``."""
    cfg = cfg or AugmentConfig()
    return FundusAugmentation(**dataclasses.asdict(cfg))


# ------------------------------------------------------------- the random transforms
def active_transforms(cfg: AugmentConfig | None) -> tuple[str, ...]:
    """The :class:`AugmentConfig` fields of the random transforms ``cfg`` switches on, in
    :data:`RANDOM_TRANSFORMS` order (e.g. ``("flip", "rotation_deg")``). ``None``: the
    defaults. Deterministic settings (``local_contrast``, ``restore_mask``, ...) are not
    transforms: they act the same with cached or live images."""
    cfg = cfg if cfg is not None else AugmentConfig()
    return tuple(field for _, field in RANDOM_TRANSFORMS if getattr(cfg, field))


def check_only(cfg: AugmentConfig | None, allowed: tuple[str, ...] = ("flip",),
               why: str = "only these random augmentations are possible",
               alternative: str = "") -> None:
    """Raise ValueError when ``cfg`` (None: the defaults) switches on a random transform
    whose field is not in ``allowed``.

    The message is ``"<why>; these are on: --augment_<f>=<value>, ... Pass <every
    not-allowed random flag switched off> (<alternative>)"``."""
    on = [f for f in active_transforms(cfg) if f not in allowed]
    if not on:
        return
    cfg = cfg if cfg is not None else AugmentConfig()
    named = ", ".join(f"--{FLAG_PREFIX}{f}={getattr(cfg, f)}" for f in on)
    off = " ".join(
        f"--{FLAG_PREFIX}{f}={'false' if isinstance(getattr(cfg, f), bool) else 0}"
        for _, f in RANDOM_TRANSFORMS if f not in allowed)
    raise ValueError(f"{why}; these are on: {named}. Pass {off}"
                     + (f" ({alternative})" if alternative else ""))


# --------------------------------------------------------------------------- flags
_FLAG_HELP = {
    "flip": "random horizontal flip in training",
    "rotation_deg": "max rotation, degrees (0 disables)",
    "zoom": "max zoom in/out, fraction of the side (0 disables)",
    "translate": "max shift, fraction of the side (0 disables)",
    "brightness": "max brightness shift, fraction of 255 (0 disables)",
    "contrast": "max contrast change, fraction (0 disables)",
    "saturation": "max saturation change, fraction (0 disables)",
    "hue": "max hue shift, fraction of the colour circle (0 disables)",
    "vertical_flip": "random vertical flip too (off: anatomy is not up-down symmetric)",
    "restore_mask": "keep the dark surround black after the transforms",
    "local_contrast": "fundus local-contrast normalisation (4x - 4 Gaussian + 128), "
                      "training and inference",
    "local_contrast_sigma_frac": "Gaussian sigma of --augment_local_contrast, fraction of "
                                 "the image side",
    "mask_threshold": "fundus mask threshold on the max channel, 0..255",
}


def define_flags(flag_values=None) -> None:
    """Define ``--augment_<field>`` absl flags for every :class:`AugmentConfig` strength
    (defaults from the dataclass). Safe to call twice (already defined flags are kept)."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    defaults = AugmentConfig()
    for name, help_text in _FLAG_HELP.items():
        flag = FLAG_PREFIX + name
        if flag in fv:
            continue
        value = getattr(defaults, name)
        if isinstance(value, bool):
            flags.DEFINE_boolean(flag, value, help_text, flag_values=fv)
        else:
            flags.DEFINE_float(flag, float(value), help_text, flag_values=fv)


def config_from_flags(flag_values=None, seed: int | None = None) -> AugmentConfig:
    """The :class:`AugmentConfig` of the parsed ``--augment_*`` flags."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    values = {name: getattr(fv, FLAG_PREFIX + name) for name in _FLAG_HELP}
    return AugmentConfig(seed=seed, **values)
