"""Inference-time normalisers of a retrieval score matrix (docs/behaviour.md §8, last paragraph;
§11).

Every function takes ``scores`` with the QUERIES ON THE ROWS and the gallery on the columns
and returns a matrix of the same shape whose per-row rankings are the normalised ones. They
are direction-agnostic: pass the texts x videos matrix for text->video and its transpose
(videos x texts) for video->text; likewise a bank is always (bank queries x gallery), i.e.
training texts x test videos for text->video and training videos x test texts for
video->text. Each normaliser is a separate evaluation flag and is reported separately.
"""

from __future__ import annotations

import torch

from tvr.losses.ncl import target_biases

__all__ = ["dual_softmax", "ncl_normalize", "qb_norm"]


def dual_softmax(scores: torch.Tensor, temp: float) -> torch.Tensor:
    """Dual softmax (DSL, CAMoE; Cheng et al. 2021)::

        prior_qg = softmax_q(scores_qg / temp)      (over the QUERY axis, dim 0)
        out_qg   = scores_qg * prior_qg * Q          (Q = number of queries)

    For every gallery item the prior spreads one unit of mass over the queries, so an item
    that scores high with many queries (a hub) gets a small prior for each of them. ``temp``
    is a temperature: ``temp = 0.01`` is the x100 scaling of CLIP-based DSL code. The factor
    Q (as in CAMoE) only keeps the values on the score scale; it changes no ranking. DSL is
    transductive: it uses the other test queries, unlike :func:`qb_norm` and
    :func:`ncl_normalize`.
    """
    if temp <= 0:
        raise ValueError(f"temp must be > 0, got {temp}")
    prior = torch.softmax(scores / temp, dim=0)
    return scores * prior * scores.shape[0]


def qb_norm(
    scores: torch.Tensor, bank_scores: torch.Tensor, beta: float = 20.0, k: int = 1
) -> torch.Tensor:
    """Querybank normalisation with the dynamic inverted softmax (QB-Norm, Bogolin et al.,
    CVPR 2022). ``bank_scores`` is (bank queries x gallery), e.g. training captions x test
    videos; the defaults ``beta=20, k=1`` are those of the QB-Norm release.

    1. Activation set A = every gallery item that is among the top-k of some bank query.
    2. A query whose top-1 gallery item lies in A is normalised by the inverted softmax
       ``exp(beta s_qg) / Σ_p exp(beta bank_pg)``; the other queries keep their scores.

    The result is returned in the log domain, which is stable for any ``beta`` and ranks
    each row exactly as the released code does: normalised rows hold
    ``beta s_qg - logsumexp_p(beta bank_pg)``, the others ``beta s_qg`` (the released code
    keeps the raw ``s_qg`` there, a monotone function of it).
    """
    if bank_scores.dim() != 2 or bank_scores.shape[1] != scores.shape[1]:
        raise ValueError(
            f"bank_scores {tuple(bank_scores.shape)} must be (bank queries x "
            f"{scores.shape[1]} gallery items)"
        )
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    bank = bank_scores.to(scores.dtype)
    activated = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
    activated[bank.topk(k, dim=1).indices.reshape(-1)] = True
    normalise_row = activated[scores.argmax(dim=1)]
    log_norm = torch.logsumexp(beta * bank, dim=0)
    out = beta * scores
    return torch.where(normalise_row.unsqueeze(1), out - log_norm.unsqueeze(0), out)


def ncl_normalize(
    scores: torch.Tensor,
    bank_scores: torch.Tensor,
    tau: float,
    iters: int = 10,
    tol: float = 1e-4,
) -> torch.Tensor:
    """NCL test-time normalisation (docs/behaviour.md §8, "Test"): ``out_qg = scores_qg + b_g``.

    The gallery biases ``b_g = tau log c_g`` come from Sinkhorn-Knopp on ``bank_scores``
    (training-query bank x test gallery, see :func:`tvr.losses.ncl.target_biases`), never
    on the test queries themselves, so the test queries are not used to normalise one
    another. ``tau`` should be the model's contrastive temperature ``1 / exp(logit_scale)``.
    """
    if bank_scores.dim() != 2 or bank_scores.shape[1] != scores.shape[1]:
        raise ValueError(
            f"bank_scores {tuple(bank_scores.shape)} must be (bank queries x "
            f"{scores.shape[1]} gallery items)"
        )
    biases = target_biases(bank_scores.to(scores.dtype), tau, iters, tol)
    return scores + biases.unsqueeze(0)
