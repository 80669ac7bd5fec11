"""Multi-depth features: pooled activations of several backbone layers, standardised.

A backbone's last layer is tuned to ImageNet's classes; the cues of a fundus photo (vessel
calibre and tortuosity, disc shape, pigmentation) live partly in its middle layers. A
multi-depth feature vector pools (global average) the output of several layers and
concatenates them::

    backbone [B, S, S, 3] -> [f_1 [B, h1, w1, c1], ..., f_k, last [B, h, w, C]]
      -> GlobalAveragePooling2D each -> concatenate [B, c1 + ... + ck + C]
      -> Standardize (per-feature mean / sd of the training images)       float32

``--feature_layers`` names the layers (:func:`parse_spec`): empty = the last layer only
(the classic classifier, no standardisation), ``multi`` = the backbone's preset
(:func:`preset`: one late block of each of the three stages below the head, plus the last
layer; see the table), or a comma list of layer names of the ``include_top=False`` backbone, ``last``
meaning its output. Presets (measured in ``docs/experiments.md``):

=====================  ==============================================================
mobilenet_v2           block_10_project_BN, block_13_project_BN, block_16_project_BN,
                       last (the first block of the 96-, 160- and 320-wide stages)
efficientnet_lite0..2  the last block of the 4th, 5th and 6th stage (80, 112, 192
                       channels x width), last
tiny                   block2_relu1, last
=====================  ==============================================================

The per-feature standardisation matters to a trained head: the pooled channels of
different depths differ in scale by orders of magnitude, and an L2 penalty (or weight
decay) on unstandardised inputs penalises them unequally. :class:`Standardize` holds the
statistics as non-trainable weights (saved in the ``.keras`` file), set once from the
training images by :func:`fit_standardize`.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import keras
import numpy as np

from model import efficientnet_lite, head_init

LAST = "last"          # the backbone's output in a --feature_layers list
MULTI = "multi"        # the backbone's preset
POOL_PREFIX = "pool"   # GlobalAveragePooling2D layers: "pool" (one layer) or "pool_<i>"
FEATURES = "features"  # the concatenation layer
STANDARDIZE = "standardize"

_MOBILENET_V2 = ("block_10_project_BN", "block_13_project_BN", "block_16_project_BN", LAST)
_LITE_STAGES = (3, 4, 5)      # 0-based stages whose last block is a preset layer


def preset(backbone_name: str) -> tuple[str, ...]:
    """The ``multi`` layer list of ``backbone_name`` (ValueError when it has none)."""
    if backbone_name == "mobilenet_v2":
        return _MOBILENET_V2
    if backbone_name == "tiny":
        return ("block2_relu1", LAST)
    if backbone_name.startswith("efficientnet_lite"):
        ends = efficientnet_lite.stage_ends(backbone_name.removeprefix("efficientnet_"))
        return tuple(ends[i] for i in _LITE_STAGES) + (LAST,)
    raise ValueError(f"--feature_layers=multi: no preset for backbone {backbone_name!r}; "
                     f"name the layers (comma-separated, 'last' for the output)")


def parse_spec(spec: str | Sequence[str] | None, backbone_name: str) -> tuple[str, ...]:
    """``--feature_layers`` -> layer names (``()`` = the last layer only, no standardising).

    ``""``/None -> ``()``; ``"multi"`` -> :func:`preset`; ``"a,b,last"`` -> ``("a", "b",
    "last")`` (order kept, duplicates refused)."""
    if spec is None:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [s for s in names if s]
    if not names:
        return ()
    if names == [MULTI]:
        return preset(backbone_name)
    if len(set(names)) != len(names):
        raise ValueError(f"--feature_layers={','.join(names)}: a layer is named twice")
    if MULTI in names:
        raise ValueError(f"--feature_layers={','.join(names)}: 'multi' stands alone")
    return tuple(names)


def is_multi(layers: Sequence[str]) -> bool:
    """True when ``layers`` asks for anything but the plain last-layer features."""
    return tuple(layers) not in ((), (LAST,))


def feature_tensors(backbone: keras.Model, layers: Sequence[str]) -> list:
    """The symbolic outputs of ``layers`` in ``backbone`` (``last`` = its output); a
    ValueError names ``--feature_layers`` and a few layer names when one is unknown."""
    out = []
    names = [l.name for l in backbone.layers]
    for name in layers:
        if name == LAST:
            out.append(backbone.output)
            continue
        if name not in names:
            near = [n for n in names if n.split("_")[0] == name.split("_")[0]][:8] or names[-8:]
            raise ValueError(f"--feature_layers: {backbone.name} has no layer {name!r} "
                             f"(e.g. {', '.join(near)})")
        t = backbone.get_layer(name).output
        if len(t.shape) != 4:
            raise ValueError(f"--feature_layers: layer {name!r} of {backbone.name} is not a "
                             f"feature map [B, h, w, c] (shape {tuple(t.shape)})")
        out.append(t)
    return out


def multi_output(backbone: keras.Model, layers: Sequence[str]) -> keras.Model:
    """``backbone`` with one output per layer of ``layers`` (shares its layer objects, so
    training one trains the other)."""
    return keras.Model(backbone.input, feature_tensors(backbone, layers),
                       name=f"{backbone.name}_multi")


@keras.saving.register_keras_serializable(package="fundus")
class Standardize(keras.layers.Layer):
    """``(x - mean) / sd`` per feature, float32; ``mean`` and ``sd`` [D] are
    non-trainable weights (0 and 1 until :func:`fit_standardize` sets them)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.mean = self.add_weight(shape=(d,), initializer="zeros", trainable=False,
                                    name="mean")
        self.sd = self.add_weight(shape=(d,), initializer="ones", trainable=False, name="sd")

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        return (x - self.mean) / self.sd

    def compute_output_shape(self, input_shape):
        return input_shape

    def set_statistics(self, mean: np.ndarray, sd: np.ndarray) -> None:
        """Set ``mean`` / ``sd`` (float [D]); an sd below 1e-6 becomes 1 (a constant
        feature stays 0 after centring)."""
        sd = np.where(np.asarray(sd) > 1e-6, sd, 1.0)
        self.set_weights([np.asarray(mean, np.float32), np.asarray(sd, np.float32)])


def pooled(maps: Sequence, multi: bool):
    """Pool (and for several maps, concatenate and standardise) symbolic feature maps into
    the head's input; layer names as in the module docstring."""
    if not multi:
        return keras.layers.GlobalAveragePooling2D(name=POOL_PREFIX)(maps[0])
    vecs = [keras.layers.GlobalAveragePooling2D(name=f"{POOL_PREFIX}_{i}", dtype="float32")(m)
            for i, m in enumerate(maps)]
    x = keras.layers.Concatenate(name=FEATURES, dtype="float32")(vecs) if len(vecs) > 1 \
        else vecs[0]
    return Standardize(name=STANDARDIZE)(x)


def fit_standardize(model: keras.Model, inputs_model: keras.Model, batches: Iterable
                    ) -> dict:
    """Set ``model``'s :class:`Standardize` statistics from the features that
    ``inputs_model`` (its input -> the standardiser's input) gives on ``batches`` (the
    training images, no augmentation). Returns ``{"features", "images"}``."""
    x, _ = head_init.pooled_features(inputs_model, batches)
    standardize_array(model, x)
    return {"features": int(x.shape[1]), "images": int(x.shape[0])}


def standardize_array(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Set ``model``'s :class:`Standardize` statistics from raw features ``x`` [N, D]
    (the training images) and return ``x`` standardised with them (float64), as the
    layer will compute it: callers that also need the standardised features (the
    logistic head) then read the images once."""
    layer = model.get_layer(STANDARDIZE)
    layer.set_statistics(x.mean(axis=0), x.std(axis=0))
    mean, sd = (w.astype(np.float64) for w in layer.get_weights())
    return (x - mean) / sd
