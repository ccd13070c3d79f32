"""Two-stage retrieval for large galleries (docs/evaluation_engine.md §6).

Stage 1 ranks every video for every text by the Δ-free coarse score cos(t_a, f̄_b), f̄_b the
unit mean of the real frames of video b (:func:`~tvr.evaluation.engine.coarse_vectors`: one
d-dimensional dot product per pair), an exact maximum inner product search. Stage 2 re-scores
the best K of each text with the exact GARE score of a :class:`SimilarityEngine`, each distinct
candidate once. With K equal to the gallery size, stage 2 gives the engine's scores.

- :class:`Gallery`: videos held as features (frames, mask, stage-1 vectors), as a video index
  holds them (tvr/index/search.py). Stage 1 is :class:`Stage1Search`, in float32: faiss
  (``IndexFlatIP``, multi-threaded BLAS) when faiss is installed, else blocked matrix products
  in torch. Stage 2 prepares the candidates' videos for the engine on every call, so the
  per-video work is done for the candidates only.
- :func:`two_stage_scores`: texts and videos already prepared by the engine (an evaluation
  split). Stage 1 is :meth:`SimilarityEngine.coarse_score`, in the engine's dtype, ties to the
  lower index; the result is a full (N_t, N_v) score matrix.
- :func:`topk_containment` measures how much of the full GARE top-10 the K candidates keep (the
  GARE paper reports that K = 256 keeps all of it on MSR-VTT).
"""
from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from tvr.evaluation.config import Stage1
from tvr.evaluation.engine import Prepared, SimilarityEngine

PREPARE_CHUNK = 4096  # videos prepared at once by Gallery.scores
_FILL_OFFSET = 3.0  # coarse cosine - 3 <= -2 < -1 <= every GARE cosine


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the k best entries per row, best first; ties go to the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def score_candidates(score_rows: Callable[[Tensor], Tensor], candidates: Tensor) -> Tensor:
    """Stage 2: the (Q, K) scores of ``candidates`` (Q, K), each distinct video scored once:
    ``score_rows(union)`` gives the (Q, U) scores of the sorted union of the candidates."""
    union, local = torch.unique(candidates, sorted=True, return_inverse=True)
    return score_rows(union).gather(1, local)


class Stage1Search:
    """Exact maximum inner product search over the rows of ``vectors`` (N, d)."""

    def __init__(self, vectors: Tensor, backend: Stage1 = "auto", block: int = 65536):
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend not in ("faiss", "torch"):
            raise ValueError(f"stage-1 backend must be auto, faiss or torch, got {backend!r}")
        self.backend, self.block = backend, block
        self.vectors = vectors.float().contiguous()
        if backend == "faiss":
            import faiss
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors.numpy())

    def top(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, indices), each (Q, k), best first, for unit-norm (Q, d) ``queries``."""
        k = min(k, len(self.vectors))
        if self.backend == "faiss":
            scores, indices = self._faiss.search(queries.float().contiguous().numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(indices)
        best = None
        for start in range(0, len(self.vectors), self.block):
            scores = queries.float() @ self.vectors[start:start + self.block].T
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            found = (top.values, top.indices + start)
            if best is not None:
                merged = torch.cat([best[0], found[0]], 1), torch.cat([best[1], found[1]], 1)
                order = merged[0].topk(k, dim=1).indices
                found = merged[0].gather(1, order), merged[1].gather(1, order)
            best = found
        return best

    def candidates(self, text: Tensor, k: int) -> Tensor:
        """(Q, k) rows, best first, by the cosine with the sentence embeddings ``text`` (Q, d)."""
        return self.top(text / text.norm(dim=-1, keepdim=True).clamp_min(1e-12), k)[1]


class Found(NamedTuple):
    """best: (Q, top) rows, best first (ties in candidate order); candidates: (Q, K) the rows
    scored with GARE; scores: (Q, K) their GARE scores (float32)."""

    best: Tensor
    candidates: Tensor
    scores: Tensor


class Gallery:
    """Videos held as features, searched in two stages: ``frames`` (N, F, d) and ``mask``
    (N, F) for GARE, ``coarse`` (N, d) the stage-1 vectors of :class:`Stage1Search`."""

    def __init__(self, frames: Tensor, mask: Tensor, coarse: Tensor, stage1: Stage1 = "auto"):
        self.frames, self.mask = frames, mask
        self.stage1 = Stage1Search(coarse, stage1)

    def __len__(self) -> int:
        return len(self.frames)

    @torch.no_grad()
    def candidates(self, text: Tensor, k: int, exhaustive: bool = False) -> Tensor:
        """(Q, K) rows to score with GARE for sentence embeddings ``text``: the stage-1 top
        ``k`` of each, best first, or every row (``exhaustive``); on the device of
        ``frames`` (stage 1 runs where its vectors are)."""
        if exhaustive:
            return torch.arange(len(self), device=self.frames.device).expand(len(text), -1)
        rows = self.stage1.candidates(text.to(self.stage1.vectors.device), k)
        return rows.to(self.frames.device)

    @torch.no_grad()
    def scores(self, engine: SimilarityEngine, text: Tensor, rows: Tensor) -> Tensor:
        """GARE scores (Q, V), float32, of sentence embeddings ``text`` against the videos
        ``rows``, prepared :data:`PREPARE_CHUNK` at a time."""
        texts = engine.prepare_texts(text)
        out = []
        for start in range(0, len(rows), PREPARE_CHUNK):
            chunk = rows[start:start + PREPARE_CHUNK]
            out.append(engine.score(texts, engine.prepare_videos(self.frames[chunk],
                                                                 self.mask[chunk])))
        return torch.cat(out, dim=1).float()

    @torch.no_grad()
    def rescore(self, engine: SimilarityEngine, text: Tensor, candidates: Tensor,
                top: int) -> Found:
        """Stage 2: GARE on ``candidates`` (Q, K), and the ``top`` best of each sentence."""
        scores = score_candidates(lambda union: self.scores(engine, text, union), candidates)
        return Found(candidates.gather(1, top_indices(scores, top)), candidates, scores)

    def search(self, engine: SimilarityEngine, text: Tensor, top: int, k: int,
               exhaustive: bool = False) -> Found:
        """Both stages: the ``top`` best of the stage-1 top ``k`` (or of every row)."""
        return self.rescore(engine, text, self.candidates(text, k, exhaustive), top)


class TwoStageResult(NamedTuple):
    """scores: (N_t, N_v), GARE scores on the candidates, ``fill`` elsewhere.
    candidates: (N_t, K) stage-1 top-K video indices, best first (ties: lower index first)."""

    scores: Tensor
    candidates: Tensor


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
        scores[rows], top = _two_stage_block(engine, texts.select(rows), videos, k, fill)
        candidates.append(top)
    return TwoStageResult(scores, torch.cat(candidates))


def _two_stage_block(engine: SimilarityEngine, texts: Prepared, videos: Prepared, k: int,
                     fill: str) -> tuple[Tensor, Tensor]:
    """The (T, N_v) scores of one chunk of texts and its (T, k) candidates."""
    coarse = engine.coarse_score(texts, videos)
    top = top_indices(coarse, k)
    fine = score_candidates(lambda union: engine.score(texts, videos.select(union)), top)
    block = coarse - _FILL_OFFSET if fill == "stage1" else torch.full_like(coarse, float("-inf"))
    return block.scatter(1, top, fine), top


def topk_containment(full_scores: Tensor, candidates: Tensor, top: int = 10) -> dict[str, float]:
    """How much of the full GARE top-``top`` (ties: lower index first) lies in the candidates.

    Returns ``items``: the fraction of (text, top item) pairs inside the text's candidates, and
    ``queries``: the fraction of texts whose whole top-``top`` is inside.
    """
    if candidates.shape[0] != full_scores.shape[0]:
        raise ValueError(f"candidates {tuple(candidates.shape)} do not match scores "
                         f"{tuple(full_scores.shape)}")
    best = top_indices(full_scores, min(top, full_scores.shape[1]))
    inside = (best.unsqueeze(2) == candidates.unsqueeze(1)).any(dim=2)
    return {"items": inside.double().mean().item(),
            "queries": inside.all(dim=1).double().mean().item()}
