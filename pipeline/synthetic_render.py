"""The synthetic fundus renderer: one camera-style fundus photograph as a uint8 RGB array
(:func:`render_fundus`) and its JPEG bytes (:func:`encode_jpeg`). A photo has a dark
surround, a circular fundus, an optic disc with cup on the nasal side, vessel arcades
around a darker macula, varied colour and brightness, and visible lesions for the
diseases in its keywords. Planted sex signal (``signal`` >= 0; 0 = none): males' optic
disc is brighter (+0.2 x signal in relative contrast, individual sd 0.07) and larger
(+15 % x signal radius), and their vessels are tinted (green/blue darker by 0.12 x
signal). All random draws are made for both sexes alike, so at ``signal=0`` a male and a
female image drawn from the same seed are byte-identical; at ``signal=1`` the disc
difference survives crop + resize to 64-128 px. Everything is a function of the seed.
The data set around it (patients, annotation files) is :mod:`pipeline.synthetic`.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


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

    width, height: pixels (>= 8). eye: ``"left"`` or ``"right"`` (disc side). keywords:
    ODIR diagnostic keywords, ``，``- or ``,``-separated (diseases drawn as lesions).
    signal: >= 0, the sex-signal strength (applies to males only). seed: a numpy seed.
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
