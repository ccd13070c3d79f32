"""Symmetric InfoNCE on a text x video score matrix (docs/behaviour.md §7; with NCL: §8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["symmetric_info_nce"]


def symmetric_info_nce(
    scores: torch.Tensor,
    logit_scale: torch.Tensor | float,
    biases: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with the diagonal as target (docs/behaviour.md §7, "Contrastive").

    With ``S = exp(logit_scale) * scores`` (``scores[a, b]`` = cosine score of text a and
    video b, a square B x B matrix whose diagonal holds the matched pairs)::

        L_nce = ( CE_rows(S) + CE_rows(S^T) ) / 2,
        CE_rows(X) = mean_i -log softmax(X[i, :])[i].

    ``logit_scale`` is the raw (log) parameter; the scale is ``exp(logit_scale)``. No clamp is
    applied here (the training loop clamps the parameter after each step, docs/behaviour.md §9).

    ``biases = (video_bias, text_bias)`` adds NCL's instance-wise biases (docs/behaviour.md §8) in
    score units, before scaling: the text->video logits become ``scale * (scores[a, b] +
    video_bias[b])`` and the video->text logits ``scale * (scores[a, b] + text_bias[a])`` (row b,
    column a of the transposed matrix). Either entry may be ``None``.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(
            f"symmetric_info_nce needs a square B x B score matrix, got {tuple(scores.shape)}"
        )
    video_bias, text_bias = biases if biases is not None else (None, None)
    scale = torch.as_tensor(logit_scale, dtype=scores.dtype, device=scores.device).exp()
    t2v = scores if video_bias is None else scores + video_bias.unsqueeze(0)
    v2t = scores.t() if text_bias is None else scores.t() + text_bias.unsqueeze(0)
    targets = torch.arange(scores.shape[0], device=scores.device)
    loss_t2v = F.cross_entropy(scale * t2v, targets)
    loss_v2t = F.cross_entropy(scale * v2t, targets)
    return (loss_t2v + loss_v2t) / 2
