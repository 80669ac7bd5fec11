"""The classifier: uint8 fundus image -> probability that the patient is male.

Graph (functional Keras model, saved as ``.keras``)::

    image uint8 [B, S, S, 3]
      -> (--orient=disc_left: model.orient.DiscLeft "orient", the disc mirrored to the left)
      -> augmentation block (model.augment: random only with training=True; holds
         the optional Gaussian local-contrast normalisation, applied always)
      -> BackbonePreprocess (the backbone's own preprocess_input, float32)
      -> FrozenStatistics(backbone)   # called with training=False: BN statistics frozen
      -> GlobalAveragePooling2D "pool" -> Dropout
      -> Dense(1, sigmoid, float32) named "sex"           probability in [0, 1], [B, 1]
      (+ Dense(1, float32) named "age" when age_loss_weight > 0: age in years, [B, 1])

With multi-depth features (``feature_layers``, see :mod:`model.features`) the backbone
has one output per named layer, each pooled ("pool_<i>"), concatenated ("features") and
standardised ("standardize", statistics of the training images) before the dropout.

Without the age head the model has one output (a tensor); with it, a dict
``{"sex": ..., "age": ...}``. Loading a saved model needs the custom layers registered:
import :mod:`model.backbones`, :mod:`model.augment`, :mod:`model.features` and
:mod:`model.orient` first (importing this module or ``model.io`` does). With
``orient="disc_left"`` the flip TTA changes nothing: the layer mirrors the flipped photo
back.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import keras

from model import augment as augment_lib
from model import backbones as backbones_lib
from model import features as features_lib
from model import orient as orient_lib

BACKBONE_LAYER = "backbone"
SEX_OUTPUT = "sex"
AGE_OUTPUT = "age"
AGE_BIAS_YEARS = 55.0     # age head starts at a typical ODIR age, years
AGE_SCALE_YEARS = 10.0    # the age loss is measured in decades


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """What shapes the model (all that is needed to rebuild it).

    Attributes:
      backbone: a key of :data:`model.backbones.BACKBONES`.
      image_size: square input size, pixels; 0 = the backbone's default.
      weights: ``"imagenet"``, ``"none"`` or a PATH to a ``.weights.h5``.
      dropout: dropout rate before the head, 0..1.
      augment: a :class:`model.augment.AugmentConfig` (None: no augmentation block); its
        ``local_contrast`` switches on the local-contrast normalisation.
      age_loss_weight: > 0 adds the auxiliary age-regression head ``age`` (years).
      seed: seed of the head's dropout (augmentation seeds live in ``augment``).
      freeze_bn_statistics: run the backbone in inference mode (BatchNorm moving
        statistics frozen). None = True for pretrained weights, False for ``none`` (a
        random backbone has no statistics worth keeping and must learn them).
      feature_layers: backbone layers whose pooled outputs form the head's input
        (:func:`model.features.parse_spec` output); ``()`` = the last layer only.
      orient: ``none`` or ``disc_left`` (:mod:`model.orient`, first layer of the model).
    """

    backbone: str = "mobilenet_v2"
    image_size: int = 0
    weights: str = "none"
    dropout: float = 0.2
    augment: augment_lib.AugmentConfig | None = None
    age_loss_weight: float = 0.0
    seed: int | None = None
    freeze_bn_statistics: bool | None = None
    feature_layers: tuple[str, ...] = ()
    orient: str = "none"

    def bn_frozen(self) -> bool:
        if self.freeze_bn_statistics is not None:
            return bool(self.freeze_bn_statistics)
        return backbones_lib.normalise_weights(self.weights) is not None

    def resolved_image_size(self) -> int:
        return backbones_lib.check_image_size(self.backbone, self.image_size)


def _augmentation(cfg: ClassifierConfig) -> list[keras.layers.Layer]:
    """The augmentation block of :mod:`model.augment` (it also holds the optional
    local-contrast normalisation, ``AugmentConfig.local_contrast``); none when
    ``cfg.augment`` is None."""
    if cfg.augment is None:
        return []
    return [augment_lib.build_augmentation(cfg.augment)]


def build_classifier(cfg: ClassifierConfig) -> keras.Model:
    """Build the (uncompiled) classifier of ``cfg``; the backbone starts frozen.

    Raises ValueError/FileNotFoundError naming the flag at fault (``--backbone``,
    ``--image_size``, ``--weights``, ``--dropout``).
    """
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"--dropout={cfg.dropout} must be in [0, 1)")
    if cfg.age_loss_weight < 0:
        raise ValueError(f"--age_loss_weight={cfg.age_loss_weight} must be >= 0")
    size = cfg.resolved_image_size()
    backbone = backbones_lib.build_backbone(cfg.backbone, size, cfg.weights)
    backbone.trainable = False
    multi = features_lib.is_multi(cfg.feature_layers)
    if multi:
        backbone = features_lib.multi_output(backbone, cfg.feature_layers)

    if cfg.orient not in orient_lib.CHOICES:
        raise ValueError(f"--orient={cfg.orient}: one of {', '.join(orient_lib.CHOICES)}")
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = inputs
    if cfg.orient == "disc_left":
        x = orient_lib.DiscLeft(name="orient")(x)
    for layer in _augmentation(cfg):
        x = layer(x)
    x = backbones_lib.BackbonePreprocess(cfg.backbone, name="preprocess")(x)
    x = backbones_lib.FrozenStatistics(backbone, frozen=cfg.bn_frozen(),
                                       name=BACKBONE_LAYER)(x, training=False)
    x = features_lib.pooled(list(x) if multi else [x], multi)
    x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    sex = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=SEX_OUTPUT)(x)
    if cfg.age_loss_weight > 0:
        age = keras.layers.Dense(
            1, dtype="float32", name=AGE_OUTPUT,
            bias_initializer=keras.initializers.Constant(AGE_BIAS_YEARS))(x)
        outputs: Any = {SEX_OUTPUT: sex, AGE_OUTPUT: age}
    else:
        outputs = sex
    return keras.Model(inputs, outputs, name=f"fundus_sex_{cfg.backbone}")


def backbone_of(model: keras.Model) -> keras.Model:
    """The wrapped keras.applications backbone inside a classifier (with multi-depth
    features: the multi-output model sharing its layers)."""
    return model.get_layer(BACKBONE_LAYER).layer


def head_layer_names(model: keras.Model) -> list[str]:
    """The layers between the backbone and the dropout, in order: ``["pool"]``, or
    ``["pool_0", ..., "features", "standardize"]`` with multi-depth features."""
    names = [l.name for l in model.layers]
    if "pool" in names:
        return ["pool"]
    pools = sorted((n for n in names if n.startswith(features_lib.POOL_PREFIX + "_")),
                   key=lambda n: int(n.rsplit("_", 1)[1]))
    return pools + [n for n in (features_lib.FEATURES, features_lib.STANDARDIZE) if n in names]


def apply_head(model: keras.Model, maps, upto: str = ""):
    """Run ``model``'s own pooling (+ concatenation, standardisation), dropout and ``sex``
    layers on backbone outputs ``maps`` (a tensor or a list, symbolic or eager); stop after
    the layer named ``upto`` when given (e.g. ``"pool"``, ``"features"``,
    :func:`head_input_name`)."""
    maps = list(maps) if isinstance(maps, (list, tuple)) else [maps]
    heads = head_layer_names(model)
    pools = heads[:len(maps)]
    if len(maps) != sum(n == "pool" or n.startswith(features_lib.POOL_PREFIX + "_")
                        for n in heads):
        raise ValueError(f"apply_head: {len(maps)} feature maps for the pooling layers "
                         f"{heads}")
    vecs = [model.get_layer(n)(m) for n, m in zip(pools, maps)]
    if upto in pools:
        return vecs[pools.index(upto)]
    x = vecs[0] if len(vecs) == 1 else vecs
    for name in heads[len(pools):] + ["dropout", SEX_OUTPUT]:
        x = model.get_layer(name)(x)
        if name == upto:
            return x
    if upto:
        raise ValueError(f"apply_head: no layer {upto!r} in {heads + ['dropout', SEX_OUTPUT]}")
    return x


def head_input_name(model: keras.Model) -> str:
    """The layer whose output the ``sex`` head sees (before dropout): ``pool`` or
    ``standardize``."""
    return head_layer_names(model)[-1]


def raw_features_name(model: keras.Model) -> str | None:
    """With multi-depth features, the layer whose output :func:`model.features.
    fit_standardize` measures (``features``, or the single ``pool_0``); else None."""
    heads = head_layer_names(model)
    return heads[-2] if heads[-1] == features_lib.STANDARDIZE else None


def set_backbone_trainable(model: keras.Model, fraction: float) -> int:
    """Freeze the backbone (``fraction=0``) or unfreeze its top ``fraction`` of layers.

    Layers are counted in the backbone's topological order (inputs excluded); the top
    ``round(fraction * n)`` become trainable. With frozen statistics (pretrained
    backbones, see ``FrozenStatistics``) BatchNormalization layers stay frozen too;
    otherwise they train with the rest. Returns the
    number of trainable backbone layers. Recompile the model after calling this.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--fine_tune_fraction={fraction} must be in [0, 1]")
    wrapper = model.get_layer(BACKBONE_LAYER)
    bb = wrapper.layer
    layers = [l for l in bb.layers if not isinstance(l, keras.layers.InputLayer)]
    n_top = int(round(fraction * len(layers)))
    bb.trainable = n_top > 0
    count = 0
    for i, layer in enumerate(layers):
        on = i >= len(layers) - n_top and not (
            wrapper.frozen and isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = on
        count += int(on)
    return count


@keras.saving.register_keras_serializable(package="fundus")
class MaskedAgeLoss(keras.losses.Loss):
    """Huber loss of the age head in decades (delta 1 decade), 0 where age is unknown (< 0).

    ``y_true``: age in years, -1 for unknown; ``y_pred``: predicted age in years.
    """

    def __init__(self, name: str = "masked_age_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
        y_pred = keras.ops.reshape(keras.ops.cast(y_pred, "float32"), (-1,))
        known = keras.ops.cast(y_true >= 0.0, "float32")
        err = keras.ops.abs(y_pred - y_true) / AGE_SCALE_YEARS
        huber = keras.ops.where(err <= 1.0, 0.5 * err * err, err - 0.5)
        return huber * known
