"""The GARE similarity between texts and videos (docs/behaviour.md §6).

For a text a (sentence embedding t_a, not normalised) and a video b (frame embeddings f_bk after
the temporal aggregation of docs/behaviour.md §5, frame mask m_bk) the score is

    w_abk  = softmax_k((t_a · f_bk) / temp) * m_bk            (softmax over all F slots)
    v_ab   = Σ_k w_abk f_bk                                    (text-conditioned pooling)
    g_ab   = η (mean_k f_bk − t_a)                             (semantic gap, plain mean)
    Δ_ab   = Psi(g_ab, {f_bk})                                 (pair-specific increment;
                                                               unit norm with normalize_delta)
    s_ab   = cos(t_a + Δ_ab, v_ab)

Everything is computed for a whole block of B_t texts against B_v videos with batched tensor
operations: the per-frame work (LayerNorm and key/value projections of the context) is done once
per video, the rest once per pair. This module is the exact reference of the computation; a
bounded-memory evaluation engine can reuse its pieces (:func:`text_conditioned_pooling`,
:func:`semantic_gap`, :meth:`Psi.project_context`, :meth:`Psi.forward`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvr.models.config import SimilarityConfig


class SimilarityOutput(NamedTuple):
    """scores: (B_t, B_v) s_ab. delta: (B_t, B_v, d) Δ_ab, or None with `no_delta`."""

    scores: Tensor
    delta: Optional[Tensor]


def text_conditioned_pooling(text: Tensor, frames: Tensor, video_mask: Tensor, temp: float) -> Tensor:
    """Pooled video per pair, docs/behaviour.md §6 step 1.

    w_abk = softmax_k((t_a · f_bk) / temp) · m_bk, the softmax running over ALL F slots (padded
    ones included) and the masked weights NOT renormalised (reference quirk kept, docs/behaviour.md
    §12); v_ab = Σ_k w_abk f_bk.

    Args:
        text: (B_t, d). frames: (B_v, F, d). video_mask: (B_v, F), 1 for real frames.
    Returns:
        (B_t, B_v, d).
    """
    logits = torch.einsum("ad,bkd->abk", text, frames) / temp
    weights = logits.softmax(dim=-1) * video_mask.to(frames.dtype).unsqueeze(0)
    return torch.einsum("abk,bkd->abd", weights, frames)


def semantic_gap(text: Tensor, frames: Tensor, sign: int = 1) -> Tensor:
    """Semantic gap per pair, docs/behaviour.md §6 step 2: g_ab = sign · (mean_k f_bk − t_a).

    The mean runs over all F slots without the frame mask (reference quirk kept, docs/behaviour.md
    §12).

    Args:
        text: (B_t, d). frames: (B_v, F, d). sign: +1 or −1 (η).
    Returns:
        (B_t, B_v, d).
    """
    gap = frames.mean(dim=1).unsqueeze(0) - text.unsqueeze(1)
    return gap if sign == 1 else -gap


def pair_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine along the last dimension: (x/||x||) · (y/||y||) (norms clamped at 1e-12)."""
    return (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(dim=-1)


class Psi(nn.Module):
    """The increment network Psi, docs/behaviour.md §6 step 3: one cross-attention layer, 1 head,
    width d, no FFN.

    For a query g (one per pair) and a context set {c_n} (frames of video b, or words of text a):

        q = W_q LN1(g) + b_q,   k_n = W_k LN1(c_n) + b_k,   val_n = W_v LN1(c_n) + b_v
        attn_n = softmax_n((k_n · q) / sqrt(d))        (context mask only where one is given)
        o = W_o (Σ_n attn_n val_n) + b_o
        x = LN2(o);  y = x + Dropout(W_1 x + b_1);  h = LN3(y)
        Δ = W_mu h + b_mu

    LN1 is shared by the query and the context. Parameter names follow the reference (so its
    LayerNorm weights, named ``layer_norm*``, are not caught by the optimiser's "LayerNorm"
    no-decay rule, as in the reference). The reference's unused log-σ head is not built.
    Initialisation (the reference's effective one): every Linear weight ~ N(0, 0.02), bias 0;
    LayerNorms weight 1, bias 0.
    """

    def __init__(self, dim: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.dim = dim
        self.layer_norm1 = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm3 = nn.LayerNorm(dim)
        self.mean_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear weights ~ N(0, 0.02) and zero biases; LayerNorms ones/zeros."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element work, done once per video (or text): keys W_k LN1(c) + b_k and values
        W_v LN1(c) + b_v. context: (Y, N, d) -> two (Y, N, d) tensors."""
        normed = self.layer_norm1(context)
        return self.k_proj(normed), self.v_proj(normed)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                context_mask: Optional[Tensor] = None) -> Tensor:
        """Δ for every pair (x, y) of a query block against the context of y.

        Args:
            query: (X, Y, d), one query per pair (x, y).
            keys, values: (Y, N, d) from :meth:`project_context` for the context of y.
            context_mask: optional (Y, N), 1 for context elements that may be attended to.
        Returns:
            Δ: (X, Y, d).
        """
        q = self.q_proj(self.layer_norm1(query))
        logits = torch.einsum("xyd,ynd->xyn", q, keys) / math.sqrt(self.dim)
        if context_mask is not None:
            logits = logits.masked_fill(~context_mask.bool().unsqueeze(0), float("-inf"))
        attended = torch.einsum("xyn,ynd->xyd", logits.softmax(dim=-1), values)
        x = self.layer_norm2(self.out_proj(attended))
        h = self.layer_norm3(x + self.dropout(self.linear1(x)))
        return self.mean_proj(h)


class GapAwareSimilarity(nn.Module):
    """GARE similarity s_ab for a block of B_t texts against B_v videos (docs/behaviour.md §6).

    s_ab = cos(t_a + Δ_ab, v_ab) by default; see :class:`SimilarityConfig` for the ablations.
    """

    def __init__(self, config: SimilarityConfig) -> None:
        super().__init__()
        self.config = config
        self.psi: Optional[Psi] = None if config.no_delta else Psi(config.dim, config.dropout)

    def pool(self, text: Tensor, frames: Tensor, video_mask: Tensor) -> Tensor:
        """v_ab, (B_t, B_v, d): :func:`text_conditioned_pooling` with the configured temp."""
        return text_conditioned_pooling(text, frames, video_mask, self.config.temp)

    def psi_query(self, text: Tensor, frames: Tensor) -> Tensor:
        """Query of Psi per pair, (B_t, B_v, d): the gap η(mean_k f_bk − t_a), or t_a alone."""
        if self.config.psi_query == "text":
            return text.unsqueeze(1).expand(-1, frames.shape[0], -1)
        return semantic_gap(text, frames, self.config.gap_sign)

    def delta(self, text: Tensor, frames: Tensor, words: Optional[Tensor] = None,
              word_mask: Optional[Tensor] = None) -> Tensor:
        """Δ_ab, (B_t, B_v, d): Psi's output (:meth:`psi_output`), scaled to unit L2 norm per
        pair with ``normalize_delta`` (``F.normalize``: Δ / max(||Δ||, 1e-12), so a zero Δ stays
        zero)."""
        raw = self.psi_output(text, frames, words, word_mask)
        return F.normalize(raw, dim=-1) if self.config.normalize_delta else raw

    def psi_output(self, text: Tensor, frames: Tensor, words: Optional[Tensor] = None,
                   word_mask: Optional[Tensor] = None) -> Tensor:
        """Psi's output per pair, (B_t, B_v, d), from the configured query and context.

        Frames context: keys/values per video (all F slots, no mask, as the reference).
        Words context: keys/values per text from `words` (B_t, L, d), padded words masked by
        `word_mask` (B_t, L); the pair grid is transposed so that the context index leads.
        """
        if self.psi is None:
            raise RuntimeError("no_delta is set: Psi is not built")
        query = self.psi_query(text, frames)
        if self.config.psi_context == "frames":
            keys, values = self.psi.project_context(frames)
            return self.psi(query, keys, values)
        if words is None or word_mask is None:
            raise ValueError("psi_context='words' needs `words` (B_t, L, d) and `word_mask` (B_t, L)")
        if words.shape[0] != text.shape[0] or word_mask.shape != words.shape[:2]:
            raise ValueError(f"words {tuple(words.shape)} / word_mask {tuple(word_mask.shape)} "
                             f"do not match {text.shape[0]} texts")
        keys, values = self.psi.project_context(words)
        return self.psi(query.transpose(0, 1), keys, values, word_mask).transpose(0, 1)

    def combine(self, text: Tensor, pooled: Tensor, delta: Optional[Tensor]) -> Tensor:
        """Scores (B_t, B_v) from t_a (B_t, d), v_ab and Δ_ab (B_t, B_v, d), docs/behaviour.md §6
        step 4: cos(t_a + Δ, v_ab) ("text" side), cos(t_a, v_ab + Δ) ("video" side), or cos(t_a,
        v_ab) when delta is None."""
        text = text.unsqueeze(1)
        if delta is None:
            return pair_cosine(text, pooled)
        if self.config.delta_side == "video":
            return pair_cosine(text, pooled + delta)
        return pair_cosine(text + delta, pooled)

    def forward(self, text: Tensor, frames: Tensor, video_mask: Tensor,
                words: Optional[Tensor] = None, word_mask: Optional[Tensor] = None) -> SimilarityOutput:
        """Scores of every text against every video.

        Args:
            text: (B_t, d) sentence (EOT) embeddings, not normalised.
            frames: (B_v, F, d) frame embeddings after temporal aggregation.
            video_mask: (B_v, F), 1 for real frames.
            words, word_mask: (B_t, L, d) and (B_t, L); only used with psi_context="words".
        Returns:
            SimilarityOutput(scores (B_t, B_v), delta (B_t, B_v, d) or None with no_delta).
        """
        d = self.config.dim
        if text.dim() != 2 or text.shape[1] != d:
            raise ValueError(f"text must be (B_t, {d}), got {tuple(text.shape)}")
        if frames.dim() != 3 or frames.shape[2] != d:
            raise ValueError(f"frames must be (B_v, F, {d}), got {tuple(frames.shape)}")
        if video_mask.shape != frames.shape[:2]:
            raise ValueError(f"video_mask must be {tuple(frames.shape[:2])}, got {tuple(video_mask.shape)}")
        pooled = self.pool(text, frames, video_mask)
        delta = None if self.psi is None else self.delta(text, frames, words, word_mask)
        return SimilarityOutput(self.combine(text, pooled, delta), delta)
