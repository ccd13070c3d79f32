"""Videos prepared compactly and stored (what a video index keeps per video: float16 frames, the
LN1 statistics of each frame and the small per-video matrices) score as the evaluation engine
scores them in memory."""
from __future__ import annotations

import pytest
import torch

from bench import bench_stage2
from bench.synthetic_index import make_gallery
from tvr.evaluation import folding
from tvr.evaluation.engine import SimilarityEngine
from tvr.models.config import SimilarityConfig
from fixtures_similarity import inputs, trained

SETTINGS = [{}, {"gap_sign": -1}, {"psi_query": "text"}, {"delta_side": "video"},
            {"no_delta": True}, {"normalize_delta": True, "delta_side": "video"},
            {"psi_query": "text", "normalize_delta": True}]
# float16 frames against float32 ones, trained-like Psi at d = 512, CLIP-like features: the
# largest difference measured was 3.1e-5 (two seeds, 20 x 2000 pairs); scores span about 0.4.
FLOAT16_TOLERANCE = 2e-4


def name(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


@pytest.mark.parametrize("overrides", SETTINGS, ids=name)
def test_adopted_parts_score_exactly_as_the_prepared_ones(overrides: dict) -> None:
    model = trained(SimilarityConfig(dim=24, **overrides), torch.float64)
    x = inputs(b_t=7, b_v=9, n_frames=5, dim=24, dtype=torch.float64)
    engine = SimilarityEngine(model, precision="fp64")
    texts = engine.prepare_texts(x["text"])
    prepared = engine.prepare_videos(x["frames"], x["video_mask"])
    full = engine.score(texts, prepared)
    naive = SimilarityEngine(model, precision="fp64", naive=True)
    reference = naive.score(naive.prepare_texts(x["text"]), naive.adopt(prepared.parts))
    torch.testing.assert_close(full, reference, atol=1e-12, rtol=0)
    assert max(v[0].numel() for v in prepared.parts.values()) == 5 * 24  # F x d: the frames
    stored = engine.adopt({k: v.clone() for k, v in prepared.parts.items()})
    for block in [None, (2, 3), (7, 1)]:
        torch.testing.assert_close(engine.score(texts, stored, block), full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("overrides", SETTINGS, ids=name)
def test_float16_frames_are_converted_block_by_block_in_the_products(overrides, monkeypatch):
    """Adopted float16 frames stay float16 on the folded path (each product converts a few rows
    at a time: here 7, so blocks cross a video's frames) and score exactly as the same frames
    adopted in the engine's dtype, with few texts (a search) and with many (the other fold);
    the naive path converts them."""
    monkeypatch.setattr(folding, "CONVERT_ROWS", 7)
    model = trained(SimilarityConfig(dim=24, **overrides), torch.float64)
    engine = SimilarityEngine(model, precision="fp64")
    x = inputs(b_t=30, b_v=9, n_frames=5, dim=24, dtype=torch.float64)
    parts = engine.prepare_videos(x["frames"].half().double(), x["video_mask"]).parts
    narrow = engine.adopt(dict(parts, frames=parts["frames"].half()))
    assert narrow.parts["frames"].dtype == torch.float16
    wide = engine.adopt(parts)
    for n_t in (3, 30):  # 2·T below and above d
        texts = engine.prepare_texts(x["text"][:n_t])
        torch.testing.assert_close(engine.score(texts, narrow), engine.score(texts, wide),
                                   atol=1e-12, rtol=0)
    naive = SimilarityEngine(model, precision="fp64", naive=True)
    assert naive.adopt(dict(parts, frames=parts["frames"].half())).parts["frames"].dtype == \
        torch.float64


def test_float16_storage_keeps_the_scores_and_the_rankings() -> None:
    gallery = make_gallery(600, 12, 30, seed=0, dtype=torch.float32)
    engine = SimilarityEngine(trained(SimilarityConfig(dim=512), torch.float32))
    texts = engine.prepare_texts(gallery.text)
    full = engine.score(texts, engine.prepare_videos(gallery.frames, gallery.mask))
    rounded = gallery.frames.half().float()
    parts = engine.prepare_videos(rounded, gallery.mask).parts
    stored = {k: v.half() if k == "frames" else v for k, v in parts.items()}
    scores = engine.score(texts, engine.adopt(stored))
    in_memory = engine.score(texts, engine.prepare_videos(rounded, gallery.mask))
    torch.testing.assert_close(scores, in_memory, atol=1e-6, rtol=0)
    torch.testing.assert_close(scores, full, atol=FLOAT16_TOLERANCE, rtol=0)
    assert torch.equal(scores.topk(10).indices.sort().values, full.topk(10).indices.sort().values)
    assert (scores - full).abs().max() > 0  # the rounding is there, and it is small


def test_bench_stage2_times_each_step_of_a_search_on_stored_candidates(tmp_path, capsys):
    bench_stage2.main(["--n", "300", "--k", "40", "400", "--calls", "2", "--folder",
                       str(tmp_path), "--threads", str(torch.get_num_threads())])
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| K")]
    assert [row[0].strip() for row in rows] == ["40", "400"]  # K = 400 capped at the 300 videos
    assert all(float(cell) > 0 for row in rows for cell in row[1:])
    assert not any(tmp_path.iterdir())  # the index is deleted without --keep
