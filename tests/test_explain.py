"""fundus-explain: Grad-CAM maps on tiny models are finite, informative and written."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import _tiny_models as tm
from model import explain as E
from model import io as model_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return tm.save_model_dir(tm.planted_model(64), str(tmp_path_factory.mktemp("planted_x")))


def test_grad_cam_highlights_the_planted_disc(planted, tiny_data):
    (member,) = model_io.load_models(planted)
    found = E.split_images(tiny_data, "test", 64, ["32_left.jpg", "33_left.jpg"])
    male, female = found["32_left.jpg"], found["33_left.jpg"]
    assert (male[1], female[1]) == (1.0, 0.0)
    images = np.stack([male[0], female[0]])
    maps, probs, layer = E.grad_cam(member.model, images)
    assert layer == "backbone" and maps.shape == (2, 64, 64)
    assert np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1
    assert probs[0] > 0.5 > probs[1]
    for m in maps:
        assert m.std() > 0.05                      # not constant
    # the male map peaks on the bright disc (left eye: centre at x = 0.3 * 64, y = 32)
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert abs(x - 19) <= 6 and abs(y - 32) <= 6
    # the female map (evidence for female: the fundus body) is dark outside the fundus
    assert maps[1][:3, :3].max() < 0.2 and maps[1][32, 32] > 0.3


def test_most_confident():
    p = np.array([0.9, 0.1, 0.6, 0.4, 0.99, 0.2])
    assert E.most_confident(p, 4).tolist() == [4, 0, 1, 5]
    assert E.most_confident(np.array([0.9, 0.8, 0.7]), 2).tolist() == [0, 1]
    assert E.most_confident(p, 10).size == 6


def test_real_classifier_grad_cam():
    classifier = pytest.importorskip("model.classifier")
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="mobilenet_v2", image_size=96, weights="none"))
    x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)
    maps, probs, layer = E.grad_cam(model, x)
    assert layer == "backbone" and maps.shape == (2, 96, 96) and np.all(np.isfinite(maps))
    np.testing.assert_allclose(probs, model(x, training=False).numpy().reshape(-1), atol=1e-5)


def test_cli_grid_overlays_tensorboard(planted, tiny_data, tmp_path):
    out = tmp_path / "x"
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 300)).save(photo)         # black: no fundus -> a listed problem
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "tools.explain", f"--model={planted},{planted}",
                        f"--data={tiny_data}", "--n=4", f"--output={out}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "explain.json").read_text())
    assert len(rep["images"]) == 4
    labels = [i["label"] for i in rep["images"]]
    assert labels.count("male") == 2 and labels.count("female") == 2
    with Image.open(out / "gradcam_grid.png") as g:
        assert g.width > 400 and np.asarray(g.convert("L")).std() > 10
    assert len(glob.glob(str(out / "overlays" / "*.png"))) == 4
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    # chosen files: a record name, a photo without a fundus, an unknown name (in-process)
    rep = E.explain(model_io.load_models(planted), str(tmp_path / "y"), data_dir=tiny_data,
                    files=["33_right.jpg", str(photo), "nope.jpg"])
    assert [i["file"] for i in rep["images"]] == ["33_right.jpg"]
    assert rep["images"][0]["label"] == "female" and rep["images"][0]["probability_male"] < 0.5
    errs = {os.path.basename(p["file"]): p["error"] for p in rep["problems"]}
    assert errs["photo.png"].startswith("no fundus") and "not in split" in errs["nope.jpg"]
    assert json.loads((tmp_path / "y" / "explain.json").read_text())["problems"] == rep["problems"]
    with pytest.raises(ValueError, match="nothing to explain"):
        E.explain(model_io.load_models(planted), str(tmp_path / "z"), data_dir=tiny_data,
                  files=["nope.jpg"])
