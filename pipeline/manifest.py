"""``manifest.json``: what the converter wrote, and how readers find it.

Layout (all paths relative to the data directory)::

    {
      "format_version": 1,
      "image_size": 512,                     # stored square size, pixels
      "folds": 0,                            # K of --folds, 0 when none
      "selection": "normal",                 # which eyes were written
      "splits": {
        "train": {"images": N, "patients": P, "male": M, "female": F,
                  "normal_images": n,        # eyes whose keywords are exactly normal fundus
                  "folds": {"0": N0, ...},   # images per fold (only with --folds)
                  "shards": [{"path": "train-00000-of-00008.tfrecord",
                              "records": R, "sha256": "..."}]},
        "val": {...}, "test": {...}
      },
      "flags": {...},                        # the converter flags that shape the output
      "sources": [{"annotations": "...", "sha256": "...", "format": "...",
                   "images": "..."}],
      "skipped": [{"file": "...", "patient_id": "...", "eye": "...", "reason": "..."}]
    }
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline import fileio

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def manifest_path(data_dir: str) -> str:
    return os.path.join(data_dir, MANIFEST_NAME)


def load(data_dir: str) -> dict[str, Any]:
    """Read ``DATA/manifest.json``; a clear error when it is missing or malformed."""
    path = manifest_path(data_dir)
    manifest = fileio.read_json(path)     # ValueError naming the file on bad JSON
    if manifest is None:
        raise FileNotFoundError(
            f"{path}: no manifest; is --data a fundus-convert output directory?")
    if not isinstance(manifest, dict) or "splits" not in manifest:
        raise ValueError(f"{path}: no 'splits' key; not a fundus-convert manifest")
    return manifest


def dumps(manifest: dict[str, Any]) -> str:
    """Canonical, byte-stable JSON text of a manifest."""
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def save(data_dir: str, manifest: dict[str, Any]) -> str:
    """Write atomically (temporary name, then rename). Returns the path."""
    return fileio.write_text(manifest_path(data_dir), dumps(manifest))


def shard_paths(data_dir: str, manifest: dict[str, Any], split: str) -> list[str]:
    """Absolute shard paths of one split, in manifest order (empty list for an empty split)."""
    if split not in manifest["splits"]:
        raise KeyError(f"{manifest_path(data_dir)}: no split {split!r}; "
                       f"has {sorted(manifest['splits'])}")
    return [os.path.join(data_dir, s["path"]) for s in manifest["splits"][split]["shards"]]


DEFAULT_JPEG_QUALITY = 95     # fundus-convert's --jpeg_quality default


def stored_format(manifest: dict[str, Any]) -> tuple[int, int] | None:
    """``(stored square size px, JPEG quality 1..100)`` of the records, None when the
    manifest has no ``image_size`` (quality: the converter flag, else its default)."""
    size = manifest.get("image_size")
    quality = (manifest.get("flags") or {}).get("jpeg_quality") or DEFAULT_JPEG_QUALITY
    return (int(size), int(quality)) if size else None


def split_size(manifest: dict[str, Any], split: str) -> int:
    """Number of records of a split."""
    return int(sum(s["records"] for s in manifest["splits"].get(split, {}).get("shards", [])))


def manifest_sha256(data_dir: str) -> str:
    """sha256 of the manifest file (recorded by training in run.json)."""
    return sha256_file(manifest_path(data_dir))
