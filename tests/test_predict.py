"""fundus-predict: same numbers as fundus-evaluate on converted photos; bad inputs go on."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import _tiny_models as tm
from model import evaluation
from model import io as model_io
from model import prediction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED = 64


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Synthetic camera-size photos converted at 64 px: (source image dir, data dir)."""
    from pipeline import writer
    from pipeline.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("predict_data")
    paths = make_synthetic(str(root / "src"), n_patients=12, formats=("full_df",),
                           size_range=(300, 700), normal_fraction=1.0, seed=3)
    writer.convert(writer.ConvertConfig(
        annotations=[paths["full_df"]], images=[paths["images"]], output=str(root / "data"),
        image_size=STORED, jpeg_quality=90, split=(0.5, 0.25, 0.25), workers=1,
        progress=False))
    return paths["images"], str(root / "data")


@pytest.fixture(scope="module")
def models(converted, tmp_path_factory):
    """Two random models: 48 px (resized from the stored 64) and 64 px, as one ensemble."""
    _, data = converted
    root = tmp_path_factory.mktemp("predict_models")
    # run.json as fundus-train writes it: data.dir names the training data
    a = tm.save_model_dir(tm.random_model(48, seed=1), str(root / "a"),
                          data={"dir": data, "manifest_sha256": "x"}, flags={"data": "rel/x"})
    # the stored format as fundus-train records it from the manifest (data travels apart)
    b = tm.save_model_dir(tm.random_model(64, seed=2), str(root / "b"),
                          data={"stored_size": STORED, "jpeg_quality": 90})
    return a, b


def test_stored_format_resolution(converted, models):
    _, data = converted
    a, b = model_io.load_models(",".join(models))
    assert prediction.member_format(a.run_info).source.endswith("manifest.json")
    assert prediction.member_format(b.run_info).source.endswith("run.json")
    fmt = prediction.stored_format([a, b])
    assert (fmt.image_size, fmt.jpeg_quality) == (STORED, 90)
    assert prediction.stored_format([a, b], stored_size=128).image_size == 128
    bare = model_io.Member(a.model, {"path": "x", "image_size": 48})
    assert prediction.stored_format([bare]).image_size == prediction.DEFAULT_STORED_SIZE
    other = model_io.Member(a.model, {"path": "y", "image_size": 48,
                                      "data": {"stored_size": 512, "jpeg_quality": 95}})
    with pytest.raises(ValueError, match="stored differently"):
        prediction.stored_format([b, other])


def test_predict_matches_evaluate_on_converted_test_photos(converted, models, tmp_path):
    images, data = converted
    members = model_io.load_models(",".join(models))
    ev = evaluation.predict_split(members, data, "test", batch_size=4)
    assert len(ev) >= 4
    files = [os.path.join(images, f) for f in ev["file"]]
    fmt = prediction.stored_format(members)
    got = prediction.predict_files(members, files, fmt, batch_size=3)
    assert (got["error"] == "").all()
    diff = np.abs(got["probability_male"].to_numpy() - ev["probability"].to_numpy())
    assert diff.max() < 1e-4, diff
    assert ev["probability"].std() > 1e-3        # the check is not between constants
    for tta in ("flip",):
        ev_t = evaluation.predict_split(members, data, "test", tta=tta)
        got_t = prediction.predict_files(members, files, fmt, tta=tta)
        assert np.abs(got_t["probability_male"].to_numpy() - ev_t["probability"]).max() < 1e-4


def test_cli_mixed_folder_corrupt_png_big_photo(converted, models, tmp_path):
    images, _ = converted
    src = sorted(os.path.join(images, f) for f in os.listdir(images))
    folder = tmp_path / "photos"
    folder.mkdir()
    good = Image.open(src[0]).convert("RGB")
    good.save(folder / "a_photo.png")                                   # PNG
    good.resize((3000, int(3000 * good.height / good.width)),
                Image.Resampling.BICUBIC).save(folder / "b_big.jpg", quality=90)  # 3,000 px
    data = open(src[1], "rb").read()
    (folder / "c_corrupt.jpg").write_bytes(data[: len(data) // 3])      # truncated JPEG
    Image.new("RGB", (400, 300)).save(folder / "d_black.tif")           # no fundus
    (folder / "notes.txt").write_text("not a photo")                    # ignored by the scan
    shutil.copy(src[2], tmp_path / "e_single.jpg")
    out = tmp_path / "pred.csv"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "tools.predict", f"--model={models[1]}",
                        f"--output={out}", str(folder), str(tmp_path / "e_*.jpg"),
                        str(tmp_path / "missing.jpg"), "--threshold=0.5"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["file", "probability_male", "predicted_sex", "error"]
    rows = {os.path.basename(f): row for f, row in zip(df["file"], df.to_dict("records"))}
    assert set(rows) == {"a_photo.png", "b_big.jpg", "c_corrupt.jpg", "d_black.tif",
                         "e_single.jpg", "missing.jpg"}
    for ok in ("a_photo.png", "b_big.jpg", "e_single.jpg"):
        assert rows[ok]["error"] == "" and 0.0 <= float(rows[ok]["probability_male"]) <= 1.0
        assert rows[ok]["predicted_sex"] == (
            "male" if float(rows[ok]["probability_male"]) >= 0.5 else "female")
    assert rows["c_corrupt.jpg"]["error"].startswith("truncated or corrupt")
    assert rows["d_black.tif"]["error"].startswith("no fundus")
    assert rows["missing.jpg"]["error"].startswith("missing file")
    assert rows["c_corrupt.jpg"]["probability_male"] == "" and rows["c_corrupt.jpg"]["predicted_sex"] == ""
    assert "3 with errors" in r.stdout


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/x.JPG", "d/sub/y.png", "d/z.txt", "w.tif"):
        (tmp_path / name).write_bytes(b"x")
    files, problems = prediction.expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "*.tif"), str(tmp_path / "none*.jpg"),
         str(tmp_path / "w.tif")])
    assert [os.path.relpath(f, tmp_path) for f in files] == ["d/sub/y.png", "d/x.JPG", "w.tif"]
    assert problems == [(str(tmp_path / "none*.jpg"), "no file matches this pattern")]


def test_threshold_youden_end_to_end(converted, models, tiny_data, tmp_path):
    """fundus-train writes the Youden threshold of its kept model's validation images into
    run.json; fundus-predict --threshold=youden applies it. A model without one is refused."""
    from model import metrics, train_config, training
    (bare,) = model_io.load_models(models[0])
    with pytest.raises(ValueError, match="no youden_threshold"):
        prediction.model_threshold([bare])
    cfg = train_config.TrainConfig(
        data=tiny_data, model_dir=str(tmp_path / "run"), backbone="tiny", weights="none",
        image_size=32, batch_size=8, epochs=2, warmup_epochs=1, fine_tune_fraction=1.0,
        patience=0, image_grid=0, verbose=0, seed=1)
    run = training.train(cfg)
    t = run["val"]["youden_threshold"]
    members = model_io.load_models(cfg.model_dir)
    val = evaluation.predict_split(members, tiny_data, "val")
    assert t == pytest.approx(metrics.youden_threshold(val["label"], val["probability"]))
    assert prediction.model_threshold(members) == pytest.approx(t)
    images, _ = converted
    photos = sorted(os.path.join(images, f) for f in os.listdir(images))[:4]
    out = tmp_path / "pred.csv"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "tools.predict", f"--model={cfg.model_dir}",
                        f"--output={out}", "--threshold=youden", *photos],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 4 and (df["error"] == "").all()
    assert list(df["predicted_sex"]) == ["male" if p >= t else "female"
                                         for p in df["probability_male"]]
