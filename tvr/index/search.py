"""Search an index with sentences: two-stage by default, exhaustive on request.

    python -m tvr.index search outputs/demo_index "a red circle moves to the left" --top 10

An index opened for search holds its videos as a :class:`~tvr.evaluation.retrieval.Gallery`
(frames, mask and the stage-1 vectors stored at build time), which does both stages: stage 1 ranks
every video by the cosine of the sentence embedding with the video's stage-1 vector, stage 2
re-scores the best ``k`` of each query with the exact GARE score of the evaluation engine
(docs/evaluation_engine.md §6). ``exhaustive=True`` scores every video with GARE instead. With
``k`` equal to the gallery size both give the evaluation engine's scores. This module adds what
is about the index: its folder, the model that built it, the paths, and the hits: each carries
the time of its best-matching frame, the frame with the largest text-conditioned pooling weight
(docs/behaviour.md §6 step 1).
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
from tvr.index.store import (MANIFEST, IndexStoreError, Manifest, file_sha256, read_shard,
                             thumbnail_dir)
from tvr.models.gare import GARE
from tvr.models.tokenizer import ClipTokenizer


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
    """An index opened for search: its features in memory (``gallery``) and the model that
    made them. ``threshold``: the score below which a search answers "no good match" (by
    default the checkpoint's calibration; None: never); ``known_tokens``: the token ids of
    the model's training captions, when its text tower was trained from scratch."""

    def __init__(self, folder: Path, manifest: Manifest, model: GARE, paths: list[str],
                 frames: Tensor, mask: Tensor, coarse: Tensor, stage1: Stage1 = "auto",
                 threshold: Optional[float] = None,
                 known_tokens: Optional[Sequence[int]] = None):
        self.folder, self.manifest, self.model, self.paths = folder, manifest, model, paths
        self.threshold, self.known_tokens = threshold, known_tokens
        self.videos_root = Path(manifest.videos_root)
        self.max_words = manifest.config["max_words"]
        self.tokenizer = ClipTokenizer()
        self.gallery = Gallery(frames, mask, coarse, stage1)
        self._engine: Optional[SimilarityEngine] = None
        self._engine_lock = threading.Lock()  # searches in threads build it once

    @classmethod
    def open(cls, folder: str | os.PathLike, checkpoint: Optional[str] = None,
             stage1: Stage1 = "auto", device: str = "cpu", threshold: Optional[float] = None
             ) -> VideoIndex:
        """Load ``folder``; the model from the checkpoint the index records (or
        ``checkpoint``, which must be the same file by content), on ``device`` with the
        videos' GARE features (stage 1 stays on the CPU). A relative ``folder`` is
        resolved against the working directory now: the index's paths are absolute. The
        "no good match" ``threshold`` is the checkpoint's calibration unless given."""
        folder = Path(os.path.abspath(folder))
        if not (folder / MANIFEST).is_file():
            raise IndexStoreError(f"{folder} is not an index (no {MANIFEST}); make one with "
                                  f"python -m tvr.index build --out {folder}")
        manifest = Manifest.load(folder)
        source = checkpoint or manifest.checkpoint["path"]
        if not Path(source).is_file():
            raise IndexStoreError(f"the index's checkpoint {source} is missing; pass the same "
                                  f"file with --checkpoint")
        if file_sha256(source) != manifest.checkpoint["sha256"]:
            raise IndexStoreError(f"{source} is not the checkpoint that built index {folder} "
                                  f"(its content differs): its features would not match; "
                                  f"rebuild the index with this checkpoint")
        model, info = load_checkpoint_model(source, device)
        calibration = info.get("calibration") or {}
        if threshold is None:
            threshold = calibration.get("threshold")
        paths, frames, mask, coarse = [], [], [], []
        for shard, rows in sorted(manifest.live_rows().items()):
            parts = read_shard(folder, shard)
            index = torch.tensor([row for _, row in rows])
            paths += [path for path, _ in rows]
            frames.append(parts["frames"][index])
            mask.append(parts["mask"][index])
            coarse.append(parts["coarse"][index])
        if not paths:
            raise IndexStoreError(f"index {folder} holds no video")
        return cls(folder, manifest, model, paths, torch.cat(frames).to(device),
                   torch.cat(mask).to(device), torch.cat(coarse), stage1, threshold,
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
    def engine(self) -> SimilarityEngine:
        """The evaluation engine, self-checked on the first videos (built on first use, once
        even when threads search at once)."""
        with self._engine_lock:
            if self._engine is None:
                sample = self.encode_queries(["a video", "someone is talking"])
                self._engine = build_engine(self.model.similarity, "auto", text=sample,
                                            frames=self.gallery.frames[:8],
                                            mask=self.gallery.mask[:8])
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
        """Per video row, the sampled frame with the largest pooling weight for ``text``."""
        temp = self.model.similarity.config.temp
        frames = self.gallery.frames[rows].float()  # float16 galleries (bench_index) too
        weights = torch.softmax(frames @ text.float() / temp, dim=1) * self.gallery.mask[rows]
        return weights.argmax(dim=1)

    def _hit(self, row: int, score: float, frame: int) -> Hit:
        path = self.paths[row]
        return Hit(path, score, self.manifest.entries[path].times[frame], frame, row)
