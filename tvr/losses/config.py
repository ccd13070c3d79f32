"""The weights of the GARE loss (:class:`GARELossWeights`), without torch: the flags that
declare them (tvr/cli/flags.py) are parsed before any model module is imported."""
from __future__ import annotations

from dataclasses import dataclass

from tvr.settings import NON_NEGATIVE, POSITIVE, check_settings, setting


@dataclass(frozen=True)
class GARELossWeights:
    """Weights and settings of the GARE loss (docs/behaviour.md §7; defaults = the released code).

    ``beta`` weighs the relaxed-VIB KL. The released code uses ``beta = 1e-4`` with the KL
    *summed* over the d dimensions (one multivariate event,
    :func:`tvr.losses.gare_terms.relaxed_vib_kl`); the paper's β = 0.07 belonged to an older
    per-dimension KL and is not comparable. ``dir_loss`` picks the form of the direction term
    that ``lambda_dir`` weighs (:func:`tvr.losses.gare_terms.direction_term`).
    """

    beta: float = setting(1e-4, "weight of the relaxed-VIB KL, summed over d (the released "
                                "code's 1e-4; the paper's 0.07 was for an older per-dimension "
                                "KL)", NON_NEGATIVE)
    lambda_dir: float = setting(0.01, "weight of the direction term (either --dir_loss)",
                                NON_NEGATIVE)
    alpha: float = setting(2.0, "sharpness of the direction-diversity kernel (--dir_loss "
                                "uniformity)", POSITIVE)
    lambda_epsilon: float = setting(0.01, "weight of the trust-region (norm variance) term",
                                    NON_NEGATIVE)
    lambda_lower: float = setting(0.5, "floor of the trust-region term: it is 0 below "
                                       "-lambda_lower", NON_NEGATIVE)
    prior_std: float = setting(1.0, "σ of the KL's prior N(0, σ² I)", POSITIVE,
                               flag="kl_prior_std")
    kl_anchor: str = setting("video", "KL statistics of Δ per video over its texts, or per text",
                             choices=("video", "text"))
    dir_loss: str = setting("uniformity", "form of the direction term: the uniformity kernel "
                                          "(sharpness --alpha), or the mean squared cosine of "
                                          "the directions over pairs j != k (paper Table 8)",
                            choices=("uniformity", "orthogonal"))

    def __post_init__(self) -> None:
        check_settings(self)
