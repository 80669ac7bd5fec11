"""model.metrics against values computed by hand on small cases (ties included)."""
from __future__ import annotations

import numpy as np
import pytest

from model import metrics as M

# The classic 4-point case: pairs (pos, neg) = (.35,.1) win, (.35,.4) lose, (.8,.1) win,
# (.8,.4) win -> 3/4.
Y4 = [0, 0, 1, 1]
P4 = [0.1, 0.4, 0.35, 0.8]


def test_roc_auc_hand_values():
    assert M.roc_auc(Y4, P4) == pytest.approx(0.75)
    # Ties between a positive and a negative count 0.5:
    # pos {.5, .9} vs neg {.5, .2}: .5=.5 -> .5, .5>.2 -> 1, .9>.5 -> 1, .9>.2 -> 1 = 3.5/4
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    # All tied in one block of 3 (1 pos, 2 neg) plus a clear positive: (0.5+0.5+1+1)/4
    assert M.roc_auc([0, 0, 1, 1], [0.3, 0.3, 0.3, 0.7]) == pytest.approx(0.75)
    assert M.roc_auc([1, 0], [0.9, 0.1]) == 1.0
    assert M.roc_auc([1, 0], [0.1, 0.9]) == 0.0


def test_constant_predictor_auc_half_and_majority_accuracy():
    y = np.array([1] * 7 + [0] * 3, dtype=np.float32)
    p = np.full(10, 0.8)
    assert M.roc_auc(y, p) == 0.5
    assert M.accuracy(y, p) == pytest.approx(M.majority_accuracy(y)) == pytest.approx(0.7)
    assert M.balanced_accuracy(y, p) == pytest.approx(0.5)
    assert M.brier(y, p) == pytest.approx(np.mean((0.8 - y) ** 2))


def test_roc_auc_one_class_raises_clearly():
    with pytest.raises(ValueError, match="one class"):
        M.roc_auc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="0 or 1"):
        M.roc_auc([0, 2], [0.2, 0.5])
    with pytest.raises(ValueError, match="length"):
        M.roc_auc([0, 1], [0.2])


def test_rankdata_average_ties():
    np.testing.assert_allclose(M.rankdata([3, 1, 3, 2, 3]), [4, 1, 4, 2, 4])
    np.testing.assert_allclose(M.rankdata([0.5, 0.5]), [1.5, 1.5])


def test_pr_auc_hand_value():
    # Descending: .8(+) .4(-) .35(+) .1(-): (R,P) = (.5,1) (.5,.5) (1,2/3) (1,.5)
    # AP = .5*1 + 0*.5 + .5*(2/3) + 0 = 5/6
    assert M.pr_auc(Y4, P4) == pytest.approx(5 / 6)
    # A constant predictor: one threshold, precision = prevalence, recall 1.
    assert M.pr_auc([1, 0, 0, 0], [0.3] * 4) == pytest.approx(0.25)


def test_threshold_metrics_hand_values():
    # At 0.5: predicted positive only .8 -> tp=1 fn=1 tn=2 fp=0
    assert M.confusion(Y4, P4, 0.5) == {"tp": 1, "fp": 0, "tn": 2, "fn": 1}
    assert M.sensitivity(Y4, P4) == 0.5
    assert M.specificity(Y4, P4) == 1.0
    assert M.accuracy(Y4, P4) == 0.75
    assert M.balanced_accuracy(Y4, P4) == 0.75
    # At 0.35: .35,.4,.8 positive -> tp=2 fp=1 tn=1 fn=0
    assert M.sensitivity(Y4, P4, 0.35) == 1.0
    assert M.specificity(Y4, P4, 0.35) == 0.5


def test_youden_threshold():
    # J at .8 = .5 - 0, at .4 = .5 - .5, at .35 = 1 - .5, at .1 = 0: tie -> larger, .8;
    # any t in (.4, .8] gives that J: the midpoint 0.6 is returned.
    t = M.youden_threshold(Y4, P4)
    assert t == pytest.approx(0.6)
    assert M.sensitivity(Y4, P4, t) - (1 - M.specificity(Y4, P4, t)) == pytest.approx(0.5)
    # Separable with a gap: midway between the lowest positive and highest negative score.
    assert M.youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7]) == pytest.approx(0.4)
    # Best J at the lowest score: that score.
    assert M.youden_threshold([1, 0], [0.1, 0.9]) == pytest.approx(0.1)   # anti-correlated
    assert M.youden_threshold([1, 0, 1], [0.1, 0.5, 0.9]) == pytest.approx(0.7)


def test_roc_curve_endpoints():
    fpr, tpr, thr = M.roc_curve(Y4, P4)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc(Y4, P4))


def test_brier_and_ece_hand_values():
    y = [0, 1, 1, 0]
    p = [0.05, 0.15, 0.95, 0.95]
    assert M.brier(y, p) == pytest.approx((0.05**2 + 0.85**2 + 0.05**2 + 0.95**2) / 4)
    # bins: [0,.1) p=.05 y=0 -> .05; [.1,.2) p=.15 y=1 -> .85; [.9,1] p=.95 y=.5 -> .45
    # ECE = .25*.05 + .25*.85 + .5*.45 = .45
    assert M.expected_calibration_error(y, p) == pytest.approx(0.45)
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0   # 1.0 in the last bin
    edges, count, mean_p, frac = M.calibration_bins(y, p)
    assert count.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert np.isnan(mean_p[2]) and frac[9] == 0.5 and edges[-1] == 1.0


def test_per_patient_mean_of_eyes():
    y_pat, p_pat = M.per_patient([1, 1, 0, 0], [0.2, 0.6, 0.3, 0.5], ["b", "b", "a", "a"])
    np.testing.assert_allclose(y_pat, [0, 1])
    np.testing.assert_allclose(p_pat, [0.4, 0.4])
    assert M.patient_ids(["b", "b", "a", "a"]).tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="different sex"):
        M.per_patient([1, 0], [0.2, 0.3], ["x", "x"])


def test_bootstrap_resamples_patients_with_both_eyes():
    n_pat = 30
    groups = np.repeat(np.arange(n_pat), 2)
    y = np.repeat(np.arange(n_pat) % 2, 2)
    p = groups + np.tile([0.0, 0.5], n_pat)        # floor(p) = patient index

    def both_eyes(yy, pp):                          # 1.0 iff every patient came with 2k eyes
        if len(set(yy)) < 2:
            raise ValueError("one class")
        counts = np.bincount(np.floor(pp).astype(int))
        halves = np.bincount(np.floor(pp).astype(int), weights=(pp % 1) > 0)
        return float(np.all(counts == 2 * halves))

    vals, skipped = M.bootstrap_distribution(y, p, groups, both_eyes, n=200, seed=1)
    assert vals.size + skipped == 200 and np.all(vals == 1.0)


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(0)
    n_pat = 80
    groups = np.repeat(np.arange(n_pat), 2)
    y = np.repeat(rng.integers(0, 2, n_pat), 2)
    p = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, y.size), 0, 1)
    auc = M.roc_auc(y, p)
    low, high = M.patient_bootstrap_ci(y, p, groups, n=500, seed=3)
    assert low < auc < high and 0.5 < low and high < 1.0
    assert (low, high) == M.patient_bootstrap_ci(y, p, groups, n=500, seed=3)   # seeded
    assert (low, high) != M.patient_bootstrap_ci(y, p, groups, n=500, seed=4)
    assert M.bootstrap_auc_ci(y, p, groups, n=500, seed=3) == (low, high)
    # Perfect separation: every resample has AUC 1.
    assert M.patient_bootstrap_ci(y, y.astype(float), groups, n=100) == (1.0, 1.0)
    # Constant predictor: the interval is the point 0.5.
    assert M.patient_bootstrap_ci(y, np.full(y.size, 0.3), groups, n=100) == (0.5, 0.5)


def test_bootstrap_one_class_raises():
    with pytest.raises(ValueError, match="resamples"):
        M.patient_bootstrap_ci([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], n=50)


def test_agrees_with_sklearn_on_random_ties():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)     # coarse -> many ties
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert M.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
