"""Two-stage retrieval (tvr/evaluation/retrieval.py): a coarse cosine picks the candidates,
the engine re-scores them; with every video a candidate it equals the engine."""
from __future__ import annotations

import pytest
import torch

from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.retrieval import score_candidates, topk_containment, two_stage_scores
from tvr.models.config import SimilarityConfig
from fixtures_similarity import inputs, trained


def test_coarse_score_is_cosine_with_masked_mean() -> None:
    model = trained(SimilarityConfig(dim=16), torch.float64)
    x = inputs(b_t=4, b_v=5, n_frames=4, dim=16, dtype=torch.float64)
    engine = SimilarityEngine(model, precision="fp64")
    coarse = engine.coarse_score(engine.prepare_texts(x["text"]),
                                 engine.prepare_videos(x["frames"], x["video_mask"]))
    m = x["video_mask"].double().unsqueeze(-1)
    mean = (x["frames"] * m).sum(1) / m.sum(1)
    expected = torch.nn.functional.cosine_similarity(x["text"].unsqueeze(1), mean.unsqueeze(0),
                                                     dim=-1)
    torch.testing.assert_close(coarse, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("budget", [256 * 2**20, 4000])
def test_two_stage_with_all_videos_equals_engine(budget: int) -> None:
    model = trained(SimilarityConfig(dim=16), torch.float64)
    x = inputs(b_t=9, b_v=7, n_frames=4, dim=16, dtype=torch.float64)
    engine = SimilarityEngine(model, memory_budget_bytes=budget, precision="fp64")
    texts = engine.prepare_texts(x["text"])
    videos = engine.prepare_videos(x["frames"], x["video_mask"])
    full = engine.score(texts, videos)
    result = two_stage_scores(engine, texts, videos, k=7)
    torch.testing.assert_close(result.scores, full, atol=1e-12, rtol=0)
    assert result.candidates.shape == (9, 7)
    assert topk_containment(full, result.candidates, 10) == {"items": 1.0, "queries": 1.0}


def test_two_stage_small_k() -> None:
    model = trained(SimilarityConfig(dim=16), torch.float64)
    x = inputs(b_t=6, b_v=8, n_frames=4, dim=16, dtype=torch.float64)
    engine = SimilarityEngine(model, memory_budget_bytes=3000, precision="fp64")
    texts = engine.prepare_texts(x["text"])
    videos = engine.prepare_videos(x["frames"], x["video_mask"])
    full, coarse = engine.score(texts, videos), engine.coarse_score(texts, videos)
    for fill in ("stage1", "-inf"):
        result = two_stage_scores(engine, texts, videos, k=3, fill=fill)
        for a in range(6):
            top = torch.sort(coarse[a], descending=True, stable=True).indices[:3]
            assert torch.equal(result.candidates[a], top)
            torch.testing.assert_close(result.scores[a, top], full[a, top], atol=1e-12, rtol=0)
            rest = torch.ones(8, dtype=torch.bool)
            rest[top] = False
            if fill == "-inf":
                assert torch.isneginf(result.scores[a, rest]).all()
            else:
                torch.testing.assert_close(result.scores[a, rest], coarse[a, rest] - 3,
                                           atol=1e-12, rtol=0)
                assert result.scores[a, rest].max() < result.scores[a, top].min()
    with pytest.raises(ValueError):
        two_stage_scores(engine, texts, videos, k=0)


def test_topk_containment_constructed() -> None:
    """3 texts, 12 videos; full top-10 of each text is known; candidates cover 10, 9 and 5 of
    them."""
    full = torch.zeros(3, 12)
    full[:, :10] = torch.arange(10, 0, -1, dtype=torch.float32)    # top-10 = videos 0..9
    full[2] = 0.0
    full[2, 2:12] = 1.0                                              # ties: top-10 = 2..11
    candidates = torch.tensor([list(range(10)) + [10, 11],
                               [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 11],
                               [2, 3, 4, 5, 6, 0, 1, 0, 1, 0, 1, 0]])
    out = topk_containment(full, candidates, top=10)
    assert out["items"] == pytest.approx((10 + 9 + 5) / 30)
    assert out["queries"] == pytest.approx(1 / 3)
    assert topk_containment(full, candidates, top=1) == {"items": 1.0, "queries": 1.0}


@pytest.mark.parametrize("candidates, per_query", [
    ([[5, 1, 3], [3, 5, 1], [1, 3, 5]], False),           # shared: the union, once
    ([[4]], False),                                        # one query: its own rows are the union
    ([[9, 0, 4], [2, 7, 5], [8, 1, 3]], True),             # different: each query its own rows
    ([[6, 2], [2, 6], [0, 1], [3, 4]], True)])             # union 6 > 8 / 2
def test_stage_two_scores_each_query_against_the_union_or_its_own(candidates, per_query) -> None:
    """score_candidates scores the union of the candidates when the queries share them, and each
    query against its own rows (sorted) when they mostly differ; the scores are the same."""
    candidates = torch.tensor(candidates)
    calls = []

    def score_rows(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert torch.equal(rows, rows.sort().values)
        calls.append((queries.tolist(), rows.tolist()))
        return 100.0 * queries.unsqueeze(1) + rows.unsqueeze(0)  # query q, video v: 100 q + v

    scores = score_candidates(score_rows, candidates)
    expected = 100.0 * torch.arange(len(candidates)).unsqueeze(1) + candidates
    assert torch.equal(scores, expected)
    if per_query:
        assert calls == [([q], sorted(rows)) for q, rows in enumerate(candidates.tolist())]
    else:
        assert calls == [(list(range(len(candidates))), sorted(set(candidates.flatten().tolist())))]
