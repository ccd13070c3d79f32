"""Two-stage retrieval for large galleries (docs/evaluation_engine.md §6).

Stage 1 ranks every video for every text by a Δ-free coarse score: cos(t_a, f̄_b), f̄_b the
unit mean of the real frames of video b (:func:`~tvr.evaluation.engine.coarse_vectors`: one
d-dimensional dot product per pair), or, for a video index, the best cosine of a few stage-1
vectors per video (the mean and the frames farthest from it,
:func:`~tvr.evaluation.engine.stage1_vectors`), an exact or approximate maximum inner product
search. Stage 2 re-scores the best K of each text with the exact GARE score of a
:class:`SimilarityEngine`, each distinct candidate once. With K equal to the gallery size,
stage 2 gives the engine's scores.

- :class:`Gallery`: videos stored as the engine's compact prepared state (a video index's
  memory-mapped shards, tvr/index/store.py). Stage 1 is exact (:class:`Stage1Search`, float32:
  faiss ``IndexFlatIP`` when installed, else blocked torch matrix products) or approximate
  (:class:`ApproximateSearch`: a faiss IVF index with 8-bit scalar-quantised vectors,
  :func:`train_ivf`, whose recall :func:`stage1_recall` measures). Stage 2 reads the
  candidates' stored state and does only the per-pair work (docs/evaluation_engine.md §3).
- :func:`two_stage_scores`: texts and videos already prepared by the engine (an evaluation
  split). Stage 1 is :meth:`SimilarityEngine.coarse_score`, in the engine's dtype, ties to the
  lower index; the result is a full (N_t, N_v) score matrix.
- :func:`topk_containment` measures how much of the full GARE top-10 the K candidates keep (the
  GARE paper reports that K = 256 keeps all of it on MSR-VTT).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from tvr.evaluation.config import Stage1
from tvr.evaluation.engine import Prepared, SimilarityEngine

PREPARE_CHUNK = 1024  # videos scored at once by Gallery.scores (their buffers stay under glibc's
# largest mmap threshold, 32 MiB, so they are reused rather than mapped and faulted in anew)
IVF_PROBE_SHARE = 8  # an IVF stage 1 probes 1 / IVF_PROBE_SHARE of its lists
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


def score_candidates(score_rows: Callable[[Tensor, Tensor], Tensor], candidates: Tensor
                     ) -> Tensor:
    """Stage 2: the (Q, K) scores of ``candidates`` (Q, K); ``score_rows(queries, rows)`` gives
    the (len(queries), len(rows)) scores of the queries ``queries`` (indices) against the videos
    ``rows`` (sorted). Where the queries share candidates (their union U at most Q·K / 2, or one
    query), every query is scored against the union, each distinct video read once; where their
    candidates mostly differ (sentences on different subjects), each query against its own
    (Q·K pairs instead of Q·U: 20 sentences on as many subjects at K = 2000 would be 800,000
    pairs for 40,000 wanted)."""
    union, local = torch.unique(candidates, sorted=True, return_inverse=True)
    queries = len(candidates)
    if queries == 1 or 2 * len(union) <= candidates.numel():
        return score_rows(torch.arange(queries), union).gather(1, local)
    rows, order = candidates.sort(dim=1)
    own = torch.cat([score_rows(torch.tensor([q]), rows[q]) for q in range(queries)])
    return torch.empty_like(own).scatter_(1, order, own)


class MaxInnerProduct:
    """A stage-1 search: :meth:`top` of unit queries over the gallery's stage-1 vectors, one or
    several per video (:func:`~tvr.evaluation.engine.stage1_vectors`); a video's score is the
    best inner product of its vectors, and each video is listed once."""

    def top(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def candidates(self, text: Tensor, k: int) -> Tensor:
        """(Q, k) rows, best first, by the cosine with the sentence embeddings ``text`` (Q, d)."""
        return self.top(text / text.norm(dim=-1, keepdim=True).clamp_min(1e-12), k)[1]


def by_video(vectors: Tensor) -> Tensor:
    """Stage-1 vectors as (N, S, d): one (N, d) vector per video is S = 1."""
    return vectors.unsqueeze(1) if vectors.dim() == 2 else vectors


def distinct_top(scores: np.ndarray, rows: np.ndarray, k: int, n_rows: int
                 ) -> tuple[Tensor, Tensor]:
    """(scores, rows), each (Q, k), best first: per query the ``k`` best distinct rows of
    ``rows`` (Q, M), each at its best score; rows < 0 are no result. A query with fewer than
    ``k`` distinct rows (an IVF index whose probed lists are short) is completed with the
    lowest rows it lacks, at score -inf, so that every row of the result is a distinct video.
    ``k`` <= ``n_rows``."""
    out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    out_rows = np.empty((len(rows), k), dtype=np.int64)
    for q, (score, row) in enumerate(zip(scores, rows)):
        order = np.argsort(-score, kind="stable")
        score, row = score[order], row[order]
        score, row = score[row >= 0], row[row >= 0]
        first = np.sort(np.unique(row, return_index=True)[1])[:k]
        found = len(first)
        out_scores[q, :found], out_rows[q, :found] = score[first], row[first]
        lacking = np.setdiff1d(np.arange(min(n_rows, k + found)), row[first])
        out_rows[q, found:] = lacking[:k - found]
    return torch.from_numpy(out_scores), torch.from_numpy(out_rows)


class Stage1Search(MaxInnerProduct):
    """Exact maximum inner product search over ``vectors``: (N, d), or (N, S, d) with S
    vectors per video (:class:`MaxInnerProduct`)."""

    def __init__(self, vectors: Tensor, backend: Stage1 = "auto", block: int = 65536):
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend not in ("faiss", "torch"):
            raise ValueError(f"stage-1 backend must be auto, faiss or torch, got {backend!r}")
        self.backend, self.block = backend, block
        self.vectors = by_video(vectors).float().contiguous()
        self.per_video = self.vectors.shape[1]
        if backend == "faiss":
            import faiss
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[2])
            self._faiss.add(self.vectors.flatten(0, 1).numpy())

    def __len__(self) -> int:
        return len(self.vectors)

    def top(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, indices), each (Q, k), best first, for unit-norm (Q, d) ``queries``."""
        k = min(k, len(self.vectors))
        if self.backend == "faiss":
            scores, found = self._faiss.search(queries.float().contiguous().numpy(),
                                               k * self.per_video)
            return distinct_top(scores, np.where(found < 0, -1, found // self.per_video), k,
                                len(self.vectors))
        best = None
        for start in range(0, len(self.vectors), self.block):
            block = self.vectors[start:start + self.block]
            scores = (queries.float() @ block.flatten(0, 1).T).view(len(queries), len(block), -1)
            top = scores.amax(dim=2).topk(min(k, len(block)), dim=1)
            found = (top.values, top.indices + start)
            if best is not None:
                found = _merge(best, found, k)
            best = found
        return best


def _merge(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The best ``k`` of two (scores, indices) lists per query."""
    scores, indices = torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]], 1)
    order = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return scores.gather(1, order), indices.gather(1, order)


def train_ivf(vectors: np.ndarray, ids: np.ndarray, seed: int = 0) -> Any:
    """A faiss IVF index with 8-bit scalar-quantised vectors (inner product) of ``vectors``
    (M, d) float32 under ``ids`` (a video's id once per vector of it): about 4·sqrt(M) lists
    (at least 39 training vectors each), trained on at most 64 vectors per list."""
    import faiss
    n, d = vectors.shape
    lists = max(1, min(int(4 * math.sqrt(n)), n // 39))
    index = faiss.index_factory(d, f"IVF{lists},SQ8", faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).permutation(n)[:64 * lists]
    index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
    index.add_with_ids(vectors, ids)
    index.nprobe = max(1, lists // IVF_PROBE_SHARE)
    return index


def stage1_recall(search: MaxInnerProduct, vectors: Tensor, k: int, queries: int = 200,
                  seed: int = 0) -> float:
    """Share of the exact top-``k`` videos (by :class:`Stage1Search` over ``vectors``, the
    gallery's stage-1 vectors in gallery order) that ``search`` finds, for ``queries`` of the
    gallery's own first vectors (their means), drawn at random, as queries."""
    vectors = by_video(vectors)
    picked = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))
    asked = vectors[picked[:queries], 0].float()
    exact = Stage1Search(vectors, "torch").top(asked, k)[1]
    found = search.top(asked, k)[1]
    return (found.unsqueeze(2) == exact.unsqueeze(1)).any(2).double().mean().item()


class ApproximateSearch(MaxInnerProduct):
    """Stage 1 through a trained faiss IVF index whose ids are the gallery's ``ids`` (sorted, in
    gallery order; a video's id once per stage-1 vector of it, ``per_video`` of them); the
    videos it does not hold (added since it was trained, ``missing``: rows and their vectors)
    are searched exactly, and ids it holds that are gone are skipped."""

    def __init__(self, ivf: Any, ids: np.ndarray, missing: tuple[Tensor, Tensor],
                 per_video: int = 1):
        self.ivf, self.ids, self.per_video = ivf, ids, per_video
        self.missing_rows, self.missing = missing[0], Stage1Search(missing[1], "torch")

    def top(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        k = min(k, len(self.ids))
        scores, found = self.ivf.search(queries.float().contiguous().numpy(),
                                        k * self.per_video)
        rows = np.searchsorted(self.ids, found).clip(0, len(self.ids) - 1)
        rows[(self.ids[rows] != found) | (found < 0)] = -1
        if len(self.missing):
            extra_scores, extra = self.missing.top(queries, k)
            scores = np.concatenate([scores, extra_scores.numpy()], axis=1)
            rows = np.concatenate([rows, self.missing_rows[extra].numpy()], axis=1)
        return distinct_top(scores, rows, k, len(self.ids))


class Found(NamedTuple):
    """best: (Q, top) rows, best first (ties in candidate order); candidates: (Q, K) the rows
    scored with GARE; scores: (Q, K) their GARE scores (float32)."""

    best: Tensor
    candidates: Tensor
    scores: Tensor


class VideoRows(Protocol):
    """Videos stored as prepared parts (``SimilarityEngine.prepare_videos``), e.g. a video
    index's memory-mapped shards."""

    def __len__(self) -> int: ...

    def parts(self, rows: Tensor) -> dict[str, Tensor]: ...


class Scorer(Protocol):
    """What scores a :class:`Gallery`'s candidates, and what a video index keeps per video
    (tvr/index/store.py): a :class:`SimilarityEngine` (GARE), or the cosine scorer of a
    zero-shot index (tvr/index/zero_shot.py). ``prepare_videos`` gives the
    state to store, with the stage-1 vectors under ``"coarse"``; :meth:`adopt` takes the stored
    state back."""

    def prepare_texts(self, text: Tensor) -> Prepared: ...

    def prepare_videos(self, frames: Tensor, mask: Tensor) -> Prepared: ...

    def adopt(self, parts: dict[str, Tensor]) -> Prepared: ...

    def score(self, texts: Prepared, videos: Prepared) -> Tensor: ...


class Gallery:
    """Stored videos searched in two stages: ``stage1`` ranks them all (rows of ``videos``),
    GARE re-scores the candidates from their stored state (no per-video work per query)."""

    def __init__(self, videos: VideoRows, stage1: MaxInnerProduct):
        self.videos, self.stage1 = videos, stage1

    def __len__(self) -> int:
        return len(self.videos)

    @torch.no_grad()
    def candidates(self, text: Tensor, k: int, exhaustive: bool = False) -> Tensor:
        """(Q, K) rows to score with GARE for sentence embeddings ``text``: the stage-1 top
        ``k`` of each, best first, or every row (``exhaustive``, or ``k`` >= the gallery: an
        approximate stage 1 need not return every row)."""
        if exhaustive or k >= len(self):
            return torch.arange(len(self)).expand(len(text), -1)
        return self.stage1.candidates(text.cpu(), k)

    @torch.no_grad()
    def scores(self, engine: Scorer, text: Tensor, rows: Tensor) -> Tensor:
        """GARE scores (Q, V), float32, of sentence embeddings ``text`` against the videos
        ``rows``, read :data:`PREPARE_CHUNK` at a time."""
        texts = engine.prepare_texts(text)
        out = []
        for start in range(0, len(rows), PREPARE_CHUNK):
            parts = self.videos.parts(rows[start:start + PREPARE_CHUNK])
            videos = engine.adopt({k: v.to(text.device) for k, v in parts.items()})
            out.append(engine.score(texts, videos).cpu())
        return torch.cat(out, dim=1).float()

    @torch.no_grad()
    def rescore(self, engine: Scorer, text: Tensor, candidates: Tensor,
                top: int) -> Found:
        """Stage 2: GARE on ``candidates`` (Q, K), and the ``top`` best of each sentence."""
        scores = score_candidates(lambda queries, rows: self.scores(engine, text[queries], rows),
                                  candidates)
        return Found(candidates.gather(1, top_indices(scores, top)), candidates, scores)

    def search(self, engine: Scorer, text: Tensor, top: int, k: int,
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
    equal ``engine.score(texts, videos)``. Texts are processed in chunks; each chunk scores its
    candidates with the engine (:func:`score_candidates`, within its memory budget) and keeps
    its own K.
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
    fine = score_candidates(lambda queries, rows: engine.score(texts.select(queries),
                                                               videos.select(rows)), top)
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
