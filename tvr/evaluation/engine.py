"""Bounded-memory, exact evaluation engine for the GARE similarity (docs/behaviour.md §6, §11).

:class:`SimilarityEngine` scores every text against every video with the numbers of
:class:`~tvr.models.similarity.GapAwareSimilarity` in eval mode (no dropout), without ever
holding a per-pair d-dimensional tensor for more than one block of pairs:

- per-video work (keys, values, Psi's projections of them, small F x F Gram matrices) is done
  once per video in :meth:`SimilarityEngine.prepare_videos`;
- per-text work (norms) once per text in :meth:`SimilarityEngine.prepare_texts`;
- per-pair work in :meth:`SimilarityEngine.score`, for (texts x videos) blocks whose size comes
  from ``memory_budget_bytes``: one or two large matrix products (texts x frames) and O(F²)
  arithmetic per pair.

The "folded" path rewrites Psi algebraically (``folding.py``; docs/evaluation_engine.md).

Folded: the default setting, ``gap_sign`` ±1, ``psi_query`` "gap" or "text", ``delta_side``
"text" or "video", ``normalize_delta`` (a rescaling of the three Δ products,
:func:`~tvr.evaluation.folding.unit_delta`), ``no_delta``, and all their combinations. Not
folded: ``psi_context="words"`` (the context, hence every per-frame precomputation, would
belong to the text); the engine then runs the naive module in blocks (``method == "naive"``)
and warns once (or tells ``log``). ``naive=True`` selects that reference path for any setting.

Self-check (:meth:`SimilarityEngine.verify`, run by :func:`build_engine`): the folding reads a
stock :class:`~tvr.models.similarity.Psi`'s weights by name, so a fork (a subclass computing
something else) or a weight changed after the folding would be scored wrongly, silently. The
check scores a few pairs both ways with the engine's own copy of the module and, on a mismatch,
falls back to the naive path (mode "auto") or raises :class:`EngineCheckError` ("folded").

Precision: "fp64" (check mode), "fp32" (default; TF32 disabled), "tf32" (TF32 matrix products
where the device has them) or "bf16" (bf16 operands in the per-pair product): the folded path
takes differences of nearly equal dot products, so do not rank with bf16 (measured:
docs/evaluation_engine.md §4).

The engine copies the module's weights when built (build a new one after they change);
prepared texts and videos belong to the engine that prepared them.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional, Union

import torch
from torch import Tensor

from tvr.evaluation.config import ENGINE_MODES, EngineMode
from tvr.evaluation.folding import NORM_EPS, Folding, centre
from tvr.models.config import SimilarityConfig
from tvr.models.similarity import GapAwareSimilarity

Precision = Literal["fp64", "fp32", "tf32", "bf16"]
Index = Union[slice, Tensor]
Log = Callable[[str], None]

CHECK_ITEMS = 8  # the self-check scores the first CHECK_ITEMS texts against as many videos
# Largest max |folded - naive| of the self-check's cosine scores, per engine dtype (the check
# always runs at full matmul precision); its margin: docs/evaluation_engine.md §5.
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}
# Folded blocks: at most BLOCK_PAIRS pairs, so that a block's per-pair intermediates stay in the
# caches (larger blocks were slower, bench/RESULTS.md §1), and, where the pairs allow, at least
# BLOCK_VIDEOS videos, so that the per-pair matrix products keep enough rows. prepare_videos takes
# at most PREPARE_VIDEOS videos at a time (larger chunks were fresh, page-faulted memory each time).
BLOCK_PAIRS = 2 ** 16
BLOCK_VIDEOS = 16
PREPARE_VIDEOS = 128


class EngineCheckError(RuntimeError):
    """The folded path disagrees with the per-pair module where mode "folded" was asked for."""


@dataclass(frozen=True)
class Prepared:
    """Per-item tensors of a set of texts or videos, every one indexed by the item first.

    Made by :meth:`SimilarityEngine.prepare_texts` / :meth:`SimilarityEngine.prepare_videos`;
    ``select`` picks a subset (a slice or an index tensor) without recomputing anything.
    """

    kind: Literal["texts", "videos"]
    parts: dict[str, Tensor]
    owner: object

    def __len__(self) -> int:
        return next(iter(self.parts.values())).shape[0]

    def select(self, index: Index) -> "Prepared":
        return Prepared(self.kind, {k: v[index] for k, v in self.parts.items()}, self.owner)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def coarse_vectors(frames: Tensor, mask: Tensor) -> Tensor:
    """(N_v, d) stage-1 vectors: the unit-norm mean of each video's real frames (two-stage
    retrieval ranks videos by the cosine of a text with this vector)."""
    real = mask.sum(1, keepdim=True)
    mean_real = (frames * mask.unsqueeze(-1)).sum(1) / real.clamp_min(1)
    return mean_real / mean_real.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def stage1_vectors(frames: Tensor, mask: Tensor, extra_frames: int) -> Tensor:
    """(N_v, 1 + ``extra_frames``, d) unit stage-1 vectors of each video: its
    :func:`coarse_vectors` mean, then real frames chosen farthest first (the frame least like
    the mean, then each time the frame least like every vector chosen so far). A video's
    stage-1 score is the best cosine of its vectors: GARE's text-conditioned pooling puts most
    of its weight on one frame, which the mean blurs when the frames differ (a moving object;
    bench/RESULTS.md §4). A video with fewer real frames than asked repeats its picks."""
    mean = coarse_vectors(frames, mask)
    unit = frames / frames.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    rows = torch.arange(len(frames), device=frames.device)
    chosen, nearest = [mean], torch.einsum("nfd,nd->nf", unit, mean)
    for _ in range(extra_frames):
        pick = unit[rows, nearest.masked_fill(mask == 0, float("inf")).argmin(dim=1)]
        chosen.append(pick)
        nearest = torch.maximum(nearest, torch.einsum("nfd,nd->nf", unit, pick))
    return torch.stack(chosen, dim=1)


def foldable(config: SimilarityConfig) -> bool:
    """Whether the folded path covers ``config`` (all but ``psi_context="words"`` with a Psi)."""
    return config.no_delta or config.psi_context != "words"


def _report(message: str, log: Optional[Log]) -> None:
    """A fallback message: to ``log`` (e.g. the training log) when given, else a UserWarning."""
    if log is not None:
        log(message)
    else:
        warnings.warn(message, stacklevel=3)


def build_engine(similarity: GapAwareSimilarity, mode: EngineMode = "auto", *, text: Tensor,
                 frames: Tensor, mask: Tensor, memory_budget_bytes: int = 256 * 2**20,
                 precision: Precision = "fp32", log: Optional[Log] = None) -> "SimilarityEngine":
    """A :class:`SimilarityEngine` for ``mode``, self-checked on a sample of the features.

    ``text`` (N_t, d), ``frames`` (N_v, F, d) and ``mask`` (N_v, F) are features of the texts
    and videos to score; :meth:`SimilarityEngine.verify` uses the first :data:`CHECK_ITEMS` of
    each. Word features are not needed: the setting that reads them is not folded, so there is
    nothing to check.

    Modes: "auto" folds where the setting allows it, checks the folded path and falls back to the
    naive path on a mismatch (reported to ``log``, or warned); "folded" insists on the folded
    path: a setting it does not cover is a ValueError and a mismatch an
    :class:`EngineCheckError`; "naive" always runs the per-pair module, unchecked.
    """
    if mode not in ENGINE_MODES:
        raise ValueError(f"mode must be one of {ENGINE_MODES}, got {mode!r}")
    if mode == "folded" and not foldable(similarity.config):
        raise ValueError("the folded engine was asked for, but psi_context='words' is not "
                         "folded; use the naive (or auto) engine")
    engine = SimilarityEngine(similarity, memory_budget_bytes, precision,
                              naive=mode == "naive", log=log)
    engine.verify(text, frames, mask, strict=mode == "folded", log=log)
    return engine


class SimilarityEngine:
    """All-texts x all-videos GARE scores, exact, in bounded memory (see the module docstring).

    Args:
        similarity: the model's :class:`GapAwareSimilarity` (its weights are copied).
        memory_budget_bytes: bound on the per-pair intermediates of one (texts x videos) block
            and on the per-video intermediates of one chunk in :meth:`prepare_videos`. Not
            counted: the prepared tensors themselves (F·d + O(F²) numbers per video in the
            folded path) and the (N_t, N_v) output.
        precision: "fp64", "fp32", "tf32" or "bf16" (module docstring).
        naive: use the naive per-pair module in blocks even where the folded path applies.
        log: where the message of a fallback goes (e.g. the training log); by default it is a
            UserWarning.
    """

    def __init__(self, similarity: GapAwareSimilarity, memory_budget_bytes: int = 256 * 2**20,
                 precision: Precision = "fp32", naive: bool = False,
                 log: Optional[Log] = None) -> None:
        if precision not in ("fp64", "fp32", "tf32", "bf16"):
            raise ValueError(f"precision must be fp64, fp32, tf32 or bf16, got {precision!r}")
        if memory_budget_bytes <= 0:
            raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
        self.config = similarity.config
        self.precision = precision
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.dtype = torch.float64 if precision == "fp64" else torch.float32
        self.module = copy.deepcopy(similarity).to(self.dtype).eval()
        self.fallback_reason: Optional[str] = None
        if naive:
            self.fallback_reason = "the naive path was asked for"
        elif not foldable(self.config):
            self.fallback_reason = "psi_context='words' is not folded"
            _report(f"SimilarityEngine: {self.fallback_reason}; using the naive per-pair "
                    "module in blocks", log)
        self.method: Literal["folded", "naive"] = "naive" if self.fallback_reason else "folded"
        self._token = object()
        self._folding = Folding(self.module) if self.method == "folded" else None

    # ------------------------------------------------------------------ sizes and precision
    @property
    def _itemsize(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    def bytes_per_pair(self, n_frames: int) -> int:
        """Estimated peak bytes of the per-pair intermediates of one (text, video) pair."""
        if self.method == "naive":
            return self._itemsize * (16 * self.config.dim + 6 * n_frames)
        return self._itemsize * (23 * n_frames + 24)  # 3F products, about 20 F-vectors

    def block_shape(self, n_texts: int, n_videos: int, n_frames: int) -> tuple[int, int]:
        """(texts, videos) per block: as many pairs as the budget allows, at most
        :data:`BLOCK_PAIRS` on the folded path, texts first (the folded path keeps texts on the
        innermost, contiguous axis) but leaving room for :data:`BLOCK_VIDEOS` videos."""
        pairs = max(1, self.memory_budget_bytes // self.bytes_per_pair(n_frames))
        if self.method == "folded":
            pairs = min(pairs, BLOCK_PAIRS)
        block_t = max(1, min(n_texts, pairs // min(n_videos, BLOCK_VIDEOS)))
        return block_t, max(1, min(n_videos, pairs // block_t))

    @contextlib.contextmanager
    def _matmul_precision(self, exact: bool = False) -> Iterator[None]:
        """fp32 matrix products with TF32 under precision "tf32" (unless ``exact``), else full."""
        previous = torch.get_float32_matmul_precision()
        tf32 = self.precision == "tf32" and not exact
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)

    # ------------------------------------------------------------------ preparation
    @torch.no_grad()
    def prepare_texts(self, text: Tensor, words: Optional[Tensor] = None,
                      word_mask: Optional[Tensor] = None) -> Prepared:
        """Per-text work: ||t_a||² and ||c(t_a)||² (and the word features for the naive path).

        Args:
            text: (N_t, d) sentence embeddings. words, word_mask: (N_t, L, d), (N_t, L); needed
                only with ``psi_context="words"``.
        """
        d = self.config.dim
        if text.dim() != 2 or text.shape[1] != d:
            raise ValueError(f"text must be (N_t, {d}), got {tuple(text.shape)}")
        text = text.to(self.dtype)
        parts = {"text": text, "sq_norm": text.square().sum(-1),
                 "centred_sq_norm": centre(text).square().sum(-1)}
        if self.config.psi_context == "words" and not self.config.no_delta:
            if words is None or word_mask is None:
                raise ValueError("psi_context='words' needs `words` and `word_mask`")
            parts.update(words=words.to(self.dtype), word_mask=word_mask)
        return Prepared("texts", parts, self._token)

    @torch.no_grad()
    def prepare_videos(self, frames: Tensor, mask: Tensor) -> Prepared:
        """Per-video work, in chunks bounded by the memory budget, at full matmul precision
        whatever ``precision`` and the global torch setting (it is not the bottleneck, and every
        pair of the video reads its results).

        Args:
            frames: (N_v, F, d) frame embeddings after temporal aggregation. mask: (N_v, F).

        The folded path keeps the frames, their LN1 statistics and small per-video matrices
        (:meth:`Folding.prepare_videos`): what a video index stores per video (:meth:`adopt`
        takes them back).
        """
        d = self.config.dim
        if frames.dim() != 3 or frames.shape[2] != d:
            raise ValueError(f"frames must be (N_v, F, {d}), got {tuple(frames.shape)}")
        if mask.shape != frames.shape[:2]:
            raise ValueError(f"mask must be {tuple(frames.shape[:2])}, got {tuple(mask.shape)}")
        frames, mask = frames.to(self.dtype), mask.to(self.dtype)
        per_video = self._itemsize * d * 16 * (frames.shape[1] + 2)
        step = min(PREPARE_VIDEOS, max(1, self.memory_budget_bytes // per_video))
        with self._matmul_precision(exact=True):
            chunks = [self._prepare_video_chunk(frames[s], mask[s])
                      for s in _chunks(len(frames), step)]
        parts = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        return Prepared("videos", parts, self._token)

    def _prepare_video_chunk(self, frames: Tensor, mask: Tensor) -> dict[str, Tensor]:
        parts = {"mask": mask, "coarse": coarse_vectors(frames, mask)}
        if self.method == "naive":
            return dict(parts, frames=frames)
        return dict(parts, **self._folding.prepare_videos(frames))

    def adopt(self, parts: dict[str, Tensor]) -> Prepared:
        """Videos prepared earlier (:meth:`prepare_videos`) and stored (e.g. by a video index) as
        this engine's, in its dtype, but narrower (float16) frames on the folded path, which its
        products convert about a thousand rows at a time (exact; no whole float32 copy). They
        must come from an engine of the same weights (an index checks its checkpoint's hash);
        on the naive path only ``frames`` and ``mask`` are read."""
        frames = parts["frames"]
        narrow = self.method == "folded" and frames.element_size() < self._itemsize
        return Prepared("videos", {k: v if k == "frames" and narrow else v.to(self.dtype)
                                   for k, v in parts.items()}, self._token)

    # ------------------------------------------------------------------ scoring
    def _check(self, texts: Prepared, videos: Prepared) -> None:
        if texts.kind != "texts" or videos.kind != "videos":
            raise TypeError("score(texts, videos) takes prepare_texts and prepare_videos results")
        if texts.owner is not self._token or videos.owner is not self._token:
            raise ValueError("texts and videos must be prepared by this engine")

    @torch.no_grad()
    def score(self, texts: Prepared, videos: Prepared,
              block: Optional[tuple[int, int]] = None, *, exact: bool = False) -> Tensor:
        """(N_t, N_v) scores s_ab, equal to the naive module's in eval mode.

        ``block`` = (texts, videos) per block overrides :meth:`block_shape`. ``exact``: full
        matmul precision in the engine's dtype whatever ``precision`` (no TF32, no bf16).
        """
        self._check(texts, videos)
        n_t, n_v = len(texts), len(videos)
        block_t, block_v = block or self.block_shape(n_t, n_v, videos.parts["mask"].shape[1])
        device = texts.parts["text"].device
        out = torch.empty(n_t, n_v, dtype=self.dtype, device=device)
        bf16 = self.precision == "bf16" and not exact
        with self._matmul_precision(exact):
            for rows in _chunks(n_t, block_t):
                t = texts.select(rows).parts
                if self.method == "folded":
                    t = self._folding.text_block(t)
                for cols in _chunks(n_v, block_v):
                    v = videos.select(cols).parts
                    out[rows, cols] = (self._score_naive(t, v) if self.method == "naive"
                                       else self._folding.score(t, v, bf16))
        return out

    @torch.no_grad()
    def verify(self, text: Tensor, frames: Tensor, mask: Tensor, *, strict: bool = False,
               log: Optional[Log] = None) -> Optional[float]:
        """Self-check of the folded path against the engine's own per-pair module.

        Scores the first :data:`CHECK_ITEMS` texts against the first :data:`CHECK_ITEMS` videos
        with the folded path and with ``self.module`` (the copy whose weights were folded), both
        in the engine's dtype at full matmul precision, and compares them with
        :data:`CHECK_TOLERANCE`. This catches what the folding cannot see: a subclass of
        GapAwareSimilarity or Psi whose forward computes something else, or a weight of
        ``self.module`` changed after the folding. Pairs where both paths give NaN agree.

        On a mismatch the engine switches to the naive path (``method`` "naive",
        ``fallback_reason`` with the difference, the message to ``log`` or warned) and texts and
        videos prepared before no longer belong to it; with ``strict`` it raises
        :class:`EngineCheckError` instead and stays as it was.

        Args:
            text: (N_t, d) sentence embeddings. frames: (N_v, F, d) frames after temporal
                aggregation. mask: (N_v, F).
        Returns:
            The largest absolute difference of the scores; None on the naive path or without a
            text or a video (nothing to check).
        """
        if self.method == "naive" or len(text) == 0 or len(frames) == 0:
            return None
        text = text[:CHECK_ITEMS].to(self.dtype)
        frames, mask = frames[:CHECK_ITEMS].to(self.dtype), mask[:CHECK_ITEMS]
        with self._matmul_precision(exact=True):
            folded = self.score(self.prepare_texts(text), self.prepare_videos(frames, mask),
                                exact=True)
            reference = self.module(text, frames, mask).scores
        both_nan = folded.isnan() & reference.isnan()
        difference = (folded - reference).abs().masked_fill(both_nan, 0).max().item()
        tolerance = CHECK_TOLERANCE[self.dtype]
        if difference <= tolerance:  # False for NaN: a NaN on one side only is a mismatch
            return difference
        psi = self.module.psi
        modules = type(self.module).__name__
        if psi is not None:
            modules += f" with {type(psi).__name__}"
        mismatch = (f"the folded scores of {len(text)} texts x {len(frames)} videos differ from "
                    f"the per-pair module's ({modules}) by up to {difference:.2e} (tolerance "
                    f"{tolerance:.0e} in {str(self.dtype).removeprefix('torch.')})")
        if strict:
            raise EngineCheckError(
                f"SimilarityEngine self-check failed: {mismatch}. The module computes something "
                "the folded algebra does not (a forked GapAwareSimilarity or Psi, or weights "
                "changed after the engine was built); --eval_engine naive (or auto, which falls "
                "back by itself) scores with the per-pair module")
        self.method = "naive"
        self.fallback_reason = f"self-check: {mismatch}"
        self._token = object()
        _report(f"SimilarityEngine: {self.fallback_reason}; scoring with the per-pair module in "
                "blocks instead (slower)", log)
        return difference

    @torch.no_grad()
    def coarse_score(self, texts: Prepared, videos: Prepared) -> Tensor:
        """(N_t, N_v) Δ-free stage-1 scores cos(t_a, mean of the real frames of b), one matrix
        product (stage 1 of :func:`tvr.evaluation.retrieval.two_stage_scores`)."""
        self._check(texts, videos)
        text = texts.parts["text"]
        text = text / text.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
        with self._matmul_precision():
            return text @ videos.parts["coarse"].T

    def _score_naive(self, t: dict[str, Tensor], v: dict[str, Tensor]) -> Tensor:
        return self.module(t["text"], v["frames"], v["mask"], t.get("words"),
                           t.get("word_mask")).scores
