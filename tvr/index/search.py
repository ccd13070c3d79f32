"""Search an index with sentences: two-stage by default, exhaustive on request.

    python -m tvr.index search outputs/demo_index "a red circle moves to the left" --top 10

An index opened for search holds its videos as a :class:`~tvr.evaluation.retrieval.Gallery`
over its memory-mapped shards (tvr/index/store.py), which does both stages: stage 1 ranks every
video by the cosine of the sentence embedding with the video's stage-1 vector (exact, or the
IVF index the build trained), stage 2 re-scores the best ``k`` of each query with the exact GARE
score of the evaluation engine, from the per-video state stored at build time
(docs/evaluation_engine.md §6; a zero-shot index: the cosine of tvr/index/zero_shot.py).
``exhaustive=True`` scores every video with GARE instead. With ``k`` equal to the gallery size
both give the evaluation engine's scores. This module adds what is about the index: its folder,
the model that built it, the paths, and the hits: each carries the time of its best-matching
frame, the frame with the largest text-conditioned pooling weight (docs/behaviour.md §6 step 1).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from tvr.evaluation.calibration import mostly_unknown, unknown_words
from tvr.evaluation.config import Stage1
from tvr.evaluation.encode import encode_sentences
from tvr.evaluation.engine import SimilarityEngine, build_engine
from tvr.evaluation.retrieval import Gallery
from tvr.index.build import load_checkpoint_model
from tvr.index.store import (MANIFEST, IndexStoreError, Manifest, open_gallery,
                             stored_parts, thumbnail_dir)
from tvr.index.table import VideoTable
from tvr.index.zero_shot import ZERO_SHOT, MeanCosine, ZeroShotCLIP, describe, load_zero_shot
from tvr.models.gare import GARE
from tvr.models.tokenizer import ClipTokenizer
from tvr.storage import file_sha256


class Hit(NamedTuple):
    """One result: the file (relative to the index's videos folder), its GARE score, the time
    (s) and position ``frame`` among the sampled frames of its best-matching frame, its row."""

    path: str
    score: float
    time: float
    frame: int
    video: int


class Answer(NamedTuple):
    """One sentence's answer: its hits, best first; ``good``: False when the best scores
    below the index's threshold or most of the sentence's words are ``unknown`` to the model
    ("no good match", tvr/evaluation/calibration.py, with the ``reason``), None when there is
    no threshold; ``unknown``: its words that the model never saw in training (known only for
    a text tower trained from scratch)."""

    hits: list[Hit]
    good: Optional[bool]
    unknown: tuple[str, ...] = ()
    reason: str = ""


class VideoIndex:
    """An index opened for search: its memory-mapped videos (``gallery``) and the model that
    made them. ``threshold``: the score below which a search answers "no good match" (by
    default the checkpoint's calibration, or a zero-shot index's own; None: never);
    ``known_tokens``: the token ids of the model's training captions, when its text tower was
    trained from scratch."""

    def __init__(self, folder: Path, manifest: Manifest, model: GARE | ZeroShotCLIP,
                 gallery: Gallery,
                 threshold: Optional[float] = None,
                 known_tokens: Optional[Sequence[int]] = None):
        self.folder, self.manifest, self.model, self.gallery = folder, manifest, model, gallery
        self.table: VideoTable = gallery.videos.table  # the videos, memory-mapped
        self.paths: Sequence[str] = self.table.paths  # decoded one at a time
        self.threshold, self.known_tokens = threshold, known_tokens
        self.videos_root = Path(manifest.videos_root)
        self.max_words = manifest.config["max_words"]
        self.tokenizer = ClipTokenizer()
        self._engine: Optional[SimilarityEngine] = None
        self._engine_lock = threading.Lock()  # searches in threads build it once

    @classmethod
    def open(cls, folder: str | os.PathLike, checkpoint: Optional[str] = None,
             stage1: Stage1 = "auto", device: str = "cpu", threshold: Optional[float] = None
             ) -> VideoIndex:
        """Open ``folder``: its table of videos, shards and stage-1 index memory-mapped
        (:func:`open_gallery`), the model from the checkpoint the index records (or
        ``checkpoint``, which must be the same file by content; a zero-shot index: the CLIP
        file it records, tvr/index/zero_shot.py) on ``device``, where the candidates read from
        the shards are scored (stage 1 stays on the CPU). A relative ``folder`` is resolved
        against the working directory now: the index's paths are absolute. The
        "no good match" ``threshold`` is the checkpoint's (or zero-shot index's) calibration
        unless given."""
        folder = Path(os.path.abspath(folder))
        if not (folder / MANIFEST).is_file():
            raise IndexStoreError(f"{folder} is not an index (no {MANIFEST}); make one with "
                                  f"python -m tvr.index build --out {folder}")
        manifest = Manifest.load(folder)
        zero_shot = manifest.checkpoint.get("kind") == ZERO_SHOT
        if zero_shot and checkpoint:
            raise IndexStoreError(f"index {folder} was built zero-shot by CLIP "
                                  f"{manifest.checkpoint['path']}, not by a checkpoint: search "
                                  f"it without --checkpoint")
        source = checkpoint or manifest.checkpoint["path"]
        what = "CLIP file" if zero_shot else "checkpoint"
        if not Path(source).is_file():
            raise IndexStoreError(f"the index's {what} {source} is missing; " + (
                "put it back, or rebuild the index with --clip_path" if zero_shot else
                "pass the same file with --checkpoint"))
        if file_sha256(source) != manifest.checkpoint["sha256"]:
            raise IndexStoreError(f"{source} is not the {what} that built index {folder} "
                                  f"(its content differs): its features would not match; "
                                  f"rebuild the index with this {what}")
        if zero_shot:
            model = load_zero_shot(source, device)[0]
            calibration = manifest.config["calibration"] or {}
        else:
            model, info = load_checkpoint_model(source, device)
            calibration = info.get("calibration") or {}
        if threshold is None:
            threshold = calibration.get("threshold")
        if not len(manifest.videos()):
            raise IndexStoreError(f"index {folder} holds no video")
        return cls(folder, manifest, model, open_gallery(folder, manifest, stage1), threshold,
                   calibration.get("known_tokens"))

    def __len__(self) -> int:
        return len(self.paths)

    def thumbnail(self, path: str, frame: int) -> Path:
        return thumbnail_dir(self.folder, path) / f"{frame}.jpg"

    @torch.no_grad()
    def encode_queries(self, queries: list[str]) -> Tensor:
        """(Q, d) sentence embeddings (not normalised) of ``queries``."""
        return encode_sentences(self.model, queries, self.max_words, self.tokenizer).sentence

    @property
    def scorer(self) -> str:
        """What scores this index's videos, in words (search and the page show it)."""
        if isinstance(self.model, ZeroShotCLIP):
            return describe(self.manifest.config)
        return f"GARE checkpoint {self.manifest.checkpoint['path']}"

    @property
    def engine(self) -> SimilarityEngine | MeanCosine:
        """The evaluation engine, self-checked on the first videos (built on first use); the
        cosine of the mean frame for a zero-shot index. Built once even when threads search
        at once. Stored state lacking a part this engine reads (written by another version of
        the code) is an :class:`IndexStoreError` that says to run the build again."""
        if isinstance(self.model, ZeroShotCLIP):
            return MeanCosine()
        with self._engine_lock:  # searches in threads build it once
            if self._engine is None:
                sample = self.encode_queries(["a video", "someone is talking"])
                first = self.gallery.videos.parts(torch.arange(min(8, len(self))))
                frames, mask = first["frames"].float(), first["mask"]
                engine = build_engine(self.model.similarity, "auto", text=sample,
                                      frames=frames, mask=mask)
                lacking = set(stored_parts(engine, frames, mask)) - set(first)
                if lacking:
                    raise IndexStoreError(
                        f"index {self.folder} stores per-video state of another kind than this "
                        f"code reads (no {', '.join(sorted(lacking))}); run the build command "
                        f"that made it again to write it anew (no video is encoded again)")
                self._engine = engine
        return self._engine

    @torch.no_grad()
    def search(self, queries: list[str], top: int = 10, k: int = 100,
               exhaustive: bool = False) -> list[Answer]:
        """The ``top`` videos of each query, best first (ties: in stage-1 order, which is row
        order when every video is scored), and whether the best is a good match."""
        text = self.encode_queries(queries)
        found = self.gallery.search(self.engine, text, top, k, exhaustive)
        answers = []
        for q, best in enumerate(found.best):
            score = dict(zip(found.candidates[q].tolist(), found.scores[q].tolist()))
            frames = self.best_frames(text[q], best)
            hits = [self._hit(int(row), score[int(row)], int(frame))
                    for row, frame in zip(best, frames)]
            answers.append(self._answer(queries[q], hits))
        return answers

    def _answer(self, query: str, hits: list[Hit]) -> Answer:
        unknown = ([] if self.known_tokens is None
                   else unknown_words(query, self.known_tokens, self.tokenizer))
        if mostly_unknown(query, unknown):
            return Answer(hits, False, tuple(unknown),
                          "most of its words were never seen in training")
        if self.threshold is None:
            return Answer(hits, None, tuple(unknown))
        if hits[0].score < self.threshold:
            return Answer(hits, False, tuple(unknown),
                          f"the best score is below {self.threshold:.4f}, the threshold")
        return Answer(hits, True, tuple(unknown))

    def best_frames(self, text: Tensor, rows: Tensor) -> Tensor:
        """Per video row, the real sampled frame with the largest inner product with ``text``:
        the largest GARE pooling weight (a softmax of these products), the frame closest to
        the sentence for a zero-shot index (unit frames)."""
        parts = self.gallery.videos.parts(rows.cpu())
        products = parts["frames"].float() @ text.float().cpu()
        return products.masked_fill(parts["mask"] == 0, float("-inf")).argmax(dim=1)

    def _hit(self, row: int, score: float, frame: int) -> Hit:
        return Hit(self.paths[row], score, self.table.times(row)[frame], frame, row)
