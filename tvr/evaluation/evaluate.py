"""Evaluate a model on a split (SPEC §11): encode once, score with the engine, rank, report.

Every process encodes its share of the split; rank 0 scores all pairs with the bounded-memory
:class:`~tvr.evaluation.engine.SimilarityEngine` and computes the metrics of both directions.
Videos skipped by ``--skip_bad_videos`` are removed from the gallery together with their
captions, and listed in the results (``"skipped_videos"``): the numbers are then not those of
the full benchmark, and the log says so.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch

from tvr.data.datasets import RetrievalDataset
from tvr.evaluation.encode import EncodedSplit, encode_split
from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.metrics import compare_normalisers
from tvr.models.gare import GARE, TextFeatures


def split_scores(model: GARE, split: EncodedSplit, dataset: RetrievalDataset,
                 memory_budget_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(captions x videos) scores of the encoded split and each caption's video column.

    Captions of skipped videos are dropped; ``caption_to_video`` indexes the kept videos.
    """
    engine = SimilarityEngine(model.similarity, memory_budget_bytes)
    column = torch.full((len(dataset.video_ids),), -1, dtype=torch.long)
    column[split.video_index.cpu()] = torch.arange(len(split.video_index))
    caption_to_video = column[torch.as_tensor(dataset.caption_to_video)]
    kept = caption_to_video >= 0
    texts = TextFeatures(*(None if t is None else t[kept.to(t.device)] for t in split.texts))
    scores = engine.score(engine.prepare_texts(texts.sentence, texts.words, texts.mask),
                          engine.prepare_videos(split.videos.frames, split.videos.mask))
    return scores.float().cpu(), caption_to_video[kept]


def evaluate(model: GARE, dataset: RetrievalDataset, *, batch_size: int, workers: int,
             device: torch.device, is_main: bool,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             dsl_temp: Optional[float] = None,
             memory_budget_bytes: int = 512 * 2**20) -> Optional[dict[str, Any]]:
    """Metrics of ``dataset`` (on rank 0; other ranks return None after encoding their share).

    Returns ``{"raw": {"t2v": {...}, "v2t": {...}}, ...normalised variants...,
    "skipped_videos": [...]}``.
    """
    split = encode_split(model, dataset, batch_size, workers, device, autocast)
    if not is_main:
        return None
    scores, caption_to_video = split_scores(model, split, dataset, memory_budget_bytes)
    results: dict[str, Any] = compare_normalisers(scores, caption_to_video, dsl_temp=dsl_temp)
    results["skipped_videos"] = split.skipped
    return results
