"""The on-disk layout of a video index, and its bookkeeping for incremental builds.

An index is a folder::

    manifest.json        what the index holds (:class:`Manifest`), rewritten atomically
    shards/00000.pt ...  encoded videos, ``shard_size`` at most per file (:func:`write_shard`)
    thumbs/<key>/<k>.jpg one small JPEG per sampled frame of each video (for the web page)

A shard holds, for its n videos, ``frames`` (n, F, d) float32 (frame features after the
temporal module: what the GARE similarity reads), ``mask`` (n, F) int64 and ``coarse`` (n, d)
(the stage-1 vectors, :func:`~tvr.evaluation.engine.coarse_vectors`). The manifest maps each
video file (path relative to the videos folder) to its shard and row, with what the file was
(:class:`VideoFile`: size, modification time, real path, whether a symbolic link led there; a
changed file is encoded again, and the web page serves a file only while all four still hold),
its duration and the time of each sampled frame. Files that could not be read are listed in
``failed`` with the reason; they are tried again only when they change. A build writes a shard, then the manifest that points into it, so
an interrupted build keeps every shard the manifest names and a rerun encodes the rest.
Deleted and changed files leave unreferenced rows in their shards; ``--rebuild`` starts over.

One build writes an index at a time (it holds the folder's :func:`tvr.storage.writer_lock`).
Searches take no lock: the manifest is replaced atomically and a build writes its shards under
new numbers before the manifest that names them, never over a shard a manifest names, so a
search opening the index during a build reads the old index or the new one, both whole. Not
during ``--rebuild``, which deletes the folder first.

An index of an older format (version 1 recorded no real paths) is refused with that advice.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from tvr.storage import atomic_save, atomic_write_json, read_manifest

FORMAT_VERSION = 2  # 2: each file's real path and whether a link led there
MANIFEST = "manifest.json"
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".3gp", ".ogv", ".ts"})


class IndexStoreError(ValueError):
    """An index folder that cannot be used as asked (other checkpoint, sampling, format)."""


@dataclass
class VideoFile:
    """A video file as a build found it: size, modification time, real path (every symbolic
    link resolved) and whether resolving its path below the videos folder followed a link."""

    size: int
    mtime_ns: int
    real_path: str
    followed_link: bool

    def same_file(self, other: VideoFile) -> bool:
        return (self.size, self.mtime_ns, self.real_path, self.followed_link) == \
            (other.size, other.mtime_ns, other.real_path, other.followed_link)


@dataclass
class Entry(VideoFile):
    """One encoded video: what the file was when encoded, and where its features are."""

    shard: int
    row: int
    duration: float
    times: list[float]  # seconds of the sampled frames, in order


@dataclass
class Failure(VideoFile):
    """A file that could not be read, with the reader's reason."""

    reason: str


@dataclass
class Manifest:
    videos_root: str
    checkpoint: dict[str, Any]   # {"path", "sha256", "code_version"} of the encoding model
    config: dict[str, Any]       # the checkpoint's model record (checkpoint.model_record)
    sampling: dict[str, Any]     # {"video_framerate", "max_frames", "video_backend"}
    entries: dict[str, Entry] = field(default_factory=dict)
    failed: dict[str, Failure] = field(default_factory=dict)
    next_shard: int = 0

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Manifest:
        data = read_manifest(Path(folder) / MANIFEST, "format_version", FORMAT_VERSION,
                             IndexStoreError, "rebuild the index with --rebuild")
        return cls(data["videos_root"], data["checkpoint"], data["config"], data["sampling"],
                   {k: Entry(**v) for k, v in data["entries"].items()},
                   {k: Failure(**v) for k, v in data["failed"].items()}, data["next_shard"])

    def save(self, folder: str | os.PathLike) -> None:
        atomic_write_json(Path(folder) / MANIFEST,
                          {"format_version": FORMAT_VERSION, **asdict(self)}, pretty=True)

    def live_rows(self) -> dict[int, list[tuple[str, int]]]:
        """Shard -> [(path, row)] of the videos the manifest lists, paths sorted."""
        rows: dict[int, list[tuple[str, int]]] = {}
        for path in sorted(self.entries):
            entry = self.entries[path]
            rows.setdefault(entry.shard, []).append((path, entry.row))
        return rows


def shard_path(folder: str | os.PathLike, shard: int) -> Path:
    return Path(folder) / "shards" / f"{shard:05d}.pt"


def write_shard(folder: str | os.PathLike, shard: int, frames: Tensor, mask: Tensor,
                coarse: Tensor) -> None:
    atomic_save({"frames": frames.float().contiguous(), "mask": mask.long().contiguous(),
                 "coarse": coarse.float().contiguous()}, shard_path(folder, shard))


def read_shard(folder: str | os.PathLike, shard: int) -> dict[str, Tensor]:
    path = shard_path(folder, shard)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch.load fails in many ways on a damaged file
        first = str(error).split(". ")[0]  # torch's messages go on with general advice
        raise IndexStoreError(f"{path}: a shard of the index that cannot be read "
                              f"({type(error).__name__}: {first}); rebuild the index with "
                              f"--rebuild") from error


def thumbnail_dir(folder: str | os.PathLike, path: str) -> Path:
    """The folder of a video's frame thumbnails (``<k>.jpg``), keyed by a hash of its path."""
    return Path(folder) / "thumbs" / hashlib.sha1(path.encode()).hexdigest()[:16]


def walk_videos(root: str | os.PathLike) -> Iterator[tuple[str, VideoFile]]:
    """(path relative to ``root`` in POSIX form, :class:`VideoFile`) of every video file below
    ``root``, recursively, by extension (:data:`VIDEO_EXTENSIONS`), in sorted order. A link
    that leads nowhere has the size and time of the link itself (the build lists it as
    unreadable)."""
    root = Path(root).resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                full = Path(dirpath) / name
                real = os.path.realpath(full)
                try:
                    stat = os.stat(real)
                except OSError:  # a dangling or looping symbolic link
                    stat = full.lstat()
                yield full.relative_to(root).as_posix(), VideoFile(
                    stat.st_size, stat.st_mtime_ns, real, real != str(full))


def file_sha256(path: str | os.PathLike, chunk: int = 2**22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
