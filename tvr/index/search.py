"""Search an index with sentences: two-stage by default, exhaustive on request.

    python -m tvr.index search outputs/demo_index "a red circle moves to the left" --top 10

Stage 1 ranks every video of the gallery by the cosine of the sentence embedding with the
video's stage-1 vector (the unit mean of its frames, stored at build time): an exact maximum
inner product search, by faiss (``IndexFlatIP``, multi-threaded BLAS) when faiss is installed,
else blocked matrix products in torch. Stage 2 re-scores the best ``k`` of each query with the
exact GARE score of the evaluation engine (docs/evaluation_engine.md), whose per-video work is
done for the candidates only. ``exhaustive=True`` scores every video with GARE instead. With
``k`` equal to the gallery size both give the evaluation engine's scores. Each hit carries the
time of its best-matching frame: the frame with the largest text-conditioned pooling weight
(docs/behaviour.md §6 step 1).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from tvr.evaluation.engine import SimilarityEngine, build_engine
from tvr.index.build import load_checkpoint_model
from tvr.index.store import (IndexStoreError, Manifest, file_sha256, read_shard,
                             thumbnail_dir)
from tvr.models.gare import GARE
from tvr.models.tokenizer import ClipTokenizer

Stage1 = Literal["auto", "faiss", "torch"]
_PREPARE_CHUNK = 4096  # videos prepared at once by the exhaustive search


class Hit(NamedTuple):
    """One result: the file (relative to the index's videos folder), its GARE score, the time
    (s) and position ``frame`` among the sampled frames of its best-matching frame, its row."""

    path: str
    score: float
    time: float
    frame: int
    video: int


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class Stage1Search:
    """Exact maximum inner product search over the rows of ``vectors`` (N, d)."""

    def __init__(self, vectors: Tensor, backend: Stage1 = "auto", block: int = 65536):
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend not in ("faiss", "torch"):
            raise ValueError(f"stage-1 backend must be auto, faiss or torch, got {backend!r}")
        self.backend, self.block = backend, block
        self.vectors = vectors.float().contiguous()
        if backend == "faiss":
            import faiss
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors.numpy())

    def top(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, indices), each (Q, k), best first, for unit-norm (Q, d) ``queries``."""
        k = min(k, len(self.vectors))
        if self.backend == "faiss":
            scores, indices = self._faiss.search(queries.float().contiguous().numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(indices)
        best = None
        for start in range(0, len(self.vectors), self.block):
            scores = queries.float() @ self.vectors[start:start + self.block].T
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            found = (top.values, top.indices + start)
            if best is not None:
                merged = torch.cat([best[0], found[0]], 1), torch.cat([best[1], found[1]], 1)
                order = merged[0].topk(k, dim=1).indices
                found = merged[0].gather(1, order), merged[1].gather(1, order)
            best = found
        return best


class VideoIndex:
    """An index opened for search: its features in memory and the model that made them."""

    def __init__(self, folder: Path, manifest: Manifest, model: GARE, paths: list[str],
                 frames: Tensor, mask: Tensor, coarse: Tensor, stage1: Stage1 = "auto"):
        self.folder, self.manifest, self.model = folder, manifest, model
        self.paths, self.frames, self.mask = paths, frames, mask
        self.videos_root = Path(manifest.videos_root)
        self.max_words = manifest.config["max_words"]
        self.tokenizer = ClipTokenizer()
        self.stage1 = Stage1Search(coarse, stage1)
        self._engine: Optional[SimilarityEngine] = None

    @classmethod
    def open(cls, folder: str | os.PathLike, checkpoint: Optional[str] = None,
             stage1: Stage1 = "auto") -> VideoIndex:
        """Load ``folder``; the model from the checkpoint the index records (or
        ``checkpoint``, which must be the same file by content)."""
        folder = Path(folder)
        manifest = Manifest.load(folder)
        source = checkpoint or manifest.checkpoint["path"]
        if not Path(source).is_file():
            raise IndexStoreError(f"the index's checkpoint {source} is missing; pass the same "
                                  f"file with --checkpoint")
        if file_sha256(source) != manifest.checkpoint["sha256"]:
            raise IndexStoreError(f"{source} is not the checkpoint that built index {folder} "
                                  f"(its content differs): its features would not match; "
                                  f"rebuild the index with this checkpoint")
        model = load_checkpoint_model(source)[0]
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
        return cls(folder, manifest, model, paths, torch.cat(frames), torch.cat(mask),
                   torch.cat(coarse), stage1)

    def __len__(self) -> int:
        return len(self.paths)

    def thumbnail(self, path: str, frame: int) -> Path:
        return thumbnail_dir(self.folder, path) / f"{frame}.jpg"

    @torch.no_grad()
    def encode_queries(self, queries: list[str]) -> Tensor:
        """(Q, d) sentence embeddings (not normalised) of ``queries``."""
        encoded = [self.tokenizer.encode_caption(q, self.max_words) for q in queries]
        ids = torch.from_numpy(np.stack([e[0] for e in encoded]))
        mask = torch.from_numpy(np.stack([e[1] for e in encoded]))
        return self.model.encode_text(ids, mask).sentence

    @property
    def engine(self) -> SimilarityEngine:
        """The evaluation engine, self-checked on the first videos (built on first use)."""
        if self._engine is None:
            sample = self.encode_queries(["a video", "someone is talking"])
            self._engine = build_engine(self.model.similarity, "auto", text=sample,
                                        frames=self.frames[:8], mask=self.mask[:8])
        return self._engine

    @torch.no_grad()
    def scores(self, text: Tensor, videos: Tensor) -> Tensor:
        """GARE scores (Q, V) of sentence embeddings against the index rows ``videos``."""
        engine = self.engine
        prepared_text = engine.prepare_texts(text)
        out = []
        for start in range(0, len(videos), _PREPARE_CHUNK):
            rows = videos[start:start + _PREPARE_CHUNK]
            prepared = engine.prepare_videos(self.frames[rows], self.mask[rows])
            out.append(engine.score(prepared_text, prepared))
        return torch.cat(out, dim=1).float()

    @torch.no_grad()
    def candidates(self, text: Tensor, k: int, exhaustive: bool = False) -> Tensor:
        """(Q, K) rows to score with GARE for sentence embeddings ``text``: the stage-1 top
        ``k`` of each, best first, or every row (``exhaustive``)."""
        if exhaustive:
            return torch.arange(len(self)).expand(len(text), -1)
        unit = text / text.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.stage1.top(unit, k)[1]

    @torch.no_grad()
    def rescore(self, text: Tensor, candidates: Tensor, top: int) -> tuple[Tensor, Tensor]:
        """GARE on ``candidates`` (Q, K), each distinct video prepared once: the ``top`` rows
        of each sentence, best first (ties in candidate order), and all (Q, K) scores."""
        union, local = torch.unique(candidates, sorted=True, return_inverse=True)
        fine = self.scores(text, union).gather(1, local)
        order = torch.sort(fine, dim=1, descending=True, stable=True).indices[:, :top]
        return candidates.gather(1, order), fine

    @torch.no_grad()
    def search(self, queries: list[str], top: int = 10, k: int = 100,
               exhaustive: bool = False) -> list[list[Hit]]:
        """The ``top`` videos of each query, best first (ties: in stage-1 order, which is row
        order when every video is scored)."""
        text = self.encode_queries(queries)
        candidates = self.candidates(text, k, exhaustive)
        rows, fine = self.rescore(text, candidates, top)
        results = []
        for q, best in enumerate(rows):
            score = dict(zip(candidates[q].tolist(), fine[q].tolist()))
            frames = self.best_frames(text[q], best)
            results.append([self._hit(int(row), score[int(row)], int(frame))
                            for row, frame in zip(best, frames)])
        return results

    def best_frames(self, text: Tensor, rows: Tensor) -> Tensor:
        """Per video row, the sampled frame with the largest pooling weight for ``text``."""
        temp = self.model.similarity.config.temp
        frames = self.frames[rows].float()  # float16 galleries (bench_index) too
        weights = torch.softmax(frames @ text.float() / temp, dim=1) * self.mask[rows]
        return weights.argmax(dim=1)

    def _hit(self, row: int, score: float, frame: int) -> Hit:
        path = self.paths[row]
        return Hit(path, score, self.manifest.entries[path].times[frame], frame, row)
