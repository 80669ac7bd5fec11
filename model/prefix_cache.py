"""``--cache_frozen_prefix``: fine-tune the top of a backbone on cached activations.

When only the top of a pretrained backbone trains (``--fine_tune_fraction``), everything
below it is a fixed function of the image. This module runs that frozen prefix ONCE per
image and trains the rest on the cached activations::

    classifier (uint8 image)            tail (trained, shares every layer object)
      augmentation block (inference)      activations float32 [B, h, w, c]
      preprocess                          -> backbone suffix (FrozenStatistics)
      backbone prefix   --cached-->       -> pool -> dropout -> sex
      backbone suffix
      pool -> dropout -> sex

The cut is the output of one backbone layer: the layer just below the first layer that
the fine-tune stage unfreezes, snapped DOWN until ``keras.Model(cut, backbone.output)``
builds, i.e. the suffix depends on that single tensor only (MobileNetV2: ``block_12_add``
feeds ``block_13_expand``). With multi-depth features (``--feature_layers``) every feature
layer must lie above the cut, so the snap goes below the lowest of them (MobileNetV2's
``multi`` preset: ``block_10_project``, just below ``block_10_project_BN``); the tail then
runs the frozen blocks between the cut and the unfrozen top every epoch. Because the tail
shares the classifier's layers, training the tail trains the classifier, and
``best.keras`` / ``saved_model`` are the full uint8 model.

Augmentation: only the horizontal flip survives caching. With ``flip`` on, the mirrored
image's activations are cached too (twice the memory and prefix time) and every training
example is drawn as the plain or the mirrored activation with probability 1/2 each
epoch, as the flip layer would. Any other random transform of the augmentation block
(:data:`model.augment.RANDOM_TRANSFORMS`, which that module keeps complete) is an error
(:func:`check_augment`), so the saved model's augmentation block is flip-only as well.

Memory: float16, ``h * w * c * 2`` bytes per image and view (MobileNetV2 at 384 px,
block 12: 24 * 24 * 96 * 2 = 110.6 KB). The cache of the last configuration is kept in
the process (:data:`_MEMO`), so ``--cv=K`` computes it once for all folds: it holds every
record of the train/val splits, and each fold selects its rows with the reader's own
filter (:func:`pipeline.reader.keep_mask`). With ``--prefix_cache_dir`` it is also kept
on disk (:func:`save_cache` / :func:`load_cache`, one sub-directory per key), so later
jobs with the same data, backbone, weights, size, cut and flip skip the prefix entirely.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model import augment, backbones, classifier
from pipeline import fileio, reader, schema
from pipeline import progress as progress_lib
from pipeline import manifest as manifest_lib

CACHED_TRANSFORMS = ("flip",)   # the random augmentations cached activations can replay
ENCODE_BATCH = 32
_MEMO: dict[str, "ActivationCache"] = {}   # one entry: the last cache built


def check_augment(aug: augment.AugmentConfig | None) -> None:
    """Raise ValueError naming the ``--augment_*`` flags that are on besides the flip.

    ``aug``: a :class:`model.augment.AugmentConfig` (None means the defaults, which
    rotate, zoom, ... and so fail). The random transforms are the augmentation module's
    own list (:func:`model.augment.check_only`)."""
    augment.check_only(
        aug, allowed=CACHED_TRANSFORMS,
        why="--cache_frozen_prefix trains on cached activations, where only the horizontal "
            "flip (--augment_flip) is possible",
        alternative="or drop --cache_frozen_prefix")


# ============================================================================= the cut
def _backbone_layers(model: keras.Model) -> list:
    bb = classifier.backbone_of(model)
    return [l for l in bb.layers if not isinstance(l, keras.layers.InputLayer)]


def find_cut(model: keras.Model, fine_tune_fraction: float) -> str:
    """Name of the backbone layer whose output is cached for ``fine_tune_fraction``.

    The layer below the first one :func:`model.classifier.set_backbone_trainable`
    unfreezes, snapped down to the first layer whose output alone determines the
    backbone's output. Raises ValueError naming ``--fine_tune_fraction`` when nothing
    (fraction 1) or no clean cut remains below."""
    layers = _backbone_layers(model)
    n_top = int(round(fine_tune_fraction * len(layers)))
    first = len(layers) - n_top
    if n_top == 0 or first == 0:
        raise ValueError(f"--fine_tune_fraction={fine_tune_fraction}: --cache_frozen_prefix "
                         f"needs a frozen prefix and a trained top; use a value in (0, 1)")
    out = classifier.backbone_of(model).output
    for j in range(first - 1, -1, -1):
        try:
            keras.Model(layers[j].output, out)
        except Exception:  # noqa: BLE001  (disconnected graph: not a clean cut)
            continue
        return layers[j].name
    raise ValueError(f"--fine_tune_fraction={fine_tune_fraction}: no single-tensor cut "
                     f"below the first unfrozen layer {layers[first].name}")


def split_backbone(model: keras.Model, cut: str) -> tuple[keras.Model, keras.Model]:
    """``(prefix, suffix)`` models of the classifier's backbone, cut at layer ``cut``;
    both share the backbone's layer objects (and so its weights)."""
    bb = classifier.backbone_of(model)
    t = bb.get_layer(cut).output
    return (keras.Model(bb.input, t, name="backbone_prefix"),
            keras.Model(t, bb.output, name="backbone_suffix"))


def build_encoder(model: keras.Model, prefix: keras.Model) -> keras.Model:
    """uint8 ``[B, S, S, 3]`` -> prefix activations: the classifier's orientation layer
    (``--orient``) and augmentation block (inference mode: only its local-contrast
    normalisation acts), its preprocessing, the prefix in inference mode."""
    s = model.input.shape[1:]
    x = inp = keras.Input(s, dtype="uint8", name="image")
    for name in ("orient", "augmentation"):     # the ones the classifier has, in its order
        if name in [l.name for l in model.layers]:
            x = model.get_layer(name)(x, training=False)
    x = model.get_layer("preprocess")(x)
    x = backbones.FrozenStatistics(prefix, frozen=True, name="prefix")(x)
    return keras.Model(inp, x, name="encoder")


def build_tail(model: keras.Model, suffix: keras.Model, upto: str = "") -> keras.Model:
    """activations float32 -> probability: the suffix (BatchNorm frozen as in the
    classifier) and the classifier's own head layers (``classifier.apply_head``: pooling,
    with multi-depth features concatenation and standardisation, dropout, ``sex``); with
    ``upto`` (a head layer's name, e.g. ``classifier.head_input_name(model)``) it stops
    after that layer."""
    if isinstance(model.output, dict):
        raise ValueError("--cache_frozen_prefix does not support the age head; "
                         "pass --age_loss_weight=0")
    wrapper = model.get_layer(classifier.BACKBONE_LAYER)
    inp = keras.Input(suffix.input.shape[1:], dtype="float32", name="activations")
    x = backbones.FrozenStatistics(suffix, frozen=wrapper.frozen, name="suffix")(inp)
    x = classifier.apply_head(model, x, upto=upto)
    return keras.Model(inp, x, name=f"tail_{upto}" if upto else "tail")


# =========================================================================== the cache
@dataclasses.dataclass
class ActivationCache:
    """Cached prefix activations of every record of some splits (record order).

    ``acts`` float16 ``[N, h, w, c]``; ``acts_flip`` the same for the mirrored images or
    None; per-record ``sex`` (0/1), ``normal`` (0/1), ``fold`` (-1: none), ``patient_id``,
    ``filename``, ``split``; ``seconds``: wall time to build, s."""

    acts: np.ndarray
    acts_flip: np.ndarray | None
    sex: np.ndarray
    normal: np.ndarray
    fold: np.ndarray
    patient_id: np.ndarray
    filename: np.ndarray
    split: np.ndarray
    cut: str
    seconds: float

    def rows(self, spec: reader.SplitSpec, normal_only: bool) -> np.ndarray:
        """Indices of the records ``spec`` reads (the reader's own filter)."""
        in_split = np.isin(self.split, list(spec.splits))
        parsed = {"normal": tf.constant(self.normal, tf.int64),
                  "fold": tf.constant(self.fold, tf.int64)}
        by_normal = reader.normal_filter(spec, normal_only)
        by_fold = spec.folds_include is not None or spec.folds_exclude is not None
        keep = reader.keep_mask(parsed, spec, by_normal, by_fold).numpy()
        return np.flatnonzero(in_split & keep)

    def nbytes(self) -> int:
        return self.acts.nbytes + (0 if self.acts_flip is None else self.acts_flip.nbytes)


def build_cache(encoder: keras.Model, data_dir: str, splits: tuple[str, ...],
                image_size: int, flip: bool, cut: str, progress: bool = True
                ) -> ActivationCache:
    """Run ``encoder`` once over every record of ``splits`` (and on the mirrored image
    when ``flip``); decoding as the reader does (:func:`pipeline.schema.decode_image`).
    ``progress``: a :class:`pipeline.progress.Progress` over the images on stderr."""
    t0 = time.time()
    man = manifest_lib.load(data_dir)
    bar = progress_lib.Progress(f"[prefix-cache] {cut}", "images",
                                sum(manifest_lib.split_size(man, s) for s in splits), progress)
    files, names = [], []
    for s in splits:
        f = reader.shard_files(data_dir, man, reader.SplitSpec((s,)))
        files += f
        names += [s] * len(f)
    ds = tf.data.Dataset.from_tensor_slices((files, names)).flat_map(
        lambda f, n: tf.data.TFRecordDataset(f).map(lambda r: (r, n)))

    def parse(r, n):
        p = schema.parse_single(r)
        return {"image": schema.decode_image(p["image/encoded"], image_size),
                "sex": p["patient/sex"], "normal": p["normal"], "fold": p["fold"],
                "patient_id": p["patient/id"], "filename": p["image/filename"], "split": n}

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(ENCODE_BATCH).prefetch(2)
    run = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)
    parts: dict[str, list] = {k: [] for k in ("acts", "acts_flip", "sex", "normal", "fold",
                                               "patient_id", "filename", "split")}
    n = 0
    for b in ds:
        x = b["image"]
        if flip:
            k = int(x.shape[0])
            a = run(tf.concat([x, tf.reverse(x, axis=[2])], 0)).numpy().astype(np.float16)
            parts["acts"].append(a[:k])
            parts["acts_flip"].append(a[k:])
        else:
            parts["acts"].append(run(x).numpy().astype(np.float16))
        for key in ("sex", "normal", "fold", "patient_id", "filename", "split"):
            parts[key].append(b[key].numpy())
        n += int(x.shape[0])
        bar.update(n)
    bar.close()
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    for k in ("patient_id", "filename", "split"):
        cat[k] = cat[k].astype(str)
    return ActivationCache(cat["acts"], cat["acts_flip"], cat["sex"].astype(np.int64),
                           cat["normal"].astype(np.int64), cat["fold"].astype(np.int64),
                           cat["patient_id"], cat["filename"], cat["split"], cut,
                           round(time.time() - t0, 1))


CACHE_ARRAYS = ("acts", "acts_flip", "sex", "normal", "fold", "patient_id", "filename",
                "split")
KEY_JSON = "key.json"    # beside the arrays: {"key": memo key, "cut": layer, "seconds": s}


def disk_key(memo_key: str) -> str:
    """Directory name of a cache on disk: the first 16 hex digits of sha256(key)."""
    return hashlib.sha256(memo_key.encode()).hexdigest()[:16]


def save_cache(cache: ActivationCache, directory: str, memo_key: str) -> str:
    """Write ``cache`` to ``directory/<disk_key>/`` (one ``.npy`` per array and
    ``key.json``), atomically (:func:`pipeline.fileio.write_dir_atomic`: written under a
    temporary name, renamed when complete), so a killed job leaves no half cache. A cache
    already there (another job wrote the same key) is kept; two jobs writing the same key
    at once write the same arrays and the later rename wins. Returns the path."""
    final = os.path.join(directory, disk_key(memo_key))
    if os.path.isdir(final):
        return final

    def write(tmp: str) -> None:
        for name in CACHE_ARRAYS:
            arr = getattr(cache, name)
            if arr is not None:
                np.save(os.path.join(tmp, f"{name}.npy"), arr, allow_pickle=False)
        fileio.write_json(os.path.join(tmp, KEY_JSON),
                          {"key": json.loads(memo_key), "cut": cache.cut,
                           "seconds": cache.seconds})

    return fileio.write_dir_atomic(final, write)


def load_cache(directory: str, memo_key: str) -> ActivationCache | None:
    """The cache saved by :func:`save_cache` under ``memo_key``, or None when absent.
    Raises ValueError naming the path when the directory holds another key or no valid
    ``key.json``."""
    path = os.path.join(directory, disk_key(memo_key))
    if not os.path.isdir(path):
        return None
    meta = fileio.read_json(os.path.join(path, KEY_JSON))
    if not isinstance(meta, dict) or "key" not in meta:
        raise ValueError(f"--prefix_cache_dir: {path} has no valid {KEY_JSON} (an incomplete "
                         f"cache?); delete it")
    if meta["key"] != json.loads(memo_key):
        raise ValueError(f"--prefix_cache_dir: {path} holds the cache of another "
                         f"configuration (hash collision); delete it")
    arrays = {}
    for name in CACHE_ARRAYS:
        fn = os.path.join(path, f"{name}.npy")
        arrays[name] = np.load(fn, allow_pickle=False) if os.path.exists(fn) else None
    return ActivationCache(**arrays, cut=meta["cut"], seconds=meta["seconds"])


def cached_dataset(cache: ActivationCache, rows: np.ndarray, batch_size: int,
                   training: bool, seed: int, class_weights: tuple[float, float] | None):
    """tf.data of ``(activations float32, sex float32[, weight])`` over ``rows``.

    Training: a new permutation each epoch, the last partial batch dropped, and per
    example the plain or the mirrored activation (probability 1/2) when cached.
    ``class_weights``: ``(female, male)`` sample weights, or None."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows, np.int64)
    shape = cache.acts.shape[1:]

    def gen():
        idx = rng.permutation(rows) if training else rows
        stop = len(idx) // batch_size * batch_size if training else len(idx)
        for s in range(0, stop, batch_size):
            b = np.sort(idx[s:s + batch_size]) if not training else idx[s:s + batch_size]
            x = cache.acts[b]
            if training and cache.acts_flip is not None:
                m = rng.random(len(b)) < 0.5
                x = np.where(m[:, None, None, None], cache.acts_flip[b], x)
            y = cache.sex[b].astype(np.float32)
            if class_weights is None:
                yield x, y
            else:
                yield x, y, np.where(y > 0.5, class_weights[1], class_weights[0]).astype(
                    np.float32)

    sig = [tf.TensorSpec((None, *shape), tf.float16), tf.TensorSpec((None,), tf.float32)]
    if class_weights is not None:
        sig.append(tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=tuple(sig))
    ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest))
    return ds.prefetch(2)


# ====================================================================== the training
@dataclasses.dataclass
class Prepared:
    """What ``model.training.train`` needs to fit on the cache instead of images."""

    tail: keras.Model
    train_ds: Any
    val_ds: Any
    info: dict
    features: keras.Model         # activations -> the head's input (the frozen suffix)
    train_eval_ds: Any            # the training rows in order, no flip, labels only
    raw_features: keras.Model | None = None  # multi-depth: -> features before standardising


def _memo_key(cfg, data_dir: str, cut: str, image_size: int, splits) -> str:
    aug = dataclasses.asdict(cfg.augment) if cfg.augment is not None else None
    return json.dumps({"data": data_dir, "sha": manifest_lib.manifest_sha256(data_dir),
                       "backbone": cfg.backbone, "weights": cfg.weights, "seed": cfg.seed,
                       "size": image_size, "cut": cut, "augment": aug,
                       "orient": getattr(cfg, "orient", "none"),
                       "precision": cfg.precision, "splits": sorted(splits)},
                      sort_keys=True, default=str)


def prepare(model: keras.Model, cfg, train_spec: reader.SplitSpec,
            val_spec: reader.SplitSpec, image_size: int,
            train_weights: tuple[float, float] | None) -> Prepared:
    """Build (or reuse) the cache of ``train_spec`` + ``val_spec`` records and the tail
    model and datasets. ``cfg``: a ``model.train_config.TrainConfig``. Checks that the cached
    rows match the reader's counts (``reader.split_stats``)."""
    check_augment(cfg.augment)
    cut = find_cut(model, cfg.fine_tune_fraction)
    prefix, suffix = split_backbone(model, cut)
    tail = build_tail(model, suffix)
    splits = tuple(sorted(set(train_spec.splits) | set(val_spec.splits)))
    key = _memo_key(cfg, cfg.data, cut, image_size, splits)
    cache = _MEMO.get(key)
    reused = cache is not None
    if cache is None:
        _MEMO.clear()               # one configuration at a time: free the old one first
        cache = load_cache(cfg.prefix_cache_dir, key) if cfg.prefix_cache_dir else None
        reused = cache is not None
        if reused:
            if cfg.verbose:
                print(f"[prefix-cache] loaded {cut} activations from "
                      f"{os.path.join(cfg.prefix_cache_dir, disk_key(key))}", flush=True)
        else:
            flip = bool(cfg.augment is not None and cfg.augment.flip)
            if cfg.verbose:
                print(f"[prefix-cache] caching {cut} activations of {'+'.join(splits)} at "
                      f"{image_size} px{' (+ mirrored)' if flip else ''}", flush=True)
            cache = build_cache(build_encoder(model, prefix), cfg.data, splits, image_size,
                                flip, cut, progress=bool(cfg.verbose))
            if cfg.prefix_cache_dir:
                save_cache(cache, cfg.prefix_cache_dir, key)
        _MEMO[key] = cache
    normal_only = cfg.train_selection == "normal"
    tr, va = cache.rows(train_spec, normal_only), cache.rows(val_spec, True)
    for spec, rows, no in ((train_spec, tr, normal_only), (val_spec, va, True)):
        want = reader.split_stats(cfg.data, spec, normal_only=no).records
        if len(rows) != want:
            raise RuntimeError(f"prefix cache: {spec.name} has {len(rows)} cached rows, the "
                               f"reader counts {want}")
    info = {"cut_layer": cut, "cut_shape": list(cache.acts.shape[1:]),
            "cache_build_seconds": cache.seconds, "cache_reused": reused,
            "cached_images": int(cache.acts.shape[0]),
            "mirrored": cache.acts_flip is not None,
            "cache_megabytes": round(cache.nbytes() / 2**20, 1),
            "train_rows": int(len(tr)), "val_rows": int(len(va))}
    if cfg.verbose:
        print(f"[prefix-cache] {json.dumps(info)}", flush=True)
    return Prepared(
        tail,
        cached_dataset(cache, tr, cfg.batch_size, True, cfg.seed, train_weights),
        cached_dataset(cache, va, cfg.batch_size, False, cfg.seed, None),
        info, build_tail(model, suffix, upto=classifier.head_input_name(model)),
        cached_dataset(cache, tr, cfg.batch_size, False, cfg.seed, None),
        build_tail(model, suffix, upto=raw) if (raw := classifier.raw_features_name(model))
        else None)
