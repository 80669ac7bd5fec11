"""Frozen multi-depth probes: pooled backbone features + L2 logistic regression, repeated CV.

The cheapest honest measure of what a backbone's ImageNet features know about sex in a
fundus photo, and the way to rank backbones, resolutions and feature layers before paying
for a fine-tune (``fundus-probe``)::

    normal eyes of the non-test splits (uint8 [S, S, 3]; ORIENT: "eye" mirrors the
    recorded right eyes to look like left eyes, "disc_left" mirrors by the model's own
    disc finder (model.orient, as --orient=disc_left in fundus-train), "none" neither)
      -> per backbone spec NAME@SIZE: preprocess -> frozen backbone (inference mode)
         -> pooled outputs of --feature_layers (model.features), concatenated  [N, D_i]
      -> specs concatenated                                                       [N, D]
      -> for each fold seed: K patient-grouped, sex-stratified folds
         (pipeline.splits.assign_folds); per fold: model.head_init.fit_logistic on the
         other folds (standardised inside; C: smaller = stronger L2), scored on this one

Reported (:func:`repeated_cv`): per-fold AUC per image and per patient (mean of the eyes'
probabilities), mean and sd over every fold of every seed; per seed the pooled
out-of-fold AUC with its patient-bootstrap 95 % interval. The test split is never read.

Features are computed once per (data, backbone, size, weights, layers, orientation) and kept
in ``cache_dir`` as ``.npz`` (:func:`extract`), so a concatenation of two backbones or
another C costs only the regression.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from model import backbones, features, orient as orient_lib
from model import head_init as head_init_lib
from model import metrics as metrics_lib
from pipeline import fileio, reader, splits as splits_lib
from pipeline import manifest as manifest_lib
from pipeline import progress as progress_lib

SPLITS = ("train", "val")       # the probe never reads test
ORIENTS = ("eye", "disc_left", "none")
BATCH = 16


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One backbone's features: ``backbone`` at ``image_size`` px with ``weights``
    (``imagenet``/``none``/PATH) pooled at ``layers`` (``model.features`` names)."""

    backbone: str
    image_size: int
    weights: str
    layers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.backbone}@{self.image_size}"


def parse_specs(text: Sequence[str], weights: dict[str, str], layers: str
                ) -> list[FeatureSpec]:
    """``["mobilenet_v2@512", "efficientnet_lite2@384"]`` -> specs; ``weights`` maps a
    backbone name to its ``--weights`` value (default ``imagenet``); ``layers`` is the
    ``--feature_layers`` text applied to each. ValueErrors name ``--backbones``."""
    out = []
    for item in text:
        name, _, size = item.partition("@")
        try:
            px = int(size) if size else 0
        except ValueError:
            raise ValueError(f"--backbones={item}: expected NAME@SIZE, e.g. "
                             f"mobilenet_v2@512") from None
        backbones.get(name)
        px = backbones.check_image_size(name, px)
        layer_names = features.parse_spec(layers, name) or (features.LAST,)
        out.append(FeatureSpec(name, px, weights.get(name, "imagenet"), layer_names))
    if not out:
        raise ValueError("--backbones: name at least one NAME@SIZE")
    unused = sorted(set(weights) - {s.backbone for s in out})
    if unused:
        raise ValueError(f"--weights: {', '.join(unused)} is not among --backbones "
                         f"({', '.join(s.backbone for s in out)})")
    return out


def check_data(data_dir: str, folds: int = 2) -> int:
    """Normal eyes of :data:`SPLITS` in ``data_dir``; a ValueError naming ``--data`` when
    there is no manifest or no such eye, ``--folds`` when there are fewer patients."""
    if not os.path.exists(manifest_lib.manifest_path(data_dir)):
        raise ValueError(f"--data={data_dir}: no manifest.json there; point --data at a "
                         f"fundus-convert output directory")
    n = reader.count_records(data_dir, list(SPLITS), normal_only=True)
    if n == 0:
        raise ValueError(f"--data={data_dir}: no normal eyes in {'+'.join(SPLITS)}")
    patients = sum(int(v.get("patients", 0)) for k, v in
                   manifest_lib.load(data_dir).get("splits", {}).items() if k in SPLITS)
    if patients and patients < folds:
        raise ValueError(f"--folds={folds}: {data_dir} has only {patients} patients in "
                         f"{'+'.join(SPLITS)}")
    return n


def feature_model(spec: FeatureSpec, disc_left: bool = False) -> keras.Model:
    """uint8 ``[B, S, S, 3]`` -> float32 ``[B, D]``: (``disc_left``: the
    :class:`model.orient.DiscLeft` layer,) the backbone's preprocessing, the frozen
    backbone and the pooled, concatenated outputs of ``spec.layers``."""
    bb = backbones.build_backbone(spec.backbone, spec.image_size, spec.weights)
    multi = features.multi_output(bb, spec.layers)
    inp = keras.Input((spec.image_size, spec.image_size, 3), dtype="uint8", name="image")
    x = orient_lib.DiscLeft(name="orient")(inp) if disc_left else inp
    x = backbones.BackbonePreprocess(spec.backbone, name="preprocess")(x)
    maps = multi(x, training=False)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    vecs = [keras.ops.mean(keras.ops.cast(m, "float32"), axis=(1, 2)) for m in maps]
    out = keras.ops.concatenate(vecs, axis=-1) if len(vecs) > 1 else vecs[0]
    return keras.Model(inp, out, name=f"probe_{spec.backbone}")


@dataclasses.dataclass
class FeatureSet:
    """Per-eye rows in reader order: ``x`` float32 ``[N, D]``, ``y`` (1 = male), ``patient``,
    ``eye``, ``filename``; ``seconds``: extraction wall time (0 when read from cache)."""

    x: np.ndarray
    y: np.ndarray
    patient: np.ndarray
    eye: np.ndarray
    filename: np.ndarray
    seconds: float


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values)]


def cache_key(spec: FeatureSpec, data_dir: str, orient: str) -> str:
    """A short hash of everything the features depend on."""
    weights = spec.weights
    if weights not in ("imagenet", "none"):
        weights = f"{os.path.abspath(weights)}:{os.path.getsize(weights)}"
    blob = json.dumps({"sha": manifest_lib.manifest_sha256(data_dir), "spec": [
        spec.backbone, spec.image_size, weights, list(spec.layers)],
        "mirror": orient == "eye", **({"orient": orient} if orient != "eye" else {}),
        "splits": SPLITS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def extract(spec: FeatureSpec, data_dir: str, *, orient: str = "eye",
            cache_dir: str | None = None, show_progress: bool = True) -> FeatureSet:
    """Features of every normal eye of :data:`SPLITS` (see the module docstring); read
    from / written to ``cache_dir/<backbone>_<size>_<key>.npz`` when given."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{spec.backbone}_{spec.image_size}_"
                                       f"{cache_key(spec, data_dir, orient)}.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as z:
                return FeatureSet(z["x"], z["y"], z["patient"], z["eye"], z["filename"], 0.0)
    if orient not in ORIENTS:
        raise ValueError(f"--orient={orient}: one of {', '.join(ORIENTS)}")
    t0 = time.time()
    model = feature_model(spec, disc_left=orient == "disc_left")
    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    cfg = reader.ReadConfig(image_size=spec.image_size, batch_size=BATCH, with_meta=True,
                            normal_only=True, cache_budget_gb=0.0)
    total = reader.count_records(data_dir, list(SPLITS), normal_only=True)
    ds = reader.make_dataset(data_dir, list(SPLITS), False, cfg)
    bar = progress_lib.Progress(f"fundus-probe {spec.label}", "images", total,
                                enabled=show_progress)
    xs, ys, pats, eyes, files = [], [], [], [], []
    for images, labels, meta in ds:
        if orient == "eye":
            right = tf.equal(meta["eye"], b"right")
            images = tf.where(right[:, None, None, None], tf.reverse(images, axis=[2]), images)
        xs.append(np.asarray(run(images), np.float32))
        ys.extend(np.asarray(labels).reshape(-1).tolist())
        pats.extend(_text(meta["patient_id"]))
        eyes.extend(_text(meta["eye"]))
        files.extend(_text(meta["filename"]))
        bar.update(len(ys))
    bar.close()
    out = FeatureSet(np.concatenate(xs), np.asarray(ys, np.float32), np.asarray(pats),
                     np.asarray(eyes), np.asarray(files), round(time.time() - t0, 1))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        fileio.write_atomic(path, lambda tmp: np.savez(
            tmp, x=out.x, y=out.y, patient=out.patient, eye=out.eye, filename=out.filename),
            suffix=".npz")
    return out


def combine(sets: Sequence[FeatureSet]) -> FeatureSet:
    """Concatenate the features of several specs of the same eyes (checked by file name)."""
    first = sets[0]
    for s in sets[1:]:
        if not np.array_equal(s.filename, first.filename):
            raise ValueError("feature sets cover different eyes or orders; extract them "
                             "from the same --data")
    return FeatureSet(np.concatenate([s.x for s in sets], axis=1), first.y, first.patient,
                      first.eye, first.filename, sum(s.seconds for s in sets))


def patient_folds(patient: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold ``0..k-1`` per row: patient-grouped, sex-stratified
    (:func:`pipeline.splits.assign_folds`, the converter's own rule) with ``seed``."""
    table = pd.DataFrame({"patient_id": patient, "sex": np.where(y > 0.5, "M", "F"),
                          "split": "train", "normal": 1})
    return splits_lib.assign_folds(table, k, seed).to_numpy()


def _auc(y, p, patient=None) -> float:
    if patient is not None:
        y, p = metrics_lib.per_patient(y, p, patient)
    try:
        return metrics_lib.roc_auc(y, p)
    except ValueError:
        return float("nan")


def repeated_cv(fs: FeatureSet, *, k: int = 5, seeds: Sequence[int] = (0, 1, 2),
                c: float = 1e-3, n_boot: int = 2000) -> dict:
    """K-fold CV of the L2 logistic probe repeated over ``seeds`` (module docstring).

    Returns ``{"per_image": {"mean", "sd", "folds"}, "per_patient": {...}, "oof": [{"seed",
    "auc", "ci", "patient_auc", "patient_ci"}], "images", "patients", "features", "c",
    "k", "seeds", "oof_predictions": {seed: p [N]}}``."""
    x, y = fs.x.astype(np.float64), fs.y.astype(np.float64)
    preds = {}
    for seed in seeds:
        folds = patient_folds(fs.patient, y, k, seed)
        p = np.full(y.shape, np.nan)
        for f in range(k):
            va = folds == f
            fit = head_init_lib.fit_logistic(x[~va], y[~va], c)
            p[va] = 1.0 / (1.0 + np.exp(-(x[va] @ fit["kernel"] + fit["bias"])))
        preds[int(seed)] = p
    return {**scores(y, fs.patient, preds, k, n_boot), "features": int(x.shape[1]), "c": c,
            "oof_predictions": preds}


def scores(y: np.ndarray, patient: np.ndarray, preds: dict[int, np.ndarray], k: int,
           n_boot: int = 2000) -> dict:
    """The figures of :func:`repeated_cv` for given out-of-fold probabilities ``preds``
    (fold seed -> p [N]) of eyes ``y``/``patient``: per-fold AUCs of each seed's
    :func:`patient_folds`, mean ± sd, pooled out-of-fold AUCs with intervals."""
    img, pat, oof = [], [], []
    for seed, p in preds.items():
        folds = patient_folds(patient, y, k, seed)
        for f in range(k):
            va = folds == f
            img.append(_auc(y[va], p[va]))
            pat.append(_auc(y[va], p[va], patient[va]))
        yp, pp = metrics_lib.per_patient(y, p, patient)
        oof.append({"seed": int(seed), "auc": metrics_lib.roc_auc(y, p),
                    "ci": list(metrics_lib.bootstrap_auc_ci(y, p, patient, n=n_boot)),
                    "patient_auc": metrics_lib.roc_auc(yp, pp),
                    "patient_ci": list(metrics_lib.patient_bootstrap_ci(
                        yp, pp, metrics_lib.patient_ids(patient), n=n_boot))})
    return {"per_image": _summary(img), "per_patient": _summary(pat), "oof": oof,
            "images": int(y.size), "patients": int(np.unique(patient).size), "k": k,
            "seeds": [int(s) for s in preds]}


def _summary(values: Sequence[float]) -> dict:
    """Mean, sd (n - 1) and the values themselves of per-fold AUCs (NaN folds skipped)."""
    return {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1)),
            "folds": [float(a) for a in values]}


def average_oof(frames: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, list[int]]:
    """Average the ``p_seed<S>`` columns of several probes' ``oof.csv`` frames (the same
    eyes, checked by ``file``): an ensemble of probes, each eye scored by models that
    never saw its patient. Returns ``(frame, seeds)``."""
    first = frames[0].sort_values("file").reset_index(drop=True)
    seeds = sorted(int(c[len("p_seed"):]) for c in first.columns if c.startswith("p_seed"))
    out = first[["file", "patient", "eye", "label"]].copy()
    for s in seeds:
        cols = []
        for fr in frames:
            fr = fr.sort_values("file").reset_index(drop=True)
            if not fr["file"].equals(first["file"]) or f"p_seed{s}" not in fr:
                raise ValueError("--ensemble: the probes cover different eyes or fold seeds")
            cols.append(fr[f"p_seed{s}"].to_numpy(np.float64))
        out[f"p_seed{s}"] = np.mean(cols, axis=0)
    return out, seeds


def format_result(result: dict) -> str:
    """One line: per image and per patient mean ± sd over folds x seeds, pooled OOF of
    the first seed with its interval."""
    i, p, o = result["per_image"], result["per_patient"], result["oof"][0]
    return (f"per image {i['mean']:.3f} ± {i['sd']:.3f}, per patient {p['mean']:.3f} ± "
            f"{p['sd']:.3f} ({result['k']}-fold x {len(result['seeds'])} seeds); pooled "
            f"out-of-fold (seed {o['seed']}) {o['auc']:.3f} [{o['ci'][0]:.3f}, "
            f"{o['ci'][1]:.3f}] per image, {o['patient_auc']:.3f} [{o['patient_ci'][0]:.3f}, "
            f"{o['patient_ci'][1]:.3f}] per patient; {result['images']} eyes, "
            f"{result['patients']} patients"
            + (f", {result['features']} features, C={result['c']:g}" if "c" in result
               else f", mean of {len(result.get('members', []))} probes"))
