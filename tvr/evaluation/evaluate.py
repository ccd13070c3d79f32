"""Evaluate a model on a split (docs/behaviour.md §11): encode once, score with the engine, rank,
report.

Every process encodes its share of the split; rank 0 scores all pairs with the bounded-memory
:class:`~tvr.evaluation.engine.SimilarityEngine` and computes the metrics of both directions.
The engine is self-checked on the first few texts and videos before it scores (see
:func:`~tvr.evaluation.engine.build_engine`); the results name the path that scored
(``"engine"``). Videos skipped by ``--skip_bad_videos`` are removed from the gallery together
with their captions, and listed in the results (``"skipped_videos"``): the numbers are then not
those of the full benchmark, and the log says so. The results also keep the per-query ranks
behind every variant's metrics (``"ranks"``), which the JSON file carries and the table does
not. :data:`INFO_KEYS` are the entries that are not metric variants: :func:`metric_variants`
leaves them out for tables and JSON files.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from tvr.data.datasets import RetrievalDataset
from tvr.evaluation.calibration import calibrate, nonsense_scores
from tvr.evaluation.config import ENGINE_MODES, EngineMode
from tvr.evaluation.encode import EncodedSplit, encode_split
from tvr.evaluation.engine import Prepared, SimilarityEngine, build_engine
from tvr.evaluation.metrics import (format_table, normaliser_ranks, rank_lists, save_json,
                                    summarize_variants)
from tvr.models.gare import GARE, TextFeatures

INFO_KEYS = ("engine", "skipped_videos", "calibration", "ranks")


def metric_variants(results: dict[str, Any]) -> dict[str, Any]:
    """The metric variants of :func:`evaluate`'s results ("raw", "DSL", ...), without
    :data:`INFO_KEYS`: what :func:`~tvr.evaluation.metrics.format_table` and
    :func:`~tvr.evaluation.metrics.save_json` take."""
    return {k: v for k, v in results.items() if k not in INFO_KEYS}


def result_files(results: dict[str, Any], run_info: Optional[dict[str, Any]] = None
                 ) -> tuple[dict[str, Any], str]:
    """What a run writes of :func:`evaluate`'s results: the JSON object (the metric variants,
    the per-query ``ranks`` of each, ``skipped_videos``: their count and files, and the entries
    of ``run_info``, facts about the run that made the results, such as the trainer's
    ``"noisy_pairs"``) and the markdown (the table, then a line naming the skipped videos, so a
    score on a shrunken gallery never passes for a full one)."""
    skipped, variants = list(results.get("skipped_videos", [])), metric_variants(results)
    record = {**variants, "ranks": results["ranks"],
              "skipped_videos": {"count": len(skipped), "videos": skipped}, **(run_info or {})}
    note = (f"\n{len(skipped)} unreadable video(s) left out of the gallery (not the full "
            f"benchmark): {', '.join(skipped)}\n" if skipped else "")
    return record, format_table(variants) + note


def write_results(results: dict[str, Any], folder: Path, name: str,
                  run_info: Optional[dict[str, Any]] = None) -> None:
    """:func:`result_files` of ``results`` (and ``run_info``) as ``metrics_<name>.json`` and
    ``.md`` in ``folder``."""
    record, table = result_files(results, run_info)
    save_json(record, folder / f"metrics_{name}.json")
    (folder / f"metrics_{name}.md").write_text(table)


def split_scores(engine: SimilarityEngine, split: EncodedSplit, dataset: RetrievalDataset
                 ) -> tuple[Prepared, Prepared, torch.Tensor, torch.Tensor]:
    """Prepared texts and videos of the encoded split, their (captions x videos) scores and each
    caption's video column. Captions of skipped videos are dropped; ``caption_to_video``
    indexes the kept videos."""
    column = torch.full((len(dataset.video_ids),), -1, dtype=torch.long)
    column[split.video_index.cpu()] = torch.arange(len(split.video_index))
    caption_to_video = column[torch.as_tensor(dataset.caption_to_video)]
    kept = caption_to_video >= 0
    texts = TextFeatures(*(None if t is None else t[kept.to(t.device)] for t in split.texts))
    texts = engine.prepare_texts(texts.sentence, texts.words, texts.mask)
    videos = engine.prepare_videos(split.videos.frames, split.videos.mask)
    return texts, videos, engine.score(texts, videos).float().cpu(), caption_to_video[kept]


def bank_scores(scorer: SimilarityEngine, bank: EncodedSplit, texts: Prepared,
                videos: Prepared) -> dict[str, Tensor]:
    """The scores of the bank's captions with the split's videos (``bank_t2v``) and of the
    bank's videos with the split's captions (``bank_v2t``, videos first), for QB-Norm and
    NCL."""
    bank_texts = scorer.prepare_texts(*bank.texts)
    bank_videos = scorer.prepare_videos(*bank.videos)
    return {"bank_t2v": scorer.score(bank_texts, videos).float().cpu(),
            "bank_v2t": scorer.score(texts, bank_videos).float().cpu().T}


def evaluate(model: GARE, dataset: RetrievalDataset, *, batch_size: int, workers: int,
             device: torch.device, is_main: bool,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             dsl_temp: Optional[float] = None, bank: Optional[RetrievalDataset] = None,
             bank_size: int = 0, qb_beta: float = 20.0, qb_k: int = 1,
             ncl_tau: Optional[float] = None,
             memory_budget_bytes: int = 512 * 2**20, engine: EngineMode = "auto",
             log: Optional[Callable[[str], None]] = None,
             encode: Callable[..., EncodedSplit] = encode_split) -> Optional[dict[str, Any]]:
    """Metrics of ``dataset`` (on rank 0; other ranks return None after encoding their share).

    Raw scores always; DSL with ``dsl_temp``; QB-Norm and NCL's test-time normalisation when a
    ``bank`` split (the training set) and ``bank_size`` are given: ``bank_size`` training
    captions and videos are encoded and scored against the test gallery and the test captions,
    and stand in for the test queries (NCL's ``ncl_tau`` defaults to 1/exp(logit_scale)).

    ``engine`` ("auto", "folded" or "naive", as :func:`~tvr.evaluation.engine.build_engine`)
    chooses the scoring path; it is self-checked on the first texts and videos of the split,
    and a fallback to the naive path is reported to ``log`` (or warned).

    ``encode``: how a split becomes features, with :func:`encode_split`'s signature (feature
    mode passes one that reads cached CLIP outputs, tvr/training/feature_mode.py).

    Returns ``{"raw": {"t2v": {...}, "v2t": {...}}, ...normalised variants...,
    "ranks": {"raw": {"t2v": [1-based rank of each caption's video, in the split's caption
    order], "v2t": [each video's rank, as in tvr/evaluation/metrics.py]}, ...same variants...},
    "engine": {"method": "folded" or "naive", "reason": why naive (only then)},
    "calibration": the split's "no good match" threshold (tvr/evaluation/calibration.py),
    "skipped_videos": [...]}``; :func:`metric_variants` keeps the variants only.
    """
    if engine not in ENGINE_MODES:  # before the encoding, which takes a while
        raise ValueError(f"engine must be one of {ENGINE_MODES}, got {engine!r}")
    split = encode(model, dataset, batch_size, workers, device, autocast)
    bank_split = None
    if bank is not None and bank_size > 0:
        bank_split = encode(model, bank, batch_size, workers, device, autocast, bank_size)
    if not is_main:
        return None
    scorer = build_engine(model.similarity, engine, text=split.texts.sentence,
                          frames=split.videos.frames, mask=split.videos.mask,
                          memory_budget_bytes=memory_budget_bytes, log=log)
    texts, videos, scores, caption_to_video = split_scores(scorer, split, dataset)
    banks = {}
    if bank_split is not None:
        banks = dict(bank_scores(scorer, bank_split, texts, videos), qb_beta=qb_beta, qb_k=qb_k,
                     ncl_tau=ncl_tau if ncl_tau is not None
                     else float(torch.exp(-model.clip.logit_scale.detach())))
    ranks = normaliser_ranks(scores, caption_to_video, dsl_temp=dsl_temp, **banks)
    results: dict[str, Any] = summarize_variants(ranks)
    results["ranks"] = rank_lists(ranks)
    results["calibration"] = calibrate(
        scores.gather(1, caption_to_video.view(-1, 1)),
        nonsense_scores(model, scorer, videos, dataset.max_words, autocast))
    results["engine"] = {"method": scorer.method}
    if scorer.fallback_reason is not None:
        results["engine"]["reason"] = scorer.fallback_reason
    results["skipped_videos"] = split.skipped
    return results
