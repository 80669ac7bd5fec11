"""pipeline.fundus: loading any mode, finding and squaring the fundus, bad inputs."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline import fundus

ORANGE = (200, 90, 40)


def photo(w: int = 300, h: int = 200, cx: int = 170, cy: int = 100, r: int = 80,
          marker: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """A toy fundus: dark canvas with mild noise, an orange disc, optional white marker."""
    img = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=ORANGE)
    if marker:
        mx, my = marker
        d.ellipse([mx - 8, my - 8, mx + 8, my + 8], fill=(255, 255, 255))
    arr = np.asarray(img).astype(np.int16)
    arr += np.random.default_rng(0).integers(0, 6, arr.shape, dtype=np.int16)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return out if mode == "RGB" else out.convert(mode)


def save(img: Image.Image, path, fmt: str = "JPEG", **kw) -> str:
    img.save(path, fmt, **kw)
    return str(path)


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


def test_bbox_of_off_centre_disc_on_non_square_photo():
    img = photo(300, 200, cx=170, cy=100, r=80)
    left, top, right, bottom = fundus.fundus_bbox(img)
    cell = fundus.detect_cell(300, 200)
    for got, want in ((left, 90), (top, 20), (right, 251), (bottom, 181)):
        assert abs(got - want) <= cell + 1, (left, top, right, bottom)


def test_prepare_squares_and_centres_the_disc():
    img = photo(300, 200, cx=90, cy=110, r=70)  # off-centre, near the left edge
    out = fundus.prepare(img, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    a = arr(out)
    assert a[32, 32, 0] > 150                      # disc centre in the middle
    assert a[1, 1].max() < 40 and a[62, 62].max() < 40  # corners black (outside the circle)
    # the disc spans the crop: bright near the edges' midpoints
    assert a[32, 3, 0] > 120 and a[32, 60, 0] > 120 and a[3, 32, 0] > 120


def test_clipped_circle_is_padded_with_black():
    # circle taller than the photo (cut off top and bottom, as many cameras do)
    img = photo(400, 200, cx=200, cy=100, r=130)
    out = arr(fundus.prepare(img, 100))
    assert out[0:5, 50].max() < 20 and out[95:100, 50].max() < 20  # black padding bands
    assert out[50, 50, 0] > 150


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    base = photo(240, 200, cx=120, cy=100, r=90)
    if mode == "I;16":
        gray = np.asarray(base.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(gray, "I;16")
        path = save(img, tmp_path / "x.png", "PNG")
    elif mode == "CMYK":
        path = save(base.convert("CMYK"), tmp_path / "x.jpg", "JPEG", quality=95)
    elif mode in ("RGBA", "LA"):
        img = base.convert(mode)
        path = save(img, tmp_path / "x.png", "PNG")
    else:
        path = save(base.convert(mode), tmp_path / "x.png", "PNG")
    loaded = fundus.load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (240, 200)
    out = Image.open(io.BytesIO(fundus.prepare_file(path, 64, 90)))
    assert out.size == (64, 64) and out.mode == "RGB"
    a = arr(out)
    assert a[32, 32].max() > 60 and a[0, 0].max() < 30
    if mode == "CMYK":
        assert a[32, 32, 0] > a[32, 32, 2] + 60  # still orange, not inverted


def test_16_bit_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16)[None, :].repeat(80, 0) * 257)
    img = fundus.to_rgb(Image.fromarray(ramp, "I;16"))
    a = np.asarray(img)[0, :, 0]
    assert a[0] == 0 and a[128] == 128 and a[255] == 255


def test_transparency_composited_on_black():
    base = photo(200, 200, cx=100, cy=100, r=80).convert("RGBA")
    a = np.asarray(base).copy()
    a[:60, :, :3] = 255   # bright pixels ...
    a[:60, :, 3] = 0      # ... that are fully transparent
    rgb = np.asarray(fundus.to_rgb(Image.fromarray(a, "RGBA")))
    assert rgb[:60].max() == 0 and rgb[100, 100, 0] > 150


def test_exif_orientation_applied(tmp_path):
    upright = photo(300, 200, cx=150, cy=100, r=90, marker=(100, 100))  # marker left of centre
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(stored, tmp_path / "rot.jpg", "JPEG", quality=95, exif=exif.tobytes())
    loaded = fundus.load_rgb(path)
    assert loaded.size == (300, 200)
    out = arr(Image.open(io.BytesIO(fundus.prepare_file(path, 64))))
    # the white marker is back on the left half, on the middle row
    left, right = out[28:36, 5:28].mean(), out[28:36, 36:59].mean()
    assert out[31:33, 13:16].min() > 200 and left > right


def test_deterministic_bytes(tmp_path):
    path = save(photo(), tmp_path / "a.jpg")
    assert fundus.prepare_file(path, 64, 95) == fundus.prepare_file(path, 64, 95)
    assert fundus.prepare_file(path, 64, 95) != fundus.prepare_file(path, 64, 80)


def test_big_jpeg_reduced_decode_matches_full_decode(tmp_path):
    big = photo(1600, 1200, cx=820, cy=600, r=560, marker=(600, 600))
    big = Image.fromarray(np.asarray(big))  # detach
    path = save(big, tmp_path / "big.jpg", "JPEG", quality=92)
    data = open(path, "rb").read()
    fast = arr(fundus.prepare_image_bytes(data, 128))
    full = arr(fundus.prepare_image_bytes(data, 128, draft=False))
    mse = np.mean((fast - full) ** 2)
    assert mse < 4.0, mse  # > 42 dB PSNR: the reduced decode changes nothing material
    assert fast.shape == (128, 128, 3)


def test_small_fundus_in_big_jpeg_decoded_finer(tmp_path):
    # guess from the photo says 1/4 scale; the small fundus needs a finer decode
    img = photo(1600, 1200, cx=800, cy=600, r=140)
    path = save(img, tmp_path / "small_disc.jpg", "JPEG", quality=92)
    data = open(path, "rb").read()
    fast = arr(fundus.prepare_image_bytes(data, 256))
    full = arr(fundus.prepare_image_bytes(data, 256, draft=False))
    assert np.mean((fast - full) ** 2) < 4.0


@pytest.mark.parametrize("kind,reason", [
    ("missing", fundus.MISSING),
    ("zero", fundus.EMPTY),
    ("text", fundus.NOT_IMAGE),
    ("truncated", fundus.CORRUPT),
    ("black", fundus.NO_FUNDUS),
    ("tiny", fundus.TOO_SMALL),
    ("tiny_fundus", fundus.TOO_SMALL),
])
def test_bad_inputs_raise_with_reason(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("ID,Patient Age\n1,50\n")
    elif kind == "truncated":
        buf = io.BytesIO()
        photo(400, 300, cx=200, cy=150, r=120).save(buf, "JPEG", quality=95)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "black":
        save(Image.new("RGB", (300, 200), (3, 2, 1)), path)
    elif kind == "tiny":
        save(photo(48, 40, cx=24, cy=20, r=15), path)
    elif kind == "tiny_fundus":
        save(photo(300, 200, cx=150, cy=100, r=25), path)
    with pytest.raises(fundus.FundusError) as e:
        fundus.prepare_file(str(path), 128)
    assert e.value.reason == reason
    assert str(e.value).startswith(reason)


def test_load_truncated_images_flag_is_respected_and_restored(tmp_path):
    from PIL import ImageFile
    buf = io.BytesIO()
    photo(400, 300, cx=200, cy=150, r=120).save(buf, "JPEG", quality=95)
    path = tmp_path / "t.jpg"
    path.write_bytes(buf.getvalue()[:3000])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(fundus.FundusError):
            fundus.load_rgb(str(path))
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_noise_and_a_text_label_do_not_move_the_box():
    img = photo(400, 240, cx=200, cy=120, r=100)
    a = np.asarray(img).copy()
    rng = np.random.default_rng(1)
    a[rng.integers(0, 240, 40), rng.integers(0, 400, 40)] = 255   # hot pixels
    a[220:230, 330:390] = 230                                      # a label, bottom right
    left, top, right, bottom = fundus.fundus_bbox(Image.fromarray(a))
    assert abs(left - 100) <= 4 and abs(right - 301) <= 4, (left, right)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(fundus.FundusError) as e:
        fundus.prepare_file(str(tmp_path), 64)
    assert e.value.reason == fundus.NOT_IMAGE


def test_encode_jpeg_rejects_bad_quality():
    with pytest.raises(ValueError):
        fundus.encode_jpeg(photo(), 0)


def test_real_dev_image_is_kept_nearly_whole():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                        "odir5k-dev", "preprocessed_images", "1_left.jpg")
    if not os.path.exists(path):
        pytest.skip("odir5k-dev not present")
    img = fundus.load_rgb(path)
    left, top, right, bottom = fundus.fundus_bbox(img)
    assert right - left > 480 and bottom - top > 480
