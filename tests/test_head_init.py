"""--head_init=logistic: the probe is scikit-learn's L2 logistic regression, written into
the head so the model reproduces it, and fundus-train records it."""
import json

import keras
import numpy as np
import pytest

from model import head_init, train_config, training


def _data(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 20, d) + rng.normal(size=d) * 5
    x[:, 3] = 2.5                                     # a constant feature (sd 0)
    logits = (x[:, 0] / 10 - x[:, 1] * 0.2) + rng.normal(size=n) * 0.5
    return x, (logits > np.median(logits)).astype(np.float64)


@pytest.mark.parametrize("c", [1e-3, 1.0])
def test_matches_sklearn_on_standardised_features(c):
    skl = pytest.importorskip("sklearn.linear_model")
    x, y = _data()
    s = np.where(y > 0.5, 0.8, 1.3)
    fit = head_init.fit_logistic(x, y, c, s)
    z = (x - fit["mean"]) / fit["sd"]
    ref = skl.LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(z, y, sample_weight=s)
    np.testing.assert_allclose(fit["w"], ref.coef_[0], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(fit["b"], ref.intercept_[0], atol=1e-5, rtol=1e-4)
    # the raw-feature kernel gives the same logits
    np.testing.assert_allclose(x @ fit["kernel"] + fit["bias"], ref.decision_function(z),
                               atol=1e-4)
    with pytest.raises(ValueError, match="--head_init_c"):
        head_init.fit_logistic(x, y, 0.0)


def test_init_head_makes_the_model_the_probe():
    x, y = _data(n=64, d=5, seed=1)
    inp = keras.Input((5,))
    head = keras.layers.Dense(1, activation="sigmoid", name="sex")
    model = keras.Model(inp, head(keras.layers.Dropout(0.5)(inp)))
    features = keras.Model(inp, inp)
    batches = [(x[i:i + 16].astype(np.float32), y[i:i + 16]) for i in range(0, 64, 16)]
    info = head_init.init_head(features, head, batches, batches, 1.0, (1.2, 0.9))
    fit = head_init.fit_logistic(x.astype(np.float32).astype(np.float64), y, 1.0,
                                 np.where(y > 0.5, 0.9, 1.2))
    want = 1 / (1 + np.exp(-(x @ fit["kernel"] + fit["bias"])))
    got = np.asarray(model(x.astype(np.float32), training=False))[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert info["train_images"] == 64 and info["features"] == 5 and info["converged"]
    assert info["train_auc"] == info["val_auc"] > 0.7


def test_train_records_the_probe(tiny_data, tmp_path):
    cfg = train_config.TrainConfig(
        data=tiny_data, model_dir=str(tmp_path / "m"), backbone="tiny", weights="none",
        image_size=32, batch_size=8, epochs=1, warmup_epochs=0, fine_tune_fraction=1.0,
        head_init="logistic", head_init_c=0.1, image_grid=0, verbose=0)
    run = training.train(cfg)
    info = run["head_init"]
    assert info["method"] == "logistic" and info["c"] == 0.1
    assert info["train_images"] == run["data"]["train"]["records"]
    assert 0.0 <= info["val_auc"] <= 1.0
    assert json.load(open(tmp_path / "m" / "run.json"))["head_init"]["c"] == 0.1
    with pytest.raises(train_config.ConfigError, match="--head_init=ridge"):
        training.train(train_config.TrainConfig(data=tiny_data, model_dir=str(tmp_path / "x"),
                                            head_init="ridge"))
