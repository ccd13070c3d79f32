"""The folded GARE score: Psi rewritten as per-frame precomputations and F-vector algebra.

At eval time Psi's only non-linearities are the attention softmax over F frames and three
LayerNorms, so every projection folds into per-frame precomputations (:class:`Folding`: the
weights-only maps once, :meth:`Folding.prepare_videos` once per video) and the final cosine
becomes dot products of F-vectors with per-video F x F matrices (:meth:`Folding.score`, per
block of pairs). Per pair it costs about (3F + 3)·d + 5F² multiply-adds instead of about 4·d² for
the naive module. The derivation, step by step, is in ``docs/evaluation_engine.md`` §2 and §3;
the names below (U, Y, Z, D-hat, G, H, ...) are those of that document.

The folding reads the weights of a stock :class:`~tvr.models.similarity.Psi` by name; the
evaluation engine (:mod:`tvr.evaluation.engine`) checks it against the per-pair module.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from tvr.models.similarity import GapAwareSimilarity

NORM_EPS = 1e-12  # F.normalize's clamp on the norms, as in pair_cosine


def centre(x: Tensor) -> Tensor:
    """c(x) = x - mean(x) along the last (feature) dimension."""
    return x - x.mean(dim=-1, keepdim=True)


def cosine(dot: Tensor, x_sq: Tensor, y_sq: Tensor) -> Tensor:
    """(V, T) dot / (max(||x||, eps) max(||y||, eps)) -> (T, V)."""
    x_norm = torch.sqrt(x_sq.clamp_min(0)).clamp_min(NORM_EPS)
    y_norm = torch.sqrt(y_sq.clamp_min(0)).clamp_min(NORM_EPS)
    return (dot / (x_norm * y_norm)).T


def unit_delta(text_delta: Tensor, delta_v: Tensor, delta_sq: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
    """t_a·Δ, Δ·v_ab and ||Δ||² of Δ / max(||Δ||, eps) (``normalize_delta``, as F.normalize
    scales Δ in the module) from those of Δ: the products scale by 1 / max(||Δ||, eps), the
    squared norm by its square, so the folded path stays exact."""
    inv = 1.0 / torch.sqrt(delta_sq.clamp_min(0)).clamp_min(NORM_EPS)
    return text_delta * inv, delta_v * inv, delta_sq * inv.square()


class Folding:
    """The folded path of one eval-mode similarity ``module`` (the engine's own copy).

    The weights-only constants are composed when it is built; LayerNorm epsilons and LN1 itself
    are read from ``module.psi`` when used. Without a Psi (``no_delta``) only the pooling is
    folded.
    """

    def __init__(self, module: GapAwareSimilarity) -> None:
        self.config, self.psi = module.config, module.psi
        if self.psi is not None:
            self._fold_weights()

    @torch.no_grad()
    def _fold_weights(self) -> None:
        """Weights-only constants (docs/evaluation_engine.md, §2).

        Every per-frame vector the scores need is an affine map of l_bk = LN1(f_bk); the maps
        are composed here once, so that :meth:`prepare_videos` does one (F·N_v x d) @ (d x 4d)
        product: c(K~_bk), U_bk, Z_bk, D_bk and the key bias κ_bk.
        """
        psi, d = self.psi, self.config.dim
        eye = torch.eye(d, dtype=psi.q_proj.weight.dtype, device=psi.q_proj.weight.device)
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

    def prepare_videos(self, frames: Tensor, compact: bool = False) -> dict[str, Tensor]:
        """The per-video tensors of the folded path for ``frames`` (N_v, F, d): the rows R_b of
        the per-pair matrix product and the small per-video matrices (§2).

        ``compact``: instead of the (3F + 3) x d rows, keep the frames and the mean and inverse
        standard deviation of each frame's LN1 (``ln_mean``, ``ln_inv``): the rows' dot
        products with a text then come from the frames' dot products with a few per-text
        projections (:meth:`stored_dots`), so a stored video costs F x d numbers, not (3F + 3)
        x d (docs/evaluation_engine.md §2).
        """
        parts = {"frame_gram": frames @ frames.mT}                           # Φ_b
        psi = self.psi
        if psi is None:
            return dict(parts, frames=frames) if compact else dict(parts, rows=frames)
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
            mean_c = centre(frames.mean(1))                                  # c(m_b)
            parts["key_gap"] = (key_fold @ mean_c.unsqueeze(-1)).squeeze(-1)  # α_bk
            parts["mean_sq"] = mean_c.square().sum(-1)
            rows.append(mean_c.unsqueeze(1))
        if compact:
            variance = frames.var(-1, correction=0)
            return dict(parts, frames=frames, ln_mean=frames.mean(-1),
                        ln_inv=torch.rsqrt(variance + psi.layer_norm1.eps))
        parts["rows"] = torch.cat(rows, dim=1)
        return parts

    def _projections(self, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per text, what :meth:`stored_dots` needs: the vectors P (T, d, 3) whose dot products
        with a frame f give t·f, (γ1 ⊙ A_Kᵀ t)·f and (γ1 ⊙ A_Dᵀ t)·f (A_K, A_D: the key and Δ
        maps of LN1(f)), their component sums (T, 2) and the constant parts (T, 4): b·t + β1·(Aᵀ
        t) for both maps, then e·t and δ0·t (the two weights-only rows of D-hat)."""
        d, psi = self.config.dim, self.psi
        maps = self._frame_maps[:4 * d].view(4, d, d)
        shifts = self._frame_bias[:4 * d].view(4, d)
        pulled = torch.stack([text @ maps[0], text @ maps[3]], dim=1)       # (T, 2, d): Aᵀ t
        scaled = pulled * psi.layer_norm1.weight
        vectors = torch.cat([text.unsqueeze(1), scaled], dim=1).mT            # (T, d, 3)
        consts = torch.cat([pulled @ psi.layer_norm1.bias
                            + text @ shifts[[0, 3]].T, text @ self._delta_consts.T], dim=1)
        return vectors, scaled.sum(-1), consts

    def stored_dots(self, v: dict[str, Tensor], text: Tensor) -> Tensor:
        """(V, R, T) dot products of the rows R_b with the texts, from compact parts (see
        :meth:`prepare_videos`): l·u = ((γ1 ⊙ u)·f − mean(f) Σ(γ1 ⊙ u)) / σ(f) + β1·u for
        l = LN1(f), and c(m_b)·t = mean_k (f_bk·t − d mean(t) mean(f_bk)). Exact algebra."""
        frames = v["frames"]
        n_v, n_frames, d = frames.shape
        if self.psi is None:
            return frames @ text.T
        vectors, sums, consts = self._projections(text)
        n_t = len(text)
        dots = (frames.reshape(-1, d) @ vectors.permute(1, 0, 2).reshape(d, -1))
        dots = dots.view(n_v, n_frames, n_t, 3).permute(0, 3, 1, 2)       # (V, 3, F, T)
        mean, inv = v["ln_mean"].unsqueeze(-1), v["ln_inv"].unsqueeze(-1)
        text_frame = dots[:, 0]
        folded = [inv * (dots[:, j + 1] - mean * sums[:, j]) + consts[:, j] for j in (0, 1)]
        delta_consts = consts[:, 2:].T.expand(n_v, 2, n_t)
        rows = [text_frame, folded[0], folded[1], delta_consts]
        if self.config.psi_query == "gap":
            gap = (text_frame - d * text.mean(-1) * mean).mean(1, keepdim=True)
            rows.append(gap)
        return torch.cat(rows, dim=1)

    def score(self, t: dict[str, Tensor], v: dict[str, Tensor], bf16: bool) -> Tensor:
        """One block, (T, V). Pair tensors are laid out (V, ·, T); see docs/evaluation_engine.md.
        ``bf16``: the per-pair matrix product of the rows takes bf16 operands (compact parts:
        the frames' product stays in the engine's dtype)."""
        cfg, psi = self.config, self.psi
        d, n_frames = cfg.dim, v["mask"].shape[1]
        text = t["text"]
        n_v = len(v["mask"])
        if "rows" not in v:
            dots = self.stored_dots(v, text)                   # compact parts
        elif bf16:
            dots = (v["rows"].reshape(-1, d).bfloat16() @ text.bfloat16().T).to(text.dtype)
        else:
            dots = v["rows"].reshape(-1, d) @ text.T
        dots = dots.view(n_v, -1, len(text))                   # rows_b · t_a
        text_frame = dots[:, :n_frames]                        # t_a · f_bk
        w = torch.softmax(text_frame / cfg.temp, dim=1) * v["mask"].unsqueeze(-1)
        text_v = (w * text_frame).sum(1)                       # t_a · v_ab
        v_sq = (w * torch.bmm(v["frame_gram"], w)).sum(1)      # ||v_ab||²
        text_sq = t["sq_norm"].unsqueeze(0)
        if psi is None:
            return cosine(text_v, text_sq, v_sq)
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
        if cfg.normalize_delta:
            text_delta, delta_v, delta_sq = unit_delta(text_delta, delta_v, delta_sq)
        if cfg.delta_side == "video":
            return cosine(text_v + text_delta, text_sq, v_sq + 2 * delta_v + delta_sq)
        return cosine(text_v + delta_v, text_sq + 2 * text_delta + delta_sq, v_sq)
