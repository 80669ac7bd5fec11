"""Shared pytest fixtures.

``tiny_data`` writes a small converted data directory (shards + manifest.json) straight
through :mod:`pipeline.schema` and :mod:`pipeline.manifest`, without the converter, so the
reader, model and job tests do not depend on the converter's speed. Images are 64 px
synthetic fundi: a dark surround, an orange disc, and a planted sex signal (males get a
brighter optic disc on the nasal side) strong enough for a tiny model to learn.
"""
from __future__ import annotations

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline import manifest as manifest_lib
from pipeline import schema


def synthetic_fundus(rng: np.random.Generator, size: int, male: bool, eye: str) -> bytes:
    """A size x size RGB JPEG of a toy fundus; the sex signal is the disc's brightness."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(img)
    base = tuple(int(v) for v in rng.integers([150, 60, 20], [200, 90, 40]))
    m = size // 16
    d.ellipse([m, m, size - m, size - m], fill=base)
    disc = 255 if male else 170
    cx = int(size * (0.3 if eye == "left" else 0.7))
    r = size // 9
    d.ellipse([cx - r, size // 2 - r, cx + r, size // 2 + r], fill=(disc, disc - 20, 90))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_tiny_data(root: str, patients: dict[str, int] | None = None, size: int = 64,
                    shards: int = 2, folds: int = 0, seed: int = 0) -> str:
    """Write shards + manifest; ``patients`` maps split -> number of patients (2 eyes each)."""
    import tensorflow as tf

    patients = patients or {"train": 24, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    man = {"format_version": 1, "image_size": size, "folds": folds, "selection": "normal",
           "splits": {}, "flags": {"fixture": True}, "sources": [], "skipped": []}
    pid = 0
    for split, n in patients.items():
        recs = []
        for i in range(n):
            male = i % 2 == 0
            fold = (i % folds) if folds else -1
            for eye in schema.EYES:
                recs.append(schema.EyeRecord(
                    jpeg=synthetic_fundus(rng, size, male, eye), size=size,
                    filename=f"{pid}_{eye}.jpg", patient_id=str(pid), age=40 + pid % 30,
                    sex=int(male), eye=eye, keywords="normal fundus", fold=fold))
            pid += 1
        entry = {"images": len(recs), "patients": n, "male": sum(r.sex for r in recs),
                 "female": sum(1 - r.sex for r in recs), "normal_images": len(recs),
                 "shards": []}
        if folds:
            entry["folds"] = {str(k): sum(r.fold == k for r in recs) for k in range(folds)}
        for s in range(shards):
            name = f"{split}-{s:05d}-of-{shards:05d}.tfrecord"
            path = os.path.join(root, name)
            part = recs[s::shards]
            with tf.io.TFRecordWriter(path) as w:
                for r in part:
                    w.write(schema.encode_example(r))
            entry["shards"].append({"path": name, "records": len(part),
                                    "sha256": manifest_lib.sha256_file(path)})
        man["splits"][split] = entry
    manifest_lib.save(root, man)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A converted-looking data dir: 64 px, 24/8/8 patients, 2 shards a split."""
    return write_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def tiny_fold_data(tmp_path_factory) -> str:
    """Like ``tiny_data`` with 3 folds over train+val."""
    return write_tiny_data(str(tmp_path_factory.mktemp("tiny_fold_data")), folds=3)
