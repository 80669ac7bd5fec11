"""Patient-disjoint, sex-stratified, deterministic splits and folds."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline import splits as P


def _table(n_male=57, n_female=43, one_eye_every=5):
    rows = []
    for i in range(n_male + n_female):
        sex = "male" if i < n_male else "female"
        eyes = ("left",) if i % one_eye_every == 0 else ("left", "right")
        rows += [{"patient_id": f"p{i}", "eye": e, "sex": sex, "split": None} for e in eyes]
    return pd.DataFrame(rows)


def _per_patient(t, col):
    g = t.groupby("patient_id")[col].nunique()
    assert (g == 1).all(), "a patient's eyes landed in different groups"
    return t.groupby("patient_id").agg(v=(col, "first"), sex=("sex", "first"))


def test_disjoint_and_stratified():
    t = _table()
    t["split"] = P.assign_splits(t, (0.7, 0.15, 0.15), seed=3)
    p = _per_patient(t, "split")
    counts = p.groupby(["sex", "v"]).size()
    for sex, n in (("male", 57), ("female", 43)):
        for split, f in zip(P.SPLITS, (0.7, 0.15, 0.15)):
            assert abs(counts[(sex, split)] - n * f) <= 1, (sex, split)


def test_deterministic_and_row_order_independent():
    t = _table()
    a = P.assign_splits(t, seed=7)
    b = P.assign_splits(t, seed=7)
    shuffled = t.sample(frac=1.0, random_state=1)
    c = P.assign_splits(shuffled, seed=7)
    assert a.equals(b)
    assert (c.loc[t.index] == a).all()
    assert not a.equals(P.assign_splits(t, seed=8))


def test_zeros_and_bad_fractions():
    t = _table()
    assert (P.assign_splits(t, (0, 0, 1)) == "test").all()
    assert set(P.assign_splits(t, "1,0,0")) == {"train"}
    for bad in ("0.7,0.2,0.2", "0.5,0.5", "a,b,c", (-0.1, 0.6, 0.5)):
        with pytest.raises(ValueError, match="--split"):
            P.assign_splits(t, bad)


def test_source_split_kept():
    t = _table(10, 10)
    t.loc[t.patient_id.isin(["p0", "p1"]), "split"] = "test"
    t.loc[t.patient_id == "p2", "split"] = "val"
    s = P.assign_splits(t, (1, 0, 0))
    assert set(s[t.patient_id.isin(["p0", "p1"])]) == {"test"}
    assert set(s[t.patient_id == "p2"]) == {"val"}
    assert set(s[~t.patient_id.isin(["p0", "p1", "p2"])]) == {"train"}
    assert set(P.assign_splits(t, (1, 0, 0), use_source_split=False)) == {"train"}


def test_folds():
    t = _table()
    t["split"] = P.assign_splits(t, seed=0)
    t["fold"] = P.assign_folds(t, 5, seed=0)
    p = _per_patient(t, "fold")
    split = t.groupby("patient_id")["split"].first()
    assert (p.v[split == "test"] == -1).all()
    inner = p[split != "test"]
    assert set(inner.v) == set(range(5))
    for sex in ("male", "female"):
        c = inner[inner.sex == sex].groupby("v").size()
        assert c.max() - c.min() <= 1
    c = inner.groupby("v").size()
    assert c.max() - c.min() <= 1
    again = P.assign_folds(t.sample(frac=1.0, random_state=2), 5, seed=0)
    assert (again.loc[t.index] == t["fold"]).all()
    assert (P.assign_folds(t, 0) == -1).all()
    with pytest.raises(ValueError, match="--folds"):
        P.assign_folds(t, 1)
    with pytest.raises(ValueError, match="--folds"):
        P.assign_folds(t.head(3), 5)


def test_conflicting_patient_sex_rejected():
    t = pd.DataFrame({"patient_id": ["a", "a"], "eye": ["left", "right"],
                      "sex": ["male", "female"], "split": [None, None]})
    with pytest.raises(ValueError, match="patient a"):
        P.assign_splits(t)


def test_patients_without_normal_eye_always_train_and_fold_minus_one():
    """--selection=all: patients with no eligible eye never reach val/test or a val fold,
    and the eligible patients split exactly as they would without them."""
    rows = []
    for i in range(60):
        for eye in ("left", "right"):
            rows.append({"patient_id": f"p{i}", "eye": eye,
                         "sex": "male" if i % 2 else "female", "normal": True})
    eligible = pd.DataFrame(rows)
    extra = pd.DataFrame([{"patient_id": f"x{i}", "eye": eye,
                           "sex": "male" if i % 3 else "female", "normal": False}
                          for i in range(40) for eye in ("left", "right")])
    both = pd.concat([eligible, extra], ignore_index=True)
    split_both = P.assign_splits(both, (0.6, 0.2, 0.2), seed=3)
    split_elig = P.assign_splits(eligible, (0.6, 0.2, 0.2), seed=3)
    assert (split_both[both["patient_id"].str.startswith("x")] == "train").all()
    assert list(split_both[: len(eligible)]) == list(split_elig)
    both["split"] = split_both
    folds = P.assign_folds(both, 3, seed=3)
    assert (folds[both["patient_id"].str.startswith("x")] == -1).all()
    assert set(folds[: len(eligible)][both["split"][: len(eligible)] != "test"]) == {0, 1, 2}
