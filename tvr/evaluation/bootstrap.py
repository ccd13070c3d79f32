"""Confidence intervals of R@k from per-query ranks: the percentile bootstrap over queries.

A test split's queries are a sample; R@k measured on them is an estimate of the recall on
queries like them. The ranks come from a metrics file (``metrics_<name>.json``: ``["ranks"]
[variant][direction]``, tvr/evaluation/evaluate.py), one 1-based rank per query.

Method. A bootstrap replicate draws Q query indices uniformly with replacement and recomputes
the statistic on the queries drawn; the interval at ``level`` is the ``(1 - level) / 2`` and
``(1 + level) / 2`` percentiles of ``reps`` replicates (the percentile bootstrap). The estimate
is the statistic on all queries, not the mean of the replicates.

Seeds. A (S, Q) array holds S runs (training seeds) evaluated on the same Q queries in the
same order. The statistic is R@k averaged over the seeds, and a replicate draws the same query
indices for every seed: the interval is then that of the seed-averaged recall under the
sampling of queries. It does not widen for the spread between seeds (S is usually far too
small to resample); report that spread separately. Since the average over seeds of a mean over
queries is the mean over queries of each query's hit rate over the seeds, the replicates
resample that (Q,) vector of hit rates.

Paired differences. Two methods (each with its own seeds) on the same queries are compared by
resampling the same query indices for both, so the difference keeps the pairing: a query that
is easy for one is easy for the other, and the interval of the difference is much narrower
than two separate intervals suggest. A difference is called significant when its interval
excludes 0.

Everything is vectorised with numpy and seeded (``numpy.random.default_rng(seed)``): the same
inputs and seed give the same interval.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

_CHUNK_ELEMENTS = 1 << 22  # bound on the (replicates x queries) index array drawn at once


class Interval(NamedTuple):
    """R@k in percent on all queries, and the bounds of its bootstrap interval."""
    estimate: float
    low: float
    high: float


class Difference(NamedTuple):
    """R@k(a) - R@k(b) in points, its paired bootstrap interval, and whether that excludes 0."""
    estimate: float
    low: float
    high: float
    significant: bool


def _hit_rates(ranks: ArrayLike, k: int, name: str) -> np.ndarray:
    """(Q,) fraction of the seeds in which each query's rank is at most ``k``."""
    array = np.asarray(ranks, dtype=float)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name}: expected ranks of shape (Q,) or (S, Q) with Q, S >= 1, got "
                         f"shape {np.shape(ranks)}")
    if not (array >= 1).all():
        raise ValueError(f"{name}: ranks are 1-based; found {array.min()}")
    return (array <= k).mean(axis=0)


def _percentile_interval(values: np.ndarray, reps: int, level: float,
                         seed: int) -> tuple[float, float, float]:
    """100 x the mean of ``values`` and the percentile-bootstrap interval of it, resampling
    its entries (the queries) with replacement ``reps`` times."""
    if reps < 1 or not 0 < level < 1:
        raise ValueError(f"need reps >= 1 and 0 < level < 1, got reps={reps}, level={level}")
    rng = np.random.default_rng(seed)
    count = len(values)
    chunk = max(1, _CHUNK_ELEMENTS // count)
    draws = (rng.integers(0, count, size=(min(chunk, reps - start), count))
             for start in range(0, reps, chunk))
    means = np.concatenate([values[index].mean(axis=1) for index in draws])
    low, high = np.percentile(100.0 * means, [50.0 * (1 - level), 50.0 * (1 + level)])
    return 100.0 * float(values.mean()), float(low), float(high)


def recall_interval(ranks: ArrayLike, k: int = 1, reps: int = 2000, level: float = 0.95,
                    seed: int = 0) -> Interval:
    """R@k (percent, averaged over seeds) of ``ranks``, (Q,) or (S, Q), with its ``level``
    percentile-bootstrap interval over the queries (module docstring)."""
    return Interval(*_percentile_interval(_hit_rates(ranks, k, "ranks"), reps, level, seed))


def paired_difference(ranks_a: ArrayLike, ranks_b: ArrayLike, k: int = 1, reps: int = 2000,
                      level: float = 0.95, seed: int = 0) -> Difference:
    """R@k(a) - R@k(b) in points, each averaged over its own seeds, with the paired bootstrap
    interval (the same query indices for both; module docstring). ``ranks_a`` and ``ranks_b``
    are each (Q,) or (S, Q) over the same Q queries in the same order."""
    hits_a, hits_b = _hit_rates(ranks_a, k, "ranks_a"), _hit_rates(ranks_b, k, "ranks_b")
    if len(hits_a) != len(hits_b):
        raise ValueError(f"ranks_a and ranks_b must rank the same queries, got shapes "
                         f"{np.shape(ranks_a)} and {np.shape(ranks_b)}")
    estimate, low, high = _percentile_interval(hits_a - hits_b, reps, level, seed)
    return Difference(estimate, low, high, bool(low > 0 or high < 0))
