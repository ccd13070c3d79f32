"""The evaluation engine (folded and naive paths, its self-check, evaluate() with it) against
the naive module."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from tvr.data.datasets import Annotations, Pair, RetrievalDataset, VideoFiles
from tvr.evaluation.engine import (BLOCK_PAIRS, BLOCK_VIDEOS, CHECK_TOLERANCE, EngineCheckError,
                                   SimilarityEngine, build_engine)
from tvr.evaluation.evaluate import evaluate, metric_variants
from tvr.evaluation.metrics import format_table, save_json
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS, GAREConfig, SimilarityConfig
from tvr.models.gare import GARE
from tvr.models.similarity import GapAwareSimilarity, Psi
from tvr.models.tokenizer import ClipTokenizer
from fixtures_similarity import inputs, trained

FOLDED = [{}, {"gap_sign": -1}, {"psi_query": "text"}, {"delta_side": "video"}, {"no_delta": True},
          {"psi_query": "text", "delta_side": "video"}, {"gap_sign": -1, "delta_side": "video"},
          {"no_delta": True, "psi_context": "words"}, {"normalize_delta": True},
          {"normalize_delta": True, "delta_side": "video", "psi_query": "text"}]
FALLBACK = [{"psi_context": "words"},
            {"psi_context": "words", "delta_side": "video", "gap_sign": -1},
            {"psi_context": "words", "normalize_delta": True}]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
PRECISION = {torch.float64: "fp64", torch.float32: "fp32"}


def name(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def run_engine(engine: SimilarityEngine, x: dict, block=None) -> torch.Tensor:
    texts = engine.prepare_texts(x["text"], x["words"], x["word_mask"])
    return engine.score(texts, engine.prepare_videos(x["frames"], x["video_mask"]), block=block)


def naive_scores(model: GapAwareSimilarity, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).scores


def sample(x: dict) -> dict[str, torch.Tensor]:
    """The self-check's sample (SimilarityEngine.verify, build_engine) from `inputs`."""
    return {"text": x["text"], "frames": x["frames"], "mask": x["video_mask"]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("overrides", FOLDED, ids=name)
def test_folded_equals_naive(overrides: dict, dtype: torch.dtype) -> None:
    model = trained(SimilarityConfig(dim=24, **overrides), dtype)
    x = inputs(b_t=13, b_v=9, n_frames=5, dim=24, dtype=dtype)
    reference = naive_scores(model, x)
    engine = SimilarityEngine(model, precision=PRECISION[dtype])
    assert engine.method == "folded" and engine.fallback_reason is None
    # blocks of fewer than d / 2 texts fold LN1 into the products, larger ones into the frames
    for block in [None, (1, 1), (2, 3), (7, 4), (3, 9), (12, 2), (13, 9), (100, 100)]:
        scores = run_engine(engine, x, block)
        assert scores.shape == (13, 9) and scores.dtype == dtype
        torch.testing.assert_close(scores, reference, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("overrides", FALLBACK, ids=name)
def test_fallback_equals_naive(overrides: dict, dtype: torch.dtype) -> None:
    model = trained(SimilarityConfig(dim=24, **overrides), dtype)
    x = inputs(b_t=6, b_v=4, n_frames=5, dim=24, dtype=dtype)
    with pytest.warns(UserWarning, match="words"):
        engine = SimilarityEngine(model, precision=PRECISION[dtype])
    assert engine.method == "naive" and "words" in engine.fallback_reason
    for block in [None, (1, 1), (4, 3)]:
        torch.testing.assert_close(run_engine(engine, x, block), naive_scores(model, x),
                                   atol=TOL[dtype], rtol=0)
    with pytest.raises(ValueError, match="words"):
        engine.prepare_texts(x["text"])


@pytest.mark.parametrize("overrides", [{}, {"delta_side": "video"}], ids=name)
def test_forced_naive_path(overrides: dict) -> None:
    model = trained(SimilarityConfig(dim=16, **overrides), torch.float64)
    x = inputs(b_t=5, b_v=3, n_frames=4, dim=16, dtype=torch.float64)
    engine = SimilarityEngine(model, precision="fp64", naive=True)
    assert engine.method == "naive"
    torch.testing.assert_close(run_engine(engine, x, (2, 2)), naive_scores(model, x), atol=1e-12,
                               rtol=0)


@pytest.mark.parametrize("overrides", [{}, {"psi_query": "text", "delta_side": "video"},
                                       {"normalize_delta": True}], ids=name)
def test_real_width_fp32(overrides: dict) -> None:
    """d = 512, F = 12, features sharing a common direction (so the gap is small, as with CLIP)."""
    model = trained(SimilarityConfig(dim=512, **overrides), torch.float32)
    x = inputs(b_t=20, b_v=15, n_frames=12, dim=512, dtype=torch.float32)
    common = torch.randn(512, generator=torch.Generator().manual_seed(5))
    x["text"] = common + 0.3 * x["text"]
    x["frames"] = common + 0.3 * x["frames"]
    model64 = trained(SimilarityConfig(dim=512, **overrides), torch.float64)
    x64 = {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
    exact = naive_scores(model64, x64)
    engine = SimilarityEngine(model, memory_budget_bytes=12 * 1024, precision="fp32")
    assert engine.block_shape(20, 15, 12)[1] < 15  # several blocks
    # no false alarm of the self-check at this width
    assert engine.verify(**sample(x)) <= CHECK_TOLERANCE[torch.float32]
    assert engine.method == "folded"
    scores = run_engine(engine, x)
    torch.testing.assert_close(scores.double(), exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(naive_scores(model, x), scores, atol=1e-4, rtol=0)


def test_block_shape_respects_budget() -> None:
    engine = SimilarityEngine(trained(SimilarityConfig(dim=32), torch.float32),
                              memory_budget_bytes=10**6)
    per_pair = engine.bytes_per_pair(12)
    for n_t, n_v in [(1000, 1000), (10, 5000), (5000, 3), (1, 1)]:
        b_t, b_v = engine.block_shape(n_t, n_v, 12)
        assert 1 <= b_t <= n_t and 1 <= b_v <= n_v
        assert b_t * b_v * per_pair <= 10**6
    assert engine.block_shape(10, 10, 12) == (10, 10)
    assert SimilarityEngine(engine.module, memory_budget_bytes=1).block_shape(5, 5, 12) == (1, 1)
    large = SimilarityEngine(engine.module, memory_budget_bytes=2**30)
    assert large.block_shape(1000, 1000, 12) == (1000, BLOCK_PAIRS // 1000)  # the cache cap
    assert large.block_shape(10**6, 10**6, 12) == (BLOCK_PAIRS // BLOCK_VIDEOS, BLOCK_VIDEOS)


def test_module_untouched_and_eval_scores() -> None:
    """A module in train mode is neither switched nor used with dropout; weights are copied."""
    model = trained(SimilarityConfig(dim=16, dropout=0.5), torch.float64).train()
    x = inputs(b_t=3, b_v=4, n_frames=4, dim=16, dtype=torch.float64)
    engine = SimilarityEngine(model, precision="fp64")
    scores = run_engine(engine, x)
    assert model.training
    torch.testing.assert_close(scores, naive_scores(model.eval(), x), atol=1e-12, rtol=0)
    with torch.no_grad():
        model.psi.mean_proj.bias.add_(1.0)
    torch.testing.assert_close(run_engine(engine, x), scores, atol=0, rtol=0)


def test_selection_and_ownership() -> None:
    model = trained(SimilarityConfig(dim=16), torch.float64)
    x = inputs(b_t=6, b_v=5, n_frames=4, dim=16, dtype=torch.float64)
    engine = SimilarityEngine(model, precision="fp64")
    texts = engine.prepare_texts(x["text"])
    videos = engine.prepare_videos(x["frames"], x["video_mask"])
    full = engine.score(texts, videos)
    pick = torch.tensor([4, 0, 2])
    torch.testing.assert_close(engine.score(texts.select(pick), videos.select(slice(1, 4))),
                               full[pick][:, 1:4], atol=1e-12, rtol=0)
    other = SimilarityEngine(model, precision="fp64")
    with pytest.raises(ValueError, match="prepared by this engine"):
        other.score(texts, videos)
    with pytest.raises(TypeError):
        engine.score(videos, texts)


def test_bf16_and_tf32_run_close() -> None:
    model = trained(SimilarityConfig(dim=64), torch.float32)
    x = inputs(b_t=8, b_v=6, n_frames=6, dim=64, dtype=torch.float32)
    reference = naive_scores(model, x)
    torch.testing.assert_close(run_engine(SimilarityEngine(model, precision="tf32"), x), reference,
                               atol=1e-2, rtol=0)
    assert torch.get_float32_matmul_precision() == "highest"  # restored
    bf16 = run_engine(SimilarityEngine(model, precision="bf16"), x)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, reference, atol=0.1, rtol=0)


# ---------------------------------------------------------------------- the engine's self-check
class DoubledDelta(GapAwareSimilarity):
    """A fork of the similarity: Δ doubled. The folding reads the stock weights and misses it."""

    def delta(self, *args, **kwargs) -> torch.Tensor:
        return 2 * super().delta(*args, **kwargs)


class ShiftedPsi(Psi):
    """A fork of Psi: its output plus 1 in every component."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return super().forward(*args, **kwargs) + 1.0


def forked(fork: str, config: SimilarityConfig, dtype: torch.dtype) -> GapAwareSimilarity:
    """The weights of `trained` in a forked similarity ("similarity") or Psi ("psi"), left in
    train mode (the engine must score in eval mode all the same)."""
    stock = trained(config, dtype)
    if fork == "similarity":
        module = DoubledDelta(config)
        module.load_state_dict(stock.state_dict())
    else:
        module = stock
        module.psi = ShiftedPsi(config.dim, config.dropout)
        module.psi.load_state_dict(stock.psi.state_dict())
    return module.to(dtype).train()


@pytest.mark.parametrize("mode", ["auto", "folded"])
@pytest.mark.parametrize("overrides", FOLDED, ids=name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_check_keeps_a_stock_similarity_folded(dtype: torch.dtype, overrides: dict,
                                               mode: str) -> None:
    model = trained(SimilarityConfig(dim=24, **overrides), dtype)
    x = inputs(b_t=10, b_v=9, n_frames=5, dim=24, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = build_engine(model, mode, **sample(x), precision=PRECISION[dtype])
    assert engine.method == "folded" and engine.fallback_reason is None
    assert 0 <= engine.verify(**sample(x)) <= CHECK_TOLERANCE[dtype]
    torch.testing.assert_close(run_engine(engine, x), naive_scores(model, x), atol=TOL[dtype],
                               rtol=0)


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_check_runs_at_full_precision(precision: str) -> None:
    """The check compares fp32 with fp32 whatever the engine's precision: bf16 scores are up to
    1e-2 off (test_bf16_and_tf32_run_close), and a check at that precision could fall back
    where the folding is right."""
    model = trained(SimilarityConfig(dim=64), torch.float32)
    x = inputs(b_t=8, b_v=6, n_frames=6, dim=64, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = build_engine(model, "folded", **sample(x), precision=precision)
    assert engine.method == "folded"
    assert engine.verify(**sample(x)) < 1e-5
    if precision == "bf16":
        assert (run_engine(engine, x) - naive_scores(model, x)).abs().max() > 1e-4
    assert torch.get_float32_matmul_precision() == "highest"  # restored


@pytest.mark.parametrize("report", ["warning", "log"])
@pytest.mark.parametrize("weight", ["linear1.weight", "v_proj.bias", "layer_norm3.weight"])
def test_weight_changed_after_folding_falls_back_to_the_module(weight: str, report: str) -> None:
    model = trained(SimilarityConfig(dim=24), torch.float32)
    x = inputs(b_t=7, b_v=9, n_frames=5, dim=24, dtype=torch.float32)
    engine = SimilarityEngine(model)
    folded = run_engine(engine, x)                        # with the weights at the folding
    texts = engine.prepare_texts(x["text"])
    with torch.no_grad():
        engine.module.psi.get_parameter(weight).view(-1)[3] += 1.0
    messages: list[str] = []
    if report == "warning":
        with pytest.warns(UserWarning, match=r"self-check: .* differ .* up to .* per-pair module"):
            difference = engine.verify(**sample(x))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            difference = engine.verify(**sample(x), log=messages.append)
        assert len(messages) == 1 and "GapAwareSimilarity with Psi" in messages[0]
    assert difference > CHECK_TOLERANCE[torch.float32]
    assert engine.method == "naive" and f"{difference:.2e}" in engine.fallback_reason
    scores = run_engine(engine, x, block=(3, 4))
    torch.testing.assert_close(scores, naive_scores(engine.module, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(folded, naive_scores(model, x), atol=TOL[torch.float32], rtol=0)
    assert (scores - folded).abs().max() > 1e-2           # the change mattered
    with pytest.raises(ValueError, match="prepared by this engine"):
        engine.score(texts, engine.prepare_videos(x["frames"], x["video_mask"]))


@pytest.mark.parametrize("fork", ["similarity", "psi"])
def test_forked_module_falls_back_to_its_own_forward(fork: str) -> None:
    config = SimilarityConfig(dim=24)
    module = forked(fork, config, torch.float32)
    x = inputs(b_t=7, b_v=9, n_frames=5, dim=24, dtype=torch.float32)
    messages: list[str] = []
    engine = build_engine(module, "auto", **sample(x), log=messages.append)
    assert engine.method == "naive" and engine.fallback_reason.startswith("self-check")
    assert len(messages) == 1 and type(module).__name__ in messages[0]
    assert type(module.psi).__name__ in messages[0]
    expected = naive_scores(module.eval(), x)
    torch.testing.assert_close(run_engine(engine, x, block=(2, 5)), expected, atol=1e-6, rtol=0)
    stock = naive_scores(trained(config, torch.float32), x)
    assert (expected - stock).abs().max() > 1e-2


def test_folded_mode_raises_instead_of_falling_back() -> None:
    module = forked("psi", SimilarityConfig(dim=24), torch.float32)
    x = inputs(b_t=7, b_v=9, n_frames=5, dim=24, dtype=torch.float32)
    with pytest.raises(EngineCheckError,
                       match=r"failed: .* ShiftedPsi\) by up to .*--eval_engine naive"):
        build_engine(module, "folded", **sample(x))
    engine = SimilarityEngine(module)
    with pytest.raises(EngineCheckError):
        engine.verify(**sample(x), strict=True)
    assert engine.method == "folded" and engine.fallback_reason is None
    words = trained(SimilarityConfig(dim=24, psi_context="words"), torch.float32)
    with pytest.raises(ValueError, match="psi_context='words' is not folded"):
        build_engine(words, "folded", **sample(x))
    with pytest.raises(ValueError, match="mode must be one of"):
        build_engine(module, "fast", **sample(x))


def test_naive_mode_and_unfoldable_settings_are_not_checked() -> None:
    module = forked("psi", SimilarityConfig(dim=24), torch.float32)
    x = inputs(b_t=7, b_v=9, n_frames=5, dim=24, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = build_engine(module, "naive", **sample(x))
    assert engine.method == "naive" and engine.fallback_reason == "the naive path was asked for"
    assert engine.verify(**sample(x)) is None
    torch.testing.assert_close(run_engine(engine, x), naive_scores(module.eval(), x), atol=1e-6,
                               rtol=0)
    words = trained(SimilarityConfig(dim=24, psi_context="words"), torch.float32)
    messages: list[str] = []
    engine = build_engine(words, "auto", **sample(x), log=messages.append)
    assert engine.method == "naive" and messages == [
        "SimilarityEngine: psi_context='words' is not folded; using the naive per-pair module "
        "in blocks"]


def test_check_and_nan() -> None:
    """A NaN on both paths (a NaN frame) agrees; on the per-pair module only, it is a mismatch."""
    model = trained(SimilarityConfig(dim=24), torch.float32)
    x = inputs(b_t=7, b_v=9, n_frames=5, dim=24, dtype=torch.float32)
    x["frames"][2, 0, 0] = float("nan")
    engine = SimilarityEngine(model)
    assert engine.verify(**sample(x), strict=True) <= CHECK_TOLERANCE[torch.float32]
    with torch.no_grad():
        engine.module.psi.mean_proj.bias[0] = float("nan")
    with pytest.raises(EngineCheckError, match="up to nan"):
        engine.verify(**sample(x), strict=True)


# ---------------------------------------------------------------------- evaluate() with the check
@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> RetrievalDataset:
    """10 videos (two with padded frames) with 2 captions each; files are empty, frames come
    from a deterministic in-memory clip loader."""
    root = tmp_path_factory.mktemp("videos")
    g = torch.Generator().manual_seed(3)
    clips = {}
    for v in range(10):
        video, mask = torch.randn(4, 3, 32, 32, generator=g), torch.ones(4, dtype=torch.long)
        mask[4 - v % 3:] = 0
        video[mask == 0] = 0
        clips[f"video{v}.mp4"] = video, mask
        (root / f"video{v}.mp4").touch()
    pairs = [Pair(f"a {colour} shape moves {way} in clip {v}", f"video{v}")
             for v in range(10) for colour, way in (("red", "left"), ("blue", "up"))]
    return RetrievalDataset(Annotations(pairs, [f"video{v}" for v in range(10)]),
                            VideoFiles(root, lambda video_id: [f"{video_id}.mp4"]),
                            ClipTokenizer(), lambda path, start, end: clips[Path(path).name],
                            max_words=16)


def test_evaluate_checks_the_engine(tiny_split: RetrievalDataset, tmp_path) -> None:
    torch.manual_seed(0)
    model = GARE(CLIP(CLIP_CONFIGS["tiny"]), GAREConfig(agg_module="meanP")).eval()

    def run(engine: str, log=None) -> dict:
        return evaluate(model, tiny_split, batch_size=4, workers=0, device=torch.device("cpu"),
                        is_main=True, engine=engine, log=log)

    stock = run("auto")
    assert stock["engine"] == {"method": "folded"} and stock["skipped_videos"] == []
    assert set(metric_variants(stock)) == {"raw"}
    ranks = stock["ranks"]["raw"]  # 20 captions, 10 videos, in the split's order
    assert (len(ranks["t2v"]), len(ranks["v2t"])) == (20, 10)
    for direction, listed in ranks.items():
        assert stock["raw"][direction]["R5"] == pytest.approx(
            100 * sum(r <= 5 for r in listed) / len(listed))
    save_json(metric_variants(stock), tmp_path / "metrics.json")
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"raw"}
    assert format_table(metric_variants(stock)).count("\n") == 4  # header, rule, t2v, v2t

    psi = model.similarity.psi
    model.similarity.psi = ShiftedPsi(psi.dim)
    model.similarity.psi.load_state_dict(psi.state_dict())
    messages: list[str] = []
    fallback = run("auto", log=messages.append)
    assert fallback["engine"]["method"] == "naive"
    assert fallback["engine"]["reason"].startswith("self-check: the folded scores of 8 texts x 8")
    assert len(messages) == 1 and "ShiftedPsi" in messages[0]
    naive = run("naive")
    assert naive["engine"] == {"method": "naive", "reason": "the naive path was asked for"}
    assert fallback["raw"] == naive["raw"]
    with pytest.raises(EngineCheckError, match="ShiftedPsi"):
        run("folded")
    with pytest.raises(ValueError, match="engine must be one of"):
        run("fast")
