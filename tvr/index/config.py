"""The settings of the index's commands (``python -m tvr.index build|search|serve``).

Each field declares its flag once (tvr/settings.py): tvr/cli/index.py generates the commands'
flags, help and range checks from these declarations, and each configuration checks the same
bounds when it is built, so the functions that take one (:func:`tvr.index.build.build_index`,
:func:`tvr.index.server.serve`) never see a value the command line would refuse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, get_args

from tvr.evaluation.config import Stage1
from tvr.settings import (REQUIRED, Bounds, SettingError, check_settings, integer,
                          setting)

DEVICES = ("cpu", "cuda")
# Stage-1 candidates per sentence: a search's default --k, and the k of the recall a build
# reports (bench/RESULTS.md §4: what it keeps of the exhaustive GARE top-10)
DEFAULT_K = 2000


@dataclass(frozen=True)
class BuildConfig:
    """What ``build`` indexes, with what, where, and how."""

    videos: str = setting(REQUIRED, "folder of videos (searched recursively)", kind=str)
    out: str = setting(REQUIRED, "the index folder", kind=str)
    checkpoint: Optional[str] = setting(None, "a ckpt_best.pt of this project (or --clip_path)",
                                        kind=str)
    clip_path: Optional[str] = setting(None, "a CLIP release file (e.g. ViT-B-32.pt): index with "
                                             "plain CLIP, zero-shot (or --checkpoint)", kind=str)
    workers: int = setting(2, "decoding processes (0: decode in this process)",
                           integer(0, 256))
    batch_size: int = setting(16, "videos encoded at once", integer(1, 1024))
    shard_size: int = setting(256, "videos per shard file (an interrupted build keeps whole "
                                   "shards)", integer(1))
    rebuild: bool = setting(False, "delete the index and start over")
    device: str = setting("cpu", "where the model encodes", choices=DEVICES)
    wait: bool = setting(False, "if another build is writing --out, wait for it (else stop)")
    stage1_frames: Optional[int] = setting(
        None, "frames of each video kept as stage-1 vectors beside its mean frame, the frames "
              "least like it first (default: 1 for a GARE checkpoint, 0 zero-shot, whose score "
              "is the mean's cosine); a change rewrites the stage-1 vectors of an index",
        Bounds(0, 64, integer=True, optional=True), kind=int)
    stage1_exact_max: int = setting(
        200_000, "largest gallery searched exactly in stage 1; above it the build trains a "
                 "faiss IVF index (when faiss is installed)", integer(0))

    def __post_init__(self) -> None:
        check_settings(self)
        if (self.checkpoint is None) == (self.clip_path is None):
            raise SettingError("checkpoint", "give --checkpoint (a GARE model of this "
                               "project) or --clip_path (plain CLIP, zero-shot): "
                               + ("not both" if self.checkpoint else "one is required"))


def _min_score() -> Any:
    """The "no good match" threshold of search and serve (tvr/evaluation/calibration.py)."""
    return setting(None, "say 'no good match' when the best video scores below this "
                         "(default: the threshold its checkpoint learned on its validation "
                         "split)", Bounds(optional=True), kind=float)


@dataclass(frozen=True)
class SearchConfig:
    """How ``search`` ranks the indexed videos for each sentence."""

    top: int = setting(10, "results per sentence", integer(1))
    k: int = setting(DEFAULT_K, "stage-1 candidates re-scored with GARE per sentence",
                     integer(1))
    exhaustive: bool = setting(False, "score every video with GARE (no stage 1)")
    stage1: str = setting("auto", "stage-1 search: faiss when installed (auto), or torch "
                                  "matmuls", choices=get_args(Stage1))
    checkpoint: Optional[str] = setting(None, "the checkpoint, if it moved since the build",
                                        kind=str)
    device: str = setting("cpu", "where the model encodes the sentences and scores the videos",
                          choices=DEVICES)
    min_score: Optional[float] = _min_score()

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class ServeConfig:
    """Where ``serve`` listens, with how many threads, and how many results its page shows."""

    host: str = setting("127.0.0.1", "the address to listen on (127.0.0.1: this machine "
                                     "only; nothing authenticates)")
    port: int = setting(8765, "the TCP port to listen on", integer(1, 65535))
    top: int = setting(12, "results per search", integer(1, 1000))
    threads: int = setting(8, "requests answered at once (waitress threads): those not "
                              "searching serve thumbnails and videos, which a browser fetches "
                              "6 at a time", integer(1, 256))
    searches: int = setting(2, "searches run at once, the others wait: each also uses torch's "
                               "threads on every core; on 2 CPUs, 2 at once answered more "
                               "searches per second than 1 (bench/RESULTS.md §9)",
                            integer(1, 256))
    device: str = setting("cpu", "where the model encodes the queries and scores the videos",
                          choices=DEVICES)
    min_score: Optional[float] = _min_score()

    def __post_init__(self) -> None:
        check_settings(self)
