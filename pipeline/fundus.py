"""The one fundus preparation: load any photo as RGB, crop the circular fundus, square it.

The converter (:mod:`pipeline.writer`) and prediction both call this module, so training
and serving see the same pixels. Pure PIL + numpy; no TensorFlow here (worker processes
import only this module).

Steps of :func:`prepare_file`:

1. read the file's bytes; missing and zero-byte files are :class:`FundusError`;
2. open with PIL (``LOAD_TRUNCATED_IMAGES`` forced off, full ``load()``: a truncated or
   corrupt JPEG is an error, never a half-grey image);
3. JPEGs only: decode at a reduced DCT scale (``draft``, 1/2, 1/4 or 1/8) chosen so that the
   fundus crop is still at least :data:`DRAFT_OVERSAMPLE` x ``size`` pixels wide; if the
   fundus turns out smaller than the guess assumed, decode again at a finer scale. The
   choice depends only on the file, so the output is deterministic;
4. apply EXIF orientation; convert grayscale, CMYK, palette, 16-bit and alpha images
   (alpha composited on black) to 8-bit RGB;
5. find the fundus: threshold the per-pixel channel maximum of a <= 256 px copy against the
   dark surround, bounding box of the rows/columns that are bright over a real length
   (isolated JPEG noise and small text labels do not count);
6. crop that box extended to a centred square (outside the photo is black), resize to
   ``size`` x ``size`` with LANCZOS, encode baseline JPEG at ``quality`` (4:2:0,
   no optimisation tables, no EXIF): the same bytes on every run.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Smallest usable photo side, pixels (before any crop).
MIN_SIDE = 64
#: A fundus square smaller than ``max(MIN_SIDE, size * MIN_FRACTION_OF_SIZE)`` pixels would
#: need more than 4x upscaling: "too small".
MIN_FRACTION_OF_SIZE = 0.25
#: Longest side, pixels, of the copy on which the fundus is found.
DETECT_SIDE = 256
#: A JPEG is decoded at a reduced scale only while the fundus crop keeps at least this
#: many times the output size (then LANCZOS downsamples from >= 1.5x; see BUILD_NOTES).
DRAFT_OVERSAMPLE = 1.5
#: A photo whose bright reference (99th percentile of the channel maximum, 0..255) is
#: below this has no fundus.
MIN_REFERENCE = 24
#: Surround threshold = REL_THRESHOLD x reference, clipped to [THRESHOLD_LO, THRESHOLD_HI].
REL_THRESHOLD = 0.15
THRESHOLD_LO = 12
THRESHOLD_HI = 40
#: A row/column belongs to the fundus when its bright run is at least this fraction of the
#: longest one (a circle's chord one detection pixel from its edge is ~13% of the diameter).
MIN_LINE_FRACTION = 0.05

# Error reasons (the first words of every FundusError; tests and manifests rely on them).
MISSING = "missing file"
EMPTY = "zero-byte file"
NOT_IMAGE = "not an image"
CORRUPT = "truncated or corrupt image"
TOO_SMALL = "too small"
TOO_LARGE = "too large"
NO_FUNDUS = "no fundus"
UNSUPPORTED = "unsupported image mode"


class FundusError(Exception):
    """An input that cannot become a fundus crop. ``reason`` is one of the module constants
    (``MISSING``, ``EMPTY``, ``NOT_IMAGE``, ``CORRUPT``, ``TOO_SMALL``, ``TOO_LARGE``,
    ``NO_FUNDUS``, ``UNSUPPORTED``); ``str(e)`` is ``"reason: detail"``."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# ---------------------------------------------------------------------------- loading

def read_bytes(path: str) -> bytes:
    """The file's bytes; :data:`MISSING` / :data:`EMPTY` as :class:`FundusError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FundusError(MISSING, path) from None
    except IsADirectoryError:
        raise FundusError(NOT_IMAGE, f"{path} is a directory") from None
    except OSError as e:
        raise FundusError(MISSING, f"{path}: {e.strerror or e}") from None
    if not data:
        raise FundusError(EMPTY, path)
    return data


def _open(data: bytes, name: str) -> Image.Image:
    """Identify (lazy open) an image from bytes."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise FundusError(NOT_IMAGE, f"{name}: PIL cannot identify the file") from None
    except Image.DecompressionBombError as e:
        raise FundusError(TOO_LARGE, f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise FundusError(CORRUPT, f"{name}: {e}") from None


def _full_load(img: Image.Image, name: str) -> None:
    """Decode every pixel now; truncation and corruption raise."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise FundusError(TOO_LARGE, f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise FundusError(CORRUPT, f"{name}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode: alpha is composited on black, 16-bit is scaled by 1/257,
    32-bit integer images are treated as 16-bit when any value exceeds 255."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info)
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise FundusError(UNSUPPORTED, f"mode {mode}: {e}") from None


def _decode(data: bytes, name: str, scale: int) -> tuple[Image.Image, int]:
    """Decode (JPEG at 1/``scale`` when ``scale`` > 1), orient, convert to RGB.

    Returns the image and the photo's full-resolution shorter side (pixels)."""
    img = _open(data, name)
    full_min = min(img.size)
    if scale > 1 and img.format == "JPEG":
        w, h = img.size
        img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
    _full_load(img, name)
    try:
        ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to do
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the photo
        pass
    return to_rgb(img), full_min


def load_rgb(path: str) -> Image.Image:
    """Full-resolution, EXIF-oriented 8-bit RGB image of a photo file.

    Raises :class:`FundusError` for a missing, empty, non-image, truncated or corrupt file."""
    img, _ = _decode(read_bytes(path), path, 1)
    return img


# ---------------------------------------------------------------------------- geometry

def _longest_run(flags: np.ndarray) -> tuple[int, int] | None:
    """Start (inclusive) and end (exclusive) of the longest run of True; first on ties."""
    if not flags.any():
        return None
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    i = int(np.argmax(ends - starts))
    return int(starts[i]), int(ends[i])


def _percentile_u8(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100, lower value) of a uint8 array, by histogram."""
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(counts, q / 100.0 * (counts[-1] - 1), side="right"))


def _detect_cells(img: Image.Image, factor: int) -> tuple[int, int, int, int]:
    """Fundus box ``(col0, row0, col1, row1)`` (end exclusive) in cells of ``factor`` x
    ``factor`` pixels of an RGB image (each cell is the mean of its pixels)."""
    small = img.reduce(factor) if factor > 1 else img
    rgb = np.asarray(small, dtype=np.uint8)
    chan = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    reference = _percentile_u8(chan, 99.0)
    if reference < MIN_REFERENCE:
        raise FundusError(NO_FUNDUS, f"image is dark (99th percentile {reference:.0f} of 255)")
    threshold = min(max(REL_THRESHOLD * reference, THRESHOLD_LO), THRESHOLD_HI)
    mask = chan > threshold
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    row_run = _longest_run(rows >= max(2, MIN_LINE_FRACTION * rows.max()))
    col_run = _longest_run(cols >= max(2, MIN_LINE_FRACTION * cols.max()))
    if row_run is None or col_run is None:
        raise FundusError(NO_FUNDUS, "nothing brighter than the surround")
    return col_run[0], row_run[0], col_run[1], row_run[1]


def detect_cell(width: int, height: int, multiple: int = 1) -> int:
    """Detection cell side (pixels of a ``width`` x ``height`` photo): about
    :data:`DETECT_SIDE` cells along the longer side, a multiple of ``multiple``."""
    return multiple * max(1, math.ceil(max(width, height) / (multiple * DETECT_SIDE)))


def fundus_bbox(img: Image.Image, cell: int | None = None) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` (pixels, right/bottom exclusive) of the
    bright fundus against the dark surround of an RGB image, found on a grid of ``cell``
    pixel cells (default :func:`detect_cell`), so exact to a cell.

    Raises :class:`FundusError` (:data:`NO_FUNDUS`) for a dark image."""
    img = to_rgb(img)
    w, h = img.size
    cell = cell or detect_cell(w, h)
    c0, r0, c1, r1 = _detect_cells(img, cell)
    return c0 * cell, r0 * cell, min(w, c1 * cell), min(h, r1 * cell)


def square_box(bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The centred square (side = the longer side of ``bbox``) around a box; it may
    extend past the photo, where :meth:`PIL.Image.Image.crop` fills black."""
    left, top, right, bottom = bbox
    side = max(right - left, bottom - top)
    x0 = left - (side - (right - left)) // 2
    y0 = top - (side - (bottom - top)) // 2
    return x0, y0, x0 + side, y0 + side


def crop_square(img: Image.Image, bbox: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The fundus bounding box of an RGB image padded with black to a centred square
    (full resolution, not resized)."""
    img = to_rgb(img)
    return img.crop(square_box(bbox if bbox is not None else fundus_bbox(img)))


def min_fundus_side(size: int) -> int:
    """Smallest fundus square side (full-resolution pixels) accepted for output ``size``."""
    return max(MIN_SIDE, math.ceil(size * MIN_FRACTION_OF_SIZE))


def _render(img: Image.Image, scale: int, full: tuple[int, int],
            square: tuple[int, int, int, int], size: int) -> Image.Image:
    """Resize the part of ``square`` (full-resolution coordinates of a ``full`` = (W, H)
    photo) that lies inside the photo from ``img`` (the photo decoded at 1/``scale``) onto
    a black ``size`` x ``size`` canvas at its proportional place."""
    x0, y0, x1, y1 = square
    side = x1 - x0
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, full[0]), min(y1, full[1])
    k = size / side
    dx0, dy0 = round((ix0 - x0) * k), round((iy0 - y0) * k)
    dx1, dy1 = round((ix1 - x0) * k), round((iy1 - y0) * k)
    src = (ix0 / scale, iy0 / scale, min(ix1 / scale, img.width), min(iy1 / scale, img.height))
    if scale == 1 and side == size:  # 1:1: a crop (outside the photo is black)
        return img.crop(square)
    part = img.resize((dx1 - dx0, dy1 - dy0), Image.Resampling.LANCZOS, box=src)
    if part.size == (size, size):
        return part
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(part, (dx0, dy0))
    return canvas


def _check_size(img_or_size: tuple[int, int]) -> None:
    w, h = img_or_size
    if min(w, h) < MIN_SIDE:
        raise FundusError(TOO_SMALL, f"{w}x{h} px < {MIN_SIDE} px")


def _square(img: Image.Image, scale: int, full: tuple[int, int], cell: int,
            size: int) -> tuple[int, int, int, int]:
    """Full-resolution fundus square of a photo decoded at 1/``scale``."""
    c0, r0, c1, r1 = _detect_cells(img, cell // scale)
    bbox = (c0 * cell, r0 * cell, min(full[0], c1 * cell), min(full[1], r1 * cell))
    return square_box(bbox)


def prepare(img: Image.Image, size: int) -> Image.Image:
    """RGB ``size`` x ``size`` fundus crop of an image (any mode; already EXIF-oriented).

    Equal to :func:`prepare_file` for photos that need no reduced-scale JPEG decode; use
    :func:`prepare_file` / :func:`prepare_image_bytes` on files to get the converter's
    exact pixels. Raises :class:`FundusError` for photos or fundi too small, or no fundus."""
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    img = to_rgb(img)
    _check_size(img.size)
    square = _square(img, 1, img.size, detect_cell(*img.size), size)
    if square[2] - square[0] < min_fundus_side(size):
        raise FundusError(TOO_SMALL,
                          f"fundus {square[2] - square[0]} px < {min_fundus_side(size)} px")
    return _render(img, 1, img.size, square, size)


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    """Baseline JPEG bytes (4:2:0, standard tables, no metadata) of an RGB image;
    ``quality`` 1..100. Deterministic for a given Pillow/libjpeg build."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    (img if img.mode == "RGB" else img.convert("RGB")).save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0",
                            optimize=False, progressive=False)
    return buf.getvalue()


def _draft_scale(length: float, size: int) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that keeps ``length`` full-resolution pixels at
    least ``DRAFT_OVERSAMPLE * size`` decoded pixels."""
    for scale in (8, 4, 2):
        if length / scale >= DRAFT_OVERSAMPLE * size:
            return scale
    return 1


def _oriented(full: tuple[int, int], img: Image.Image) -> tuple[tuple[int, int], int]:
    """Full-resolution (W, H) after EXIF orientation, and the decode scale used."""
    w, h = full
    if (img.width >= img.height) != (w >= h):
        w, h = h, w
    return (w, h), max(1, round(max(w, h) / max(img.size)))


def prepare_image_bytes(data: bytes, size: int, name: str = "<bytes>",
                        draft: bool = True) -> Image.Image:
    """:func:`prepare` of an encoded photo; big JPEGs are decoded at a reduced DCT scale
    (``draft=False`` forces a full decode: same geometry, for measuring the difference)."""
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    probe = _open(data, name)
    full0 = probe.size
    _check_size(full0)
    guess = _draft_scale(min(full0), size) if probe.format == "JPEG" else 1
    del probe
    cell = detect_cell(*full0, multiple=guess)
    img, _ = _decode(data, name, guess if draft else 1)
    full, scale = _oriented(full0, img)
    if cell % scale:  # libjpeg chose another scale (never seen): decode in full
        img, _ = _decode(data, name, 1)
        scale = 1
    square = _square(img, scale, full, cell, size)
    side = square[2] - square[0]
    if scale > 1:
        finer = _draft_scale(side, size)
        if finer < scale:  # the fundus is smaller than the photo: decode finer
            img, _ = _decode(data, name, finer)
            full, scale = _oriented(full0, img)
            square = _square(img, scale, full, cell, size)
            side = square[2] - square[0]
    if side < min_fundus_side(size):
        raise FundusError(TOO_SMALL, f"fundus {side} px < {min_fundus_side(size)} px")
    return _render(img, scale, full, square, size)


def prepare_file(path: str | os.PathLike, size: int = 512, quality: int = 95) -> bytes:
    """JPEG bytes of the ``size`` x ``size`` RGB fundus crop of a photo file.

    Raises :class:`FundusError` (with one of the module's reasons) for any unusable input."""
    path = os.fspath(path)
    return encode_jpeg(prepare_image_bytes(read_bytes(path), size, path), quality)
