"""The folded GARE score: Psi rewritten as per-frame precomputations and F-vector algebra.

At eval time Psi's only non-linearities are the attention softmax over F frames and three
LayerNorms, so every projection folds into per-frame precomputations (:class:`Folding`: the
weights-only maps once, :meth:`Folding.prepare_videos` once per video) and the final cosine
becomes dot products of F-vectors with per-video F x F matrices (:meth:`Folding.score`, per
block of pairs). Per pair it costs about 3F·d + 5F² multiply-adds instead of about 4·d² for
the naive module. The derivation, step by step, is in ``docs/evaluation_engine.md`` §2 and §3;
the names below (U, Y, Z, D-hat, G, H, ...) are those of that document.

The folding reads the weights of a stock :class:`~tvr.models.similarity.Psi` by name; the
evaluation engine (:mod:`tvr.evaluation.engine`) checks it against the per-pair module.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from tvr.models.similarity import GapAwareSimilarity

NORM_EPS = 1e-12  # F.normalize's clamp on the norms, as in pair_cosine
CONVERT_ROWS = 1024  # rows of narrower frames converted per product (2 MB in float32, d = 512)


def centre(x: Tensor) -> Tensor:
    """c(x) = x - mean(x) along the last (feature) dimension."""
    return x - x.mean(dim=-1, keepdim=True)


def centre_columns(m: Tensor) -> Tensor:
    """C m: every column of the matrix m centred (the centring C = I − 11ᵀ/d from the left)."""
    return m - m.mean(dim=0)


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
        are composed here once, so that :meth:`prepare_videos` does one (F·N_v x d) @ (d x 3d)
        product (U_bk, Z_bk, D_bk) and a matrix-vector product for the key bias κ_bk; the key
        and Δ maps themselves are applied per text (:meth:`text_block`).
        """
        psi, d = self.psi, self.config.dim
        eye = torch.eye(d, dtype=psi.q_proj.weight.dtype, device=psi.q_proj.weight.device)
        g1, b1 = psi.layer_norm1.weight, psi.layer_norm1.bias
        g2, b2 = psi.layer_norm2.weight, psi.layer_norm2.bias
        g3, b3 = psi.layer_norm3.weight, psi.layer_norm3.bias
        w_q, w_k, w_v = psi.q_proj.weight, psi.k_proj.weight, psi.v_proj.weight
        w_o, w_mu = psi.out_proj.weight, psi.mean_proj.weight
        q0 = psi.q_proj(b1)                                                  # W_q β1 + b_q
        key_map = centre_columns((g1.unsqueeze(1) * w_q.T) @ w_k)
        key_shift = centre(g1 * (w_q.T @ psi.k_proj.bias))
        u_map, u_shift = centre_columns(w_o @ w_v), centre(psi.out_proj(psi.v_proj.bias))
        to_z = centre_columns(eye + psi.linear1.weight) * g2                 # C (I + W_1) diag(γ2)
        z_map, z_shift = to_z @ u_map, to_z @ u_shift
        d_map, d_shift = (w_mu * g3) @ z_map, (w_mu * g3) @ z_shift
        self._maps_t = torch.cat([u_map, z_map, d_map]).T.contiguous()       # (d, 3d)
        self._shifts = torch.cat([u_shift, z_shift, d_shift])
        self._key_delta_maps = torch.stack([key_map, d_map])                 # A_K, A_D
        self._key_delta_shifts = torch.stack([key_shift, d_shift])
        self._key_shift = key_shift
        self._kappa = (w_k.T @ q0 / math.sqrt(d), psi.k_proj.bias @ q0 / math.sqrt(d))  # κ
        self._z0 = centre(b2 + psi.linear1(b2))                              # z0 = c(y0)
        self._z0_sq = self._z0.square().sum()
        self._delta_consts = torch.stack([(w_mu * g3) @ self._z0,            # e
                                          psi.mean_proj(b3)])               # δ0
        self._consts_gram = self._delta_consts @ self._delta_consts.T        # e·e, e·δ0, δ0·δ0

    def prepare_videos(self, frames: Tensor) -> dict[str, Tensor]:
        """The per-video state of the folded path for ``frames`` (N_v, F, d), in the compact
        form (docs/evaluation_engine.md §2): the frames, the mean and inverse standard deviation
        of each frame's LN1 (``ln_mean``, ``ln_inv``: the rows' products with a text come from
        the frames' products with a few per-text projections, :meth:`pair_dots`) and the small
        per-video matrices, stacked as the two batched products of :meth:`score` read them:
        ``w_forms`` [Φ_b; C_b] ((2F + 2) x F) and ``a_forms`` [G_b; H_b; D_b D_bᵀ; h_bᵀ;
        (D_b e)ᵀ; (D_b δ0)ᵀ] ((3F + 3) x F). A video costs F x d numbers plus O(F²)."""
        psi = self.psi
        if psi is None:
            return {"w_forms": frames @ frames.mT, "frames": frames}        # Φ_b
        d, (n_v, n_frames) = self.config.dim, frames.shape[:2]
        layer_norm = psi.layer_norm1
        ln, mean, inv = torch.native_layer_norm(frames, (d,), layer_norm.weight,
                                                layer_norm.bias, layer_norm.eps)
        per_frame = torch.addmm(self._shifts, ln.reshape(-1, d), self._maps_t)
        u, z, d_frames = per_frame.view(n_v, n_frames, 3 * d).split(d, dim=-1)
        consts = self._delta_consts
        w_forms = torch.cat([frames @ frames.mT, d_frames @ frames.mT,
                             (frames @ consts.T).mT], dim=1)                # Φ_b, C_b = D̂ Fᵀ
        linear = torch.stack([z @ self._z0, d_frames @ consts[0], d_frames @ consts[1]], 1)
        parts = {"key_bias": ln @ self._kappa[0] + self._kappa[1],            # κ_bk
                 "w_forms": w_forms, "frames": frames, "ln_mean": mean.squeeze(-1),
                 "ln_inv": inv.squeeze(-1),
                 "a_forms": torch.cat([u @ u.mT, z @ z.mT, d_frames @ d_frames.mT, linear], 1)}
        if self.config.psi_query == "gap":
            mean_c = centre(frames.mean(1))                                  # c(m_b)
            pulled = mean_c @ self._key_delta_maps[0]                          # A_Kᵀ c(m_b)
            parts["key_gap"] = ((ln @ pulled.unsqueeze(-1)).squeeze(-1)      # α_bk
                                + (mean_c @ self._key_shift).unsqueeze(-1))
            parts["mean_sq"] = mean_c.square().sum(-1)
        return parts

    def text_block(self, t: dict[str, Tensor]) -> dict[str, Tensor]:
        """A block of prepared texts with what :meth:`score` reads per text, computed once per
        block of texts: the rows of :meth:`pair_dots`'s products, ``text_rows`` (T, d) (the
        texts over the pooling temperature) and, with a Psi, ``folded_rows`` (2T, d): γ1 ⊙ Aᵀt
        per map A (A_K, A_D: the key and Δ maps of LN1(f), shifts a_K, a_D); and e·t, δ0·t and
        the Δ map's constant a_D·t + β1·(A_Dᵀt) (``delta_t`` (3, 1, T)). The products take the
        rows transposed (column-major: BLAS is slow with a few row-major columns)."""
        psi, text = self.psi, t["text"]
        over_temp = text / self.config.temp
        if psi is None:
            return dict(t, text_rows=over_temp)
        pulled = text @ self._key_delta_maps                                 # (2, T, d): Aᵀ t
        delta_shift = pulled[1] @ psi.layer_norm1.bias + text @ self._key_delta_shifts[1]
        delta_t = torch.cat([text @ self._delta_consts.T, delta_shift.unsqueeze(1)], 1)
        return dict(t, text_rows=over_temp, delta_t=delta_t.T.unsqueeze(1),
                    folded_rows=(pulled * psi.layer_norm1.weight).flatten(0, 1))

    def pair_dots(self, v: dict[str, Tensor], t: dict[str, Tensor],
                  bf16: bool) -> tuple[Tensor, ...]:
        """(V, F, T) products t_a·f_bk / temp and, with a Psi, c(K~_bk)·t_a up to a constant
        per text (minus α_bk for psi_query "gap") and D_bk·t_a − a_D·t_a − β1·(A_Dᵀt_a), and
        the (V, T) products c(m_b)·t_a / temp (psi_query "gap", else None), from products of
        the frames with :meth:`text_block`'s rows (``bf16``: with bf16 operands):
        l·u = ((f − mean(f)) / σ(f))·(γ1 ⊙ u) + β1·u for l = LN1(f), the normalisation applied
        on the smaller side: to the frames for a block of d / 2 texts or more (evaluation; a
        second product with ``folded_rows``), else to the products of the frames themselves
        with ``text_rows`` and ``folded_rows`` (a search: one product, no copy of the
        frames). The constants left out are the same for every frame of a pair: the attention
        softmax ignores the key's, and :meth:`score` adds the Δ map's after the attention sum.
        c(m_b)·t = mean_k (f_bk·t − d mean(t) mean(f_bk)). Exact algebra."""
        frames, text_rows = v["frames"], t["text_rows"]
        (n_v, n_frames, d), n_t = frames.shape, len(text_rows)
        if self.psi is None:
            return (_product(frames, text_rows.T, bf16).view(n_v, n_frames, n_t),)
        mean, inv, rows = v["ln_mean"].unsqueeze(-1), v["ln_inv"].unsqueeze(-1), t["folded_rows"]
        if 2 * n_t < d:  # few texts (a search): the LN1 fold on the products, one product
            both = _product(frames, torch.cat([text_rows, rows]).T, bf16)
            text_dots = both[:, :n_t].view(n_v, n_frames, n_t)
            folded = both[:, n_t:].view(n_v, n_frames, 2 * n_t).sub_(mean * rows.sum(-1)).mul_(inv)
        else:  # many texts: on the frames, smaller than the products
            text_dots = _product(frames, text_rows.T, bf16).view(n_v, n_frames, n_t)
            normalised = (frames - mean).mul_(inv)
            folded = _product(normalised, rows.T, bf16).view(n_v, n_frames, 2 * n_t)
        key, delta = folded.view(n_v, n_frames, 2, n_t).unbind(2)
        gap = None
        if self.config.psi_query == "gap":
            key.sub_(v["key_gap"].unsqueeze(-1))
            gap = text_dots.mean(1) - d * text_rows.mean(-1) * mean.mean(1)
        return text_dots, key, delta, gap

    def score(self, t: dict[str, Tensor], v: dict[str, Tensor], bf16: bool) -> Tensor:
        """One block, (T, V), of texts ``t`` (:meth:`text_block`) and videos ``v``. Pair tensors
        are laid out (V, ·, T); see docs/evaluation_engine.md. ``bf16``: the per-pair matrix
        products take bf16 operands."""
        cfg, n_frames = self.config, v["mask"].shape[1]
        dots = self.pair_dots(v, t, bf16)
        text_frame, mask = dots[0], v["mask"]                  # t_a · f_bk / temp
        pooled = torch.softmax(text_frame, dim=1)              # w_ab before the mask
        text_v = torch.bmm(mask.unsqueeze(1), text_frame.mul_(pooled)).squeeze(1)
        text_v.mul_(cfg.temp)                                  # t_a · v_ab
        forms = v["w_forms"] * mask.unsqueeze(1)               # the mask moved into Φ_b, C_b
        forms[:, :n_frames] *= mask.unsqueeze(-1)
        by_w = torch.bmm(forms, pooled)                        # Φ_b w_ab, C_b w_ab
        v_sq = by_w[:, :n_frames].mul_(pooled).sum(1)          # ||v_ab||²
        text_sq = t["sq_norm"].unsqueeze(0)
        if self.psi is None:
            return cosine(text_v, text_sq, v_sq)
        attn = torch.softmax(self._logits(t, v, dots[1], dots[3]), dim=1)   # a_abk
        text_delta, delta_v, delta_sq = self._delta_products(t, v, attn, dots[2],
                                                             by_w[:, n_frames:])
        if cfg.normalize_delta:
            text_delta, delta_v, delta_sq = unit_delta(text_delta, delta_v, delta_sq)
        if cfg.delta_side == "video":
            return cosine(text_v + text_delta, text_sq, v_sq + 2 * delta_v + delta_sq)
        return cosine(text_v + delta_v, text_sq + 2 * text_delta + delta_sq, v_sq)

    def _logits(self, t: dict[str, Tensor], v: dict[str, Tensor], key_text: Tensor,
                gap_dot: Optional[Tensor]) -> Tensor:
        """(V, F, T) attention logits from c(K~_bk)·t_a (psi_query "gap": c(K~_bk)·t_a − α_bk,
        with c(m_b)·t_a / temp), §3."""
        d, psi, key_bias = self.config.dim, self.psi, v["key_bias"].unsqueeze(-1)
        if gap_dot is None:                                    # psi_query "text"
            centred_sq = t["centred_sq_norm"]
            scale = 1.0 / (math.sqrt(d) * torch.sqrt(centred_sq / d + psi.layer_norm1.eps))
            return torch.addcmul(key_bias, key_text, scale, out=key_text)
        gap_sq = (v["mean_sq"].unsqueeze(-1) - 2 * self.config.temp * gap_dot
                  + t["centred_sq_norm"].unsqueeze(0)).clamp_min(0)
        scale = -self.config.gap_sign / (math.sqrt(d)
                                         * torch.sqrt(gap_sq / d + psi.layer_norm1.eps))
        return torch.addcmul(key_bias, key_text, scale.unsqueeze(1), out=key_text)

    def _delta_products(self, t: dict[str, Tensor], v: dict[str, Tensor], attn: Tensor,
                        delta_text: Tensor, delta_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """t_a·Δ_ab, Δ_ab·v_ab and ||Δ_ab||², each (V, T), with ĉ = [s a, 1/σ3, 1] expanded
        (s = 1/(σ2 σ3)): one batched product of ``a_forms`` with the attention, §3."""
        d, psi, n_frames = self.config.dim, self.psi, attn.shape[1]
        by_a = torch.bmm(v["a_forms"], attn)                   # (V, 3F + 3, T)
        quad = by_a[:, :3 * n_frames].unflatten(1, (3, n_frames)).mul_(attn.unsqueeze(1)).sum(2)
        h_a, de_a, dd_a = by_a[:, 3 * n_frames:].unbind(1)     # h·a, (D e)·a, (D δ0)·a
        inv2 = torch.rsqrt(quad[:, 0] / d + psi.layer_norm2.eps)
        y_sq = quad[:, 1] * inv2.square() + 2 * inv2 * h_a + self._z0_sq
        inv3 = torch.rsqrt(y_sq.clamp_min(0) / d + psi.layer_norm3.eps)
        s = inv2 * inv3
        e_t, d0_t, shift_t = t["delta_t"]                      # e·t_a, δ0·t_a, (1, T)
        text_delta = s * (delta_text.mul_(attn).sum(1) + shift_t) + inv3 * e_t + d0_t
        delta_v = s * delta_w[:, :n_frames].mul_(attn).sum(1) + inv3 * delta_w[:, -2] + delta_w[:, -1]
        (ee, ed), (_, dd) = self._consts_gram
        delta_sq = (s.square() * quad[:, 2] + 2 * s * (inv3 * de_a + dd_a)
                    + inv3.square() * ee + 2 * inv3 * ed + dd)
        return text_delta, delta_v, delta_sq


def _product(frames: Tensor, b: Tensor, bf16: bool) -> Tensor:
    """``frames`` (V, F, d) as (V·F, d) @ b, in b's dtype: with bf16 operands when ``bf16``;
    frames in a narrower floating type (an index's float16 records) converted a few videos
    (:data:`CONVERT_ROWS` rows) at a time, exactly, each block multiplied while it is in the
    cache instead of making a whole converted copy."""
    if bf16:
        return (frames.flatten(0, 1).bfloat16() @ b.bfloat16()).to(b.dtype)
    if frames.dtype == b.dtype:
        return frames.flatten(0, 1) @ b
    n_v, n_frames = frames.shape[:2]
    out = torch.empty(n_v * n_frames, b.shape[1], dtype=b.dtype, device=b.device)
    step = max(1, CONVERT_ROWS // n_frames)
    for start in range(0, n_v, step):
        block = frames[start:start + step].to(b.dtype).flatten(0, 1)
        torch.mm(block, b, out=out[start * n_frames:start * n_frames + len(block)])
    return out
