"""Metrics against values computed by hand in the comments, and against independent brute-force
definitions (pair counts, threshold sweeps) on random scores with ties."""
import math

import numpy as np
import pytest

from dgsnet.metrics import (accuracies, average_precision, check_threshold, equal_error_rate, mean_row, pr_points,
                            roc_auc, roc_points, subset_metrics)


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
    # generated images only: every ranking has AP 1, which says nothing, so it is undefined (was 1.0)
    assert math.isnan(only_fake["ap"]) and math.isnan(only_fake["eer"]) and math.isnan(only_fake["eer_threshold"])
    only_real = subset_metrics([0.9, 0.2], [0, 0])
    assert math.isnan(only_real["ap"]) and only_real["real_acc"] == 0.5 and math.isnan(only_real["eer"])
    full = subset_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    row = mean_row([{"subset": "a", **only_fake}, {"subset": "b", **full}])
    assert row["subset"] == "mean" and row["n"] == 6 and row["n_fake"] == 4
    assert row["auc"] == pytest.approx(0.75)  # NaN skipped
    assert row["ap"] == pytest.approx(5 / 6) and row["eer"] == 0.5  # the one-class subset is left out
    assert "eer_threshold" not in row  # a mean of thresholds calls nothing
    assert row["acc"] == pytest.approx((0.5 + 0.75) / 2)  # each subset weighs the same


@pytest.mark.parametrize("scores, labels, needle", [
    ([0.1, 0.2], [0], "2 scores but 1 labels"), ([0.1], [2], "labels must be 0"), ([float("nan")], [1], "NaN"),
])
def test_bad_inputs(scores, labels, needle):
    with pytest.raises(ValueError, match=needle):
        subset_metrics(scores, labels)


# ---------------------------------------------------------------- independent definitions


def brute_auc(scores, labels):
    """Mann-Whitney: the fraction of (generated, real) pairs the generated image wins, ties 1/2."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def brute_ap(scores, labels):
    """Step-wise sum over distinct thresholds t (high to low), calling `score >= t` generated:
    (recall(t) - previous recall) * precision(t)."""
    total, previous = 0.0, 0.0
    positives = sum(labels)
    for t in sorted(set(scores), reverse=True):
        called = [y for s, y in zip(scores, labels) if s >= t]
        recall = sum(called) / positives
        total += (recall - previous) * sum(called) / len(called)
        previous = recall
    return total


def brute_eer(scores, labels):
    """Sweep every decision `score > t` (t at each distinct score, and below them all): the one
    where the error rates on reals and on generated images are closest (then the smaller worse
    one, then the higher t); their mean and t."""
    reals = [s for s, y in zip(scores, labels) if y == 0]
    fakes = [s for s, y in zip(scores, labels) if y == 1]
    best = None
    for t in sorted(set(scores), reverse=True) + [min(scores) - 1e-9]:
        fpr = sum(s > t for s in reals) / len(reals)
        fnr = sum(s <= t for s in fakes) / len(fakes)
        key = (abs(fnr - fpr), max(fnr, fpr), -t)
        if best is None or key < best[0]:
            best = (key, (fpr + fnr) / 2, t)
    return best[1], best[2]


@pytest.mark.parametrize("seed, levels", [(0, 10), (1, 3), (2, 1000), (3, 2)])
def test_against_independent_definitions_with_ties(seed, levels):
    rng = np.random.default_rng(seed)
    n = 40 + seed
    scores = (rng.integers(0, levels, n) / levels).tolist()  # few levels: many ties
    labels = rng.integers(0, 2, n).tolist()
    assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(brute_ap(scores, labels), abs=1e-12)
    eer, threshold = equal_error_rate(scores, labels)
    want_eer, want_t = brute_eer(scores, labels)
    assert eer == pytest.approx(want_eer, abs=1e-12)
    assert threshold == pytest.approx(want_t, abs=1e-6)
    # the threshold reproduces its operating point: the EER is the mean of the two error rates there
    _, real_acc, fake_acc = accuracies(scores, labels, threshold)
    assert eer == pytest.approx(((1 - real_acc) + (1 - fake_acc)) / 2, abs=1e-12)


def test_curves_match_the_scalar_metrics():
    rng = np.random.default_rng(5)
    scores, labels = np.round(rng.random(50), 1), rng.integers(0, 2, 50)
    fpr, tpr, _ = roc_points(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, labels))  # ties: a diagonal step, 1/2
    recall, precision = pr_points(scores, labels)
    assert np.sum(np.diff(np.r_[0, recall]) * precision) == pytest.approx(average_precision(scores, labels))


def test_all_equal_scores_and_batch_of_one():
    # every score equal: no ranking at all -> AUC 1/2, AP = positive rate, EER 1/2
    m = subset_metrics([0.7] * 5, [1, 0, 0, 1, 0])
    assert (m["auc"], m["eer"]) == (0.5, 0.5) and m["ap"] == pytest.approx(2 / 5)
    one = subset_metrics([0.9], [1])  # a batch of one image: one class
    assert (one["n"], one["acc"], one["fake_acc"]) == (1, 1.0, 1.0)
    assert all(math.isnan(one[k]) for k in ("ap", "auc", "eer", "eer_threshold", "real_acc"))
    two = subset_metrics([0.2, 0.9], [0, 1])
    assert (two["ap"], two["auc"], two["eer"]) == (1.0, 1.0, 0.0) and 0.2 <= two["eer_threshold"] < 0.9


def test_threshold_sets_the_accuracy_columns():
    # probabilities 0.3 (real) 0.6 (real) 0.55 (fake) 0.8 (fake): at 0.5 the reals score 1/2, the fakes 2/2;
    # at 0.7 only 0.8 is called generated: reals 2/2, fakes 1/2
    scores, labels = [0.3, 0.6, 0.55, 0.8], [0, 0, 1, 1]
    low, high = subset_metrics(scores, labels, 0.5), subset_metrics(scores, labels, 0.7)
    assert (low["acc"], low["real_acc"], low["fake_acc"]) == (0.75, 0.5, 1.0)
    assert (high["acc"], high["real_acc"], high["fake_acc"]) == (0.75, 1.0, 0.5)
    assert low["ap"] == high["ap"] and low["eer"] == high["eer"]  # threshold-free metrics


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_threshold_must_be_a_probability(bad):
    with pytest.raises(ValueError, match="--threshold .*strictly between 0 and 1"):
        check_threshold(bad)
