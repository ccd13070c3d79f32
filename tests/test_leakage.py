"""Leakage guard: the score of a text against a video depends on that text and that video only.

Through the evaluation path (``GARE.encode_text`` / ``GARE.encode_video``, then the engine of
``tvr.evaluation.engine``, folded or naive) the (texts x videos) score matrix of a tiny GARE model
in eval mode must not change when the items are encoded in other batches, scored in other
blocks, shuffled, or when other items are added or removed: anything that lets an item see the
rest of its batch or gallery (a normalisation over the gallery, a mask or a softmax over the
wrong axis, padding that depends on the batch) breaks one of these. 7 texts of different
lengths against 11 videos, four of them with padded frames (zeros, as the data pipeline
delivers), so that the temporal transformer's key mask and the word masks matter.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import pytest
import torch
from torch import Tensor

from tvr.evaluation.engine import SimilarityEngine, build_engine, foldable
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS, GAREConfig, SimilarityConfig
from tvr.models.gare import GARE, TextFeatures, VideoFeatures

N_TEXTS, N_VIDEOS, N_FRAMES, N_WORDS = 7, 11, 4, 12
SOT, EOT = 49406, 49407
ATOL = 1e-5  # fp32: the matrix products of other batch and block shapes round differently
SETTINGS = {
    "meanP": GAREConfig(agg_module="meanP"),
    "seqTransf": GAREConfig(num_hidden_layers=2),
    "delta_side=video": GAREConfig(num_hidden_layers=2,
                                   similarity=SimilarityConfig(delta_side="video")),
    "psi_context=words": GAREConfig(num_hidden_layers=2,
                                    similarity=SimilarityConfig(psi_context="words")),
}
CASES = [(setting, mode) for setting, config in SETTINGS.items() for mode in ("folded", "naive")
         if mode == "naive" or foldable(config.similarity)]


class Raw(NamedTuple):
    """Model inputs: token ids and mask (N_t, L); frames (N_v, F, 3, 32, 32) and mask (N_v, F)."""

    ids: Tensor
    text_mask: Tensor
    video: Tensor
    video_mask: Tensor

    def select(self, texts: Tensor, videos: Tensor) -> "Raw":
        return Raw(self.ids[texts], self.text_mask[texts], self.video[videos],
                   self.video_mask[videos])


class Case(NamedTuple):
    model: GARE
    mode: str  # build_engine's mode
    raw: Raw
    full: Tensor  # (N_t, N_v) scores: everything encoded in one batch, scored in one block


def raw_inputs() -> Raw:
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(N_TEXTS, N_WORDS, dtype=torch.long)
    text_mask = torch.zeros(N_TEXTS, N_WORDS, dtype=torch.long)
    for i in range(N_TEXTS):
        n = 3 + (2 * i) % (N_WORDS - 2)
        ids[i, 0], ids[i, n - 1] = SOT, EOT
        ids[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
        text_mask[i, :n] = 1
    video = torch.randn(N_VIDEOS, N_FRAMES, 3, 32, 32, generator=g)
    video_mask = torch.ones(N_VIDEOS, N_FRAMES, dtype=torch.long)
    for b, real in ((1, 2), (4, 1), (7, 3), (10, 2)):
        video_mask[b, real:] = 0
    video[video_mask == 0] = 0
    return Raw(ids, text_mask, video, video_mask)


@functools.cache
def tiny_model(setting: str) -> GARE:
    torch.manual_seed(0)
    return GARE(CLIP(CLIP_CONFIGS["tiny"]), SETTINGS[setting]).eval()


@torch.no_grad()
def encode(model: GARE, raw: Raw, chunk: Optional[int] = None
           ) -> tuple[TextFeatures, VideoFeatures]:
    """Features of every text and video, encoded ``chunk`` items at a time (all at once)."""
    def batches(n: int) -> list[slice]:
        step = chunk or n
        return [slice(i, i + step) for i in range(0, n, step)]

    texts = [model.encode_text(raw.ids[s], raw.text_mask[s]) for s in batches(len(raw.ids))]
    videos = [model.encode_video(raw.video[s], raw.video_mask[s])
              for s in batches(len(raw.video))]
    return (TextFeatures(*(torch.cat(parts) for parts in zip(*texts))),
            VideoFeatures(*(torch.cat(parts) for parts in zip(*videos))))


def engine_for(model: GARE, mode: str, text: TextFeatures, video: VideoFeatures,
               **kwargs) -> SimilarityEngine:
    """The engine of ``mode``, self-checked on these features (mode "folded" raises on a
    mismatch, so the folded cases stay folded); ``kwargs`` go to ``build_engine``."""
    engine = build_engine(model.similarity, mode, text=text.sentence, frames=video.frames,
                          mask=video.mask, **kwargs)
    assert engine.method == mode
    return engine


def scores(model: GARE, mode: str, raw: Raw, chunk: Optional[int] = None,
           block: Optional[tuple[int, int]] = None, **kwargs) -> Tensor:
    """The (texts x videos) scores of ``raw`` through the evaluation path: encoded ``chunk``
    items at a time, scored in ``block``s (default: the engine's choice)."""
    text, video = encode(model, raw, chunk)
    engine = engine_for(model, mode, text, video, **kwargs)
    return engine.score(engine.prepare_texts(text.sentence, text.words, text.mask),
                        engine.prepare_videos(video.frames, video.mask), block=block)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request) -> Case:
    setting, mode = request.param
    model, raw = tiny_model(setting), raw_inputs()
    return Case(model, mode, raw, scores(model, mode, raw))


def test_batches_and_blocks(case: Case) -> None:
    """Encoded 3 at a time and scored in 2 x 3 blocks, or in the blocks of a tiny budget."""
    chunked = scores(case.model, case.mode, case.raw, chunk=3, block=(2, 3))
    torch.testing.assert_close(chunked, case.full, atol=ATOL, rtol=0)
    budget = scores(case.model, case.mode, case.raw, chunk=5, memory_budget_bytes=4096)
    torch.testing.assert_close(budget, case.full, atol=ATOL, rtol=0)


def test_shuffled_gallery(case: Case) -> None:
    g = torch.Generator().manual_seed(1)
    texts, videos = torch.randperm(N_TEXTS, generator=g), torch.randperm(N_VIDEOS, generator=g)
    shuffled = scores(case.model, case.mode, case.raw.select(texts, videos))
    restored = torch.empty_like(shuffled)
    restored[texts.unsqueeze(1), videos.unsqueeze(0)] = shuffled
    torch.testing.assert_close(restored, case.full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("texts, videos", [
    ([5, 0, 3], [10, 1, 4, 7]),          # padded videos only, out of order
    (list(range(N_TEXTS)), [2]),         # one video
    ([6], list(range(N_VIDEOS))),        # one text
    ([1, 2], [0, 3, 5, 6, 8, 9]),        # unpadded videos only
], ids=["3x4", "7x1", "1x11", "2x6"])
def test_sub_galleries(case: Case, texts: list[int], videos: list[int]) -> None:
    texts_i, videos_i = torch.tensor(texts), torch.tensor(videos)
    subset = scores(case.model, case.mode, case.raw.select(texts_i, videos_i))
    torch.testing.assert_close(subset, case.full[texts_i][:, videos_i], atol=ATOL, rtol=0)


def test_each_text_alone_against_each_video_alone(case: Case) -> None:
    text, video = encode(case.model, case.raw, chunk=1)  # every item encoded alone
    engine = engine_for(case.model, case.mode, text, video)
    alone = torch.empty(N_TEXTS, N_VIDEOS)
    for a in range(N_TEXTS):
        for b in range(N_VIDEOS):
            one_text = engine.prepare_texts(text.sentence[a:a + 1], text.words[a:a + 1],
                                            text.mask[a:a + 1])
            one_video = engine.prepare_videos(video.frames[b:b + 1], video.mask[b:b + 1])
            alone[a, b] = engine.score(one_text, one_video)[0, 0]
    torch.testing.assert_close(alone, case.full, atol=ATOL, rtol=0)


def test_engine_equals_the_per_pair_module(case: Case) -> None:
    """GARE.score (the similarity module itself, in eval mode) on the same features."""
    text, video = encode(case.model, case.raw)
    with torch.no_grad():
        reference = case.model.score(text, video).scores
    torch.testing.assert_close(case.full, reference, atol=ATOL, rtol=0)
