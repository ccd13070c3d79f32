"""A synthetic video index for bench/bench_index.py: a gallery of N videos with structure and
sentence embeddings that describe some of them, written as an index folder.

A gallery holds N synthetic videos of F = 12 frame features of width d = 512 with structure
(:func:`make_gallery`): ``topics`` topic directions; each video is a topic plus its own offset,
each real frame that plus frame noise, padded frames (a quarter of the videos are shorter than
F) a fixed "blank image" feature; features have CLIP-like norms and a modality gap between texts
and videos. Half of the sentences are noisy versions of one video's content, half of one topic.
The GARE similarity is ``GapAwareSimilarity(SimilarityConfig(dim=512))`` with its initial
weights (seeded, :func:`similarity`): no text encoder is run, the sentence embeddings are given.
:func:`write_index` writes the gallery chunk by chunk through the index store's write API
(float16 frames and the per-video state, manifest, stage-1 index), so a 1M gallery never has
to fit in memory (its frames alone are 22.9 GiB in float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from tvr.evaluation.engine import SimilarityEngine, coarse_vectors
from tvr.index.build import GARE_KIND, STAGE1_FRAMES
from tvr.index.store import Manifest, update_stage1, write_shard
from tvr.index.table import Entry
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
                 chunk: int = 8192,
                 sink: Optional[Callable[[int, Tensor, Tensor], None]] = None
                 ) -> SyntheticGallery:
    """A synthetic gallery of ``n`` videos and ``queries`` sentences (module docstring).

    Video b of topic j: content c_b = τ_j + VIDEO_SPREAD·ε_b; real frame k:
    FRAME_NORM · unit(ν + c_b + FRAME_SPREAD·η_bk), ν the direction shared by all video
    features; padded frame: FRAME_NORM · unit(ν + β), β a fixed "blank image" direction.
    Sentence describing video b (or topic j): TEXT_NORM · unit(ω + c_b (or τ_j) +
    QUERY_NOISE·ξ), ω the direction shared by all sentences (≠ ν: the modality gap).
    Generated in chunks of ``chunk`` videos, deterministic for a given ``seed``; with
    ``sink``, each chunk goes to ``sink(start, frames, mask)`` instead of the returned frames
    (None), so that a gallery larger than memory can be written to an index.
    """
    g = torch.Generator().manual_seed(seed)
    video_dir, text_dir, blank = _unit(torch.randn(3, DIM, generator=g)).unbind(0)
    topic = _unit(torch.randn(topics, DIM, generator=g))
    targets = torch.randperm(n, generator=g)[:queries]
    content_of: dict[int, Tensor] = {}
    frames = torch.empty(n, FRAMES, DIM, dtype=dtype) if sink is None else None
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
        if sink is None:
            frames[start:start + count] = block
        else:
            sink(start, block, real)
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


def similarity(seed: int) -> GapAwareSimilarity:
    """The benchmark's GARE similarity: initial weights at d = 512, seeded."""
    torch.manual_seed(seed)
    return GapAwareSimilarity(SimilarityConfig(dim=DIM)).eval()


def write_index(folder: Path, n: int, queries: int, topics: int, seed: int, shard_size: int,
                exact_max: int, k: int) -> tuple[SyntheticGallery, str]:
    """Write a synthetic gallery of ``n`` videos as an index in ``folder`` through the store's
    write API (shards of ``shard_size`` videos, one manifest entry per video, then the stage-1
    index, exact up to ``exact_max`` videos); returns the gallery (without frames) and the
    stage-1 line of the build report."""
    engine = SimilarityEngine(similarity(seed))
    manifest = Manifest(videos_root=".", checkpoint={}, config={"max_words": 32}, sampling={})
    times = [float(t) for t in range(FRAMES)]

    def sink(start: int, frames: Tensor, mask: Tensor) -> None:
        for offset in range(0, len(frames), shard_size):
            shard = (start + offset) // shard_size
            part = slice(offset, offset + shard_size)
            write_shard(folder, shard, engine, frames[part], mask[part], STAGE1_FRAMES[GARE_KIND])
            for row in range(len(frames[part])):
                manifest.entries[f"video{start + offset + row}.mp4"] = Entry(
                    0, 0, "", False, shard, row, float(FRAMES), times)
            manifest.next_shard = shard + 1

    chunk = shard_size * max(1, 8192 // shard_size)
    gallery = make_gallery(n, queries, topics, seed, torch.float32, chunk, sink)
    manifest.save(folder)
    return gallery, update_stage1(folder, manifest, exact_max, k)
