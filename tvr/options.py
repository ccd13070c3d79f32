"""Command-line flags of main_retrieval.py and their translation into configurations.

Defaults reproduce the published MSR-VTT recipe of the reference implementation; every paper
ablation is a flag whose help text says what it changes (SPEC §5-8).
"""
from __future__ import annotations

import argparse

from tvr.losses.gare_terms import GARELossWeights
from tvr.models.gare import GAREConfig, NCLConfig
from tvr.models.similarity import SimilarityConfig
from tvr.models.temporal import AGG_MODULES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Backbone, temporal aggregation, GARE similarity, losses and NCL."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--base_encoder", default="ViT-B/32",
                       choices=["ViT-B/32", "ViT-B/16", "ViT-L/14", "tiny"],
                       help="CLIP architecture; 'tiny' is a small CLIP trained from scratch")
    group.add_argument("--clip_path", default=None,
                       help="CLIP checkpoint file, or a folder holding ViT-B-32.pt etc. "
                            "(default: $TVR_CLIP_PATH, then tvr/models/)")

    group = parser.add_argument_group("temporal aggregation (SPEC §5)")
    group.add_argument("--agg_module", default=None, choices=AGG_MODULES,
                       help="frame aggregation before the similarity; default seqTransf, and "
                            "None for --datatype msvd (the reference skips it there)")
    group.add_argument("--num_hidden_layers", type=int, default=4,
                       help="seqTransf blocks, initialised from the first CLIP text blocks")

    group = parser.add_argument_group("GARE similarity and its ablations (SPEC §6)")
    group.add_argument("--temp", type=float, default=3.0,
                       help="temperature of the text-conditioned frame pooling softmax")
    group.add_argument("--psi_dropout", type=float, default=0.3,
                       help="dropout inside Psi, on W_1 x + b_1")
    group.add_argument("--delta_side", default="text", choices=["text", "video"],
                       help="apply Δ to the text (s = cos(t + Δ, v); MSR-VTT) or to the pooled "
                            "video (s = cos(t, v + Δ); ActivityNet)")
    group.add_argument("--psi_query", default="gap", choices=["gap", "text"],
                       help="Psi's query: the semantic gap g_ab, or the text embedding alone")
    group.add_argument("--gap_sign", type=int, default=1, choices=[1, -1],
                       help="η in g = η (mean frame - text): +1 video minus text, -1 reversed")
    group.add_argument("--psi_context", default="frames", choices=["frames", "words"],
                       help="Psi's keys/values: the video's frames, or the caption's words")
    group.add_argument("--no_delta", action="store_true",
                       help="the paper's Baseline: no Psi, s = cos(t, pooled video)")

    group = parser.add_argument_group("losses (SPEC §7); a weight of 0 turns its term off")
    group.add_argument("--beta", type=float, default=1e-4,
                       help="weight of the relaxed-VIB KL, summed over d (the released code's "
                            "1e-4; the paper's 0.07 was for an older per-dimension KL)")
    group.add_argument("--kl_prior_std", type=float, default=1.0,
                       help="σ of the KL's prior N(0, σ² I)")
    group.add_argument("--kl_anchor", default="video", choices=["video", "text"],
                       help="KL statistics of Δ per video over its texts, or per text")
    group.add_argument("--lambda_epsilon", type=float, default=0.01,
                       help="weight of the trust-region (norm variance) term")
    group.add_argument("--lambda_lower", type=float, default=0.5,
                       help="floor of the trust-region term: it is 0 below -lambda_lower")
    group.add_argument("--lambda_dir", type=float, default=0.01,
                       help="weight of the direction-diversity term")
    group.add_argument("--alpha", type=float, default=2.0,
                       help="sharpness of the direction-diversity kernel")

    group = parser.add_argument_group("NCL: Sinkhorn-normalised contrastive learning (SPEC §8)")
    group.add_argument("--ncl", action="store_true",
                       help="train with NCL biases (off by default)")
    group.add_argument("--ncl_tau", type=float, default=None,
                       help="Sinkhorn temperature (default: 1/exp(logit_scale))")
    group.add_argument("--ncl_iters", type=int, default=10, help="Sinkhorn iterations")
    group.add_argument("--ncl_queue", type=int, default=4096,
                       help="past queries kept per direction for the training-time biases")


def resolve_agg_module(agg_module: str | None, datatype: str) -> str:
    """``--agg_module`` as given, else seqTransf, or None for msvd (reference behaviour)."""
    if agg_module is not None:
        return agg_module
    return "None" if datatype == "msvd" else "seqTransf"


def gare_config(args: argparse.Namespace) -> GAREConfig:
    """The model configuration of parsed flags (``args.datatype`` picks the msvd default)."""
    return GAREConfig(
        agg_module=resolve_agg_module(args.agg_module, getattr(args, "datatype", "msrvtt")),
        num_hidden_layers=args.num_hidden_layers,
        similarity=SimilarityConfig(
            temp=args.temp, dropout=args.psi_dropout, delta_side=args.delta_side,
            psi_query=args.psi_query, gap_sign=args.gap_sign, psi_context=args.psi_context,
            no_delta=args.no_delta),
        loss=GARELossWeights(
            beta=args.beta, lambda_dir=args.lambda_dir, alpha=args.alpha,
            lambda_epsilon=args.lambda_epsilon, lambda_lower=args.lambda_lower,
            prior_std=args.kl_prior_std, kl_anchor=args.kl_anchor),
        ncl=NCLConfig(enabled=args.ncl, tau=args.ncl_tau, iters=args.ncl_iters,
                      queue=args.ncl_queue),
    )
