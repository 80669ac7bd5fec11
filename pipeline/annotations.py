"""Every ODIR-5K annotation format, read into one table of eyes.

:func:`read_annotations` detects the format and returns one row per eye with exactly
the columns of :data:`COLUMNS`:

============  =====  ==========================================================
column        dtype  meaning
============  =====  ==========================================================
patient_id    str    patient identifier as written in the source (``"12"``)
eye           str    ``"left"`` or ``"right"``
filename      str    image file name (basename); for a class-folder tree the
                     path relative to the tree root (``"train/male/12_left.jpg"``)
sex           str    ``"male"`` / ``"female"`` (any case in the source); any other
                     value is kept raw (stripped) and becomes a counted skip in
                     :func:`pipeline.selection.select`
age           int    years; -1 when unknown (blank)
keywords      str    the eye's own diagnostic keywords, raw (``"lens dust，normal fundus"``)
split         str    ``"train"``/``"val"``/``"test"`` when the source gives it, else None
source        str    the annotation file (or folder) it came from
row           int    1-based data row in the source (header excluded; spreadsheet
                     line = row + 1); for a folder tree the 1-based index of the file
                     in sorted order
============  =====  ==========================================================

Formats (see :func:`detect_format`):

``odir_per_patient``
    The original ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` or its CSV export:
    one row per patient (``ID, Patient Age, Patient Sex, Left-Fundus, Right-Fundus,
    Left-Diagnostic Keywords, Right-Diagnostic Keywords, N..O``) -> two eyes.
``full_df``
    The public release's ``full_df.csv``: one row per image. With its ``filename``
    column, each row is the eye whose ``Left-Fundus``/``Right-Fundus`` equals
    ``filename``. Without it (last four columns cut), the patient row is repeated per
    eye: rows are de-duplicated per patient and expanded to both eyes.
``oia_odir``
    The OIA-ODIR release's three workbooks; the file name gives the split:
    ``training annotation`` -> ``train``, ``off-site test annotation`` -> ``val``,
    ``on-site test annotation`` -> ``test`` (the off-site test set is the one the
    challenge published for model selection, so it plays the validation role).
``class_tree``
    A directory ``{train,val,test}/{female,male}/*.jpg`` (the earlier attempt's layout):
    split and sex from the folders, patient id = file name before the first ``_``,
    eye from ``left``/``right`` in the file name, keywords ``normal fundus`` (the tree
    holds only normal eyes), age -1.

Only the seven columns of :data:`REQUIRED` are used; headers are matched after
stripping whitespace, case-insensitively, ignoring ``-``/``_``/space differences; the
disease columns may be missing or renamed. Errors (never silent): an unreadable file,
missing required columns, or one patient ID with conflicting sex, age, keywords or
file names across rows raise :class:`AnnotationError` (a ``ValueError``) naming the
file, row(s) and column.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import pandas as pd

COLUMNS = ("patient_id", "eye", "filename", "sex", "age", "keywords", "split", "source",
           "row")
EYES = ("left", "right")
SPLITS = ("train", "val", "test")

#: canonical source header -> internal name
REQUIRED = {
    "ID": "id",
    "Patient Age": "age",
    "Patient Sex": "sex",
    "Left-Fundus": "left_file",
    "Right-Fundus": "right_file",
    "Left-Diagnostic Keywords": "left_kw",
    "Right-Diagnostic Keywords": "right_kw",
}
FORMATS = ("odir_per_patient", "full_df", "oia_odir", "class_tree")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_SPREADSHEET_EXT = (".xlsx", ".xlsm", ".xls")
_TREE_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}
_OIA_PATTERNS = (  # (regex on the normalised file name, split)
    (re.compile(r"off ?site ?test"), "val"),
    (re.compile(r"on ?site ?test"), "test"),
    (re.compile(r"^training annotation"), "train"),
)


class AnnotationError(ValueError):
    """A bad annotation file: the message names the file, row(s) and column."""


def _header_key(name: object) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def oia_split(path: str) -> str | None:
    """The split an OIA-ODIR workbook's file name gives, or None for any other file.

    ``training annotation (English).xlsx`` -> train, ``off-site test annotation
    (English).xlsx`` -> val, ``on-site test annotation (English).xlsx`` -> test.
    ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` is *not* OIA-ODIR (None).
    """
    name = re.sub(r"[\s_\-]+", " ", os.path.basename(path).lower()).strip()
    if "annotation" not in name or name.startswith("odir"):
        return None
    for pattern, split in _OIA_PATTERNS:
        if pattern.search(name):
            return split
    return None


def _read_table(path: str) -> pd.DataFrame:
    """Read a CSV or workbook (first sheet) as strings; clear error when unreadable."""
    if not os.path.exists(path):
        raise AnnotationError(f"{path}: annotation file not found")
    if os.path.getsize(path) == 0:
        raise AnnotationError(f"{path}: annotation file is empty (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in _SPREADSHEET_EXT:
            table = pd.read_excel(path, sheet_name=0, dtype=str, keep_default_na=False,
                                  na_values=[])
        else:
            table = None
            for encoding in ("utf-8-sig", "gb18030"):
                try:
                    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[],
                                        encoding=encoding)
                    break
                except UnicodeDecodeError:
                    continue
            if table is None:
                raise AnnotationError(f"{path}: not UTF-8 or GB18030 text")
    except AnnotationError:
        raise
    except Exception as e:  # noqa: BLE001  (pandas/openpyxl raise many types)
        raise AnnotationError(f"{path}: cannot read annotation file ({type(e).__name__}: {e})"
                              ) from e
    return table


def _normalise_columns(table: pd.DataFrame, path: str) -> pd.DataFrame:
    """Rename the required columns to internal names; error naming the missing ones."""
    by_key: dict[str, str] = {}
    for col in table.columns:
        by_key.setdefault(_header_key(col), col)
    rename, missing = {}, []
    for canonical, internal in REQUIRED.items():
        col = by_key.get(_header_key(canonical))
        if col is None:
            missing.append(canonical)
        else:
            rename[col] = internal
    if missing:
        raise AnnotationError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(str(c).strip() for c in table.columns)})")
    out = table[list(rename)].rename(columns=rename)
    filename_col = by_key.get("filename")
    if filename_col is not None:
        out["filename"] = table[filename_col]
    out = out.apply(lambda s: s.astype(str).str.strip())
    out["row"] = range(1, len(out) + 1)
    return out


def _clean_id(value: str) -> str:
    """``"12.0"`` (a number via a spreadsheet) -> ``"12"``; otherwise unchanged."""
    m = re.fullmatch(r"(\d+)\.0+", value)
    return m.group(1) if m else value


def _parse_age(value: str, path: str, row: int) -> int:
    if value == "" or value.lower() in ("nan", "none", "unknown"):
        return -1
    try:
        age = float(value)
    except ValueError:
        raise AnnotationError(
            f"{path}: row {row} (line {row + 1}), column Patient Age: "
            f"not a number: {value!r}") from None
    if age != age or age < 0 or age > 150 or age != int(age):
        raise AnnotationError(
            f"{path}: row {row} (line {row + 1}), column Patient Age: "
            f"not a whole number of years in 0..150: {value!r}")
    return int(age)


def _normalise_sex(value: str) -> str:
    low = value.strip().lower()
    return low if low in ("male", "female") else value.strip()


_COLUMN_NAMES = {**{v: k for k, v in REQUIRED.items()}, "sex_norm": "Patient Sex",
                 "age_int": "Patient Age", "split": "split folder"}


def _check_consistent(rows: pd.DataFrame, columns: Sequence[str], path: str) -> None:
    """One patient id must carry the same value of each column on every row."""
    for col in columns:
        n = rows.groupby("id", sort=False)[col].nunique()
        bad = n[n > 1]
        if len(bad):
            pid = bad.index[0]
            sub = rows[rows["id"] == pid]
            detail = "; ".join(f"row {r} {v!r}" for r, v in zip(sub["row"], sub[col]))
            raise AnnotationError(
                f"{path}: patient ID {pid} has conflicting {_COLUMN_NAMES.get(col, col)} "
                f"across rows: {detail}" + (f" (and {len(bad) - 1} more patient(s))"
                                            if len(bad) > 1 else ""))


def _eyes_from_rows(rows: pd.DataFrame, path: str, split: str | None) -> pd.DataFrame:
    """Internal-named patient rows -> the eye table."""
    rows = rows.copy()
    rows["id"] = rows["id"].map(_clean_id)
    blank = rows[rows["id"] == ""]
    if len(blank):
        raise AnnotationError(f"{path}: row {int(blank['row'].iloc[0])}, column ID: empty "
                              f"patient ID")
    rows["age_int"] = [_parse_age(v, path, r) for v, r in zip(rows["age"], rows["row"])]
    rows["sex_norm"] = rows["sex"].map(_normalise_sex)
    _check_consistent(rows, ["sex_norm", "age_int"], path)
    if "filename" in rows.columns:
        # one row per image: the eye is the side whose file name equals ``filename``
        _check_consistent(rows, ["left_file", "right_file"], path)
        eyes = []
        for r in rows.itertuples(index=False):
            fname = os.path.basename(r.filename)
            if fname == os.path.basename(r.left_file):
                eyes.append("left")
            elif fname == os.path.basename(r.right_file):
                eyes.append("right")
            else:
                raise AnnotationError(
                    f"{path}: row {r.row}, column filename: {r.filename!r} is neither "
                    f"Left-Fundus {r.left_file!r} nor Right-Fundus {r.right_file!r}")
        rows["eye"] = eyes
        rows["file"] = rows["filename"].map(os.path.basename)
        rows["kw"] = [lk if e == "left" else rk
                      for e, lk, rk in zip(rows["eye"], rows["left_kw"], rows["right_kw"])]
        # the same eye listed twice must agree; identical duplicates are merged
        key = rows["id"] + "\0" + rows["eye"]
        for col in ("kw", "file"):
            n = rows.groupby(key, sort=False)[col].nunique()
            if (n > 1).any():
                k = n[n > 1].index[0]
                sub = rows[key == k]
                raise AnnotationError(
                    f"{path}: patient ID {k.split(chr(0))[0]} {k.split(chr(0))[1]} eye listed "
                    f"on rows {', '.join(map(str, sub['row']))} with different "
                    f"{'keywords' if col == 'kw' else 'filename'}")
        rows = rows[~key.duplicated()]
        out = pd.DataFrame({"patient_id": rows["id"], "eye": rows["eye"],
                            "filename": rows["file"], "sex": rows["sex_norm"],
                            "age": rows["age_int"], "keywords": rows["kw"],
                            "row": rows["row"]})
    else:
        # one row per patient, or per image with the patient row repeated: de-duplicate
        _check_consistent(rows, ["left_file", "right_file", "left_kw", "right_kw"], path)
        rows = rows[~rows["id"].duplicated()]
        parts = []
        for eye in EYES:
            parts.append(pd.DataFrame({
                "patient_id": rows["id"], "eye": eye,
                "filename": rows[f"{eye}_file"].map(os.path.basename),
                "sex": rows["sex_norm"], "age": rows["age_int"],
                "keywords": rows[f"{eye}_kw"], "row": rows["row"],
                "_order": range(len(rows))}))
        out = pd.concat(parts).sort_values(["_order", "eye"], kind="stable")
        out = out.drop(columns="_order")
    out["split"] = split
    out["source"] = path
    return _finish(out)


def _finish(out: pd.DataFrame) -> pd.DataFrame:
    out = out[list(COLUMNS)].reset_index(drop=True)
    out["age"] = out["age"].astype("int64")
    out["row"] = out["row"].astype("int64")
    out["split"] = out["split"].astype(object).where(out["split"].notna(), None)
    return out


def _read_tree(root: str) -> pd.DataFrame:
    """``{train,val,test}/{female,male}/*.jpg`` -> eye table (normal eyes only)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
    files.sort()
    if not files:
        raise AnnotationError(f"{root}: folder holds no images; expected "
                              f"{{train,val,test}}/{{female,male}}/*.jpg")
    records = []
    for i, rel in enumerate(files, start=1):
        parts = rel.replace(os.sep, "/").split("/")
        if len(parts) != 3:
            raise AnnotationError(f"{root}: {rel}: image not at {{split}}/{{sex}}/FILE "
                                  f"depth")
        split_dir, sex_dir, name = parts
        split = _TREE_SPLITS.get(split_dir.lower())
        if split is None:
            raise AnnotationError(f"{root}: {rel}: folder {split_dir!r} is not one of "
                                  f"train, val, test")
        stem = os.path.splitext(name)[0]
        low = stem.lower()
        m = re.search(r"(?:^|[_\-\s])(left|right)(?:$|[_\-\s])", low)
        if "_" not in stem or m is None:
            raise AnnotationError(f"{root}: {rel}: file name must be <ID>_left or "
                                  f"<ID>_right (like 12_left.jpg)")
        records.append({"id": stem.split("_", 1)[0], "eye": m.group(1),
                        "filename": "/".join(parts), "sex_norm": _normalise_sex(sex_dir),
                        "split": split, "row": i})
    rows = pd.DataFrame(records)
    _check_consistent(rows, ["sex_norm", "split"], root)
    dup = rows.duplicated(["id", "eye"], keep=False)
    if dup.any():
        sub = rows[dup]
        raise AnnotationError(f"{root}: patient {sub['id'].iloc[0]} {sub['eye'].iloc[0]} eye "
                              f"appears more than once: {', '.join(sub['filename'][:4])}")
    out = pd.DataFrame({"patient_id": rows["id"], "eye": rows["eye"],
                        "filename": rows["filename"], "sex": rows["sex_norm"], "age": -1,
                        "keywords": "normal fundus", "split": rows["split"],
                        "source": root, "row": rows["row"]})
    return _finish(out)


def _format_of(path: str, rows: pd.DataFrame) -> str:
    if oia_split(path) is not None:
        return "oia_odir"
    if "filename" in rows.columns or rows["id"].map(_clean_id).duplicated().any():
        return "full_df"
    return "odir_per_patient"


def detect_format(path: str) -> str:
    """Which of :data:`FORMATS` ``path`` is (reads the table for files)."""
    if os.path.isdir(path):
        return "class_tree"
    return _format_of(path, _normalise_columns(_read_table(path), path))


def read_annotations(path: str) -> pd.DataFrame:
    """Read one annotation file (or class-folder tree) into the eye table.

    Args:
      path: a ``.csv``/``.xlsx`` annotation file, or a ``{split}/{sex}/*.jpg`` folder.
        The table does not depend on where the images are (the converter joins its
        ``--images`` folder with ``filename``; a folder tree is its own image folder).

    Returns:
      DataFrame with exactly :data:`COLUMNS`, in source order (per-patient formats:
      left then right eye of each patient). ``table.attrs["format"]`` names the format.

    Raises:
      AnnotationError (ValueError): unreadable file, missing required columns, or
        conflicting values for one patient ID; the message names file, row and column.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        out = _read_tree(path)
        out.attrs["format"] = "class_tree"
        return out
    split = oia_split(path)
    table = _read_table(path)
    rows = _normalise_columns(table, path)
    # drop fully blank lines (trailing empty rows of spreadsheets); not data
    blank = (rows.drop(columns="row") == "").all(axis=1)
    rows = rows[~blank]
    if rows.empty:
        raise AnnotationError(f"{path}: annotation file has a header but no data rows")
    fmt = _format_of(path, rows)
    out = _eyes_from_rows(rows, path, split)
    out.attrs["format"] = fmt
    return out


def read_many(paths: Iterable[str]) -> pd.DataFrame:
    """Read several annotation sources and concatenate their eye tables.

    The same patient ID may appear in several sources only with the same sex and age;
    the same eye listed identically (patient, eye, file name, keywords) in two sources is
    kept once (first source wins: e.g. ``full_df.csv`` together with the per-patient
    CSV); listed differently it is an error naming both files and rows.
    ``table.attrs["formats"]`` lists each source's format, in order.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise AnnotationError("no annotation files given")
    tables = [read_annotations(p) for p in paths]
    formats = [t.attrs.get("format") for t in tables]
    out = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0].copy()
    if len(tables) > 1:
        for col, label in (("sex", "Patient Sex"), ("age", "Patient Age"),
                           ("split", "split")):
            vals = out[col].astype(str)
            n = vals.groupby(out["patient_id"], sort=False).nunique()
            bad = n[n > 1]
            if len(bad):
                pid = bad.index[0]
                sub = out[out["patient_id"] == pid].drop_duplicates(["source", col])
                detail = "; ".join(f"{s} row {r}: {v!r}"
                                   for s, r, v in zip(sub["source"], sub["row"], sub[col]))
                raise AnnotationError(
                    f"patient ID {pid} has conflicting {label} across annotation files: "
                    f"{detail}")
        key = out["patient_id"] + "\0" + out["eye"]
        for col in ("filename", "keywords"):
            n = out.groupby(key, sort=False)[col].nunique()
            bad = n[n > 1]
            if len(bad):
                sub = out[key == bad.index[0]]
                detail = "; ".join(f"{s} row {r}: {v!r}"
                                   for s, r, v in zip(sub["source"], sub["row"], sub[col]))
                raise AnnotationError(
                    f"patient ID {sub['patient_id'].iloc[0]} {sub['eye'].iloc[0]} eye has "
                    f"conflicting {col} across annotation files: {detail}")
        out = out[~key.duplicated()].reset_index(drop=True)
    out.attrs["formats"] = formats
    return out
