"""Shard planning for fundus-convert: how many shards a split gets, which eyes go in which
shard, and what the shards are called.

Per split, the eyes are sorted by patient and eye, shuffled per sex by ``seed``, then dealt
round-robin, males first and females continuing from the same cursor, so every shard holds
both sexes (when the split has at least as many eyes of each sex as shards) and shard sizes
differ by at most one; inside a shard the two sexes are interleaved in proportion. The
automatic shard count aims at ~:data:`TARGET_SHARD_BYTES` a shard. Shards are named
``{split}-{i:05d}-of-{n:05d}.tfrecord`` (:func:`shard_name`, :data:`SHARD_RE`). The plan is a
pure function of the eye table and its arguments; writing the shards is
:mod:`pipeline.writer`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline import manifest as manifest_lib

#: The converter's shard files, and their temporaries (``NAME.tmp<pid>``, or ``NAME.tmp``
#: of older versions).
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.tmp\d*)?$")
#: Aim for shards of about this many bytes (estimated, see :func:`estimate_image_bytes`).
TARGET_SHARD_BYTES = 150 * 1024 * 1024
#: Smallest number of train shards (fewer only when there are fewer eyes of a sex).
MIN_TRAIN_SHARDS = 8


@dataclasses.dataclass
class Shard:
    """One planned shard: its ``split``, file ``name`` (no folder) and ``rows``, the index
    labels of the eye table in write order."""

    split: str
    name: str
    rows: list


def _natural_key(pid: str) -> tuple:
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def estimate_image_bytes(image_size: int, jpeg_quality: int) -> int:
    """Rough JPEG size of one stored fundus (bytes): 0.12 B/px at quality <= 75 rising to
    0.35 B/px at 100 (odir5k-dev at 512 px, quality 95: 61 kB measured, 0.23 B/px;
    the estimate is kept on the high side so shards stay under ~200 MB)."""
    bpp = 0.12 + 0.23 * max(0.0, min(1.0, (jpeg_quality - 75) / 25.0)) ** 2
    return int(image_size * image_size * bpp) + 600  # + the record's other features


def auto_num_shards(split: str, n: int, n_male: int, n_female: int, image_size: int,
                    jpeg_quality: int) -> int:
    """Shards for a split of ``n`` eyes: ~:data:`TARGET_SHARD_BYTES` each, at least
    :data:`MIN_TRAIN_SHARDS` for train and 1 otherwise, capped so each shard can hold
    both sexes (at most the count of the rarer sex when both are present); 0 for no eyes."""
    if n == 0:
        return 0
    want = math.ceil(n * estimate_image_bytes(image_size, jpeg_quality) / TARGET_SHARD_BYTES)
    want = max(want, MIN_TRAIN_SHARDS if split == "train" else 1)
    cap = min(n_male, n_female) if n_male and n_female else n
    return max(1, min(want, cap))


def shard_name(split: str, i: int, n: int) -> str:
    """File name of shard ``i`` (0-based) of ``n`` of ``split``."""
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _interleave(males: list, females: list) -> list:
    """Merge two lists keeping each in order, spread in proportion (males first on ties)."""
    keyed = [((i + 0.5) / len(males), 0, i, v) for i, v in enumerate(males)]
    keyed += [((i + 0.5) / len(females), 1, i, v) for i, v in enumerate(females)]
    return [v for *_, v in sorted(keyed, key=lambda t: t[:3])]


def deal_shards(table: pd.DataFrame, n_shards: int, seed: int, salt: int) -> list[list]:
    """Index labels of ``table`` (one split; columns ``patient_id``, ``eye``, ``sex``)
    dealt into ``n_shards`` lists (see the module doc); ``salt`` tells splits apart."""
    if n_shards == 0:
        return []
    order = sorted(table.index, key=lambda i: (_natural_key(table.at[i, "patient_id"]),
                                               table.at[i, "eye"]))
    rng = np.random.default_rng([seed, salt])
    groups = {}
    for sex in ("male", "female"):
        members = [i for i in order if table.at[i, "sex"] == sex]
        groups[sex] = [members[j] for j in rng.permutation(len(members))]
    per_shard: list[dict[str, list]] = [{"male": [], "female": []} for _ in range(n_shards)]
    cursor = 0
    for sex in ("male", "female"):
        for i in groups[sex]:
            per_shard[cursor % n_shards][sex].append(i)
            cursor += 1
    return [_interleave(s["male"], s["female"]) for s in per_shard]


def _requested(num_shards: int | Sequence[int] | None, split_index: int) -> int | None:
    if num_shards is None:
        return None
    if isinstance(num_shards, int):
        return num_shards
    return int(list(num_shards)[split_index])


def plan(table: pd.DataFrame, seed: int, num_shards: int | Sequence[int] | None,
         image_size: int, jpeg_quality: int) -> dict[str, list[Shard]]:
    """Shards of every split of ``table`` (column ``split``; an empty list for an empty
    split). ``num_shards``: one count for every split, ``(train, val, test)``, or None for
    :func:`auto_num_shards`; a requested count is capped at the split's eyes.
    ``image_size`` (pixels) and ``jpeg_quality`` (1..100) size the automatic count."""
    out: dict[str, list[Shard]] = {}
    for k, split in enumerate(manifest_lib.SPLITS):
        part = table[table["split"] == split]
        n_male = int((part["sex"] == "male").sum())
        n_female = int((part["sex"] == "female").sum())
        n = _requested(num_shards, k)
        if n is None:
            n = auto_num_shards(split, len(part), n_male, n_female, image_size, jpeg_quality)
        else:
            n = max(1, min(n, len(part))) if len(part) else 0
        dealt = deal_shards(part, n, seed, k)
        out[split] = [Shard(split, shard_name(split, i, n), rows) for i, rows in enumerate(dealt)]
    return out
