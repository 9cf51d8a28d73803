"""Metrics against values computed by hand in the comments."""
import math

import numpy as np
import pytest

from dgsnet.metrics import accuracies, average_precision, mean_row, roc_auc, subset_metrics


def test_four_items_no_ties():
    # scores high -> low: 0.8 (fake), 0.4 (real), 0.35 (fake), 0.1 (real); P = 2 positives.
    # AP: thresholds 0.8 -> P=1/1, R=1/2; 0.4 -> P=1/2, R=1/2 (no recall gain); 0.35 -> P=2/3, R=1.
    #     AP = 1/2 * 1 + 0 + 1/2 * 2/3 = 5/6.
    # AUC: pairs (fake, real): (0.8, 0.4) (0.8, 0.1) (0.35, 0.1) won, (0.35, 0.4) lost -> 3/4.
    # acc at 0.5: 0.8 fake ok, 0.35 called real (wrong), both reals ok -> 3/4; real 1, fake 1/2.
    m = subset_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert m["ap"] == pytest.approx(5 / 6) and m["auc"] == pytest.approx(3 / 4)
    assert (m["acc"], m["real_acc"], m["fake_acc"]) == (0.75, 1.0, 0.5)
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_ties_count_half_and_form_one_threshold():
    # fakes 0.5, 0.9, 0.5; reals 0.5, 0.2.
    # AUC: 0.9 beats both reals (2); each fake 0.5 ties the real 0.5 (1/2) and beats 0.2 (1) -> 2 + 1.5 + 1.5 = 5 of 6.
    # AP: 0.9 -> P=1, R=1/3; the tied group at 0.5 enters together: TP=3, FP=1 -> P=3/4, R=1.
    #     AP = 1/3 * 1 + 2/3 * 3/4 = 5/6.
    scores, labels = [0.5, 0.5, 0.2, 0.9, 0.5], [1, 0, 0, 1, 1]
    assert roc_auc(scores, labels) == pytest.approx(5 / 6)
    assert average_precision(scores, labels) == pytest.approx(5 / 6)
    # the order of tied items does not matter
    assert average_precision([0.5, 0.5, 0.5, 0.2, 0.9], [0, 1, 1, 0, 1]) == pytest.approx(5 / 6)
    # threshold: 0.5 is not above 0.5, so the tied items are called real
    # acc: only 0.9 is called fake -> right on both reals and on 1 of 3 fakes = 3/5
    assert accuracies(scores, labels) == pytest.approx((3 / 5, 1.0, 1 / 3))


def test_all_tied_is_chance():
    # every pair ties -> AUC 1/2; one threshold accepting everything -> AP = positive rate 2/6.
    assert roc_auc([0.3] * 6, [1, 0, 0, 1, 0, 0]) == 0.5
    assert average_precision([0.3] * 6, [1, 0, 0, 1, 0, 0]) == pytest.approx(1 / 3)


def test_perfect_and_inverted_rankings():
    labels = [0, 0, 0, 1, 1, 1]
    assert roc_auc([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], labels) == 1.0
    assert average_precision([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], labels) == 1.0
    assert roc_auc([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], labels) == 0.0
    # inverted: fakes at ranks 4, 5, 6 -> precisions 1/4, 2/5, 3/6, each for recall 1/3: (1/4 + 2/5 + 1/2) / 3
    assert average_precision([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], labels) == pytest.approx((0.25 + 0.4 + 0.5) / 3)


def test_matches_brute_force_pair_count_on_random_scores():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(scores, labels) == pytest.approx(brute)


def test_undefined_metrics_are_nan_and_mean_skips_them():
    only_fake = subset_metrics([0.9, 0.2], [1, 1])
    assert math.isnan(only_fake["auc"]) and math.isnan(only_fake["real_acc"]) and only_fake["fake_acc"] == 0.5
    only_real = subset_metrics([0.9, 0.2], [0, 0])
    assert math.isnan(only_real["ap"]) and only_real["real_acc"] == 0.5
    full = subset_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    row = mean_row([{"subset": "a", **only_fake}, {"subset": "b", **full}])
    assert row["subset"] == "mean" and row["n"] == 6 and row["n_fake"] == 4
    assert row["auc"] == pytest.approx(0.75)  # NaN skipped
    assert row["acc"] == pytest.approx((0.5 + 0.75) / 2)  # each subset weighs the same


@pytest.mark.parametrize("scores, labels, needle", [
    ([0.1, 0.2], [0], "2 scores but 1 labels"), ([0.1], [2], "labels must be 0"), ([float("nan")], [1], "NaN"),
])
def test_bad_inputs(scores, labels, needle):
    with pytest.raises(ValueError, match=needle):
        subset_metrics(scores, labels)
