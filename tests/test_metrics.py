"""Retrieval metrics against a sort-based reference written out here; ties; multi-sentence layouts."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from tvr.evaluation.evaluate import metric_variants, write_results
from tvr.evaluation.metrics import (compare_normalisers, format_table, normaliser_ranks,
                                    rank_lists, retrieval_metrics, save_json, summarize_ranks,
                                    summarize_variants, text_to_video_ranks, video_to_text_ranks)
from tvr.evaluation.normalizers import dual_softmax, ncl_normalize, qb_norm


def sorted_rank(row: list[float], is_true: list[bool]) -> int:
    """1-based position of the first true item after sorting by score, highest first, with the
    true items placed AFTER the false ones among equal scores (pessimistic ties)."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], is_true[j]))
    return next(pos for pos, j in enumerate(order, start=1) if is_true[j])


def reference_metrics(scores: torch.Tensor, c2v: list[int]) -> dict:
    s = scores.tolist()
    n_c, n_v = scores.shape
    t2v = [sorted_rank(s[i], [j == c2v[i] for j in range(n_v)]) for i in range(n_c)]
    v2t = [sorted_rank([s[i][j] for i in range(n_c)], [c2v[i] == j for i in range(n_c)])
           for j in range(n_v)]

    def summary(ranks: list[int]) -> dict:
        out = {f"R{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)}
        return dict(out, MedR=float(statistics.median(ranks)), MeanR=sum(ranks) / len(ranks),
                    queries=float(len(ranks)))

    return {"t2v": summary(t2v), "v2t": summary(v2t)}, t2v, v2t


def layout(n_videos: int, per_video: int, shuffle: bool, seed: int = 0) -> torch.Tensor:
    c2v = torch.arange(n_videos).repeat_interleave(per_video)
    if shuffle:
        c2v = c2v[torch.randperm(len(c2v), generator=torch.Generator().manual_seed(seed))]
    return c2v


def assert_metrics_equal(ours: dict, ref: dict) -> None:
    for direction in ("t2v", "v2t"):
        assert ours[direction] == pytest.approx(ref[direction], abs=1e-9), direction


@pytest.mark.parametrize("per_video", [1, 2, 5])
@pytest.mark.parametrize("shuffle", [False, True], ids=["grouped", "shuffled"])
@pytest.mark.parametrize("quantised", [False, True], ids=["continuous", "ties"])
def test_matches_sort_reference(per_video: int, shuffle: bool, quantised: bool) -> None:
    g = torch.Generator().manual_seed(per_video)
    n_v = 60
    c2v = layout(n_v, per_video, shuffle)
    scores = torch.randn(len(c2v), n_v, generator=g, dtype=torch.float64)
    scores[torch.arange(len(c2v)), c2v] += 1.5  # make the metrics non-trivial
    if quantised:
        scores = torch.round(scores * 2) / 2      # many ties, including with the true items
    ref, t2v, v2t = reference_metrics(scores, c2v.tolist())
    assert text_to_video_ranks(scores, c2v).tolist() == t2v
    assert video_to_text_ranks(scores, c2v).tolist() == v2t
    assert_metrics_equal(retrieval_metrics(scores, c2v), ref)
    assert_metrics_equal(retrieval_metrics(scores.float(), c2v), reference_metrics(scores.float(), c2v.tolist())[0])


def test_ties_are_pessimistic() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.1],      # caption 0 (video 0) tied with video 1
                           [0.2, 0.2, 0.2],      # caption 1 (video 1): all tied
                           [0.0, 0.3, 0.9]])     # caption 2 (video 2): strictly first
    c2v = torch.tensor([0, 1, 2])
    assert text_to_video_ranks(scores, c2v).tolist() == [2, 3, 1]
    # video 0 column: captions [0.5, 0.2, 0.0]; video 1: [0.5, 0.2, 0.3]; video 2: [0.1, 0.2, 0.9]
    assert video_to_text_ranks(scores, c2v).tolist() == [1, 3, 1]
    inf = torch.tensor([[float("-inf"), float("-inf")], [0.0, float("-inf")]])
    assert text_to_video_ranks(inf, torch.tensor([0, 1])).tolist() == [2, 2]


def test_multi_sentence_video_to_text_counts_best_caption_only() -> None:
    """Video 0 has captions 0, 1, 2; only captions of other videos count against its best one."""
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.1, 0.0], [0.85, 0.5], [0.9, 0.4]])
    c2v = torch.tensor([0, 0, 0, 1, 1])
    # video 0: best own caption 0.9; caption 4 (video 1) ties at 0.9 -> rank 2; caption 1 ignored
    # video 1: best own 0.5; no other caption scores >= 0.5 -> rank 1
    assert video_to_text_ranks(scores, c2v).tolist() == [2, 1]
    assert text_to_video_ranks(scores, c2v).tolist() == [1, 1, 1, 2, 2]


def test_summary_median_and_recalls() -> None:
    out = summarize_ranks(torch.tensor([1, 2, 6, 60]))
    assert out == {"R1": 25.0, "R5": 50.0, "R10": 75.0, "R50": 75.0, "MedR": 4.0, "MeanR": 17.25,
                   "queries": 4.0}


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one caption"):
        video_to_text_ranks(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        text_to_video_ranks(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        text_to_video_ranks(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_chunked_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    import tvr.evaluation.metrics as metrics
    scores = torch.randn(40, 20, generator=torch.Generator().manual_seed(3))
    c2v = layout(20, 2, shuffle=True)
    whole = retrieval_metrics(scores, c2v)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)
    assert retrieval_metrics(scores, c2v) == whole


def test_compare_normalisers_and_outputs(tmp_path) -> None:
    g = torch.Generator().manual_seed(7)
    c2v = layout(30, 2, shuffle=True)
    scores = torch.randn(60, 30, generator=g) * 0.1
    scores[torch.arange(60), c2v] += 0.15
    bank_t2v, bank_v2t = torch.randn(80, 30, generator=g) * 0.1, torch.randn(50, 60, generator=g) * 0.1
    results = compare_normalisers(scores, c2v, dsl_temp=0.05, bank_t2v=bank_t2v, bank_v2t=bank_v2t,
                                  ncl_tau=0.05)
    assert list(results) == ["raw", "DSL", "QB-Norm", "NCL"]
    assert results["raw"] == retrieval_metrics(scores, c2v)
    expected = {
        "DSL": (dual_softmax(scores, 0.05), dual_softmax(scores.T, 0.05).T),
        "QB-Norm": (qb_norm(scores, bank_t2v), qb_norm(scores.T, bank_v2t).T),
        "NCL": (ncl_normalize(scores, bank_t2v, 0.05), ncl_normalize(scores.T, bank_v2t, 0.05).T),
    }
    for variant, (t2v, v2t) in expected.items():
        assert results[variant] == retrieval_metrics(t2v, c2v, v2t_scores=v2t), variant
    assert results["DSL"] != results["raw"]

    only_t2v = compare_normalisers(scores, c2v, bank_t2v=bank_t2v)
    assert list(only_t2v) == ["raw", "QB-Norm"] and list(only_t2v["QB-Norm"]) == ["t2v"]

    table = format_table(results)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 8 and lines[0].startswith("| variant | direction | R@1")
    assert f"| NCL | video-to-text | {results['NCL']['v2t']['R1']:.1f} |" in table
    assert format_table(results["raw"]) == format_table({"raw": results["raw"]})
    assert len(format_table(only_t2v).strip().splitlines()) == 2 + 3

    save_json(results, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == results


@pytest.mark.parametrize("per_video", [1, 3])
def test_the_metrics_file_holds_the_ranks_that_give_its_metrics(per_video: int, tmp_path) -> None:
    g = torch.Generator().manual_seed(11)
    c2v = layout(25, per_video, shuffle=True)
    scores = torch.round(torch.randn(len(c2v), 25, generator=g) * 4) / 20  # ties included
    scores[torch.arange(len(c2v)), c2v] += 0.2
    ranks = normaliser_ranks(scores, c2v, dsl_temp=0.05, ncl_tau=0.05,
                             bank_t2v=torch.randn(40, 25, generator=g) * 0.2,
                             bank_v2t=torch.randn(30, len(c2v), generator=g) * 0.2)
    results = {**summarize_variants(ranks), "ranks": rank_lists(ranks), "skipped_videos": []}
    write_results(results, tmp_path, "test")
    text = (tmp_path / "metrics_test.json").read_text()
    record = json.loads(text)
    assert set(record["ranks"]) == {"raw", "DSL", "QB-Norm", "NCL"}
    assert record["ranks"]["raw"]["v2t"] == video_to_text_ranks(scores, c2v).tolist()
    for variant, directions in record["ranks"].items():
        for direction, listed in directions.items():
            assert all(type(r) is int and r >= 1 for r in listed)
            assert len(listed) == (len(c2v) if direction == "t2v" else 25)
            listed, reported = np.array(listed), record[variant][direction]
            for k in (1, 5, 10, 50):
                assert 100 * np.mean(listed <= k) == pytest.approx(reported[f"R{k}"]), (variant, k)
            assert np.median(listed) == pytest.approx(reported["MedR"])
            assert np.mean(listed) == pytest.approx(reported["MeanR"])
    assert all(line.count("[") == line.count("]") for line in text.splitlines())  # a list a line
    table = (tmp_path / "metrics_test.md").read_text()
    assert table == format_table(metric_variants(results)) and "ranks" not in table
