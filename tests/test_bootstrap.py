"""Bootstrap intervals of R@k (tvr/evaluation/bootstrap.py): coverage, pairing, seeds, errors."""
from __future__ import annotations


import numpy as np
import pytest

from tvr.evaluation.bootstrap import Difference, Interval, paired_difference, recall_interval


def synthetic_ranks(rng: np.random.Generator, queries: int, p: float) -> np.ndarray:
    """Rank 1 with probability ``p``, else a rank from 2 to 100."""
    hit = rng.random(queries) < p
    return np.where(hit, 1, rng.integers(2, 101, size=queries))


def test_the_95_percent_interval_covers_the_true_recall_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for repetition in range(200):
        interval = recall_interval(synthetic_ranks(rng, 500, 0.45), reps=400, seed=repetition)
        assert interval.low <= interval.estimate <= interval.high
        covered += interval.low <= 45.0 <= interval.high
    assert 180 <= covered <= 198, covered


def test_the_estimate_is_recall_at_k_in_percent_and_the_seed_fixes_the_interval() -> None:
    ranks = [1, 1, 3, 7, 12, 60, 2, 1]
    assert recall_interval(ranks, k=1).estimate == pytest.approx(37.5)
    assert recall_interval(ranks, k=5).estimate == pytest.approx(62.5)
    assert recall_interval(ranks, seed=4) == recall_interval(ranks, seed=4)
    assert recall_interval(ranks, seed=4) != recall_interval(ranks, seed=5)
    assert isinstance(recall_interval(ranks), Interval)


def test_seeds_are_averaged_and_share_the_resampled_queries() -> None:
    rng = np.random.default_rng(1)
    runs = np.stack([synthetic_ranks(rng, 300, p) for p in (0.3, 0.4, 0.5)])
    per_seed = [recall_interval(run).estimate for run in runs]
    assert recall_interval(runs).estimate == pytest.approx(np.mean(per_seed))
    # the same query indices for every seed: two identical seeds give one seed's interval
    # (independent draws per seed would narrow it)
    assert recall_interval(np.stack([runs[0], runs[0]])) == pytest.approx(recall_interval(runs[0]))


def test_a_clear_paired_difference_is_significant_where_separate_intervals_overlap() -> None:
    rng = np.random.default_rng(2)
    better = synthetic_ranks(rng, 1000, 0.5)
    worse = better.copy()
    worse[np.flatnonzero(better == 1)[:30]] = 4   # 30 of the same queries lose their hit
    difference = paired_difference(better, worse)
    assert isinstance(difference, Difference) and difference.significant
    assert difference.estimate == pytest.approx(3.0) and 0 < difference.low < 3.0 < difference.high
    a, b = recall_interval(better), recall_interval(worse)
    assert b.high > a.low  # unpaired, the two intervals overlap: pairing is what separates them


def test_an_identical_pair_is_not_significant() -> None:
    ranks = synthetic_ranks(np.random.default_rng(3), 400, 0.4)
    same = paired_difference(ranks, ranks)
    assert same == Difference(0.0, 0.0, 0.0, False)
    runs = np.stack([ranks, np.roll(ranks, 1)])
    mixed = paired_difference(runs, runs[::-1])  # the same seeds in another order
    assert mixed.estimate == pytest.approx(0.0) and mixed.low <= 0 <= mixed.high
    assert not mixed.significant


def test_each_side_of_a_pair_has_its_own_seeds() -> None:
    rng = np.random.default_rng(4)
    a = np.stack([synthetic_ranks(rng, 200, 0.6) for _ in range(3)])
    b = synthetic_ranks(rng, 200, 0.2)
    difference = paired_difference(a, b, k=1)
    expected = recall_interval(a).estimate - recall_interval(b).estimate
    assert difference.estimate == pytest.approx(expected)


@pytest.mark.parametrize("ranks, match", [
    ([], r"shape \(0,\)"),
    (np.ones((2, 0)), r"shape \(2, 0\)"),
    (np.ones((2, 3, 4)), r"shape \(2, 3, 4\)"),
    ([1, 0, 2], "1-based"),
])
def test_bad_ranks_are_refused_naming_the_shape(ranks, match) -> None:
    with pytest.raises(ValueError, match=match):
        recall_interval(ranks)


def test_a_pair_over_different_queries_is_refused_naming_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"shapes \(5,\) and \(2, 6\)"):
        paired_difference(np.ones(5), np.ones((2, 6)))
    with pytest.raises(ValueError, match=r"ranks_b: .*shape \(0,\)"):
        paired_difference(np.ones(5), [])
    with pytest.raises(ValueError, match="level"):
        recall_interval([1, 2], level=1.5)

