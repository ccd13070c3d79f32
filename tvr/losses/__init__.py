"""Training losses: symmetric InfoNCE, GARE's regularisers on Δ (docs/behaviour.md §7) and NCL
(docs/behaviour.md §8)."""
from tvr.losses.contrastive import symmetric_info_nce
from tvr.losses.gare_terms import (GARELossWeights, direction_diversity, gare_loss,
                                   relaxed_vib_kl, trust_region_term)
from tvr.losses.ncl import FeatureQueue, ncl_batch_biases, ncl_info_nce, target_biases

__all__ = ["FeatureQueue", "GARELossWeights", "direction_diversity", "gare_loss",
           "ncl_batch_biases", "ncl_info_nce", "relaxed_vib_kl", "symmetric_info_nce",
           "target_biases", "trust_region_term"]
