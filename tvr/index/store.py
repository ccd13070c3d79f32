"""The on-disk layout of a video index, and its bookkeeping for incremental builds.

An index is a folder::

    manifest.json               what the index holds (:class:`Manifest`), rewritten atomically
    shards/00000.npy ...        one record per video, ``shard_size`` videos at most per shard
    shards/00000.coarse.npy     the shard's stage-1 vectors (n, d) float16
    stage1/00003.faiss, .ids.npy  the stage-1 IVF index above ``stage1_exact_max`` videos
    thumbs/<key>/<k>.jpg        one small JPEG per sampled frame of each video (the web page)

A shard's records (a numpy structured array, read with ``np.load(mmap_mode="c",
allow_pickle=False)``: no file of an index runs code) hold, per video, the frame features after
the temporal module rounded to float16 (``frames`` (F, d): what GARE reads), the mask (uint8)
and, in float32, the rest of the compact state the evaluation engine computes from the rounded
frames once at build time (``SimilarityEngine.prepare_videos``: each frame's
LN1 mean and inverse deviation, the small per-video matrices of docs/evaluation_engine.md §2).
A zero-shot index (tvr/index/zero_shot.py) keeps the same files: its records are the unit CLIP
frame embeddings and the mask, its stage-1 vectors their unit mean, which its scorer scores.
A search maps the shards and reads the records of its candidates only. float16 frames move
scores by at most 3e-5 on a trained-like model (tests/test_stored_state.py); the small matrices
stay float32 (their entries reach thousands, where float16 keeps three digits).

The manifest maps each video file (path relative to the videos folder) to its shard and row,
with what the file was (:class:`VideoFile`: size, modification time, real path, whether a
symbolic link led there; a changed file is encoded again, and the web page serves a file only
while all four still hold), its duration and the time of each sampled frame. Files that could
not be read are listed in ``failed`` with the reason; they are tried again only when they
change. Deleted and changed files leave unreferenced rows in their shards; ``--rebuild`` starts
over. ``stage1`` records the stage-1 search (:func:`update_stage1`): exact, or the IVF index's
files, lists, probes and measured recall.

**Write API** (a build, local or distributed, uses only these): :func:`write_shard` (one shard
from frames and mask, under a number no manifest names yet), ``Manifest.entries`` /
``next_shard`` / :meth:`Manifest.save` (the manifest, after the shards it names), and
:func:`update_stage1` once the shards are written (it saves the manifest). Reading:
:meth:`Manifest.load`, :func:`open_gallery`.

One build writes an index at a time (it holds the folder's :func:`tvr.storage.writer_lock`).
Searches take no lock: the manifest is replaced atomically and a build writes its shards and
stage-1 files under new numbers before the manifest that names them, never over a file a
manifest names, so a search opening the index during a build reads the old index or the new one,
both whole; the videos the stage-1 index does not hold yet are searched exactly. Not during
``--rebuild``, which deletes the folder first.

An index of an older format (version 1 recorded no real paths, version 2 loaded whole float32
``.pt`` shards, version 3 packed its records without aligning their fields) is refused in one line that says to rebuild it with ``--rebuild``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from tvr.evaluation.config import Stage1
from tvr.evaluation.retrieval import (ApproximateSearch, Gallery, Scorer, Stage1Search,
                                      faiss_available, stage1_recall, train_ivf)
from tvr.storage import atomic_write, atomic_write_json, read_manifest

# 2: each file's real path and whether a link led there; 3: memory-mapped .npy shards with
# float16 frames and the compact per-video state, a trained stage-1 index; 4: the fields of a
# shard's records aligned (read as views, not copied)
FORMAT_VERSION = 4
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
    stage1: dict[str, Any] = field(default_factory=dict)  # update_stage1's record

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Manifest:
        data = read_manifest(Path(folder) / MANIFEST, "format_version", FORMAT_VERSION,
                             IndexStoreError, "rebuild the index with --rebuild")
        return cls(data["videos_root"], data["checkpoint"], data["config"], data["sampling"],
                   {k: Entry(**v) for k, v in data["entries"].items()},
                   {k: Failure(**v) for k, v in data["failed"].items()}, data["next_shard"],
                   data["stage1"])

    def save(self, folder: str | os.PathLike) -> None:
        atomic_write_json(Path(folder) / MANIFEST,
                          {"format_version": FORMAT_VERSION, **asdict(self)}, pretty=True)


def shard_path(folder: str | os.PathLike, shard: int, kind: str = "videos") -> Path:
    """A shard's file: its records (``kind`` "videos") or its stage-1 vectors ("coarse")."""
    suffix = "" if kind == "videos" else f".{kind}"
    return Path(folder) / "shards" / f"{shard:05d}{suffix}.npy"


def _record_dtype(parts: dict[str, Tensor]) -> np.dtype:
    """One record per video: the frames in float16, the mask in uint8, the rest in float32,
    each field at an offset that is a multiple of its item size (numpy's ``align``), so that
    torch views the fields of gathered records without copying them."""
    kinds = {"frames": "<f2", "mask": "u1"}
    return np.dtype([(name, kinds.get(name, "<f4"), tuple(value.shape[1:]))
                     for name, value in parts.items()], align=True)


def write_shard(folder: str | os.PathLike, shard: int, engine: Scorer,
                frames: Tensor, mask: Tensor) -> None:
    """Write shard number ``shard`` of ``frames`` (n, F, d) and ``mask`` (n, F): the frames
    rounded to float16 and the compact per-video state ``engine`` computes from the rounded
    frames (:meth:`~tvr.evaluation.engine.SimilarityEngine.prepare_videos`; a zero-shot
    index's cosine scorer keeps the frames alone), then the stage-1 vectors. Never over a
    shard a manifest names (module docstring)."""
    rounded = frames.detach().cpu().half().float()
    parts = engine.prepare_videos(rounded, mask.cpu()).parts
    coarse = parts.pop("coarse")
    records = np.empty(len(rounded), _record_dtype(parts))
    for name, value in parts.items():
        records[name] = value.numpy()
    for kind, array in (("videos", records), ("coarse", coarse.half().numpy())):
        atomic_write(shard_path(folder, shard, kind),
                     lambda f, array=array: np.save(f, array, allow_pickle=False))


def read_shard(folder: str | os.PathLike, shard: int, kind: str = "videos") -> np.ndarray:
    """A shard's records or stage-1 vectors, memory-mapped (nothing is read until used;
    copy-on-write, so that torch views it without a warning about read-only memory: nothing
    writes to it)."""
    path = shard_path(folder, shard, kind)
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise IndexStoreError(f"{path}: a shard of the index that cannot be read ({error}); "
                              f"rebuild the index with --rebuild") from error


def _row_bytes(array: np.ndarray) -> Tensor:
    """The (rows, bytes of a row) uint8 tensor viewing ``array``'s memory."""
    return torch.from_numpy(array.view(np.uint8).reshape(len(array), -1 if len(array) else 0))


def video_id(shard: int, row: int) -> int:
    """A video's stage-1 id: its shard and row (row order within a shard is gallery order)."""
    return shard << 32 | row


class StoredVideos:
    """The videos a manifest lists, in gallery order (by shard, then row), their shards
    memory-mapped: :meth:`parts` reads the records of the rows asked for, nothing else."""

    def __init__(self, folder: str | os.PathLike, manifest: Manifest):
        rows = sorted((entry.shard, entry.row, path) for path, entry in manifest.entries.items())
        self.paths = [path for _, _, path in rows]
        self.shard_of = np.array([shard for shard, _, _ in rows], dtype=np.int64)
        self.row_of = np.array([row for _, row, _ in rows], dtype=np.int64)
        self.ids = (self.shard_of << 32) | self.row_of  # sorted: gallery order
        self.folder = folder
        self.records = {shard: read_shard(folder, shard) for shard in np.unique(self.shard_of)}

    def __len__(self) -> int:
        return len(self.paths)

    def _gather(self, rows: Tensor, shard_array: Callable[[int], np.ndarray]) -> np.ndarray:
        """The rows ``rows`` (gallery rows) of the arrays ``shard_array(shard)``, in their
        order: per shard, one ``torch.index_select`` of the rows' bytes (in torch's threads)
        straight into the result."""
        rows = rows.cpu().numpy()
        first = shard_array(int(self.shard_of[rows[0] if len(rows) else 0]))
        out = np.empty((len(rows), *first.shape[1:]), first.dtype)
        order = np.argsort(rows, kind="stable")
        shards = self.shard_of[rows[order]]
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])[:len(rows)]
        target = _row_bytes(out)
        for a, b in zip(starts, np.r_[starts[1:], len(order)]):
            torch.index_select(_row_bytes(shard_array(int(shards[a]))), 0,
                               torch.from_numpy(self.row_of[rows[order[a:b]]]), out=target[a:b])
        if np.array_equal(order, np.arange(len(order))):  # asked in gallery order (a union)
            return out
        ordered = np.empty_like(out)
        ordered[order] = out
        return ordered

    def parts(self, rows: Tensor) -> dict[str, Tensor]:
        """The stored compact state of the videos ``rows`` (frames float16, the rest float32):
        views of the fields of the gathered records (aligned: :func:`_record_dtype`)."""
        records = self._gather(rows, self.records.__getitem__)
        return {name: torch.from_numpy(records[name]) for name in records.dtype.names}

    def coarse(self, rows: Optional[Tensor] = None) -> Tensor:
        """(rows, d) float32 stage-1 vectors of ``rows`` (default: every video)."""
        rows = torch.arange(len(self)) if rows is None else rows
        return torch.from_numpy(self._gather(
            rows, lambda shard: read_shard(self.folder, shard, "coarse"))).float()


def update_stage1(folder: str | os.PathLike, manifest: Manifest, exact_max: int,
                  k: int) -> str:
    """Bring the stage-1 index of ``folder`` up to date with ``manifest`` (then saved), and say
    what it is: an exact search up to ``exact_max`` videos (nothing to write), else a faiss
    IVF index (:func:`~tvr.evaluation.retrieval.train_ivf`) updated with the videos added
    and removed since it was written, trained anew when the gallery has grown fourfold since
    its training, with its recall@``k`` of the exact search. Written under a new number before
    the manifest names it; the files of older numbers but the last are deleted."""
    videos = StoredVideos(folder, manifest)
    old = manifest.stage1
    if len(videos) <= exact_max or not faiss_available():
        manifest.stage1 = {"kind": "exact"}
        manifest.save(folder)
        _remove_stage1_files(folder, keep=())
        return f"stage 1: exact inner product search over {len(videos)} videos"
    import faiss
    vectors = videos.coarse()
    if old.get("kind") == "ivf" and 4 * old["trained_on"] >= len(videos):
        ivf = faiss.read_index(str(Path(folder) / old["file"]))
        held = np.load(Path(folder) / old["ids"], allow_pickle=False)
        ivf.remove_ids(faiss.IDSelectorBatch(np.setdiff1d(held, videos.ids)))
        new = ~np.isin(videos.ids, held)
        ivf.add_with_ids(vectors[new].numpy(), videos.ids[new])
        trained_on = old["trained_on"]
    else:
        ivf, trained_on = train_ivf(vectors.numpy(), videos.ids), len(videos)
    number = old.get("number", -1) + 1
    files = {"file": f"stage1/{number:05d}.faiss", "ids": f"stage1/{number:05d}.ids.npy"}
    atomic_write(Path(folder) / files["ids"],
                 lambda f: np.save(f, videos.ids, allow_pickle=False))
    atomic_write(Path(folder) / files["file"],
                 lambda f: f.write(faiss.serialize_index(ivf).tobytes()))
    search = ApproximateSearch(ivf, videos.ids, (torch.empty(0, dtype=torch.long),
                                                 vectors[:0]))
    recall = stage1_recall(search, vectors, k)
    manifest.stage1 = {"kind": "ivf", "number": number, **files, "trained_on": trained_on,
                       "lists": ivf.nlist, "nprobe": ivf.nprobe, "recall": recall, "k": k}
    manifest.save(folder)
    _remove_stage1_files(folder, keep=(number, old.get("number")))
    return (f"stage 1: faiss IVF{ivf.nlist},SQ8 probing {ivf.nprobe} lists over {len(videos)} "
            f"videos; recall@{k} of the exact search {100 * recall:.1f}% (200 of the videos "
            f"as queries)")


def _remove_stage1_files(folder: str | os.PathLike, keep: tuple) -> None:
    for path in (Path(folder) / "stage1").glob("*.*"):
        if int(path.name.split(".")[0]) not in keep:
            path.unlink()


def open_gallery(folder: str | os.PathLike, manifest: Manifest,
                 backend: Stage1 = "auto") -> Gallery:
    """The videos of ``manifest`` as a :class:`~tvr.evaluation.retrieval.Gallery`: shards and
    the IVF index memory-mapped; an exact stage 1 (``backend`` "torch", no IVF index, or no
    faiss) reads every stage-1 vector. Videos the IVF index misses (a build is adding them)
    are searched exactly."""
    videos = StoredVideos(folder, manifest)
    record = manifest.stage1
    if record.get("kind") != "ivf" or backend == "torch" or not faiss_available():
        return Gallery(videos, Stage1Search(videos.coarse(), backend))
    import faiss
    ivf = faiss.read_index(str(Path(folder) / record["file"]), faiss.IO_FLAG_MMAP)
    ivf.nprobe = record["nprobe"]
    held = np.load(Path(folder) / record["ids"], allow_pickle=False)
    missing = torch.from_numpy(np.flatnonzero(~np.isin(videos.ids, held)))
    return Gallery(videos, ApproximateSearch(ivf, videos.ids, (missing, videos.coarse(missing))))


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
