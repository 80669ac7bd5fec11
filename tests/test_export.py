"""fundus-export: SavedModel and TFLite copies agree with Keras."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import _tiny_models as tm
from model import export as export_lib
from model import io as model_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_model_exports_agree(tiny_data, tmp_path):
    mdir = tm.save_model_dir(tm.random_model(64, seed=4), str(tmp_path / "m"))
    members = model_io.load_models(mdir)
    images = export_lib.split_images(tiny_data, "test", 64, 6)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    rep = export_lib.representative_from(export_lib.split_images(tiny_data, "train", 64, 16))
    out = str(tmp_path / "export")
    report = export_lib.export(members, out, images, tflite=("float32", "float16", "int8"),
                               representative=rep, check_source="tiny test")
    assert report["ok"]
    assert report["saved_model"]["max_abs_diff"] <= 1e-4
    assert report["tflite"]["float32"]["max_abs_diff"] <= 1e-4
    assert report["tflite"]["float16"]["max_abs_diff"] < 0.05
    assert report["tflite"]["int8"]["max_abs_diff"] < 0.2
    for kind in ("float32", "float16", "int8"):
        assert os.path.getsize(os.path.join(out, f"model_{kind}.tflite")) > 1000
    assert report["tflite"]["int8"]["bytes"] < report["tflite"]["float32"]["bytes"]
    with open(os.path.join(out, "export.json"), encoding="utf-8") as f:
        assert json.load(f)["tflite"]["float32"]["ok"] is True
    assert len(set(report["keras_probabilities"])) > 1


def test_ensemble_exports_as_mean(tmp_path):
    dirs = [tm.save_model_dir(tm.random_model(32, seed=s), str(tmp_path / f"fold_{s}"))
            for s in (0, 1)]
    members = model_io.load_models(str(tmp_path))
    assert len(members) == 2
    model = export_lib.combined_model(members)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    want = (model_io.predict_arrays(members[0].model, x) +
            model_io.predict_arrays(members[1].model, x)) / 2
    np.testing.assert_allclose(export_lib.keras_probabilities(model, x), want, atol=1e-6)
    report = export_lib.export(members, str(tmp_path / "out"), x, tflite=("float32",))
    assert report["ok"] and report["tflite"]["float32"]["max_abs_diff"] <= 1e-4
    other = model_io.load_models(tm.save_model_dir(tm.random_model(48), str(tmp_path / "c")))
    with pytest.raises(ValueError, match="one input size"):
        export_lib.combined_model(members + other)
    assert dirs


def test_int8_needs_data(tmp_path):
    members = model_io.load_models(tm.save_model_dir(tm.random_model(32), str(tmp_path / "m")))
    x = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="representative"):
        export_lib.export(members, str(tmp_path / "o"), x, tflite=("int8",))
    with pytest.raises(ValueError, match="unknown kind"):
        export_lib.export(members, str(tmp_path / "o"), x, tflite=("bf16",))


def test_cli(tiny_data, tmp_path):
    mdir = tm.save_model_dir(tm.random_model(64, seed=5), str(tmp_path / "m"))
    out = tmp_path / "exp"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "tools.export", f"--model={mdir}",
                        f"--output={out}", f"--data={tiny_data}", "--tflite=float32,float16",
                        "--check_images=4"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tflite float32" in r.stdout
    report = json.loads((out / "export.json").read_text())
    assert report["check_images"] == 4 and "split test" in report["check_source"]
    assert report["tflite"]["float32"]["max_abs_diff"] <= 1e-4
    assert sorted(os.listdir(out)) == ["export.json", "model_float16.tflite",
                                       "model_float32.tflite", "saved_model"]


@pytest.mark.slow
def test_real_classifier_converts(tmp_path):
    """The project's classifier (custom layers, wrapped MobileNetV2) converts and agrees."""
    classifier = pytest.importorskip("model.classifier")
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="mobilenet_v2", image_size=32, weights="none"))
    members = model_io.load_models(
        tm.save_model_dir(model, str(tmp_path / "clf"), backbone="mobilenet_v2"))
    x = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    report = export_lib.export(members, str(tmp_path / "exp"), x, tflite=("float32",))
    assert report["ok"] and report["tflite"]["float32"]["max_abs_diff"] <= 1e-4
