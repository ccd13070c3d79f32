"""GARE losses (docs/behaviour.md §7) against loop-based transcriptions of the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from tvr.losses import gare_terms
from tvr.losses.config import GARELossWeights
from tvr.losses.contrastive import symmetric_info_nce
from tvr.losses.gare_terms import (
    direction_diversity,
    gare_loss,
    orthogonality_term,
    relaxed_vib_kl,
    trust_region_term,
)

# ---------------------------------------- loop references (docs/behaviour.md §7)


def ref_info_nce(scores, logit_scale, video_bias=None, text_bias=None):
    s = scores.tolist()
    n = len(s)
    scale = math.exp(float(logit_scale))
    vb = video_bias.tolist() if video_bias is not None else [0.0] * n
    tb = text_bias.tolist() if text_bias is not None else [0.0] * n

    def ce_rows(logit):
        total = 0.0
        for i in range(n):
            row = [logit(i, j) for j in range(n)]
            m = max(row)
            lse = m + math.log(sum(math.exp(x - m) for x in row))
            total += lse - row[i]
        return total / n

    t2v = ce_rows(lambda a, b: scale * (s[a][b] + vb[b]))
    v2t = ce_rows(lambda b, a: scale * (s[a][b] + tb[a]))
    return (t2v + v2t) / 2


def ref_kl(delta, prior_std=1.0, anchor="video"):
    d3 = delta.tolist()
    n_t, n_v, d = delta.shape
    if anchor == "text":  # swap roles: statistics of each text over the videos
        d3 = [[d3[a][b] for a in range(n_t)] for b in range(n_v)]
        n_t, n_v = n_v, n_t
    total = 0.0
    for b in range(n_v):
        for k in range(d):
            vals = [d3[a][b][k] for a in range(n_t)]
            mu = sum(vals) / n_t
            sigma = math.sqrt(sum((x - mu) ** 2 for x in vals) / (n_t - 1)) + 1e-6
            total += (
                math.log(prior_std / sigma)
                + (sigma**2 + mu**2) / (2 * prior_std**2)
                - 0.5
            )
    return total / n_v


def ref_eps(delta, lower=0.5):
    d3 = delta.tolist()
    n_t, n_v = delta.shape[:2]
    acc = 0.0
    for a in range(n_t):
        radii = [math.sqrt(sum(x * x for x in d3[a][b])) for b in range(n_v)]
        mean = sum(radii) / n_v
        acc += sum((r - mean) ** 2 for r in radii) / (n_v - 1)
    value = -acc / n_t
    return value if value >= -lower else 0.0


def ref_unit(rows):
    """Each vector of ``rows`` (lists) over its norm, clamped at 1e-12 as F.normalize does."""
    units = []
    for row in rows:
        norm = max(math.sqrt(sum(x * x for x in row)), 1e-12)
        units.append([x / norm for x in row])
    return units


def ref_dir(delta, alpha=2.0):
    n_t, n_v = delta.shape[:2]
    acc = 0.0
    for a in range(n_t):
        z = ref_unit(delta[a].tolist())
        kernel = 0.0
        for b in range(n_v):
            for b2 in range(n_v):
                cos = sum(x * y for x, y in zip(z[b], z[b2]))
                kernel += math.exp(-alpha * (1 - cos))
        acc += math.log(kernel / n_v**2 + 1e-8)
    return acc / n_t


def ref_orth(delta):
    n_t, n_v = delta.shape[:2]
    acc = 0.0
    for a in range(n_t):
        z = ref_unit(delta[a].tolist())
        pairs = [(b, b2) for b in range(n_v) for b2 in range(n_v) if b != b2]
        acc += sum(sum(x * y for x, y in zip(z[b], z[b2])) ** 2 for b, b2 in pairs) / len(pairs)
    return acc / n_t


def ref_total(scores, delta, logit_scale, w):
    direction = ref_orth(delta) if w.dir_loss == "orthogonal" else ref_dir(delta, w.alpha)
    return (
        ref_info_nce(scores, logit_scale)
        + w.beta * ref_kl(delta, w.prior_std, w.kl_anchor)
        + w.lambda_dir * direction
        + w.lambda_epsilon * ref_eps(delta, w.lambda_lower)
    )


def close(actual, expected, tol=1e-5):
    assert math.isclose(float(actual), expected, rel_tol=tol, abs_tol=tol), (
        float(actual),
        expected,
    )


DTYPES = [torch.float32, torch.float64]


def rand(*shape, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# ---------------------------------------------------------------------- individual terms


@pytest.mark.parametrize("dtype", DTYPES)
def test_info_nce_matches_loop(dtype):
    scores = rand(6, 6, dtype=dtype, scale=0.3)
    close(symmetric_info_nce(scores, math.log(20.0)), ref_info_nce(scores, math.log(20.0)))
    vb, tb = rand(6, dtype=dtype, seed=1), rand(6, dtype=dtype, seed=2)
    ls = torch.tensor(math.log(30.0), dtype=dtype)
    close(symmetric_info_nce(scores, ls, (vb, tb)), ref_info_nce(scores, ls, vb, tb))
    close(symmetric_info_nce(scores, ls, (vb, None)), ref_info_nce(scores, ls, vb, None))


def test_info_nce_rejects_non_square():
    with pytest.raises(ValueError):
        symmetric_info_nce(torch.zeros(3, 4), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("anchor", ["video", "text"])
@pytest.mark.parametrize("prior_std", [1.0, 0.5])
def test_kl_matches_loop(dtype, anchor, prior_std):
    delta = rand(5, 7, 16, dtype=dtype, scale=0.7)
    close(relaxed_vib_kl(delta, prior_std, anchor), ref_kl(delta, prior_std, anchor))


def test_kl_anchor_swaps_roles():
    delta = rand(5, 7, 4, dtype=torch.float64)
    torch.testing.assert_close(
        relaxed_vib_kl(delta, anchor="text"), relaxed_vib_kl(delta.transpose(0, 1))
    )
    with pytest.raises(ValueError):
        relaxed_vib_kl(delta, anchor="frames")


@pytest.mark.parametrize("dtype", DTYPES)
def test_trust_region_matches_loop(dtype):
    delta = rand(5, 7, 16, dtype=dtype, scale=0.2)
    expected = ref_eps(delta, 0.5)
    assert expected < 0  # active branch
    close(trust_region_term(delta, 0.5), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_direction_diversity_matches_loop(dtype):
    delta = rand(5, 7, 16, dtype=dtype)
    delta[1, 3] = 0.0  # zero increment: z = 0, cosine 0 with everything
    for alpha in (2.0, 0.5):
        close(direction_diversity(delta, alpha), ref_dir(delta, alpha))
    # all increments of text 0 are zero: every kernel entry is exp(-alpha), and with a large
    # alpha the +1e-8 inside the log dominates
    delta[0] = 0.0
    close(direction_diversity(delta, 20.0), ref_dir(delta, 20.0))
    expected_zero_row = math.log(math.exp(-20.0) + 1e-8)
    assert direction_diversity(delta[:1], 20.0).item() == pytest.approx(expected_zero_row)


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonality_matches_loop(dtype):
    delta = rand(5, 7, 16, dtype=dtype)
    delta[1, 3] = 0.0  # zero increment: z = 0, cosine 0 with everything
    close(orthogonality_term(delta), ref_orth(delta))
    close(orthogonality_term(delta[:, :2]), ref_orth(delta[:, :2]))
    delta.requires_grad_()
    orthogonality_term(delta).backward()
    assert torch.isfinite(delta.grad).all() and delta.grad[0].abs().sum() > 0


def test_orthogonality_extremes():
    """0 for pairwise orthogonal directions whatever their lengths, 1 for one shared line, and
    the diagonal b = b' never counts."""
    basis = torch.eye(6, dtype=torch.float64)[:4] * torch.tensor([[1.0], [3.0], [0.2], [7.0]])
    assert orthogonality_term(basis.unsqueeze(0)).item() == 0.0
    line = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    same = torch.stack([line, -3 * line, 0.1 * line]).unsqueeze(0)
    close(orthogonality_term(same), 1.0, tol=1e-12)
    # uniformity keeps rewarding spread past orthogonality; orthogonality does not
    opposite = torch.stack([line, -line]).unsqueeze(0)
    assert direction_diversity(opposite, 2.0) < direction_diversity(basis[:2].unsqueeze(0), 2.0)
    close(orthogonality_term(opposite), 1.0, tol=1e-12)


# ------------------------------------------------------------------------ total loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("anchor,dir_loss", [("video", "uniformity"), ("text", "uniformity"),
                                             ("video", "orthogonal")])
def test_total_matches_loop(dtype, anchor, dir_loss):
    scores = rand(6, 6, dtype=dtype, scale=0.3, seed=3)
    delta = rand(6, 6, 16, dtype=dtype, scale=0.3, seed=4)
    # large weights so that every term matters at the 1e-5 level
    w = GARELossWeights(beta=0.1, lambda_dir=0.5, lambda_epsilon=2.0, kl_anchor=anchor,
                        dir_loss=dir_loss)
    out = gare_loss(scores, delta, math.log(20.0), w)
    assert set(out) == {"loss", "nce", "kl", "dir", "eps"}
    close(out["loss"], ref_total(scores, delta, math.log(20.0), w))
    close(out["kl"], ref_kl(delta, 1.0, anchor))
    close(out["dir"], ref_orth(delta) if dir_loss == "orthogonal" else ref_dir(delta))
    close(out["eps"], ref_eps(delta))
    default = gare_loss(scores, delta, math.log(20.0))
    close(default["loss"], ref_total(scores, delta, math.log(20.0), GARELossWeights()))


def test_gradcheck_total():
    scores = rand(4, 4, dtype=torch.float64, scale=0.3, seed=5).requires_grad_()
    delta = rand(4, 4, 5, dtype=torch.float64, scale=0.3, seed=6).requires_grad_()
    logit_scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    w = GARELossWeights(beta=0.1, lambda_dir=0.5, lambda_epsilon=2.0)
    assert gare_loss(scores, delta, logit_scale, w)["eps"] != 0  # trust region active
    assert torch.autograd.gradcheck(
        lambda s, d, ls: gare_loss(s, d, ls, w)["loss"], (scores, delta, logit_scale)
    )


@pytest.mark.parametrize("anchor", ["video", "text"])
def test_gradcheck_terms_rectangular(anchor):
    delta = rand(3, 4, 5, dtype=torch.float64, scale=0.3, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: relaxed_vib_kl(d, 0.8, anchor), (delta,))
    assert torch.autograd.gradcheck(lambda d: direction_diversity(d, 2.0), (delta,))
    assert torch.autograd.gradcheck(orthogonality_term, (delta,))
    assert torch.autograd.gradcheck(lambda d: trust_region_term(d, 0.5), (delta,))


def test_zero_weight_removes_term(monkeypatch):
    scores = rand(5, 5, dtype=torch.float64, scale=0.3, seed=8)
    delta = rand(5, 5, 8, dtype=torch.float64, scale=0.3, seed=9)
    full_w = GARELossWeights(beta=0.1, lambda_dir=0.5, lambda_epsilon=2.0)
    full = gare_loss(scores, delta, 2.0, full_w)
    cases = {
        "beta": ("kl", "relaxed_vib_kl"),
        "lambda_dir": ("dir", "direction_diversity"),
        "lambda_epsilon": ("eps", "trust_region_term"),
    }
    for weight, (key, fn_name) in cases.items():
        with monkeypatch.context() as m:

            def fail(*args, **kwargs):
                raise AssertionError(f"{fn_name} computed although its weight is 0")

            m.setattr(gare_terms, fn_name, fail)
            w = GARELossWeights(**{**full_w.__dict__, weight: 0.0})
            out = gare_loss(scores, delta, 2.0, w)
        assert key not in out
        expected = full["loss"] - getattr(full_w, weight) * full[key]
        torch.testing.assert_close(out["loss"], expected)
    baseline = gare_loss(scores, None, 2.0, full_w)
    assert set(baseline) == {"loss", "nce"}
    torch.testing.assert_close(baseline["loss"], full["nce"])


def test_trust_region_floor():
    g = torch.Generator().manual_seed(10)
    small = (torch.randn(4, 6, 8, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    above = trust_region_term(small, lower=0.5)
    assert -0.5 <= above.item() < 0
    above.backward()
    assert small.grad.abs().sum() > 0

    # radii spread out: half the increments are 10x longer, Var_b(r) >> 0.5
    spread = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
    spread[:, ::2] *= 10
    spread.requires_grad_()
    assert ref_eps(spread.detach(), lower=1e9) < -0.5
    below = trust_region_term(spread, lower=0.5)
    assert below.item() == 0.0 and below.requires_grad
    below.backward()
    assert torch.equal(spread.grad, torch.zeros_like(spread))
    # the same increments pass with a lower floor
    close(trust_region_term(spread.detach(), lower=1e9), ref_eps(spread.detach(), 1e9))


def test_weights_validation_and_shape_checks():
    with pytest.raises(ValueError):
        GARELossWeights(kl_anchor="frame")
    with pytest.raises(ValueError):
        GARELossWeights(beta=-1.0)
    with pytest.raises(ValueError):
        gare_loss(torch.zeros(3, 3), torch.zeros(3, 4, 2), 0.0)
    with pytest.raises(ValueError):
        direction_diversity(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="dir_loss"):
        GARELossWeights(dir_loss="cosine")
    with pytest.raises(ValueError, match="B_v >= 2"):
        orthogonality_term(torch.ones(3, 1, 4))
