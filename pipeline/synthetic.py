"""Synthetic ODIR-5K-shaped data: camera-style fundus photographs with a planted sex
signal, and every annotation format the converter reads (data generation for tests, the
demo and the benchmark; the ``fundus-synth`` job is :mod:`tools.synth`).

    from pipeline.synthetic import make_synthetic
    paths = make_synthetic("/tmp/synth", n_patients=40, size_range=(200, 300))
    paths["full_df"]   # -> /tmp/synth/full_df.csv

What is written under ``out_dir`` (``formats`` picks the annotation files):

==========================  =================================================================
``images/{ID}_{eye}.jpg``   every eye; camera-sized JPEGs (width in ``size_range`` pixels,
                            4:3 or 3:2, one camera per patient), dark surround, circular
                            fundus, optic disc with cup, vessel arcades, darker macula,
                            varied colour and brightness; diseased eyes get visible lesions
``per_patient_csv``         ``ODIR-5K_Training_Annotations(Updated)_V2.csv`` (CRLF)
``per_patient_xlsx``        ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx``
``full_df``                 ``full_df.csv``: one row per image with ``filepath, labels,
                            target, filename`` (CRLF, as released)
``full_df_short``           ``full_df_short.csv``: the same without the last four columns
``oia``                     ``OIA-ODIR/{training,off-site test,on-site test} annotation
                            (English).xlsx``: patients split 70/10/20 (train/val/test)
``tree``                    ``tree/{train,val,test}/{female,male}/{ID}_{eye}.jpg``: the
                            normal eyes only, same split as ``oia``
``synth.json``              the arguments, for provenance
==========================  =================================================================

The photographs and their planted sex signal (``signal`` >= 0; 0 = none; males' optic
disc brighter and larger, vessels tinted) are drawn by :mod:`pipeline.synthetic_render`;
this module makes the patients and writes the data set. Everything is deterministic from
``seed``: the same arguments give byte-identical files (images are drawn from per-eye
generators, so ``workers`` does not change the output; workbooks are written with fixed
timestamps). Every file is written atomically (:mod:`pipeline.fileio`).
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Sequence

import numpy as np
from openpyxl import Workbook

from pipeline import fileio
from pipeline import synthetic_render

FORMATS = ("per_patient_csv", "per_patient_xlsx", "full_df", "full_df_short", "oia", "tree")
HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus",
          "Left-Diagnostic Keywords", "Right-Diagnostic Keywords",
          "N", "D", "G", "C", "A", "H", "M", "O"]
FULL_DF_EXTRA = ["filepath", "labels", "target", "filename"]
PER_PATIENT_NAME = "ODIR-5K_Training_Annotations(Updated)_V2"
OIA_NAMES = {"train": "training annotation (English).xlsx",
             "val": "off-site test annotation (English).xlsx",
             "test": "on-site test annotation (English).xlsx"}
OIA_FRACTIONS = (0.7, 0.1, 0.2)
DISEASES = ("mild nonproliferative retinopathy", "moderate non proliferative retinopathy",
            "cataract", "glaucoma", "drusen", "pathological myopia",
            "hypertensive retinopathy", "dry age-related macular degeneration",
            "epiretinal membrane", "laser spot")
QUALITY_NORMAL = ("lens dust，normal fundus", "low image quality，normal fundus")
ASPECTS = (4 / 3, 3 / 2)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------- patients
def _check_patients(n_patients: int, size_range: tuple[int, int],
                    normal_fraction: float) -> None:
    """ValueError naming the flag when the patients cannot be made."""
    if n_patients < 1:
        raise ValueError(f"--patients={n_patients}: must be at least 1")
    lo, hi = size_range
    if not 32 <= lo <= hi:
        raise ValueError(f"--min_width={lo}, --max_width={hi}: need 32 <= min <= max")
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"--normal_fraction={normal_fraction}: must be in [0, 1]")


def make_patients(n_patients: int, seed: int = 0, normal_fraction: float = 0.6,
                  size_range: tuple[int, int] = (1400, 3000)) -> list[dict]:
    """The synthetic patients: id, sex ('Male'/'Female', 55/45), age 20..85, per-eye
    keywords (``normal_fraction`` of eyes exactly ``normal fundus``, ~8 % a quality note
    plus normal, the rest one or two diseases joined by ``，``), the patient's camera
    (width in ``size_range`` pixels, aspect 4:3 or 3:2) and the OIA/tree split."""
    _check_patients(n_patients, size_range, normal_fraction)
    lo, hi = size_range
    rng = np.random.default_rng([seed, 0])
    ids = np.sort(rng.choice(max(2 * n_patients, 10), n_patients, replace=False))
    order = rng.permutation(n_patients)
    cut1 = int(round(OIA_FRACTIONS[0] * n_patients))
    cut2 = cut1 + int(round(OIA_FRACTIONS[1] * n_patients))
    split_of = np.empty(n_patients, dtype=object)
    split_of[order[:cut1]], split_of[order[cut1:cut2]], split_of[order[cut2:]] = (
        "train", "val", "test")
    patients = []
    for i, pid in enumerate(ids):
        male = bool(rng.random() < 0.55)
        age = int(rng.integers(20, 86))
        width = int(rng.integers(lo, hi + 1))
        aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
        kws = {}
        for eye in ("left", "right"):
            u = rng.random()
            if u < normal_fraction:
                kws[eye] = "normal fundus"
            elif u < normal_fraction + 0.08 * (1 - normal_fraction):
                kws[eye] = QUALITY_NORMAL[int(rng.integers(len(QUALITY_NORMAL)))]
            else:
                k = 1 + int(rng.random() < 0.25)
                picks = rng.choice(len(DISEASES), k, replace=False)
                kws[eye] = "，".join(DISEASES[j] for j in sorted(picks))
        patients.append({"id": str(int(pid)), "sex": "Male" if male else "Female",
                         "age": age, "width": width,
                         "height": max(16, int(round(width / aspect))),
                         "left_kw": kws["left"], "right_kw": kws["right"],
                         "split": str(split_of[i])})
    return patients


# --------------------------------------------------------------------------- images
def _render_job(args: tuple) -> bytes:
    (width, height, male, eye, kw, signal, seed, pid, quality) = args
    eye_idx = 0 if eye == "left" else 1
    rgb = synthetic_render.render_fundus(width, height, male, eye, kw, signal,
                                         [seed, 1, int(pid), eye_idx])
    return synthetic_render.encode_jpeg(rgb, quality)


# --------------------------------------------------------------------------- tables
_LABEL_RULES = (("D", ("nonproliferative", "non proliferative", "diabetic")),
                ("G", ("glaucoma",)), ("C", ("cataract",)),
                ("A", ("age-related macular",)), ("H", ("hypertensive",)),
                ("M", ("myopia",)))
_QUALITY = {"lens dust", "low image quality", "normal fundus"}


def disease_labels(left_kw: str, right_kw: str) -> list[int]:
    """The release's per-patient N, D, G, C, A, H, M, O flags (derived, approximate)."""
    kws = [k.strip() for k in re.split(r"[，,]", f"{left_kw}，{right_kw}") if k.strip()]
    flags = {c: 0 for c in "NDGCAHMO"}
    if set(kws) <= _QUALITY:
        flags["N"] = 1
    for k in kws:
        if k in _QUALITY:
            continue
        hit = [c for c, pats in _LABEL_RULES if any(p in k for p in pats)]
        for c in hit or ["O"]:
            flags[c] = 1
    return [flags[c] for c in "NDGCAHMO"]


def _patient_row(p: dict) -> list:
    return ([int(p["id"]), p["age"], p["sex"], f"{p['id']}_left.jpg", f"{p['id']}_right.jpg",
             p["left_kw"], p["right_kw"]] + disease_labels(p["left_kw"], p["right_kw"]))


def _write_file(path: str, data: bytes) -> None:
    """Atomic write of ``data`` to ``path``, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fileio.write_bytes(path, data)


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _xlsx_bytes(header: list[str], rows: list[list]) -> bytes:
    """An .xlsx workbook (one sheet) with fixed timestamps, so the bytes are stable."""
    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(header)
    for r in rows:
        ws.append(r)
    raw = io.BytesIO()
    wb.save(raw)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as zin, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*",
                              rb"\g<1>2000-01-01T00:00:00Z", data)
            zi = zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o600 << 16
            zout.writestr(zi, data)
    return out.getvalue()


def _full_df_rows(patients: list[dict], with_extra: bool) -> list[list]:
    rows = []
    for p in patients:
        base = _patient_row(p)
        flags = base[7:15]
        letters = [c for c, f in zip("NDGCAHMO", flags) if f] or ["O"]
        target = [1 if c == letters[0] else 0 for c in "NDGCAHMO"]
        for eye in ("left", "right"):
            fn = f"{p['id']}_{eye}.jpg"
            extra = [f"../input/ocular-disease-recognition-odir5k/ODIR-5K/Training Images/{fn}",
                     f"['{letters[0]}']", str(target), fn]
            rows.append(base + (extra if with_extra else []))
    return rows


def _is_normal(kw: str) -> bool:
    return [k.strip().lower() for k in re.split(r"[，,]", kw) if k.strip()] == ["normal fundus"]


# --------------------------------------------------------------------------- main API
#: What :func:`make_synthetic` writes under ``out_dir`` (replaced with ``overwrite``).
OWN_OUTPUTS = ("images", "tree", "OIA-ODIR", f"{PER_PATIENT_NAME}.csv",
               f"{PER_PATIENT_NAME}.xlsx", "full_df.csv", "full_df_short.csv", "synth.json")


def check_arguments(out_dir: str, n_patients: int, formats: Sequence[str], signal: float,
                    size_range: tuple[int, int], normal_fraction: float,
                    overwrite: bool) -> None:
    """Raise ``ValueError`` (``FileExistsError`` for a non-empty ``out_dir`` without
    ``overwrite``) naming the argument, before anything is written; see
    :func:`make_synthetic` for the ranges."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"--formats: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(FORMATS)}")
    if signal < 0:
        raise ValueError(f"--signal={signal}: must be >= 0")
    _check_patients(n_patients, size_range, normal_fraction)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--output={out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"--output={out_dir}: not empty (use --overwrite)")


def make_synthetic(out_dir: str, n_patients: int = 100, formats: Sequence[str] = FORMATS,
                   signal: float = 1.0, seed: int = 0,
                   size_range: tuple[int, int] = (1400, 3000), normal_fraction: float = 0.6,
                   jpeg_quality: int = 92, workers: int = 1, overwrite: bool = False
                   ) -> dict:
    """Write a synthetic ODIR-shaped data set (see the module doc); return
    ``{format: path(s)}`` plus
    ``"images"`` (the image folder) and ``"patients"`` (the list of patient dicts).

    Args:
      out_dir: output folder; must be empty or absent unless ``overwrite`` (then the
        generator's own outputs there are replaced, other files are left alone).
      n_patients: >= 1; two eyes each.
      formats: any of :data:`FORMATS`.
      signal: sex-signal strength, >= 0 (0 none; 1 learnable to AUC > 0.9 at 64-128 px).
      seed: any int; same arguments -> byte-identical files.
      size_range: (min, max) image width in pixels.
      normal_fraction: share of eyes whose keywords are exactly ``normal fundus``.
      workers: processes for image rendering (output does not depend on it).
    """
    check_arguments(out_dir, n_patients, formats, signal, size_range, normal_fraction,
                    overwrite)
    patients = make_patients(n_patients, seed, normal_fraction, size_range)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        for name in OWN_OUTPUTS:
            p = os.path.join(out_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    result: dict = {"images": os.path.join(out_dir, "images"), "patients": patients}

    jobs = [(p["width"], p["height"], p["sex"] == "Male", eye, p[f"{eye}_kw"], signal, seed,
             p["id"], jpeg_quality) for p in patients for eye in ("left", "right")]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            images = ex.map(_render_job, jobs, chunksize=4)
            _write_images(out_dir, patients, jobs, images, formats)
    else:
        _write_images(out_dir, patients, jobs, map(_render_job, jobs), formats)
    if "tree" in formats:
        result["tree"] = os.path.join(out_dir, "tree")

    rows = [_patient_row(p) for p in patients]
    if "per_patient_csv" in formats:
        path = os.path.join(out_dir, f"{PER_PATIENT_NAME}.csv")
        _write_file(path, _csv_bytes(HEADER, rows))
        result["per_patient_csv"] = path
    if "per_patient_xlsx" in formats:
        path = os.path.join(out_dir, f"{PER_PATIENT_NAME}.xlsx")
        _write_file(path, _xlsx_bytes(HEADER, rows))
        result["per_patient_xlsx"] = path
    if "full_df" in formats:
        path = os.path.join(out_dir, "full_df.csv")
        _write_file(path, _csv_bytes(HEADER + FULL_DF_EXTRA, _full_df_rows(patients, True)))
        result["full_df"] = path
    if "full_df_short" in formats:
        path = os.path.join(out_dir, "full_df_short.csv")
        _write_file(path, _csv_bytes(HEADER, _full_df_rows(patients, False)))
        result["full_df_short"] = path
    if "oia" in formats:
        result["oia"] = []
        for split, name in OIA_NAMES.items():
            path = os.path.join(out_dir, "OIA-ODIR", name)
            part = [r for r, p in zip(rows, patients) if p["split"] == split]
            _write_file(path, _xlsx_bytes(HEADER, part))
            result["oia"].append(path)
    args = {"n_patients": n_patients, "formats": list(formats), "signal": signal,
            "seed": seed, "size_range": list(size_range),
            "normal_fraction": normal_fraction, "jpeg_quality": jpeg_quality}
    fileio.write_json(os.path.join(out_dir, "synth.json"), args)
    return result


def _write_images(out_dir, patients, jobs, images, formats) -> None:
    by_id = {p["id"]: p for p in patients}
    for job, data in zip(jobs, images):
        eye, pid, kw = job[3], job[7], job[4]
        name = f"{pid}_{eye}.jpg"
        _write_file(os.path.join(out_dir, "images", name), data)
        if "tree" in formats and _is_normal(kw):
            p = by_id[pid]
            _write_file(os.path.join(out_dir, "tree", p["split"], p["sex"].lower(), name),
                          data)
