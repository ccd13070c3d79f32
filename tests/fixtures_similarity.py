"""Shared helpers of the similarity-engine tests: a GARE similarity moved away from its
initialisation, and random inputs with padded frames and words."""
from __future__ import annotations

import torch

from bench.common import perturb_parameters
from tvr.models.config import SimilarityConfig
from tvr.models.similarity import GapAwareSimilarity


def trained(config: SimilarityConfig, dtype: torch.dtype, seed: int = 1) -> GapAwareSimilarity:
    """Every LayerNorm and Linear moved away from its initialisation, in eval mode."""
    torch.manual_seed(0)
    model = GapAwareSimilarity(config)
    perturb_parameters(model, torch.Generator().manual_seed(seed))
    return model.to(dtype).eval()


def inputs(b_t: int, b_v: int, n_frames: int, dim: int, dtype: torch.dtype, seed: int = 0,
           n_words: int = 5) -> dict[str, torch.Tensor]:
    """Random features; padded frame slots (and words) hold random, non-zero values."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b_v, n_frames)
    for b in range(1, b_v):
        mask[b, max(1, n_frames - b):] = 0
    word_mask = torch.ones(b_t, n_words)
    for a in range(1, b_t):
        word_mask[a, max(2, n_words - a):] = 0
    return {"text": torch.randn(b_t, dim, generator=g, dtype=dtype),
            "frames": torch.randn(b_v, n_frames, dim, generator=g, dtype=dtype),
            "video_mask": mask,
            "words": torch.randn(b_t, n_words, dim, generator=g, dtype=dtype),
            "word_mask": word_mask}
