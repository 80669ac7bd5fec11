"""Annotation readers: every format into the same eye table; clear errors."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from pipeline import annotations as A

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "odir5k-dev")

HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus",
          "Left-Diagnostic Keywords", "Right-Diagnostic Keywords",
          "N", "D", "G", "C", "A", "H", "M", "O"]
PATIENTS = [
    ["0", "69", "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus"],
    ["1", "57", "Male", "1_left.jpg", "1_right.jpg", "normal fundus", "normal fundus"],
    ["8", "", "MALE", "8_left.jpg", "8_right.jpg", "lens dust，normal fundus",
     "mild nonproliferative retinopathy"],
]
LABELS = ["0"] * 8


def _csv(path, header, rows, crlf=True):
    text = ("\r\n" if crlf else "\n").join(
        ",".join(f'"{v}"' if "," in v else v for v in r) for r in [header] + rows)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text + ("\r\n" if crlf else "\n"))
    return str(path)


def _full_df_rows(with_filename=True):
    rows = []
    for p in PATIENTS:
        for eye in ("left", "right"):
            extra = ([f"../x/{p[0]}_{eye}.jpg", "N", "[1, 0, 0, 0, 0, 0, 0, 0]",
                      f"{p[0]}_{eye}.jpg"] if with_filename else [])
            rows.append(p + LABELS + extra)
    return rows


def _eyes(df):
    return df[["patient_id", "eye", "filename", "sex", "age", "keywords"]] \
        .sort_values(["patient_id", "eye"]).reset_index(drop=True)


def test_per_patient_csv(tmp_path):
    t = A.read_annotations(_csv(tmp_path / "a.csv", HEADER, [p + LABELS for p in PATIENTS]))
    assert list(t.columns) == list(A.COLUMNS)
    assert t.attrs["format"] == "odir_per_patient"
    assert len(t) == 6
    assert list(t["eye"][:2]) == ["left", "right"]
    r = t[(t.patient_id == "8") & (t.eye == "left")].iloc[0]
    assert (r.sex, r.age, r.keywords, r.filename, r.row) == (
        "male", -1, "lens dust，normal fundus", "8_left.jpg", 3)
    assert t["split"].isna().all()
    assert t["age"].dtype == "int64"


def test_full_df_with_and_without_filename_and_xlsx_agree(tmp_path):
    per_patient = A.read_annotations(
        _csv(tmp_path / "a.csv", HEADER, [p + LABELS for p in PATIENTS]))
    full = A.read_annotations(_csv(
        tmp_path / "full_df.csv", HEADER + ["filepath", "labels", "target", "filename"],
        _full_df_rows()))
    short = A.read_annotations(_csv(tmp_path / "short.csv", HEADER, _full_df_rows(False)))
    xlsx = tmp_path / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
    pd.DataFrame([p + LABELS for p in PATIENTS], columns=HEADER).to_excel(xlsx, index=False)
    wb = A.read_annotations(str(xlsx))
    assert full.attrs["format"] == short.attrs["format"] == "full_df"
    assert wb.attrs["format"] == "odir_per_patient"  # "Training" in its name is not OIA
    for other in (full, short, wb):
        pd.testing.assert_frame_equal(_eyes(other), _eyes(per_patient))


def test_full_df_eye_from_filename(tmp_path):
    rows = _full_df_rows()[1:]  # patient 0's left image not listed
    t = A.read_annotations(_csv(tmp_path / "f.csv",
                                HEADER + ["filepath", "labels", "target", "filename"], rows))
    assert len(t) == 5
    assert t[t.patient_id == "0"]["eye"].tolist() == ["right"]
    assert t[t.patient_id == "0"]["keywords"].tolist() == ["normal fundus"]


def test_headers_padded_renamed_and_disease_columns_missing(tmp_path):
    header = [" id ", "patient age", " PATIENT SEX", "Left Fundus", "right_fundus",
              "Left-Diagnostic Keywords  ", "Right-Diagnostic Keywords", "Normal?"]
    t = A.read_annotations(_csv(tmp_path / "w.csv", header, [p + ["1"] for p in PATIENTS]))
    assert len(t) == 6 and set(t.sex) == {"male", "female"}


def test_oia_workbooks_give_split(tmp_path):
    names = {"training annotation (English).xlsx": "train",
             "off-site test annotation (English).xlsx": "val",
             "on-site test annotation (English).xlsx": "test"}
    paths = []
    for (name, split), p in zip(names.items(), PATIENTS):
        path = tmp_path / name
        pd.DataFrame([p + LABELS], columns=HEADER).to_excel(path, index=False)
        assert A.oia_split(str(path)) == split
        paths.append(str(path))
    t = A.read_many(paths)
    assert t.attrs["formats"] == ["oia_odir"] * 3
    assert dict(zip(t.patient_id, t.split)) == {"0": "train", "1": "val", "8": "test"}


def test_class_tree(tmp_path):
    for rel in ["train/male/12_left.jpg", "train/male/12_right.jpg",
                "val/female/3_right.jpg", "test/Female/7_left.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "README.txt").write_text("not an image")
    t = A.read_annotations(str(tmp_path))
    assert t.attrs["format"] == "class_tree"
    assert len(t) == 4
    r = t[t.patient_id == "12"]
    assert r.eye.tolist() == ["left", "right"] and set(r.split) == {"train"}
    assert set(r.sex) == {"male"} and set(t.keywords) == {"normal fundus"}
    assert (t.age == -1).all()
    assert t[t.patient_id == "7"].iloc[0].filename == "test/Female/7_left.jpeg"
    assert t[t.patient_id == "7"].iloc[0].sex == "female"


def test_class_tree_patient_in_two_sexes_is_an_error(tmp_path):
    for rel in ["train/male/12_left.jpg", "train/female/12_right.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(ValueError, match="12.*conflicting"):
        A.read_annotations(str(tmp_path))


def test_missing_columns_named(tmp_path):
    header = [h for h in HEADER if h not in ("Patient Sex", "Right-Fundus")]
    rows = [[v for h, v in zip(HEADER, p + LABELS) if h in header] for p in PATIENTS]
    path = _csv(tmp_path / "m.csv", header, rows)
    with pytest.raises(ValueError, match=r"m\.csv.*Patient Sex, Right-Fundus"):
        A.read_annotations(path)


@pytest.mark.parametrize("col,value", [(2, "Male"), (1, "70")])
def test_conflicting_sex_or_age_names_file_rows_column(tmp_path, col, value):
    rows = _full_df_rows(False)
    rows[1] = list(rows[1])
    rows[1][col] = value  # patient 0's second row disagrees
    path = _csv(tmp_path / "c.csv", HEADER, rows)
    column = "Patient Sex" if col == 2 else "Patient Age"
    with pytest.raises(ValueError, match=rf"c\.csv: patient ID 0 .*{column}.*row 1.*row 2"):
        A.read_annotations(path)


def test_bad_age_and_unreadable_files(tmp_path):
    rows = [p + LABELS for p in PATIENTS]
    rows[1] = ["1", "fifty"] + rows[1][2:]
    with pytest.raises(ValueError, match=r"b\.csv: row 2.*Patient Age"):
        A.read_annotations(_csv(tmp_path / "b.csv", HEADER, rows))
    with pytest.raises(ValueError, match="not found"):
        A.read_annotations(str(tmp_path / "nope.csv"))
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.csv.*empty"):
        A.read_annotations(str(tmp_path / "zero.csv"))
    (tmp_path / "junk.xlsx").write_bytes(b"this is not a zip")
    with pytest.raises(ValueError, match=r"junk\.xlsx: cannot read"):
        A.read_annotations(str(tmp_path / "junk.xlsx"))


def test_read_many_conflicts_and_duplicates(tmp_path):
    a = _csv(tmp_path / "a.csv", HEADER, [p + LABELS for p in PATIENTS])
    b = _csv(tmp_path / "full_df.csv", HEADER + ["filepath", "labels", "target", "filename"],
             _full_df_rows())
    both = A.read_many([b, a])
    assert len(both) == 6 and set(both.source) == {b}  # identical eyes kept once
    other = [list(p) for p in PATIENTS]
    other[0][2] = "Male"
    c = _csv(tmp_path / "c.csv", HEADER, [p + LABELS for p in other])
    with pytest.raises(ValueError, match=r"patient ID 0 .*Patient Sex.*a\.csv.*c\.csv"):
        A.read_many([a, c])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV), reason="real data absent")
def test_real_full_df_and_per_patient_agree():
    full = A.read_annotations(os.path.join(DEV, "full_df.csv"))
    per = A.read_annotations(os.path.join(DEV, "ODIR-5K_Training_Annotations(Updated)_V2.csv"))
    assert len(full) == 2627 and full.patient_id.nunique() == 1362
    assert per.patient_id.nunique() == 1315
    m = full.merge(per, on=["patient_id", "eye"], suffixes=("", "_p"))
    assert len(m) > 2500
    for col in ("filename", "sex", "age", "keywords"):
        assert (m[col] == m[col + "_p"]).all(), col
