"""Selection of eyes: keyword parsing, modes, counted skips, the dev-data acceptance."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from pipeline import annotations as A
from pipeline import selection as S

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "odir5k-dev")


def _table(rows):
    t = pd.DataFrame(rows, columns=["patient_id", "eye", "sex", "keywords"])
    t["filename"] = t.patient_id + "_" + t.eye + ".jpg"
    t["age"] = 50
    t["split"] = None
    t["source"] = "x.csv"
    t["row"] = range(1, len(t) + 1)
    return t[list(A.COLUMNS)]


TABLE = _table([
    ["1", "left", "male", "normal fundus"],
    ["1", "right", "male", "cataract"],
    ["2", "left", "female", " Normal Fundus "],
    ["2", "right", "female", "lens dust，normal fundus"],
    ["3", "left", "unknown", "normal fundus"],
    ["3", "right", "unknown", "glaucoma"],
    ["4", "left", "male", "low image quality, normal fundus"],
    ["4", "right", "male", "lens dust，normal fundus，drusen"],
    ["5", "left", "female", "lens dust"],
])


def test_parse_keywords():
    assert S.parse_keywords("lens dust，Normal  Fundus , ") == ("lens dust", "normal fundus")
    assert S.parse_keywords("") == ()
    assert S.parse_keywords(float("nan")) == ()
    assert S.is_normal(" normal fundus")
    assert not S.is_normal("normal fundus，lens dust")
    assert S.is_normal_or_quality("normal fundus，lens dust")
    assert not S.is_normal_or_quality("lens dust")  # a quality note alone is not normal


def test_normal_mode_keeps_own_normal_eyes_and_counts_bad_sex():
    kept, skipped, unselected = S.select(TABLE, "normal", return_unselected=True)
    assert list(zip(kept.patient_id, kept.eye)) == [("1", "left"), ("2", "left")]
    assert kept.normal.all() and kept.normal.dtype == bool
    assert list(skipped.patient_id) == ["3"] and skipped.iloc[0].eye == "left"
    assert "sex not male/female: 'unknown'" in skipped.iloc[0].reason
    assert kept.attrs["unselected"] == len(unselected) == 6  # diseased eyes are not skips
    assert len(kept) + len(skipped) + len(unselected) == len(TABLE)


def test_normal_or_quality_mode():
    kept, skipped = S.select(TABLE, "normal_or_quality")
    assert set(zip(kept.patient_id, kept.eye)) == {
        ("1", "left"), ("2", "left"), ("2", "right"), ("4", "left")}
    assert kept.normal.all()
    assert len(skipped) == 1


def test_all_mode_marks_only_exact_normal_as_normal():
    kept, skipped = S.select(TABLE, "all")
    assert len(kept) == 7 and len(skipped) == 2
    assert set(kept[kept.normal].index) == {0, 2}


def test_empty_filename_is_a_skip_and_bad_mode_errors():
    t = TABLE.copy()
    t.loc[0, "filename"] = ""
    kept, skipped = S.select(t, "normal")
    assert "no image file name" in set(skipped.reason)
    with pytest.raises(ValueError, match="--selection"):
        S.select(TABLE, "healthy")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV), reason="real data absent")
def test_dev_full_df_acceptance_counts():
    kept, skipped = S.select(A.read_annotations(os.path.join(DEV, "full_df.csv")), "normal")
    assert S.summary(kept) == {"images": 2125, "patients": 1362, "male": 1157,
                               "female": 968}
    assert len(skipped) == 0
