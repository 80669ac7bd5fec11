"""The one TFRecord schema: feature spec, encoding (writer) and decoding (reader).

Every converted example is one eye:

====================  ======  ==================================================
key                   dtype   meaning
====================  ======  ==================================================
image/encoded         bytes   JPEG of the square fundus crop, RGB, uint8
image/format          bytes   always ``b"jpeg"``
image/height          int64   pixels (== width)
image/width           int64   pixels
image/filename        bytes   source file name (basename, as in the annotations)
patient/id            bytes   patient identifier (string, as in the annotations)
patient/age           int64   years; -1 when unknown
patient/sex           int64   0 female, 1 male
eye                   bytes   ``b"left"`` or ``b"right"``
keywords              bytes   the eye's own diagnostic keywords, ``", "``-joined
normal                int64   1 when the eye's keywords are exactly normal fundus
fold                  int64   cross-validation fold 0..K-1; -1 without ``--folds``
====================  ======  ==================================================

The writer calls :func:`encode_example`; the reader calls :func:`parse_batch` (vectorised,
on a batch of serialized records) and :func:`decode_image`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

SEX_FEMALE = 0
SEX_MALE = 1
EYES = ("left", "right")

FEATURES: dict[str, tf.io.FixedLenFeature] = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value=b"jpeg"),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "patient/id": tf.io.FixedLenFeature([], tf.string),
    "patient/age": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "patient/sex": tf.io.FixedLenFeature([], tf.int64),
    "eye": tf.io.FixedLenFeature([], tf.string),
    "keywords": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "normal": tf.io.FixedLenFeature([], tf.int64, default_value=1),
    "fold": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


@dataclasses.dataclass(frozen=True)
class EyeRecord:
    """One eye as written to a shard (pure Python; the writer's unit of work)."""

    jpeg: bytes
    size: int
    filename: str
    patient_id: str
    age: int
    sex: int
    eye: str
    keywords: str
    normal: bool = True
    fold: int = -1


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(rec: EyeRecord) -> bytes:
    """Serialise one :class:`EyeRecord` to a ``tf.train.Example`` byte string.

    Deterministic: the same record always gives the same bytes (features are a map,
    but protobuf serialises map-like ``Features`` in insertion order here and we insert
    in :data:`FEATURES` order).
    """
    if rec.sex not in (SEX_FEMALE, SEX_MALE):
        raise ValueError(f"sex must be 0 or 1, got {rec.sex!r} for {rec.filename}")
    if rec.eye not in EYES:
        raise ValueError(f"eye must be left/right, got {rec.eye!r} for {rec.filename}")
    values = {
        "image/encoded": _bytes(rec.jpeg),
        "image/format": _bytes(b"jpeg"),
        "image/height": _int(rec.size),
        "image/width": _int(rec.size),
        "image/filename": _bytes(rec.filename.encode()),
        "patient/id": _bytes(rec.patient_id.encode()),
        "patient/age": _int(rec.age),
        "patient/sex": _int(rec.sex),
        "eye": _bytes(rec.eye.encode()),
        "keywords": _bytes(rec.keywords.encode()),
        "normal": _int(1 if rec.normal else 0),
        "fold": _int(rec.fold),
    }
    example = tf.train.Example(features=tf.train.Features(feature=values))
    return example.SerializeToString(deterministic=True)


def parse_batch(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Vectorised parse of a 1-D string tensor of serialized examples -> dict of [B] tensors."""
    return tf.io.parse_example(serialized, FEATURES)


def parse_single(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialized example -> dict of scalar tensors."""
    return tf.io.parse_single_example(serialized, FEATURES)


def decode_image(encoded: tf.Tensor, image_size: int | None = None) -> tf.Tensor:
    """Decode one JPEG to uint8 ``[H, W, 3]``; resize (area/bilinear, antialiased) when
    ``image_size`` differs from the stored size. Output is always uint8 in 0..255."""
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    if image_size is None:
        return image
    size = tf.shape(image)[0]
    def _resize(method: str) -> tf.Tensor:
        # downscaling: "area" (a box filter, antialiased by construction, ~3x faster on
        # CPU than antialiased bilinear); upscaling: bilinear
        out = tf.image.resize(image, [image_size, image_size], method=method, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    image = tf.cond(tf.equal(size, image_size), lambda: image,
                    lambda: tf.cond(size > image_size, lambda: _resize("area"),
                                    lambda: _resize("bilinear")))
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_record_from_bytes(serialized: bytes) -> dict:
    """Pure-Python decode of one record (tests, tools): returns plain Python values."""
    example = tf.train.Example.FromString(serialized)
    f = example.features.feature
    out = {}
    for key, spec in FEATURES.items():
        if key not in f:
            out[key] = spec.default_value
            continue
        if spec.dtype == tf.string:
            out[key] = f[key].bytes_list.value[0]
        else:
            out[key] = int(f[key].int64_list.value[0])
    return out
