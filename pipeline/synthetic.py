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

Planted sex signal (``signal`` >= 0; 0 = none): males' optic disc is brighter (+0.2 x
signal in relative contrast, individual sd 0.07) and larger (+15 % x signal radius), and
their vessels are tinted (green/blue darker by 0.12 x signal). All random draws are made
for both sexes alike, so at ``signal=0`` a male and a female image drawn from the same
seed are byte-identical. At ``signal=1`` the disc difference survives crop + resize to
64-128 px. Everything is deterministic from ``seed``: the same arguments give
byte-identical files (images are drawn from per-eye generators, so ``workers`` does not
change the output; workbooks are written with fixed timestamps). Every file is written
atomically (:mod:`pipeline.fileio`).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Sequence

import numpy as np
from openpyxl import Workbook
from PIL import Image, ImageDraw, ImageFilter

from pipeline import fileio

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
def make_patients(n_patients: int, seed: int = 0, normal_fraction: float = 0.6,
                  size_range: tuple[int, int] = (1400, 3000)) -> list[dict]:
    """The synthetic patients: id, sex ('Male'/'Female', 55/45), age 20..85, per-eye
    keywords (``normal_fraction`` of eyes exactly ``normal fundus``, ~8 % a quality note
    plus normal, the rest one or two diseases joined by ``，``), the patient's camera
    (width in ``size_range`` pixels, aspect 4:3 or 3:2) and the OIA/tree split."""
    if n_patients < 1:
        raise ValueError(f"--patients={n_patients}: must be at least 1")
    lo, hi = size_range
    if not 32 <= lo <= hi:
        raise ValueError(f"--min_width={lo}, --max_width={hi}: need 32 <= min <= max")
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"normal_fraction={normal_fraction}: must be in [0, 1]")
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
def _soft_disc(shape: tuple[int, int], cx: float, cy: float, r: float, edge: float
               ) -> tuple[tuple[slice, slice], np.ndarray]:
    """A soft-edged disc (1 inside, 0 outside, linear ramp ``edge`` px) on its bounding box.

    Returns (slices into the image, float32 mask of the box)."""
    h, w = shape
    pad = r + edge
    y0, y1 = max(0, int(cy - pad)), min(h, int(cy + pad) + 1)
    x0, x1 = max(0, int(cx - pad)), min(w, int(cx + pad) + 1)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    d = np.sqrt(xx * xx + yy * yy)
    return (slice(y0, y1), slice(x0, x1)), np.clip((r - d) / edge + 0.5, 0.0, 1.0)


def _gauss_spot(shape, cx, cy, sigma, amount):
    """``1 - amount * exp(-d^2 / 2 sigma^2)`` on a 3-sigma box (float32)."""
    h, w = shape
    pad = 3 * sigma
    y0, y1 = max(0, int(cy - pad)), min(h, int(cy + pad) + 1)
    x0, x1 = max(0, int(cx - pad)), min(w, int(cx + pad) + 1)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    return (slice(y0, y1), slice(x0, x1)), 1.0 - amount * np.exp(
        -(xx * xx + yy * yy) / (2 * sigma * sigma))


def _vessel_mask(w: int, h: int, disc: tuple[float, float], macula: tuple[float, float],
                 R: float, rng: np.random.Generator) -> np.ndarray:
    """Float32 [h, w] in 0..1: arcades from the disc around the macula plus nasal vessels."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    dx, dy = disc
    toward = math.atan2(macula[1] - dy, macula[0] - dx)  # disc -> macula direction
    base_w = max(1.0, R * 0.022)
    # (start angle relative to `toward`, turn per unit length, length in R, width factor)
    specs = [(-0.9, 0.9, 1.3, 1.0), (0.9, -0.9, 1.3, 1.0),      # temporal arcades
             (-0.75, 0.75, 1.1, 0.8), (0.75, -0.75, 1.1, 0.8),  # their companion vein
             (math.pi - 0.6, -0.3, 0.8, 0.7), (math.pi + 0.6, 0.3, 0.8, 0.7),  # nasal
             (math.pi, 0.0, 0.6, 0.5)]
    for a0, turn, length, wf in specs:
        a = toward + a0 + rng.normal(0, 0.08)
        turn = turn * (1 + rng.normal(0, 0.15))
        x, y = dx, dy
        steps = 24
        step = length * R / steps
        width = base_w * wf * (1 + rng.normal(0, 0.1))
        branch_at = set(int(s) for s in rng.integers(6, steps - 4, 2))
        for s in range(steps):
            a += turn * step / R + rng.normal(0, 0.04)
            nx, ny = x + step * math.cos(a), y + step * math.sin(a)
            wpx = max(1, int(round(width * (1 - 0.6 * s / steps))))
            draw.line([(x, y), (nx, ny)], fill=255, width=wpx)
            if s in branch_at:  # a short side branch
                ba = a + (0.7 if rng.random() < 0.5 else -0.7)
                bx, by = nx, ny
                for _ in range(8):
                    ba += rng.normal(0, 0.1)
                    ex, ey = bx + step * math.cos(ba), by + step * math.sin(ba)
                    draw.line([(bx, by), (ex, ey)], fill=200, width=max(1, wpx // 2))
                    bx, by = ex, ey
            x, y = nx, ny
    img = img.filter(ImageFilter.GaussianBlur(max(0.6, base_w * 0.35)))
    return np.asarray(img, dtype=np.float32) / 255.0


#: Retina content is drawn at most this wide, then upscaled (bicubic) to the camera size
#: and given full-resolution sensor grain: real fundus photos carry little detail per
#: pixel, and this keeps a 3,000 px image well under a second to make.
RENDER_MAX_WIDTH = 1500


def render_fundus(width: int, height: int, male: bool, eye: str, keywords: str,
                  signal: float, seed: Sequence[int] | int) -> np.ndarray:
    """One synthetic fundus photograph: uint8 RGB ``[height, width, 3]``.

    The draws depend only on ``seed`` (never on ``male``): ``signal`` scales the only
    sex-dependent terms (disc contrast and size, vessel tint).
    """
    rng = np.random.default_rng(seed)
    W, H = int(width), int(height)
    f = min(1.0, RENDER_MAX_WIDTH / W)
    w, h = max(8, int(round(W * f))), max(8, int(round(H * f)))
    s = float(signal) if male else 0.0
    # geometry (fractions of the canvas, so independent of the drawing scale)
    R = h * rng.uniform(0.44, 0.49)
    cx = w / 2 + rng.normal(0, 0.01) * w
    cy = h / 2 + rng.normal(0, 0.01) * h
    side = 1.0 if eye == "right" else -1.0  # disc on the nasal side
    disc_x = cx + side * R * rng.uniform(0.28, 0.36)
    disc_y = cy + R * rng.normal(0, 0.04)
    mac_x = disc_x - side * R * rng.uniform(0.42, 0.5)
    mac_y = disc_y + R * rng.normal(0.03, 0.02)
    # colour
    base = np.array([rng.uniform(170, 235), rng.uniform(45, 95), rng.uniform(15, 45)],
                    dtype=np.float32)
    brightness = rng.uniform(0.72, 1.12)
    disc_contrast = rng.normal(0.5, 0.07) + 0.2 * s
    disc_r = R * 0.085 * (1 + rng.normal(0, 0.05)) * (1 + 0.15 * s)
    cup_frac = rng.uniform(0.3, 0.45)
    vessel_strength = rng.uniform(0.35, 0.55)
    tint = np.array([0.0, 0.12, 0.12], dtype=np.float32) * s
    lowfreq = rng.normal(0, 1, (6, 8)).astype(np.float32)
    grain_seed = int(rng.integers(2 ** 31))
    # shading of the retina: radial vignette x low-frequency texture
    yy = np.arange(h, dtype=np.float32)[:, None] - cy
    xx = np.arange(w, dtype=np.float32)[None, :] - cx
    r = np.sqrt(xx * xx + yy * yy) / R
    shade = 1.0 - 0.38 * np.minimum(r, 1.0) ** 2
    tex = Image.fromarray(lowfreq).resize((w, h), Image.BICUBIC)
    shade *= 1.0 + 0.05 * np.asarray(tex, dtype=np.float32)
    box, spot = _gauss_spot((h, w), mac_x, mac_y, R * 0.09, 0.35)
    shade[box] *= spot
    img = shade[..., None] * (base * np.float32(brightness))
    # vessels
    vm = _vessel_mask(w, h, (disc_x, disc_y), (mac_x, mac_y), R, rng)
    darken = np.float32(vessel_strength) * vm[..., None] * (
        np.array([0.55, 1.0, 1.0], dtype=np.float32) + tint)
    img *= 1.0 - np.minimum(darken, 0.95)
    # optic disc (over the vessel origins) and cup
    edge = max(1.0, disc_r * 0.25)
    box, m = _soft_disc((h, w), disc_x, disc_y, disc_r, edge)
    disc_col = np.array([255, 225, 160], dtype=np.float32) * np.float32(brightness)
    img[box] += (m * np.float32(disc_contrast))[..., None] * (disc_col - img[box])
    box, m = _soft_disc((h, w), disc_x + side * disc_r * 0.15, disc_y, disc_r * cup_frac,
                        edge)
    img[box] += (m * 0.35)[..., None] * (np.array([255, 245, 215], np.float32) - img[box])
    img = _lesions(img, keywords, R, (cx, cy), (mac_x, mac_y), rng)
    # the circular field stop: soft edge to a black surround
    alpha = np.clip((1.0 - r) * R / 3.0, 0.0, 1.0)[..., None]
    small = np.clip(alpha * img + 0.5, 0, 255).astype(np.uint8)
    out = Image.fromarray(small, "RGB")
    if (w, h) != (W, H):
        out = out.resize((W, H), Image.BICUBIC)
    # sensor grain at full resolution (dark surround stays within 0..6)
    grain = np.random.default_rng(grain_seed).integers(0, 7, (H, W, 1), dtype=np.uint8)
    rgb = np.asarray(out, dtype=np.uint8)
    return rgb + np.minimum(grain, 255 - rgb)


def _lesions(img: np.ndarray, keywords: str, R: float, centre, macula,
             rng: np.random.Generator) -> np.ndarray:
    """Visible stand-ins for the diseases in ``keywords`` (drawn in place)."""
    kws = keywords.lower()
    h, w = img.shape[:2]
    spots = []  # (x, y, radius, colour)
    if "retinopathy" in kws:
        for _ in range(int(rng.integers(10, 30))):
            a, d = rng.uniform(0, 2 * math.pi), R * math.sqrt(rng.uniform(0, 0.7))
            spots.append((centre[0] + d * math.cos(a), centre[1] + d * math.sin(a),
                          R * rng.uniform(0.006, 0.015),
                          (120, 20, 15) if rng.random() < 0.6 else (240, 220, 120)))
    if "drusen" in kws or "macular degeneration" in kws:
        for _ in range(int(rng.integers(8, 20))):
            spots.append((macula[0] + rng.normal(0, R * 0.08), macula[1] + rng.normal(0, R * 0.08),
                          R * rng.uniform(0.008, 0.02), (235, 210, 120)))
    if "laser spot" in kws:
        for _ in range(int(rng.integers(15, 40))):
            a, d = rng.uniform(0, 2 * math.pi), R * rng.uniform(0.45, 0.85)
            spots.append((centre[0] + d * math.cos(a), centre[1] + d * math.sin(a),
                          R * 0.018, (90, 60, 40)))
    if "lens dust" in kws:
        for _ in range(int(rng.integers(2, 6))):
            spots.append((centre[0] + rng.normal(0, R * 0.4), centre[1] + rng.normal(0, R * 0.4),
                          R * rng.uniform(0.01, 0.03), None))
    for x, y, rad, col in spots:
        box, m = _soft_disc((h, w), x, y, rad, max(1.0, rad * 0.4))
        if col is None:
            img[box] *= (1 - 0.3 * m)[..., None]
        else:
            img[box] += (m * 0.8)[..., None] * (np.array(col, np.float32) - img[box])
    if "myopia" in kws:  # tessellated, paler fundus
        img = img * np.float32(0.85) + np.float32(25.0)
    if "cataract" in kws or "low image quality" in kws:  # haze + blur
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        pil = pil.filter(ImageFilter.GaussianBlur(max(1.0, R * 0.012)))
        img = np.asarray(pil, dtype=np.float32) * np.float32(0.75) + np.float32(45.0)
    return img


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    """Deterministic baseline JPEG bytes of a uint8 RGB array."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _render_job(args: tuple) -> bytes:
    (width, height, male, eye, kw, signal, seed, pid, quality) = args
    eye_idx = 0 if eye == "left" else 1
    rgb = render_fundus(width, height, male, eye, kw, signal, [seed, 1, int(pid), eye_idx])
    return encode_jpeg(rgb, quality)


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
    if n_patients < 1:
        raise ValueError(f"--patients={n_patients}: must be at least 1")
    lo, hi = size_range
    if not 32 <= lo <= hi:
        raise ValueError(f"--min_width={lo}, --max_width={hi}: need 32 <= min <= max")
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"--normal_fraction={normal_fraction}: must be in [0, 1]")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--output={out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"--output={out_dir}: not empty (use --overwrite)")


def make_synthetic(out_dir: str, n_patients: int = 100, formats: Sequence[str] = FORMATS,
                   signal: float = 1.0, seed: int = 0,
                   size_range: tuple[int, int] = (1400, 3000), normal_fraction: float = 0.6,
                   jpeg_quality: int = 92, workers: int = 1, overwrite: bool = False
                   ) -> dict:
    """Write a synthetic ODIR-shaped data set (see the module doc); return ``{format: path(s)}`` plus
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
