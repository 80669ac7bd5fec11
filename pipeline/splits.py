"""Patient-disjoint, sex-stratified splits and cross-validation folds.

Both functions work on patients, never on eyes: every eye of a patient gets the same
split and fold. Randomness comes from ``numpy.random.default_rng`` over the *sorted*
patient ids of each sex, so the result depends only on the set of (patient, sex) pairs,
the fractions and the seed; not on row order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def parse_fractions(value: str | Sequence[float], flag: str = "--split"
                    ) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` (or a sequence) -> validated ``(train, val, test)`` fractions.

    Each in [0, 1], summing to 1 (within 1e-6); zeros allowed. ValueError names ``flag``.
    """
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    try:
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ValueError(f"{flag}={text}: expected three numbers like 0.7,0.15,0.15"
                         ) from None
    if len(parts) != 3:
        raise ValueError(f"{flag}={text}: expected three fractions (train,val,test), "
                         f"got {len(parts)}")
    if any(not np.isfinite(p) or p < 0 or p > 1 for p in parts):
        raise ValueError(f"{flag}={text}: each fraction must be in [0, 1]")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ValueError(f"{flag}={text}: fractions must sum to 1, they sum to "
                         f"{sum(parts):g}")
    return (parts[0], parts[1], parts[2])


def _patients(table: pd.DataFrame) -> pd.Series:
    """patient_id -> sex (one per patient; error when a patient's eyes disagree)."""
    n = table.groupby("patient_id")["sex"].nunique()
    if (n > 1).any():
        pid = n[n > 1].index[0]
        raise ValueError(f"patient {pid} has eyes with different sex: "
                         f"{sorted(table.loc[table['patient_id'] == pid, 'sex'].unique())}")
    return table.groupby("patient_id")["sex"].first().sort_index()


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions`` (ties to the earlier split)."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(table: pd.DataFrame, fractions: Sequence[float] | str = DEFAULT_FRACTIONS,
                  seed: int = 0, use_source_split: bool = True) -> pd.Series:
    """Split name per eye: ``pandas.Series`` named ``split``, aligned to ``table.index``.

    Args:
      table: eye table with ``patient_id``, ``sex`` and (optionally) ``split`` columns.
      fractions: (train, val, test), each >= 0, summing to 1 (``parse_fractions``).
      seed: any int; same seed and patients -> same splits.
      use_source_split: keep the split the source gives (OIA-ODIR workbooks, folder
        tree) for patients that have one; only the others are assigned.

    Per sex, the patients (sorted ids, shuffled by the seed) are cut into
    ``round(n * fraction)`` (largest remainder), so each split's count of each sex is
    within one patient of its share.

    With a boolean ``normal`` column (``--selection=all``), a patient none of whose eyes
    is eligible for evaluation always goes to ``train``: validation and test read normal
    eyes only, so such a patient would be wasted anywhere else. Only the eligible
    patients are stratified, so the normal-eye patients of a ``--selection=all``
    conversion land in the same splits as in a ``--selection=normal`` one.
    """
    fractions = parse_fractions(fractions)
    out = pd.Series(None, index=table.index, dtype=object, name="split")
    todo = table
    if use_source_split and "split" in table.columns:
        given = table["split"].notna()
        bad = given & ~table["split"].isin(SPLITS)
        if bad.any():
            raise ValueError(f"source split {table.loc[bad, 'split'].iloc[0]!r} is not one "
                             f"of {', '.join(SPLITS)}")
        out[given] = table.loc[given, "split"]
        mixed = set(table.loc[given, "patient_id"]) & set(table.loc[~given, "patient_id"])
        if mixed:
            raise ValueError(f"patient {sorted(mixed)[0]} has eyes with and without a "
                             f"source split")
        todo = table[~given]
    train_only = _train_only(todo)
    out.loc[train_only.index[train_only.to_numpy()]] = "train"
    todo = todo[~train_only]
    if len(todo):
        patients = _patients(todo)
        rng = np.random.default_rng(seed)
        split_of: dict[str, str] = {}
        for sex in sorted(patients.unique()):
            ids = np.array(patients.index[patients == sex])
            ids = ids[rng.permutation(len(ids))]
            start = 0
            for name, count in zip(SPLITS, _counts(len(ids), fractions)):
                for pid in ids[start:start + count]:
                    split_of[pid] = name
                start += count
        out[todo.index] = todo["patient_id"].map(split_of)
    return out


def _train_only(table: pd.DataFrame) -> pd.Series:
    """Per eye: True when the eye's patient has no evaluation-eligible (``normal``) eye."""
    if "normal" not in table.columns or not len(table):
        return pd.Series(False, index=table.index)
    eligible = table.groupby("patient_id")["normal"].transform("any").astype(bool)
    return ~eligible


def assign_folds(table: pd.DataFrame, k: int, seed: int = 0) -> pd.Series:
    """Cross-validation fold per eye: ``pandas.Series`` named ``fold`` (int64).

    Patients whose ``split`` is not ``test`` get folds ``0..k-1``: per sex (sorted ids,
    shuffled by the seed), dealt round-robin, continuing across sexes, so every fold's
    count of each sex and in total is within one patient of the others. Test patients
    (and every eye when ``k == 0``) get -1. Needs a ``split`` column. Patients with no
    evaluation-eligible eye (see :func:`assign_splits`) also get -1: they train in every
    fold and are never validated on.
    """
    if k < 0 or k == 1:
        raise ValueError(f"--folds={k}: must be 0 (no folds) or at least 2")
    out = pd.Series(-1, index=table.index, dtype="int64", name="fold")
    if k == 0:
        return out
    if "split" not in table.columns:
        raise ValueError("assign_folds needs a 'split' column (assign_splits first)")
    pool = table[(table["split"] != "test").to_numpy() & ~_train_only(table).to_numpy()]
    patients = _patients(pool)
    if len(patients) < k:
        raise ValueError(f"--folds={k}: only {len(patients)} non-test patient(s)")
    rng = np.random.default_rng([seed, 1])
    fold_of: dict[str, int] = {}
    i = 0
    for sex in sorted(patients.unique()):
        ids = np.array(patients.index[patients == sex])
        for pid in ids[rng.permutation(len(ids))]:
            fold_of[pid] = i % k
            i += 1
    out[pool.index] = pool["patient_id"].map(fold_of).astype("int64")
    return out
