"""Stage 1 of two-stage search (tvr/evaluation/retrieval.py): exact search by faiss and torch
alike, several stage-1 vectors a video (the mean and the frames least like it,
tvr/evaluation/engine.py), each video listed once at its best."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tvr.evaluation.engine import coarse_vectors, stage1_vectors
from tvr.evaluation.retrieval import Stage1Search, distinct_top, faiss_available


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_and_torch_stage1_agree():
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(5000, 64), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(7, 64), dim=1)
    faiss_scores, faiss_top = Stage1Search(vectors, "faiss").top(queries, 20)
    torch_scores, torch_top = Stage1Search(vectors, "torch", block=700).top(queries, 20)
    torch.testing.assert_close(faiss_scores, torch_scores, rtol=0, atol=1e-5)
    assert torch.equal(faiss_top, torch_top)
    assert torch.equal(torch_top, (queries @ vectors.T).topk(20).indices)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_several_stage1_vectors_per_video_rank_each_video_once_by_its_best():
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(3000, 3, 64), dim=2)
    queries = torch.nn.functional.normalize(torch.randn(7, 64), dim=1)
    best = torch.einsum("qd,nsd->qns", queries, vectors).amax(dim=2).topk(25)
    for backend, block in (("faiss", 65536), ("torch", 700)):
        scores, top = Stage1Search(vectors, backend, block=block).top(queries, 25)
        assert torch.equal(top, best.indices), backend
        torch.testing.assert_close(scores, best.values, rtol=0, atol=1e-5)


def test_distinct_top_keeps_each_row_once_at_its_best_and_completes_short_lists():
    scores = np.array([[0.1, 0.9, 0.5, 0.8, 0.7], [0.3, 0.2, 0.1, -0.5, 0.0]], np.float32)
    rows = np.array([[4, 2, 2, -1, 4], [1, 1, -1, -1, 1]])
    found_scores, found = distinct_top(scores, rows, 3, n_rows=6)
    assert found.tolist() == [[2, 4, 0], [1, 0, 2]]
    assert found_scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.7), -np.inf],
                                     [pytest.approx(0.3), -np.inf, -np.inf]]


def test_stage1_vectors_are_the_mean_then_the_real_frames_farthest_first():
    frames = torch.tensor([[[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 5.0]]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last frame is padding
    vectors = stage1_vectors(frames, mask, extra_frames=2)
    assert vectors.shape == (1, 3, 3)
    torch.testing.assert_close(vectors[:, 0], coarse_vectors(frames, mask))
    torch.testing.assert_close(vectors[0, 1], torch.tensor([0.0, 1.0, 0.0]))  # least like the mean
    torch.testing.assert_close(vectors[0, 2], torch.tensor([1.0, 0.0, 0.0]))  # least like both
    assert torch.equal(stage1_vectors(frames, mask, 0), coarse_vectors(frames, mask)[:, None])
