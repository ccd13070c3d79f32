"""Two-stage retrieval for large galleries (docs/evaluation_engine.md §6).

Stage 1 ranks every video for every text with the Δ-free coarse score cos(t_a, f̄_b), f̄_b the
mean of the real frames of video b (:meth:`SimilarityEngine.coarse_score`: one d-dimensional
dot product per pair). Stage 2 re-scores the top K of each text with the exact GARE score of the
engine. :func:`topk_containment` measures how much of the full GARE top-10 the K candidates keep
(the GARE paper reports that K = 256 keeps all of it on MSR-VTT).
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from tvr.evaluation.engine import Prepared, SimilarityEngine

_FILL_OFFSET = 3.0  # coarse cosine - 3 <= -2 < -1 <= every GARE cosine


class TwoStageResult(NamedTuple):
    """scores: (N_t, N_v), GARE scores on the candidates, ``fill`` elsewhere.
    candidates: (N_t, K) stage-1 top-K video indices, best first (ties: lower index first)."""

    scores: Tensor
    candidates: Tensor


def _top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the k best entries per row, best first; ties go to the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def two_stage_scores(engine: SimilarityEngine, texts: Prepared, videos: Prepared, k: int,
                     fill: Literal["stage1", "-inf"] = "stage1") -> TwoStageResult:
    """Stage-1 top-``k`` per text, re-scored with GARE through ``engine``.

    Non-candidates get ``fill``: "stage1" = their coarse cosine − 3 (below every GARE cosine,
    so they rank after the K candidates in stage-1 order) or "-inf". With k = N_v the scores
    equal ``engine.score(texts, videos)``. Texts are processed in chunks; each chunk scores the
    union of its candidates with the engine (within its memory budget) and keeps its own K.
    """
    n_t, n_v = len(texts), len(videos)
    if not 1 <= k <= n_v:
        raise ValueError(f"k must be in [1, {n_v}], got {k}")
    if fill not in ("stage1", "-inf"):
        raise ValueError(f"fill must be 'stage1' or '-inf', got {fill!r}")
    n_frames = videos.parts["mask"].shape[1]
    pairs = max(1, engine.memory_budget_bytes // engine.bytes_per_pair(n_frames))
    chunk = max(1, min(n_t, math.isqrt(pairs // k), pairs // n_v))
    scores = torch.empty(n_t, n_v, dtype=engine.dtype, device=texts.parts["text"].device)
    candidates = []
    for start in range(0, n_t, chunk):
        rows = slice(start, min(n_t, start + chunk))
        coarse = engine.coarse_score(texts.select(rows), videos)
        top = _top_indices(coarse, k)
        union, local = torch.unique(top, sorted=True, return_inverse=True)
        fine = engine.score(texts.select(rows), videos.select(union)).gather(1, local)
        block = coarse - _FILL_OFFSET if fill == "stage1" else torch.full_like(coarse, float("-inf"))
        scores[rows] = block.scatter(1, top, fine)
        candidates.append(top)
    return TwoStageResult(scores, torch.cat(candidates))


def topk_containment(full_scores: Tensor, candidates: Tensor, top: int = 10) -> dict[str, float]:
    """How much of the full GARE top-``top`` (ties: lower index first) lies in the candidates.

    Returns ``items``: the fraction of (text, top item) pairs inside the text's candidates, and
    ``queries``: the fraction of texts whose whole top-``top`` is inside.
    """
    if candidates.shape[0] != full_scores.shape[0]:
        raise ValueError(f"candidates {tuple(candidates.shape)} do not match scores "
                         f"{tuple(full_scores.shape)}")
    best = _top_indices(full_scores, min(top, full_scores.shape[1]))
    inside = (best.unsqueeze(2) == candidates.unsqueeze(1)).any(dim=2)
    return {"items": inside.double().mean().item(), "queries": inside.all(dim=1).double().mean().item()}
