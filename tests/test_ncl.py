"""NCL (docs/behaviour.md §8) and the inference-time normalisers (DSL, QB-Norm, NCL test time)."""

from __future__ import annotations

import math

import pytest
import torch

from tvr.evaluation.normalizers import dual_softmax, ncl_normalize, qb_norm
from tvr.losses.contrastive import symmetric_info_nce
from tvr.losses.ncl import (
    FeatureQueue,
    ncl_batch_biases,
    ncl_info_nce,
    sinkhorn_log_scalings,
    target_biases,
)


def rand(*shape, scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def plan(scores, tau, log_r, log_c):
    return torch.exp(scores / tau + log_r.unsqueeze(1) + log_c.unsqueeze(0))


def rank_of(row: torch.Tensor, item: int) -> int:
    """1-based rank of ``item`` in ``row`` (higher score = better)."""
    return int((row > row[item]).sum()) + 1


def planted_hub(n_q=20, n_v=30, hub=25, seed=0):
    """Query i truly matches video i % hub; video ``hub`` scores high with every query."""
    scores = rand(n_q, n_v, scale=0.02, seed=seed)
    scores[torch.arange(n_q), torch.arange(n_q) % hub] += 0.3
    scores[:, hub] += 0.4
    return scores


# ------------------------------------------------------------------------------ Sinkhorn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_doubly_stochastic(dtype):
    for seed in range(3):
        scores = rand(64, 80, scale=0.3, seed=seed, dtype=dtype)
        log_r, log_c = sinkhorn_log_scalings(scores, tau=0.1, iters=100, tol=0.0)
        p = plan(scores, 0.1, log_r, log_c)
        torch.testing.assert_close(p.sum(1) * 64, torch.ones(64, dtype=dtype), rtol=0, atol=1e-4)
        torch.testing.assert_close(p.sum(0) * 80, torch.ones(80, dtype=dtype), rtol=0, atol=1e-4)


def test_sinkhorn_matches_plain_loop():
    """Log-domain iterations equal the textbook multiplicative Sinkhorn-Knopp, step by step."""
    scores = rand(4, 6, scale=0.5, seed=1, dtype=torch.float64)
    tau = 0.3
    k = [[math.exp(x / tau) for x in row] for row in scores.tolist()]
    r, c = [1.0] * 4, [1.0] * 6
    for _ in range(3):
        r = [1 / 4 / sum(k[i][j] * c[j] for j in range(6)) for i in range(4)]
        c = [1 / 6 / sum(k[i][j] * r[i] for i in range(4)) for j in range(6)]
    log_r, log_c = sinkhorn_log_scalings(scores, tau, iters=3, tol=0.0)
    torch.testing.assert_close(log_r, torch.tensor(r, dtype=torch.float64).log())
    torch.testing.assert_close(log_c, torch.tensor(c, dtype=torch.float64).log())
    torch.testing.assert_close(
        target_biases(scores, tau, iters=3, tol=0.0), tau * torch.tensor(c).double().log()
    )


def test_sinkhorn_early_stop():
    scores = rand(64, 80, scale=0.3, seed=2, dtype=torch.float64)
    tau, tol = 0.1, 1e-3

    def row_error(n):
        log_r, log_c = sinkhorn_log_scalings(scores, tau, iters=n, tol=0.0)
        return (plan(scores, tau, log_r, log_c).sum(1) * 64).log().abs().max().item()

    stop = next(n for n in range(1, 500) if row_error(n) < tol)
    assert stop > 2  # the tolerance is not met trivially
    early = sinkhorn_log_scalings(scores, tau, iters=1000, tol=tol)
    exact = sinkhorn_log_scalings(scores, tau, iters=stop, tol=0.0)
    longer = sinkhorn_log_scalings(scores, tau, iters=stop + 1, tol=0.0)
    for got, want, other in zip(early, exact, longer):
        assert torch.equal(got, want)
        assert not torch.equal(got, other)


def test_biases_demote_hub():
    hub = 25
    scores = planted_hub(hub=hub)
    raw_ranks = [rank_of(scores[q], hub) for q in range(20)]
    assert all(r == 1 for r in raw_ranks)  # the hub beats every true match
    biased = scores + target_biases(scores, tau=0.05, iters=50)
    for q in range(20):
        assert rank_of(biased[q], hub) > raw_ranks[q]
        assert biased[q].argmax() == q  # the true match is back on top


def test_target_biases_no_grad():
    scores = rand(8, 8, seed=3).requires_grad_()
    assert not target_biases(scores, 0.1).requires_grad


# ---------------------------------------------------------------------------- FIFO queue


def test_queue_fifo_and_wraparound():
    q = FeatureQueue(capacity=5)
    assert q.contents() == () and len(q) == 0
    q.enqueue(torch.tensor([0.0, 1.0, 2.0]).unsqueeze(1))
    assert q.contents()[0].squeeze(1).tolist() == [0, 1, 2]
    q.enqueue(torch.tensor([3.0, 4.0, 5.0, 6.0]).unsqueeze(1))  # wraps around
    assert len(q) == 5
    assert q.contents()[0].squeeze(1).tolist() == [2, 3, 4, 5, 6]
    q.enqueue(torch.tensor([7.0]).unsqueeze(1))
    assert q.contents()[0].squeeze(1).tolist() == [3, 4, 5, 6, 7]
    q.enqueue(torch.arange(10.0, 17.0).unsqueeze(1))  # larger than the capacity
    assert q.contents()[0].squeeze(1).tolist() == [12, 13, 14, 15, 16]
    q.reset()
    assert len(q) == 0 and q.contents()[0].shape == (0, 1)


def test_queue_multiple_fields_detached():
    q = FeatureQueue(capacity=4)
    frames = torch.randn(3, 12, 8, requires_grad=True)
    masks = torch.tensor([[1] * 12, [1] * 6 + [0] * 6, [1] * 3 + [0] * 9])
    q.enqueue(frames * 2, masks)
    q.enqueue(frames[:2] * 3, masks[:2])
    got_frames, got_masks = q.contents()
    assert not got_frames.requires_grad
    assert got_masks.dtype == masks.dtype
    torch.testing.assert_close(got_frames, torch.cat([frames[1:] * 2, frames[:2] * 3]).detach())
    assert torch.equal(got_masks, torch.cat([masks[1:], masks[:2]]))
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(2, 12, 4), masks[:2])  # wrong trailing shape
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(2, 12, 8))  # missing field


# ------------------------------------------------------------------------ NCL training loss


def test_ncl_info_nce_equals_manual_biases():
    b, n_bank = 6, 10
    scores = rand(b, b, scale=0.3, seed=4, dtype=torch.float64).requires_grad_()
    bank_t2v = rand(n_bank, b, scale=0.3, seed=5, dtype=torch.float64)
    bank_v2t = rand(n_bank + 3, b, scale=0.3, seed=6, dtype=torch.float64)
    logit_scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    tau = 0.07

    _, log_c_video = sinkhorn_log_scalings(torch.cat([scores.detach(), bank_t2v]), tau, 10)
    _, log_c_text = sinkhorn_log_scalings(torch.cat([scores.detach().t(), bank_v2t]), tau, 10)
    manual = symmetric_info_nce(scores, logit_scale, (tau * log_c_video, tau * log_c_text))
    got = ncl_info_nce(scores, logit_scale, bank_t2v, bank_v2t, tau=tau, iters=10)
    torch.testing.assert_close(got, manual)
    # the biases are constants for autograd
    (g_got,) = torch.autograd.grad(got, scores)
    (g_manual,) = torch.autograd.grad(manual, scores)
    torch.testing.assert_close(g_got, g_manual)
    # tau=None is the contrastive temperature 1/exp(logit_scale)
    torch.testing.assert_close(
        ncl_info_nce(scores, logit_scale, bank_t2v, bank_v2t),
        ncl_info_nce(scores, logit_scale, bank_t2v, bank_v2t, tau=1 / 20.0),
    )
    # without a bank, the query side is the batch alone
    vb, tb = ncl_batch_biases(scores, None, torch.empty(0, b, dtype=torch.float64), tau)
    torch.testing.assert_close(vb, target_biases(scores, tau))
    torch.testing.assert_close(tb, target_biases(scores.t(), tau))
    assert not torch.allclose(got, symmetric_info_nce(scores, logit_scale))


# ------------------------------------------------------------------- test-time normalisers


def test_dual_softmax_matches_loop():
    scores = rand(4, 5, scale=0.4, seed=7, dtype=torch.float64)
    temp = 0.1
    s = scores.tolist()
    column_mass = [sum(math.exp(s[p][g] / temp) for p in range(4)) for g in range(5)]
    expected = [
        [
            s[q][g] * 4 * math.exp(s[q][g] / temp) / column_mass[g]
            for g in range(5)
        ]
        for q in range(4)
    ]
    torch.testing.assert_close(dual_softmax(scores, temp), torch.tensor(expected).double())
    # hand-computed 2 x 2 case: temp large -> uniform prior 1/2, times Q = 2 -> identity
    s2 = torch.tensor([[0.5, 0.9], [0.1, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(dual_softmax(s2, 1e9), s2)


def ref_qb_norm(scores, bank, beta, k):
    """Loop transcription of the QB-Norm release (dynamic inverted softmax)."""
    s, bk = scores.tolist(), bank.tolist()
    n_g = len(s[0])
    active = set()
    for row in bk:
        active.update(sorted(range(n_g), key=lambda g: -row[g])[:k])
    norm = [sum(math.exp(beta * row[g]) for row in bk) for g in range(n_g)]
    out, flags = [], []
    for row in s:
        top1 = max(range(n_g), key=lambda g: row[g])
        flags.append(top1 in active)
        if top1 in active:
            out.append([math.exp(beta * row[g]) / norm[g] for g in range(n_g)])
        else:
            out.append(list(row))
    return out, flags


@pytest.mark.parametrize("k", [1, 2])
def test_qb_norm_matches_loop(k):
    scores = rand(12, 30, scale=0.3, seed=8, dtype=torch.float64)
    bank = rand(4, 30, scale=0.3, seed=9, dtype=torch.float64)
    beta = 20.0
    got = qb_norm(scores, bank, beta, k)
    expected, flags = ref_qb_norm(scores, bank, beta, k)
    assert any(flags) and not all(flags)  # both kinds of rows are exercised
    for q, flag in enumerate(flags):
        if flag:
            torch.testing.assert_close(got[q], torch.tensor(expected[q]).double().log())
        else:
            torch.testing.assert_close(got[q], beta * scores[q])
        assert torch.equal(got[q].argsort(), torch.tensor(expected[q]).argsort())


def test_qb_norm_and_ncl_demote_hub():
    hub = 25
    test_scores = planted_hub(hub=hub, seed=10)
    bank = planted_hub(n_q=40, hub=hub, seed=11)  # training queries also love the hub
    for normalised in (
        qb_norm(test_scores, bank, beta=20.0, k=1),
        ncl_normalize(test_scores, bank, tau=0.05, iters=50),
    ):
        for q in range(20):
            assert rank_of(test_scores[q], hub) == 1
            assert rank_of(normalised[q], hub) > 1
            assert normalised[q].argmax() == q % hub


def test_ncl_normalize_uses_bank_only():
    scores = rand(10, 7, scale=0.3, seed=12)
    bank = rand(30, 7, scale=0.3, seed=13)
    out = ncl_normalize(scores, bank, tau=0.05, iters=20)
    torch.testing.assert_close(out, scores + target_biases(bank, 0.05, 20).unsqueeze(0))
    # a row does not depend on the other test queries
    other = ncl_normalize(scores[:3], bank, tau=0.05, iters=20)
    torch.testing.assert_close(out[:3], other)
    with pytest.raises(ValueError):
        ncl_normalize(scores, bank[:, :5], tau=0.05)
