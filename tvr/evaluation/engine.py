"""Bounded-memory, exact evaluation engine for the GARE similarity (docs/behaviour.md §6, §11).

:class:`SimilarityEngine` scores every text against every video with the numbers of
:class:`~tvr.models.similarity.GapAwareSimilarity` in eval mode (no dropout), without ever
holding a per-pair d-dimensional tensor for more than one block of pairs:

- per-video work (keys, values, Psi's projections of them, small F x F Gram matrices) is done
  once per video in :meth:`SimilarityEngine.prepare_videos`;
- per-text work (norms) once per text in :meth:`SimilarityEngine.prepare_texts`;
- per-pair work in :meth:`SimilarityEngine.score`, for (texts x videos) blocks whose size comes
  from ``memory_budget_bytes``: one large matrix product (texts x per-video rows) and O(F²)
  arithmetic per pair.

The "folded" path rewrites Psi algebraically: at eval time its only non-linearities are the
attention softmax over F frames and three LayerNorms, so every projection folds into per-frame
precomputations and the final cosine becomes dot products of F-vectors with per-video F x F
matrices. The derivation, step by step, is in ``docs/evaluation_engine.md``; the names below
(U, Y, Z, D-hat, G, H, ...) are those of that document. Per pair it costs about (3F + 3)·d + 5F²
multiply-adds instead of about 4·d² for the naive module.

Folded: the default setting, ``gap_sign`` ±1, ``psi_query`` "gap" or "text", ``delta_side``
"text" or "video", ``no_delta``, and all their combinations. Not folded: ``psi_context="words"``
(the context, hence every per-frame precomputation, would belong to the text); the engine then
runs the naive module in blocks (``method == "naive"``) and warns once (or tells ``log``).
``naive=True`` selects that reference path for any setting.

Self-check (:meth:`SimilarityEngine.verify`, run by :func:`build_engine`): the folding reads the
weights of a stock :class:`~tvr.models.similarity.Psi` by name, so a forked
``GapAwareSimilarity`` or ``Psi`` (a subclass whose forward computes something else) or a weight of
``engine.module`` changed after the folding would be scored wrongly, and silently. The check
scores a few sample pairs both ways with the engine's own copy of the module and, on a mismatch,
switches the engine to the naive path (mode "auto") or raises :class:`EngineCheckError` (mode
"folded").

Precision (``precision``): "fp64" (check mode), "fp32" (default; TF32 disabled), "tf32"
(fp32 with TF32 matrix products where the device has them) or "bf16" (the per-pair matrix
product takes bf16 operands, everything else fp32). The folded path takes differences of
nearly equal dot products (the LayerNorm of the gap): measured on an H100 (bench/RESULTS.md,
``python -m bench.bench_similarity --precision-check``), tf32 keeps 99.2% of the top-1 results
and bf16 only 66%, so do not rank with bf16.

The engine copies the module's weights when it is built; build a new engine after they change.
Prepared texts and videos belong to the engine that prepared them.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional, Union

import torch
from torch import Tensor

from tvr.models.similarity import GapAwareSimilarity, Psi, SimilarityConfig

Precision = Literal["fp64", "fp32", "tf32", "bf16"]
EngineMode = Literal["auto", "folded", "naive"]
Index = Union[slice, Tensor]
Log = Callable[[str], None]

ENGINE_MODES: tuple[EngineMode, ...] = ("auto", "folded", "naive")
CHECK_ITEMS = 8  # the self-check scores the first CHECK_ITEMS texts against as many videos
# Largest max |folded - naive| of the self-check's cosine scores, per engine dtype (the check
# always runs at full matmul precision). Measured worst cases of correct folding, 8 x 8 pairs:
# fp32 1.9e-4 over 240 stressed settings (d 24..768, F = 12 with padded videos, the ablations,
# random weights far from their initialisation, features sharing one direction with a spread
# down to 0.3%), against 6e-6 on the benchmark (bench/RESULTS.md); fp64 1.4e-12. fp32 thus gets
# a 5x margin: a fork or a changed weight that moves some score by more than 1e-3 is caught;
# smaller effects are at the level of fp32 rounding in ill-conditioned cases. fp64: ~700x.
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}

_NORM_EPS = 1e-12  # F.normalize's clamp on the norms, as in pair_cosine


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


def _centre(x: Tensor) -> Tensor:
    """c(x) = x - mean(x) along the last (feature) dimension."""
    return x - x.mean(dim=-1, keepdim=True)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def coarse_vectors(frames: Tensor, mask: Tensor) -> Tensor:
    """(N_v, d) stage-1 vectors: the unit-norm mean of each video's real frames (two-stage
    retrieval ranks videos by the cosine of a text with this vector)."""
    real = mask.sum(1, keepdim=True)
    mean_real = (frames * mask.unsqueeze(-1)).sum(1) / real.clamp_min(1)
    return mean_real / mean_real.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)


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
            counted: the prepared tensors themselves ((3F + 3)·d + O(F²) numbers per video in the
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
        if self.method == "folded" and self.module.psi is not None:
            self._fold_weights(self.module.psi)

    @torch.no_grad()
    def _fold_weights(self, psi: Psi) -> None:
        """Weights-only constants of the folded path (docs/evaluation_engine.md, §2).

        Every per-frame vector the scores need is an affine map of l_bk = LN1(f_bk); the maps
        are composed here once, so that :meth:`prepare_videos` does one (F·N_v x d) @ (d x 4d)
        product: c(K~_bk), U_bk, Z_bk, D_bk and the key bias κ_bk.
        """
        d = self.config.dim
        eye = torch.eye(d, dtype=self.dtype, device=psi.q_proj.weight.device)
        centring = eye - 1.0 / d                                            # C: x -> c(x)
        g1, b1 = psi.layer_norm1.weight, psi.layer_norm1.bias
        g2, b2 = psi.layer_norm2.weight, psi.layer_norm2.bias
        g3, b3 = psi.layer_norm3.weight, psi.layer_norm3.bias
        w_q, w_k, w_v = psi.q_proj.weight, psi.k_proj.weight, psi.v_proj.weight
        w_o, w_mu = psi.out_proj.weight, psi.mean_proj.weight
        q0 = psi.q_proj(b1)                                                  # W_q β1 + b_q
        key_map = centring @ (g1.unsqueeze(1) * w_q.T) @ w_k
        key_shift = centring @ (g1 * (w_q.T @ psi.k_proj.bias))
        u_map, u_shift = centring @ w_o @ w_v, centring @ psi.out_proj(psi.v_proj.bias)
        to_z = centring @ (eye + psi.linear1.weight) * g2                   # C (I + W_1) diag(γ2)
        z_map, z_shift = to_z @ u_map, to_z @ u_shift
        d_map, d_shift = (w_mu * g3) @ z_map, (w_mu * g3) @ z_shift
        self._frame_maps = torch.cat([key_map, u_map, z_map, d_map,
                                      (w_k.T @ q0).unsqueeze(0) / math.sqrt(d)])
        self._frame_bias = torch.cat([key_shift, u_shift, z_shift, d_shift,
                                      (psi.k_proj.bias @ q0).reshape(1) / math.sqrt(d)])
        self._z0 = centring @ (b2 + psi.linear1(b2))                         # z0 = c(y0)
        self._z0_sq = self._z0.square().sum()
        self._delta_consts = torch.stack([(w_mu * g3) @ self._z0,            # e
                                          psi.mean_proj(b3)])               # δ0

    # ------------------------------------------------------------------ sizes and precision
    @property
    def _itemsize(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    def bytes_per_pair(self, n_frames: int) -> int:
        """Estimated peak bytes of the per-pair intermediates of one (text, video) pair."""
        if self.method == "naive":
            return self._itemsize * (16 * self.config.dim + 6 * n_frames)
        rows = 3 * n_frames + 3
        return self._itemsize * (rows + 12 * (n_frames + 2) + 16)

    def block_shape(self, n_texts: int, n_videos: int, n_frames: int) -> tuple[int, int]:
        """(texts, videos) per block: as many pairs as the budget allows, texts first (the
        folded path keeps texts on the innermost, contiguous axis)."""
        pairs = max(1, self.memory_budget_bytes // self.bytes_per_pair(n_frames))
        block_t = max(1, min(n_texts, pairs))
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
                 "centred_sq_norm": _centre(text).square().sum(-1)}
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
        """
        d = self.config.dim
        if frames.dim() != 3 or frames.shape[2] != d:
            raise ValueError(f"frames must be (N_v, F, {d}), got {tuple(frames.shape)}")
        if mask.shape != frames.shape[:2]:
            raise ValueError(f"mask must be {tuple(frames.shape[:2])}, got {tuple(mask.shape)}")
        frames, mask = frames.to(self.dtype), mask.to(self.dtype)
        n_frames = frames.shape[1]
        per_video = self._itemsize * d * 16 * (n_frames + 2)
        step = max(1, self.memory_budget_bytes // per_video)
        with self._matmul_precision(exact=True):
            chunks = [self._prepare_video_chunk(frames[s], mask[s])
                      for s in _chunks(len(frames), step)]
        parts = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        return Prepared("videos", parts, self._token)

    def _prepare_video_chunk(self, frames: Tensor, mask: Tensor) -> dict[str, Tensor]:
        parts = {"mask": mask, "coarse": coarse_vectors(frames, mask)}
        if self.method == "naive":
            return dict(parts, frames=frames)
        parts["frame_gram"] = frames @ frames.mT                              # Φ_b
        psi = self.module.psi
        if psi is None:
            return dict(parts, rows=frames)
        d, n_v = self.config.dim, len(frames)
        per_frame = psi.layer_norm1(frames) @ self._frame_maps.T + self._frame_bias
        key_fold, u, z, d_frames, key_bias = per_frame.split([d, d, d, d, 1], dim=-1)
        parts["key_bias"] = key_bias.squeeze(-1)                            # κ_bk
        parts["gram_o"] = u @ u.mT                                           # G_b
        parts["gram_y"] = z @ z.mT                                           # H_b
        parts["cross_y"] = z @ self._z0                                      # h_b
        d_hat = torch.cat([d_frames, self._delta_consts.expand(n_v, 2, d)], dim=1)
        parts["gram_delta"] = d_hat @ d_hat.mT                               # Ĝ_b
        parts["delta_frames"] = d_hat @ frames.mT                            # C_b
        rows = [frames, key_fold, d_hat]
        if self.config.psi_query == "gap":
            mean_c = _centre(frames.mean(1))                                 # c(m_b)
            parts["key_gap"] = (key_fold @ mean_c.unsqueeze(-1)).squeeze(-1)  # α_bk
            parts["mean_sq"] = mean_c.square().sum(-1)
            rows.append(mean_c.unsqueeze(1))
        parts["rows"] = torch.cat(rows, dim=1)
        return parts

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
        n_frames = videos.parts["mask"].shape[1]
        block_t, block_v = block or self.block_shape(n_t, n_v, n_frames)
        device = texts.parts["text"].device
        out = torch.empty(n_t, n_v, dtype=self.dtype, device=device)
        bf16 = self.precision == "bf16" and not exact
        with self._matmul_precision(exact):
            for rows in _chunks(n_t, block_t):
                t = texts.select(rows).parts
                for cols in _chunks(n_v, block_v):
                    v = videos.select(cols).parts
                    out[rows, cols] = (self._score_naive(t, v) if self.method == "naive"
                                       else self._score_folded(t, v, bf16))
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
        product (used by :mod:`tvr.evaluation.two_stage`)."""
        self._check(texts, videos)
        text = texts.parts["text"]
        text = text / text.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        with self._matmul_precision():
            return text @ videos.parts["coarse"].T

    def _score_naive(self, t: dict[str, Tensor], v: dict[str, Tensor]) -> Tensor:
        return self.module(t["text"], v["frames"], v["mask"], t.get("words"),
                           t.get("word_mask")).scores

    def _score_folded(self, t: dict[str, Tensor], v: dict[str, Tensor], bf16: bool) -> Tensor:
        """One block, (T, V). Pair tensors are laid out (V, ·, T); see docs/evaluation_engine.md.
        ``bf16``: the per-pair matrix product takes bf16 operands."""
        cfg, psi = self.config, self.module.psi
        d, n_frames = cfg.dim, v["mask"].shape[1]
        rows, text = v["rows"], t["text"]
        n_v, n_rows, _ = rows.shape
        if bf16:
            dots = (rows.reshape(-1, d).bfloat16() @ text.bfloat16().T).to(self.dtype)
        else:
            dots = rows.reshape(-1, d) @ text.T
        dots = dots.view(n_v, n_rows, -1)                      # rows_b · t_a
        text_frame = dots[:, :n_frames]                        # t_a · f_bk
        w = torch.softmax(text_frame / cfg.temp, dim=1) * v["mask"].unsqueeze(-1)
        text_v = (w * text_frame).sum(1)                       # t_a · v_ab
        v_sq = (w * torch.bmm(v["frame_gram"], w)).sum(1)      # ||v_ab||²
        text_sq = t["sq_norm"].unsqueeze(0)
        if psi is None:
            return self._cosine(text_v, text_sq, v_sq)
        key_text = dots[:, n_frames:2 * n_frames]              # c(K~_bk) · t_a
        key_bias = v["key_bias"].unsqueeze(-1)
        if cfg.psi_query == "gap":
            gap_sq = (v["mean_sq"].unsqueeze(-1) - 2 * dots[:, -1]
                      + t["centred_sq_norm"].unsqueeze(0)).clamp_min(0)
            scale = cfg.gap_sign / (math.sqrt(d) * torch.sqrt(gap_sq / d + psi.layer_norm1.eps))
            logits = scale.unsqueeze(1) * (v["key_gap"].unsqueeze(-1) - key_text) + key_bias
        else:
            centred_sq = t["centred_sq_norm"]
            scale = 1.0 / (math.sqrt(d) * torch.sqrt(centred_sq / d + psi.layer_norm1.eps))
            logits = key_text * scale + key_bias
        attn = torch.softmax(logits, dim=1)                    # a_abk
        inv2 = torch.rsqrt((attn * torch.bmm(v["gram_o"], attn)).sum(1) / d + psi.layer_norm2.eps)
        y_sq = ((attn * torch.bmm(v["gram_y"], attn)).sum(1) * inv2.square()
                + 2 * inv2 * (attn * v["cross_y"].unsqueeze(-1)).sum(1) + self._z0_sq)
        inv3 = torch.rsqrt(y_sq.clamp_min(0) / d + psi.layer_norm3.eps)
        coef = torch.cat([attn * (inv2 * inv3).unsqueeze(1), inv3.unsqueeze(1),
                          torch.ones_like(inv3).unsqueeze(1)], dim=1)   # Δ = Σ_j coef_j D-hat_bj
        text_delta = (coef * dots[:, 2 * n_frames:3 * n_frames + 2]).sum(1)
        delta_v = (coef * torch.bmm(v["delta_frames"], w)).sum(1)
        delta_sq = (coef * torch.bmm(v["gram_delta"], coef)).sum(1)
        if cfg.delta_side == "video":
            return self._cosine(text_v + text_delta, text_sq, v_sq + 2 * delta_v + delta_sq)
        return self._cosine(text_v + delta_v, text_sq + 2 * text_delta + delta_sq, v_sq)

    @staticmethod
    def _cosine(dot: Tensor, x_sq: Tensor, y_sq: Tensor) -> Tensor:
        """(V, T) dot / (max(||x||, eps) max(||y||, eps)) -> (T, V)."""
        x_norm = torch.sqrt(x_sq.clamp_min(0)).clamp_min(_NORM_EPS)
        y_norm = torch.sqrt(y_sq.clamp_min(0)).clamp_min(_NORM_EPS)
        return (dot / (x_norm * y_norm)).T
