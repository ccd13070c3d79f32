"""GARE regularisers on the increments Δ and the total training loss (docs/behaviour.md §7).

Every function takes ``delta`` of shape (B_t, B_v, d) with ``delta[a, b]`` = Δ_ab, the
increment predicted for text a and video b (docs/behaviour.md §6.3). All terms are vectorised over
the batch; none loops in Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tvr.losses.config import GARELossWeights
from tvr.losses.contrastive import symmetric_info_nce

__all__ = [
    "direction_diversity",
    "direction_term",
    "gare_loss",
    "orthogonality_term",
    "relaxed_vib_kl",
    "trust_region_term",
]

_SIGMA_EPS = 1e-6  # added to the empirical std (docs/behaviour.md §7)
_LOG_EPS = 1e-8  # added inside the log of the direction-diversity term (docs/behaviour.md §7)


def _check_delta(delta: torch.Tensor) -> None:
    if delta.dim() != 3:
        raise ValueError(f"delta must have shape (B_t, B_v, d), got {tuple(delta.shape)}")


def relaxed_vib_kl(
    delta: torch.Tensor, prior_std: float = 1.0, anchor: str = "video"
) -> torch.Tensor:
    """Relaxed variational-information-bottleneck KL term (docs/behaviour.md §7, "Relaxed VIB").

    With ``anchor="video"`` the statistics of each video b are taken over the texts a::

        μ_b = mean_a Δ_ab,   σ_b = std_a(Δ_ab) (unbiased) + 1e-6,
        KL_b = Σ_k [ log(s / σ_bk) + (σ_bk² + μ_bk²) / (2 s²) - 1/2 ],   s = prior_std,
        KL   = mean_b KL_b,

    i.e. KL( N(μ_b, diag σ_b²) || N(0, s² I) ) of one d-variate event, in closed form.
    ``anchor="text"`` swaps the roles (statistics of each text a over the videos b, averaged
    over a). The anchored axis' opposite axis needs at least two entries (unbiased std).
    """
    _check_delta(delta)
    if anchor not in ("video", "text"):
        raise ValueError(f"anchor must be 'video' or 'text', got {anchor!r}")
    if prior_std <= 0:
        raise ValueError(f"prior_std must be positive, got {prior_std}")
    reduce_dim = 0 if anchor == "video" else 1
    if delta.shape[reduce_dim] < 2:
        raise ValueError(
            f"relaxed_vib_kl(anchor={anchor!r}) needs at least 2 entries along dim "
            f"{reduce_dim} for an unbiased std, got shape {tuple(delta.shape)}"
        )
    mu = delta.mean(dim=reduce_dim)
    sigma = delta.std(dim=reduce_dim) + _SIGMA_EPS
    var_ratio = (sigma.square() + mu.square()) / (2.0 * prior_std**2)
    kl_per_dim = math.log(prior_std) - sigma.log() + var_ratio - 0.5
    return kl_per_dim.sum(dim=-1).mean()


def trust_region_term(delta: torch.Tensor, lower: float = 0.5) -> torch.Tensor:
    """Trust-region radius term with a floor (docs/behaviour.md §7,
    ``--lambda_epsilon``/``--lambda_lower``).

    ``r_ab = ||Δ_ab||_2``, ``L_eps = - mean_a Var_b(r_ab)`` (unbiased variance over videos).
    Returns ``L_eps`` when ``L_eps >= -lower`` and 0 otherwise (reference behaviour kept,
    docs/behaviour.md §12): once the radii spread out beyond the floor the term and its gradient
    vanish. The 0 is a zero tensor selected by ``torch.where``, so the graph stays connected and the
    gradient is exactly zero below the floor. Needs B_v >= 2.
    """
    _check_delta(delta)
    if delta.shape[1] < 2:
        raise ValueError(f"trust_region_term needs B_v >= 2, got shape {tuple(delta.shape)}")
    radii = torch.linalg.vector_norm(delta, dim=-1)
    term = -radii.var(dim=1).mean()
    return torch.where(term >= -lower, term, torch.zeros_like(term))


def direction_diversity(delta: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Direction-diversity term (docs/behaviour.md §7, ``--lambda_dir``/``--alpha``).

    ``z_ab = Δ_ab / ||Δ_ab||`` and::

        L_dir = mean_a log( mean_{b, b'} exp(-alpha (1 - z_ab · z_ab')) + 1e-8 ),

    with the pairs b = b' included (docs/behaviour.md §12). The normalisation is ``F.normalize``
    with its default eps 1e-12, as in the reference: a zero increment gives z = 0, i.e. cosine 0
    (distance 1) with every direction, itself included. One batched matmul builds the (B_t, B_v,
    B_v) Gram matrices; the numbers equal the reference's per-text loop.
    """
    _check_delta(delta)
    z = F.normalize(delta, dim=-1)
    cosines = torch.matmul(z, z.transpose(1, 2))
    kernel = torch.exp(-alpha * (1.0 - cosines))
    return torch.log(kernel.mean(dim=(1, 2)) + _LOG_EPS).mean()


def orthogonality_term(delta: torch.Tensor) -> torch.Tensor:
    """Strict-orthogonality direction term (docs/behaviour.md §7, ``--dir_loss orthogonal``;
    the paper's Table 8 row "strict orthogonality over j != k").

    ``z_ab = Δ_ab / ||Δ_ab||`` (``F.normalize``, as in :func:`direction_diversity`) and::

        L_orth = mean_a mean_{b != b'} (z_ab · z_ab')²,

    the squared off-diagonal entries of each text's Gram matrix of directions: 0 exactly when
    the B_v directions of every text are pairwise orthogonal, 1 when they all coincide (or are
    opposite). The diagonal b = b' is left out. Needs B_v >= 2.
    """
    _check_delta(delta)
    n_videos = delta.shape[1]
    if n_videos < 2:
        raise ValueError(f"orthogonality_term needs B_v >= 2, got shape {tuple(delta.shape)}")
    z = F.normalize(delta, dim=-1)
    squared = torch.matmul(z, z.transpose(1, 2)).square()
    off_diagonal = squared.sum(dim=(1, 2)) - squared.diagonal(dim1=1, dim2=2).sum(dim=-1)
    return (off_diagonal / (n_videos * (n_videos - 1))).mean()


def direction_term(delta: torch.Tensor, weights: GARELossWeights) -> torch.Tensor:
    """The direction term that ``weights.dir_loss`` names: :func:`direction_diversity` with
    ``weights.alpha`` ("uniformity") or :func:`orthogonality_term` ("orthogonal")."""
    if weights.dir_loss == "orthogonal":
        return orthogonality_term(delta)
    return direction_diversity(delta, weights.alpha)


def gare_loss(
    scores: torch.Tensor,
    delta: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
    weights: GARELossWeights | None = None,
    biases: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Total GARE training loss (docs/behaviour.md §7, "Total")::

        L = L_nce + beta · KL + lambda_dir · L_dir + lambda_epsilon · L_eps,

    L_dir being :func:`direction_diversity` or :func:`orthogonality_term` (``w.dir_loss``).

    ``scores`` is the B x B matrix of s_ab (docs/behaviour.md §6.4), ``delta`` the (B, B, d)
    increments, ``logit_scale`` the raw parameter and ``biases`` optional NCL biases passed on to
    :func:`~tvr.losses.contrastive.symmetric_info_nce`. A term whose weight is 0 is not
    computed, and ``delta=None`` (the paper's Baseline, ``--no_delta``) gives the contrastive
    term alone. The default weights are the released code's (see :class:`GARELossWeights`:
    beta 1e-4 for the summed KL; the paper's 0.07 was for an older per-dimension KL).

    Returns a dict with ``"loss"`` (the total) and ``"nce"``, plus the unweighted terms that
    were computed among ``"kl"``, ``"dir"`` and ``"eps"`` (tensors, for logging).
    """
    w = weights if weights is not None else GARELossWeights()
    if delta is not None and delta.shape[:2] != scores.shape:
        raise ValueError(
            f"delta {tuple(delta.shape)} does not match scores {tuple(scores.shape)} "
            "in its first two dimensions"
        )
    nce = symmetric_info_nce(scores, logit_scale, biases)
    out = {"nce": nce}
    total = nce
    if delta is not None:
        if w.beta > 0:
            out["kl"] = relaxed_vib_kl(delta, w.prior_std, w.kl_anchor)
            total = total + w.beta * out["kl"]
        if w.lambda_dir > 0:
            out["dir"] = direction_term(delta, w)
            total = total + w.lambda_dir * out["dir"]
        if w.lambda_epsilon > 0:
            out["eps"] = trust_region_term(delta, w.lambda_lower)
            total = total + w.lambda_epsilon * out["eps"]
    out["loss"] = total
    return out
