"""--orient=disc_left: the model mirrors photos whose disc (the brightest spot inside the
field stop) is right of centre, as a layer saved with the model; the training config
refuses it with the random flip that would undo it."""
import numpy as np
import pytest

from model import classifier, io as model_io, orient, train_config, training


def _photos(size=64):
    """Three grey discs of fundus: the bright optic disc right, left, and right again but
    with a brighter reflection at the rim (outside the mask), which must not count."""
    img = np.full((3, size, size, 3), 60, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    outside = np.hypot(yy - size / 2, xx - size / 2) > 0.48 * size
    img[:, outside] = 0
    s = size // 32 * 3
    img[0, 30:30 + s, 44:44 + s] = 230
    img[1, 30:30 + s, 14:14 + s] = 230
    img[2, 30:30 + s, 44:44 + s] = 230
    img[2, 2:6, 2:8] = 255                     # a reflection in the corner (masked out)
    return img


def test_disc_goes_left():
    img = _photos()
    assert list(np.asarray(orient.disc_on_right(img))) == [True, False, True]
    out = np.asarray(orient.DiscLeft()(img))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], img[0, :, ::-1])
    np.testing.assert_array_equal(out[1], img[1])
    assert not np.asarray(orient.disc_on_right(out)).any()


def test_classifier_layer_saves_and_config_refuses_the_flip(tmp_path):
    cfg = classifier.ClassifierConfig(backbone="tiny", image_size=64, weights="none",
                                      orient="disc_left", seed=0)
    model = classifier.build_classifier(cfg)
    assert model.layers[1].name == "orient"
    img = _photos()
    # the model sees the mirrored photo: equal outputs for a photo and its mirror image
    np.testing.assert_allclose(np.asarray(model(img[:1])), np.asarray(model(img[:1, :, ::-1])),
                               atol=1e-6)
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = model_io.load_model(path).model
    np.testing.assert_allclose(np.asarray(back(img)), np.asarray(model(img)), atol=1e-6)
    with pytest.raises(ValueError, match="--orient=sideways"):
        classifier.build_classifier(classifier.ClassifierConfig(
            backbone="tiny", image_size=64, weights="none", orient="sideways"))


def test_train_config_refuses_orient_with_flip(tiny_data, tmp_path):
    with pytest.raises(train_config.ConfigError, match="--orient=disc_left with --augment_flip"):
        training.train(train_config.TrainConfig(
            data=tiny_data, model_dir=str(tmp_path / "m"), backbone="tiny", weights="none",
            image_size=32, orient="disc_left"))


def test_grad_cam_of_an_oriented_multi_depth_model_overlays_the_photo():
    """Grad-CAM splits the head off every backbone output and maps the deepest; with the
    orientation layer, a photo's map is its mirror image's map mirrored (the model sees
    the same input), so each overlays its own photo."""
    from model import explain
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="tiny", image_size=64, weights="none", orient="disc_left",
        feature_layers=("block2_relu1", "last"), seed=0))
    img = _photos()[:1]
    maps, probs, name = explain.grad_cam(model, np.concatenate([img, img[:, :, ::-1]]))
    assert name == "backbone" and maps.shape == (2, 64, 64)
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[1, :, ::-1], atol=1e-5)


def test_oriented_multi_depth_model_exports_to_tflite(tmp_path):
    """The orientation layer uses only TFLite builtin ops (no flex ops): the float32
    TFLite copy of an oriented multi-depth model agrees with Keras."""
    import _tiny_models as tm
    from model import export
    model = classifier.build_classifier(classifier.ClassifierConfig(
        backbone="tiny", image_size=64, weights="none", orient="disc_left",
        feature_layers=("block2_relu1", "last"), seed=0))
    tm.save_model_dir(model, str(tmp_path / "m"))
    members = model_io.load_models(str(tmp_path / "m"))
    report = export.export(members, str(tmp_path / "out"), _photos(), tflite=["float32"],
                           check_source="photos", progress=False)
    assert report["ok"] and report["tflite"]["float32"]["max_abs_diff"] < 1e-4
