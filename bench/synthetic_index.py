"""A synthetic video index for bench/bench_index.py: a gallery of N videos with structure and
sentence embeddings that describe some of them, opened as a :class:`VideoIndex` in memory.

A gallery holds N synthetic videos of F = 12 frame features of width d = 512 with structure
(:func:`make_gallery`): ``topics`` topic directions; each video is a topic plus its own offset,
each real frame that plus frame noise, padded frames (a quarter of the videos are shorter than
F) a fixed "blank image" feature; features have CLIP-like norms and a modality gap between texts
and videos. Half of the sentences are noisy versions of one video's content, half of one topic.
The GARE similarity is ``GapAwareSimilarity(SimilarityConfig(dim=512))`` with its initial
weights (seeded), wrapped in a stand-in model (:class:`SyntheticModel`): no text encoder is run,
the sentence embeddings are given. Frames are stored in the dtype asked for (float16 lets 1M
videos fit: 1M x 12 x 512 float32 frames take 22.9 GiB): the index's ``Gallery.scores``
gathers the candidates' frames and the evaluation engine casts them to float32, so the scores
are those of the rounded frames, in float32 arithmetic. The stage-1 vectors are float32, as the
index stores them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from tvr.evaluation.engine import coarse_vectors
from tvr.index.search import VideoIndex
from tvr.index.store import Manifest
from tvr.models.gare import TextFeatures
from tvr.models.config import SimilarityConfig
from tvr.models.similarity import GapAwareSimilarity

DIM, FRAMES = 512, 12
# The synthetic features (make_gallery). Directions are unit vectors; noise vectors have norm ~1.
VIDEO_SPREAD = 0.8    # a video's own offset from its topic
FRAME_SPREAD = 0.6    # frame-to-frame noise within a video
QUERY_NOISE = 0.8     # a sentence's noise around the video or topic it describes
FRAME_NORM = 10.0     # norm of every frame feature (CLIP ViT-B/32 image features: about 10)
TEXT_NORM = 8.0       # norm of every sentence embedding
SHORT_SHARE = 0.25    # share of videos with fewer than F real frames (2 to F - 1)


@dataclass
class SyntheticGallery:
    """Frames (N, F, d) in the storage dtype, mask (N, F) int64, stage-1 vectors (N, d) float32,
    sentence embeddings (Q, d) and, per sentence, whether it describes a video or a topic."""

    frames: Optional[Tensor]
    mask: Tensor
    coarse: Tensor
    text: Tensor
    topic_query: Tensor


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _noise(generator: torch.Generator, *shape: int) -> Tensor:
    """Gaussian vectors of norm about 1 along the last dimension."""
    return torch.randn(*shape, generator=generator).mul_(shape[-1] ** -0.5)


def make_gallery(n: int, queries: int, topics: int, seed: int, dtype: torch.dtype,
                 chunk: int = 8192) -> SyntheticGallery:
    """A synthetic gallery of ``n`` videos and ``queries`` sentences (module docstring).

    Video b of topic j: content c_b = τ_j + VIDEO_SPREAD·ε_b; real frame k:
    FRAME_NORM · unit(ν + c_b + FRAME_SPREAD·η_bk), ν the direction shared by all video
    features; padded frame: FRAME_NORM · unit(ν + β), β a fixed "blank image" direction.
    Sentence describing video b (or topic j): TEXT_NORM · unit(ω + c_b (or τ_j) +
    QUERY_NOISE·ξ), ω the direction shared by all sentences (≠ ν: the modality gap).
    Generated in chunks of ``chunk`` videos, deterministic for a given ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    video_dir, text_dir, blank = _unit(torch.randn(3, DIM, generator=g)).unbind(0)
    topic = _unit(torch.randn(topics, DIM, generator=g))
    targets = torch.randperm(n, generator=g)[:queries]
    content_of: dict[int, Tensor] = {}
    frames = torch.empty(n, FRAMES, DIM, dtype=dtype)
    mask = torch.empty(n, FRAMES, dtype=torch.int64)
    coarse = torch.empty(n, DIM)
    padded = FRAME_NORM * _unit(video_dir + blank)
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        content = (topic[torch.randint(topics, (count,), generator=g)]
                   + VIDEO_SPREAD * _noise(g, count, DIM))
        for row in targets[(targets >= start) & (targets < start + count)].tolist():
            content_of[row] = content[row - start]  # described by a sentence
        short = torch.rand(count, generator=g) < SHORT_SHARE
        lengths = torch.where(short, torch.randint(2, FRAMES, (count,), generator=g), FRAMES)
        real = torch.arange(FRAMES) < lengths.unsqueeze(1)
        block = _noise(g, count, FRAMES, DIM).mul_(FRAME_SPREAD)  # in place: memory-bound
        block.add_((video_dir + content).unsqueeze(1))
        block.mul_(FRAME_NORM / block.norm(dim=-1, keepdim=True))
        block[~real] = padded
        frames[start:start + count] = block
        mask[start:start + count] = real
        # from the float32 features, as a build computes them (the frames are then stored)
        coarse[start:start + count] = coarse_vectors(block, real)
    topic_query = torch.arange(queries) % 2 == 1
    described = torch.stack([topic[j] for j in torch.randint(topics, (queries,), generator=g)])
    for q, row in enumerate(targets.tolist()):
        if not topic_query[q]:
            described[q] = content_of[row]
    text = TEXT_NORM * _unit(text_dir + described + QUERY_NOISE * _noise(g, queries, DIM))
    return SyntheticGallery(frames, mask, coarse, text, topic_query)


class SyntheticModel(torch.nn.Module):
    """Stands in for a GARE model in :class:`VideoIndex`: the index reads ``similarity`` and
    calls ``encode_text`` only to self-check its evaluation engine, on two sample sentences;
    this one returns the first of the given sentence embeddings for them."""

    def __init__(self, similarity: GapAwareSimilarity, sample_text: Tensor):
        super().__init__()
        self.similarity = similarity
        self.sample_text = sample_text

    def encode_text(self, ids: Tensor, mask: Tensor) -> TextFeatures:
        return TextFeatures(self.sample_text[:len(ids)], None, mask)


def open_index(gallery: SyntheticGallery, seed: int, stage1: str = "torch") -> VideoIndex:
    """An in-memory :class:`VideoIndex` of ``gallery`` (as ``VideoIndex.open`` builds one from
    shards), with a seeded GARE similarity at d = 512 and its engine built. The torch stage 1
    (default) shares the gallery's stage-1 tensor; faiss would copy it."""
    torch.manual_seed(seed)
    similarity = GapAwareSimilarity(SimilarityConfig(dim=DIM)).eval()
    manifest = Manifest(videos_root=".", checkpoint={}, config={"max_words": 32}, sampling={})
    paths = [f"video{i}.mp4" for i in range(len(gallery.mask))]
    index = VideoIndex(Path("."), manifest, SyntheticModel(similarity, gallery.text), paths,
                       gallery.frames, gallery.mask, gallery.coarse, stage1)
    index.engine  # noqa: B018 (built and self-checked on first use)
    return index
