"""Tests of the GARE similarity (docs/behaviour.md §6) against a loop-by-loop transcription of its
formulas."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from tvr.models.config import SimilarityConfig
from tvr.models.similarity import GapAwareSimilarity

ABLATIONS = [
    {"delta_side": "video"},
    {"psi_query": "text"},
    {"gap_sign": -1},
    {"psi_context": "words"},
    {"no_delta": True},
    {"normalize_delta": True},
]


def make_inputs(b_t: int, b_v: int, n_frames: int, dim: int, dtype: torch.dtype, seed: int = 0,
                n_words: int = 6) -> dict[str, torch.Tensor]:
    """Random inputs; padded frame slots and padded words hold random (non-zero) values."""
    g = torch.Generator().manual_seed(seed)
    frame_lengths = [n_frames] + [max(1, n_frames - 1 - i) for i in range(b_v - 1)]
    word_lengths = [n_words] + [max(2, n_words - 2 - i) for i in range(b_t - 1)]
    video_mask = torch.tensor([[1] * n + [0] * (n_frames - n) for n in frame_lengths])
    word_mask = torch.tensor([[1] * n + [0] * (n_words - n) for n in word_lengths])
    return {
        "text": torch.randn(b_t, dim, generator=g, dtype=dtype),
        "frames": torch.randn(b_v, n_frames, dim, generator=g, dtype=dtype),
        "video_mask": video_mask,
        "words": torch.randn(b_t, n_words, dim, generator=g, dtype=dtype),
        "word_mask": word_mask,
    }


def perturb(model: GapAwareSimilarity, seed: int = 1) -> GapAwareSimilarity:
    """Move every parameter away from its initial value so the weights look trained."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))
    return model


def build(config: SimilarityConfig, dtype: torch.dtype = torch.float32) -> GapAwareSimilarity:
    torch.manual_seed(0)
    return perturb(GapAwareSimilarity(config)).to(dtype).eval()


def loop_reference(model: GapAwareSimilarity, text: torch.Tensor, frames: torch.Tensor,
                   video_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """docs/behaviour.md §6, one pair and one frame at a time, with the module's weights used
    explicitly."""
    cfg = model.config
    b_t, d = text.shape
    b_v, n_frames, _ = frames.shape
    scores = torch.empty(b_t, b_v, dtype=text.dtype)
    deltas = torch.empty(b_t, b_v, d, dtype=text.dtype)
    p = model.psi

    def ln(layer: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (d,), layer.weight, layer.bias, layer.eps)

    def lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return layer.weight @ x + layer.bias

    def cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.dot(x, y) / (torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))

    for a in range(b_t):
        t = text[a]
        for b in range(b_v):
            logits = torch.stack([torch.dot(t, frames[b, k]) / cfg.temp for k in range(n_frames)])
            w = torch.exp(logits - logits.max())
            w = w / w.sum()
            v = sum(w[k] * video_mask[b, k] * frames[b, k] for k in range(n_frames))
            if p is None:
                scores[a, b] = cos(t, v)
                continue
            mean_f = sum(frames[b, k] for k in range(n_frames)) / n_frames
            query = t if cfg.psi_query == "text" else cfg.gap_sign * (mean_f - t)
            if cfg.psi_context == "frames":
                context = [frames[b, k] for k in range(n_frames)]
            else:
                context = [words[a, n] for n in range(words.shape[1]) if word_mask[a, n]]
            q = lin(p.q_proj, ln(p.layer_norm1, query))
            keys = [lin(p.k_proj, ln(p.layer_norm1, c)) for c in context]
            vals = [lin(p.v_proj, ln(p.layer_norm1, c)) for c in context]
            att = torch.stack([torch.dot(k, q) / math.sqrt(d) for k in keys])
            att = torch.exp(att - att.max())
            att = att / att.sum()
            o = lin(p.out_proj, sum(att[n] * vals[n] for n in range(len(vals))))
            x = ln(p.layer_norm2, o)
            h = ln(p.layer_norm3, x + lin(p.linear1, x))
            delta = lin(p.mean_proj, h)
            if cfg.normalize_delta:
                delta = delta / max(torch.linalg.vector_norm(delta), 1e-12)
            deltas[a, b] = delta
            scores[a, b] = cos(t, v + delta) if cfg.delta_side == "video" else cos(t + delta, v)
    return scores, (None if p is None else deltas)


CONFIGS = [{}] + ABLATIONS


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_matches_loop_reference(overrides: dict, dtype: torch.dtype, tol: float) -> None:
    model = build(SimilarityConfig(dim=16, **overrides), dtype)
    inputs = make_inputs(b_t=3, b_v=4, n_frames=5, dim=16, dtype=dtype)
    with torch.no_grad():
        out = model(**inputs)
        ref_scores, ref_delta = loop_reference(model, **inputs)
    assert out.scores.shape == (3, 4)
    torch.testing.assert_close(out.scores, ref_scores, atol=tol, rtol=0)
    if ref_delta is None:
        assert out.delta is None
    else:
        assert out.delta.shape == (3, 4, 16)
        torch.testing.assert_close(out.delta, ref_delta, atol=tol, rtol=tol)


def test_padding_quirks_matter() -> None:
    """Padded frame values must reach the pooling softmax and the gap (docs/behaviour.md §12 keeps
    both)."""
    model = build(SimilarityConfig(dim=16), torch.float64)
    inputs = make_inputs(b_t=2, b_v=3, n_frames=5, dim=16, dtype=torch.float64)
    changed = dict(inputs, frames=inputs["frames"].clone())
    changed["frames"][inputs["video_mask"] == 0] = 0.0
    with torch.no_grad():
        base, zeroed = model(**inputs).scores, model(**changed).scores
    assert torch.equal(base[:, 0], zeroed[:, 0])  # video 0 has no padding
    assert not torch.allclose(base[:, 1:], zeroed[:, 1:])


@pytest.mark.parametrize("overrides", [{}, {"psi_context": "words"}, {"normalize_delta": True}],
                         ids=["frames", "words", "normalized"])
def test_gradcheck(overrides: dict) -> None:
    model = build(SimilarityConfig(dim=8, **overrides), torch.float64)
    inputs = make_inputs(b_t=2, b_v=3, n_frames=4, dim=8, dtype=torch.float64, n_words=4)
    text = inputs["text"].requires_grad_()
    frames = inputs["frames"].requires_grad_()

    def fn(t: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(t, f, inputs["video_mask"], inputs["words"], inputs["word_mask"])
        return out.scores, out.delta

    assert torch.autograd.gradcheck(fn, (text, frames))


def test_normalized_delta_is_the_direction_of_psi_output() -> None:
    """normalize_delta: Δ = Psi's output over its norm (unit norm, same direction); a zero output
    stays zero, so the score falls back to cos(t, v) instead of NaN."""
    model = build(SimilarityConfig(dim=16, normalize_delta=True), torch.float64)
    x = make_inputs(b_t=3, b_v=4, n_frames=5, dim=16, dtype=torch.float64)
    with torch.no_grad():
        delta = model(**x).delta
        raw = model.psi_output(x["text"], x["frames"])
        torch.testing.assert_close(delta.norm(dim=-1), torch.ones(3, 4, dtype=torch.float64))
        torch.testing.assert_close(delta * raw.norm(dim=-1, keepdim=True), raw)
        model.psi.mean_proj.weight.zero_()
        model.psi.mean_proj.bias.zero_()
        out = model(**x)
    assert torch.equal(out.delta, torch.zeros_like(out.delta))
    pooled = model.pool(x["text"], x["frames"], x["video_mask"])
    expected = F.cosine_similarity(x["text"].unsqueeze(1), pooled, dim=-1)
    torch.testing.assert_close(out.scores, expected, atol=1e-14, rtol=0)


def test_no_delta_is_cosine_of_pooled() -> None:
    model = GapAwareSimilarity(SimilarityConfig(dim=16, no_delta=True)).double()
    assert model.psi is None and not list(model.parameters())
    inputs = make_inputs(b_t=3, b_v=2, n_frames=5, dim=16, dtype=torch.float64)
    out = model(inputs["text"], inputs["frames"], inputs["video_mask"])
    assert out.delta is None
    pooled = model.pool(inputs["text"], inputs["frames"], inputs["video_mask"])
    expected = F.cosine_similarity(inputs["text"].unsqueeze(1), pooled, dim=-1)
    torch.testing.assert_close(out.scores, expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_each_ablation_changes_scores(overrides: dict) -> None:
    default = build(SimilarityConfig(dim=16))
    ablated = GapAwareSimilarity(dataclasses.replace(default.config, **overrides)).eval()
    if ablated.psi is not None:
        ablated.load_state_dict(default.state_dict())
    inputs = make_inputs(b_t=3, b_v=4, n_frames=5, dim=16, dtype=torch.float32)
    with torch.no_grad():
        assert not torch.allclose(default(**inputs).scores, ablated(**inputs).scores, atol=1e-4)


@pytest.mark.parametrize("dim", [512, 768])
@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_real_widths(dim: int, overrides: dict) -> None:
    model = GapAwareSimilarity(SimilarityConfig(dim=dim, **overrides))
    inputs = make_inputs(b_t=2, b_v=3, n_frames=4, dim=dim, dtype=torch.float32)
    out = model(**inputs)
    assert out.scores.shape == (2, 3) and torch.isfinite(out.scores).all()
    if out.delta is not None:
        assert out.delta.shape == (2, 3, dim)
        out.scores.sum().backward()


def test_initialisation() -> None:
    torch.manual_seed(0)
    psi = GapAwareSimilarity(SimilarityConfig(dim=512)).psi
    for name, p in psi.named_parameters():
        if "layer_norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert abs(p.std().item() - 0.02) < 1e-3 and abs(p.mean().item()) < 1e-3, name


def test_context_projected_once_per_video() -> None:
    model = build(SimilarityConfig(dim=16))
    shapes: list[tuple[int, ...]] = []
    model.psi.k_proj.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    model(**make_inputs(b_t=3, b_v=4, n_frames=5, dim=16, dtype=torch.float32))
    assert shapes == [(4, 5, 16)]


def test_dropout_train_vs_eval() -> None:
    model = build(SimilarityConfig(dim=32))
    inputs = make_inputs(b_t=3, b_v=4, n_frames=5, dim=32, dtype=torch.float32)
    with torch.no_grad():
        eval_a, eval_b = model(**inputs).scores, model(**inputs).scores
        model.train()
        torch.manual_seed(1)
        train_a = model(**inputs).scores
        train_b = model(**inputs).scores
        model.eval()
    assert torch.equal(eval_a, eval_b)
    assert not torch.allclose(train_a, train_b)
    assert not torch.allclose(train_a, eval_a)
    no_dropout = build(SimilarityConfig(dim=32, dropout=0.0))
    no_dropout.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(no_dropout.train()(**inputs).scores, eval_a, atol=0, rtol=0)


def test_missing_words_is_an_error() -> None:
    model = GapAwareSimilarity(SimilarityConfig(dim=16, psi_context="words"))
    inputs = make_inputs(b_t=2, b_v=3, n_frames=4, dim=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="words"):
        model(inputs["text"], inputs["frames"], inputs["video_mask"])


def test_invalid_config() -> None:
    for bad in ({"delta_side": "both"}, {"gap_sign": 0}, {"psi_query": "video"}, {"temp": 0.0}):
        with pytest.raises(ValueError):
            SimilarityConfig(**bad)
