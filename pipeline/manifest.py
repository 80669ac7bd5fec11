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
                              "records": R, "sha256": "...",
                              "bytes": B}]},   # file size (manifests since issue 14)
        "val": {...}, "test": {...}
      },
      "flags": {...},                        # the converter flags that shape the output
      "sources": [{"annotations": "...", "sha256": "...", "format": "...",
                   "images": "..."}],
      "skipped": [{"file": "...", "patient_id": "...", "eye": "...", "reason": "..."}]
    }

Checks of the shards against it: :func:`check_shards` (cheap, at the start of training and
evaluation: every shard there, with its recorded size) and :func:`verify_shards` (every
byte: sha256 and the record count, ``fundus-convert --verify``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from typing import Any, Iterable

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


# ------------------------------------------------------------------------ shard checks

class ShardError(ValueError):
    """Shards of a data dir that are missing or not the size its manifest records: bad
    input, found before the work starts (the message names each shard and the fix)."""


def fix_hint(data_dir: str, verify: bool = True) -> str:
    """How to repair a data dir whose shards do not match its manifest (``verify``: and
    how to check all of them)."""
    return (f"rerun the fundus-convert command that made {data_dir} (same flags: it "
            f"rewrites damaged shards) or restore the dir from a copy"
            + (f"; fundus-convert --verify={data_dir} checks every shard" if verify else ""))


def _entries(manifest: dict[str, Any], splits: Iterable[str] | None):
    if splits is None:                # the usual order first, then any other split
        splits = [s for s in SPLITS if s in manifest["splits"]] + \
            [s for s in manifest["splits"] if s not in SPLITS]
    names = list(dict.fromkeys(splits))
    for split in names:
        for entry in manifest["splits"].get(split, {}).get("shards", []):
            yield split, entry


def check_shards(data_dir: str, splits: Iterable[str] | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
    """Cheap start-up check: every shard of ``splits`` (default: all; names the manifest
    lacks are skipped) exists and, where the manifest records ``bytes`` (manifests written
    since that field was added), has that size. Raises :class:`ShardError` naming the
    shards and the fix; reads no shard."""
    manifest = load(data_dir) if manifest is None else manifest
    problems = []
    for _, entry in _entries(manifest, splits):
        path = os.path.join(data_dir, entry["path"])
        if not os.path.isfile(path):
            problems.append(f"{path} is missing")
        elif entry.get("bytes") is not None and os.path.getsize(path) != int(entry["bytes"]):
            problems.append(f"{path} has {os.path.getsize(path)} bytes, "
                            f"{MANIFEST_NAME} records {int(entry['bytes'])}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ShardError(f"{'; '.join(problems[:3])}{more}: the data dir is damaged; "
                         f"{fix_hint(data_dir)}")


_HEADER = struct.Struct("<QI")     # TFRecord framing: uint64 length, uint32 masked crc


def count_records(path: str) -> tuple[int, str | None]:
    """``(records, problem)`` of a TFRecord file, read by its framing alone (length
    header, data, crc footer; the crcs are not checked: the sha256 covers the bytes).
    ``problem`` is None, or says where the framing breaks (a truncated or damaged file)."""
    size = os.path.getsize(path)
    n = pos = 0
    with open(path, "rb") as f:
        while pos < size:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return n, f"truncated record header at byte {pos}"
            length = _HEADER.unpack(header)[0]
            end = pos + _HEADER.size + length + 4
            if end > size:
                return n, (f"record {n} at byte {pos} claims {length} bytes, past the end "
                           f"of the file ({size} bytes)")
            f.seek(end)
            pos, n = end, n + 1
    return n, None


@dataclasses.dataclass(frozen=True)
class ShardReport:
    """One shard checked by :func:`verify_shards`: ``problems`` is empty when it matches."""

    split: str
    path: str                  # relative to the data dir, as in the manifest
    records: int               # the manifest's count
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shard(data_dir: str, split: str, entry: dict[str, Any], *,
                 count: bool = True) -> ShardReport:
    """Check one manifest shard entry: present, size (when recorded), sha256, and (with
    ``count``) the number of records."""
    path = os.path.join(data_dir, entry["path"])
    records = int(entry.get("records", 0))
    if not os.path.isfile(path):
        return ShardReport(split, entry["path"], records, ("missing",))
    problems = []
    size = os.path.getsize(path)
    if entry.get("bytes") is not None and size != int(entry["bytes"]):
        problems.append(f"{size} bytes, the manifest records {int(entry['bytes'])}")
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        problems.append("sha256 differs from the manifest (the bytes changed since "
                        "fundus-convert wrote them)")
    if count:
        n, framing = count_records(path)
        if framing:
            problems.append(framing)
        if n != records and not framing:
            problems.append(f"{n} records, the manifest records {records}")
    return ShardReport(split, entry["path"], records, tuple(problems))


def verify_shards(data_dir: str, splits: Iterable[str] | None = None,
                  manifest: dict[str, Any] | None = None, *,
                  count: bool = True) -> list[ShardReport]:
    """Re-hash every shard of ``splits`` (default: all) and check its size and record
    count against the manifest; one :class:`ShardReport` per shard, in manifest order."""
    manifest = load(data_dir) if manifest is None else manifest
    return [verify_shard(data_dir, split, entry, count=count)
            for split, entry in _entries(manifest, splits)]
