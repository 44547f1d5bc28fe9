"""Metrics against brute-force computations on small hand-made cases."""
import itertools

import numpy as np
import pytest

from faceverify.metrics import (accuracy, best_threshold, equal_error_rate, kfold_accuracy, roc_auc,
                                tar_at_far, verification_report)

pytestmark = pytest.mark.data_free

SCORES = np.array([0.9, 0.8, 0.75, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2, 0.1])
SAME = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], bool)


def brute_auc(scores, same):
    """P(genuine score > impostor score) + half the ties, over all pairs."""
    gen, imp = scores[same], scores[~same]
    wins = sum((g > i) + 0.5 * (g == i) for g, i in itertools.product(gen, imp))
    return wins / (len(gen) * len(imp))


def brute_best_accuracy(scores, same):
    candidates = np.r_[scores, scores + 1e-9, -np.inf, np.inf]
    return max(np.mean((scores >= t) == same) for t in candidates)


def test_auc_matches_pair_counting():
    assert roc_auc(SCORES, SAME) == pytest.approx(brute_auc(SCORES, SAME))
    tied = np.array([0.5, 0.5, 0.5, 0.7])
    same = np.array([1, 0, 1, 0], bool)
    assert roc_auc(tied, same) == pytest.approx(brute_auc(tied, same))


def test_best_threshold_reaches_brute_force_accuracy():
    t = best_threshold(SCORES, SAME)
    assert accuracy(SCORES, SAME, t) == pytest.approx(brute_best_accuracy(SCORES, SAME))
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores, same = rng.normal(size=30), rng.random(30) < 0.5
        same[:2] = [True, False]
        assert accuracy(scores, same, best_threshold(scores, same)) == pytest.approx(
            brute_best_accuracy(scores, same))


def test_eer_on_separable_and_symmetric_cases():
    assert equal_error_rate([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(0.0)
    # one genuine below one impostor among 4 + 4: FAR = FRR = 1/4 at the crossing
    assert equal_error_rate([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.05],
                            [1, 1, 1, 1, 0, 0, 0, 0]) == pytest.approx(0.25)


def test_tar_at_far_and_resolvability():
    # 5 impostors: FAR 0.2 allows one false accept (the 0.75), FAR 0.1 is not resolvable
    tar, threshold = tar_at_far(SCORES, SAME, 0.2)
    accepted = SCORES >= threshold
    assert np.mean(accepted[~SAME]) <= 0.2
    assert tar == pytest.approx(np.mean(accepted[SAME])) and tar == pytest.approx(0.6)
    assert tar_at_far(SCORES, SAME, 0.1) is None


def test_kfold_chooses_threshold_on_other_folds():
    # fold 0 alone is split perfectly at 0.5; fold 1 only between 0.85 and 0.9: each fold is
    # judged with the threshold of the other
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.95, 0.9, 0.85, 0.8])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    accs, thresholds = kfold_accuracy(scores, same, folds)
    assert 0.85 < thresholds[0] < 0.9  # chosen on fold 1
    assert accs[0] == pytest.approx(0.75)  # 0.8 genuine falls below fold 1's threshold
    assert accs[0] == pytest.approx(np.mean((scores[:4] >= thresholds[0]) == same[:4]))
    assert accs[1] == pytest.approx(np.mean((scores[4:] >= thresholds[1]) == same[4:]))


def test_failed_pairs_count_as_errors():
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    same = np.array([1, 1, 0, 0], bool)
    valid = np.array([True, False, True, False])
    report = verification_report(scores, same, [0, 1, 0, 1], valid)
    assert report.failed_pairs == 2
    assert accuracy(scores, same, 0.5, valid) == pytest.approx(0.5)
    assert report.auc < 1.0


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="both genuine and impostor"):
        roc_auc([0.1, 0.2], [1, 1])


def test_all_pairs_of_a_labelled_set_against_brute_force():
    from faceverify.align import ARCFACE_112
    from faceverify.evaluation import AlignedIdentities, all_pairs_scores

    rng = np.random.default_rng(3)
    n = 11
    vectors = rng.normal(size=(n, 4)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4])
    crops = np.zeros((n, 112, 112, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(n)  # each crop says which vector it stands for
    ok = np.ones(n, bool)
    ok[4] = False  # a photo without a face takes part in no pair
    aligned = AlignedIdentities((crops,), (ARCFACE_112,), "mtcnn", ok, labels, ["a", "b", "c", "d", "e"],
                                {"x": "no face"})
    genuine, impostor = aligned.scores(lambda c: vectors[c[:, 0, 0, 0]])
    blocked = all_pairs_scores(aligned.embeddings(lambda c: vectors[c[:, 0, 0, 0]])[ok], labels[ok], block=3)
    np.testing.assert_array_equal(np.sort(blocked[1]), np.sort(impostor))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if ok[i] and ok[j]]
    expected_gen = sorted(unit[i] @ unit[j] for i, j in pairs if labels[i] == labels[j])
    expected_imp = sorted(unit[i] @ unit[j] for i, j in pairs if labels[i] != labels[j])
    np.testing.assert_allclose(sorted(genuine), expected_gen, atol=1e-6)
    np.testing.assert_allclose(sorted(impostor), expected_imp, atol=1e-6)


def test_all_pairs_report_resolves_low_fars_only_with_enough_impostors():
    from faceverify.metrics import all_pairs_report

    rng = np.random.default_rng(4)
    genuine, impostor = rng.normal(2, 1, 500), rng.normal(0, 1, 20_000)
    report = all_pairs_report(genuine, impostor)
    assert report["tar_at_far"]["1e-05"] is None and report["tar_at_far"]["1e-06"] is None
    hit = report["tar_at_far"]["0.001"]
    assert hit["impostors_accepted"] <= 20 and hit["tar"] == np.mean(genuine >= hit["threshold"])
    assert report["auc"] == pytest.approx(brute_auc(np.r_[genuine[:50], impostor[:200]],
                                                    np.r_[np.ones(50, bool), np.zeros(200, bool)]), abs=0.03)


@pytest.mark.data_free
def test_template_comparisons_against_brute_force():
    """Each identity with more than 2 photos: template = re-normalised mean of its first two; its
    other photos are genuine probes, everyone else's photos impostor probes."""
    from faceverify.evaluation import template_scores

    rng = np.random.default_rng(4)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    vectors = rng.normal(size=(len(labels), 5))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    genuine, impostor = template_scores(vectors, labels, block=3)
    expected_gen, expected_imp = [], []
    for identity in (0, 2):  # 1 and 3 have no photo beyond a template's two
        rows = np.flatnonzero(labels == identity)
        template = vectors[rows[:2]].mean(axis=0)
        template /= np.linalg.norm(template)
        expected_gen += [vectors[r] @ template for r in rows[2:]]
        expected_imp += [vectors[r] @ template for r in np.flatnonzero(labels != identity)]
    np.testing.assert_allclose(sorted(genuine), sorted(expected_gen), atol=1e-12)
    np.testing.assert_allclose(sorted(impostor), sorted(expected_imp), atol=1e-12)
