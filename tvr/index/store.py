"""The on-disk layout of a video index, and its bookkeeping for incremental builds.

An index is a folder::

    manifest.json               what the index holds (:class:`Manifest`), rewritten atomically
    table/00007.<column>.npy    its encoded videos, a column a file (tvr/index/table.py)
    shards/00000.npy ...        one record per video, ``shard_size`` videos at most per shard
    shards/00000.coarse.npy     the shard's stage-1 vectors (n, S, d) float16
    stage1/00003.faiss, .ids.npy  the stage-1 IVF index above ``stage1_exact_max`` videos
    thumbs/<key>/<k>.jpg        one small JPEG per sampled frame of each video (the web page)

A shard's records (a numpy structured array, mapped by :class:`tvr.storage.MappedNpy`) hold,
per video, the frames after the temporal module in float16 (``frames`` (F, d); scores move by
at most 3e-5, tests/test_stored_state.py), the mask (uint8) and, in float32, the rest of the
compact state the engine computes from them (``prepare_videos``, docs/evaluation_engine.md §2).
A zero-shot index (tvr/index/zero_shot.py) records unit CLIP frame embeddings and the mask, and
their unit mean as its stage-1 vectors. A search reads its candidates' records only.

The manifest's table maps each video file (path relative to the videos folder) to its shard,
row, what the file was (:class:`VideoFile`: size, modification time, real path, whether a
symbolic link led there; a changed file is encoded again, and the web page serves a file only
while all four still hold), its duration and the time of each sampled frame, in numpy columns
in gallery order (a search maps them and makes no object per video); manifest.json holds the
rest and names the table by number. Files that could not be read are listed in ``failed`` with
the reason; they are tried again only when they change. Deleted and changed files leave
unreferenced rows in their shards (``--rebuild`` starts over). ``stage1``: the stage-1 search
(:func:`update_stage1`), exact or an IVF index (its files, lists, probes and recall).

**Write API** (a build, local or distributed, uses only these): :func:`write_shard` (one shard
from frames and mask, under a number no manifest names yet), ``Manifest.entries`` /
``next_shard`` / :meth:`Manifest.save` (the table, then the manifest, after the shards), then
:func:`update_stage1` (it saves the manifest). Reading: :meth:`Manifest.load`, :func:`open_gallery`.

One build writes an index at a time (it holds the folder's :func:`tvr.storage.writer_lock`).
Searches take no lock: the manifest is replaced atomically and a build writes its shards,
stage-1 files and tables under new numbers before the manifest that names them, never over a
file a manifest names, so a search opening the index during a build reads the old index or the
new one, both whole; the videos the stage-1 index does not hold yet are searched exactly. Not
during ``--rebuild``, which deletes the folder first.

Versions 1 and 2 are refused in one line that says to rebuild with ``--rebuild``. A build
converts version 3 (entries in manifest.json, another per-video state, one stage-1 vector a
video) without encoding again (``Manifest.load(convert=True)``, :func:`restage`); a search
refuses it in one line that says to run the build.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from tvr.evaluation.config import Stage1
from tvr.evaluation.engine import stage1_vectors
from tvr.evaluation.retrieval import (ApproximateSearch, Gallery, Scorer, Stage1Search,
                                      faiss_available, stage1_recall, train_ivf)
from tvr.index.table import COLUMNS, Entry, VideoFile, VideoTable
from tvr.storage import MappedNpy, atomic_write, atomic_write_json, read_manifest

# 2: each file's real path and whether a link led there; 3: mapped .npy shards (float16 frames,
# compact per-video state), a trained stage-1 index; 4: the entries in a table of .npy columns
# (tvr/index/table.py), records' fields aligned (read as views), several stage-1 vectors a video
FORMAT_VERSION = 4
CONVERTIBLE = 3  # the format a build converts (Manifest.load, restage)
IVF_IN_MEMORY_MAX = 2 * 2**30  # a larger stage-1 IVF file is memory-mapped (open_gallery)
MANIFEST, TABLE = "manifest.json", "table"
HEADER = ("videos_root", "checkpoint", "config", "sampling", "next_shard", "stage1", "table")


class IndexStoreError(ValueError):
    """An index folder that cannot be used as asked (other checkpoint, sampling, format)."""


@dataclass
class Failure(VideoFile):
    """A file that could not be read, with the reader's reason."""

    reason: str


@dataclass
class Manifest:
    """What an index holds: manifest.json (this header, the failures) and the table of its
    encoded videos (tvr/index/table.py) that it names by number."""

    videos_root: str
    checkpoint: dict[str, Any]   # {"path", "sha256", "code_version"} of the encoding model
    config: dict[str, Any]       # the checkpoint's model record (checkpoint.model_record)
    sampling: dict[str, Any]     # {"video_framerate", "max_frames", "video_backend"}
    failed: dict[str, Failure] = field(default_factory=dict)
    next_shard: int = 0
    stage1: dict[str, Any] = field(default_factory=dict)  # update_stage1's record
    table: int = -1  # the number of the table files the saved manifest names; -1: none yet
    saved: Optional[VideoTable] = field(default=None, repr=False)  # that table, mapped
    converted: bool = False  # loaded from format 3 (Manifest.load's convert)
    _entries: Optional[dict[str, Entry]] = field(default=None, init=False, repr=False)

    @property
    def entries(self) -> dict[str, Entry]:
        """Every encoded video by path, for the writers to change: made from the saved table
        on first use (an object per video); from then on :meth:`videos` follows it."""
        if self._entries is None:
            self._entries = {} if self.saved is None else self.saved.entries()
        return self._entries

    def videos(self) -> VideoTable:
        """The encoded videos in gallery order: the saved table, memory-mapped, unless
        :attr:`entries` was used, else a table made from it."""
        if self._entries is None and self.saved is not None:
            return self.saved
        return VideoTable.from_entries(self.entries)

    @classmethod
    def load(cls, folder: str | os.PathLike, convert: bool = False) -> Manifest:
        """The manifest of ``folder``, its table memory-mapped. One of format 3 (its entries
        in manifest.json) is refused in one line, unless ``convert`` (a build): then its
        entries are read and the next :meth:`save` writes format 4."""
        path = Path(folder) / MANIFEST
        data = read_manifest(path, "format_version", FORMAT_VERSION, IndexStoreError,
                             "rebuild the index with --rebuild", convertible=(CONVERTIBLE,))
        manifest = cls(data["videos_root"], data["checkpoint"], data["config"],
                       data["sampling"], {k: Failure(**v) for k, v in data["failed"].items()},
                       data["next_shard"], data["stage1"], data.get("table", -1))
        if data["format_version"] == FORMAT_VERSION:
            manifest.saved = _read_table(folder, manifest.table)
        elif not convert:
            raise IndexStoreError(
                f"{path}: format version {CONVERTIBLE}, this code reads version "
                f"{FORMAT_VERSION}; run the build command that made it again (python -m "
                f"tvr.index build ... --out {folder}) to convert it without encoding any "
                f"video again, or start it over with --rebuild")
        else:
            manifest.converted = True
            manifest._entries = {k: Entry(**v) for k, v in data["entries"].items()}
        return manifest

    def save(self, folder: str | os.PathLike) -> None:
        """Write the table of :meth:`videos` under the next number, then manifest.json naming
        it; delete the older tables but the previous one."""
        number, videos = self.table + 1, self.videos()
        for name, column in videos.columns.items():
            atomic_write(table_path(folder, number, name),
                         lambda f, column=column: np.save(f, column, allow_pickle=False))
        self.table = number
        header = {name: getattr(self, name) for name in HEADER}
        atomic_write_json(Path(folder) / MANIFEST, {
            "format_version": FORMAT_VERSION, **header,
            "failed": {path: asdict(failure) for path, failure in self.failed.items()}},
            pretty=True)
        _remove_numbered(Path(folder) / TABLE, keep=(number, number - 1))


def table_path(folder: str | os.PathLike, number: int, column: str) -> Path:
    """The file of one column of table ``number`` (tvr/index/table.py)."""
    return Path(folder) / TABLE / f"{number:05d}.{column}.npy"


def _read_table(folder: str | os.PathLike, number: int) -> VideoTable:
    """Table ``number`` of ``folder``, each column memory-mapped."""
    try:
        return VideoTable({name: np.load(table_path(folder, number, name), mmap_mode="r",
                                         allow_pickle=False) for name in COLUMNS})
    except (OSError, ValueError) as error:
        raise IndexStoreError(f"{Path(folder) / TABLE}: the table of the index's videos "
                              f"cannot be read ({error}); rebuild the index with --rebuild"
                              ) from error


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


def stored_parts(engine: Scorer, frames: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """What a shard records of each video: ``engine``'s prepared state but its mean frame."""
    parts = engine.prepare_videos(frames, mask).parts
    del parts["coarse"]
    return parts


def write_shard(folder: str | os.PathLike, shard: int, engine: Scorer,
                frames: Tensor, mask: Tensor, stage1_frames: int) -> None:
    """Write shard number ``shard`` of ``frames`` (n, F, d) and ``mask`` (n, F): the frames
    rounded to float16 and the compact per-video state ``engine`` computes from the rounded
    frames (:meth:`~tvr.evaluation.engine.SimilarityEngine.prepare_videos`; a zero-shot
    index's cosine scorer keeps the frames alone), then the stage-1 vectors: the mean frame
    and ``stage1_frames`` frames of each video (:func:`~tvr.evaluation.engine.stage1_vectors`).
    Never over a shard a manifest names (module docstring)."""
    rounded = frames.detach().cpu().half().float()
    parts = stored_parts(engine, rounded, mask.cpu())
    coarse = stage1_vectors(rounded, mask.cpu(), stage1_frames)
    records = np.empty(len(rounded), _record_dtype(parts))
    for name, value in parts.items():
        records[name] = value.numpy()
    for kind, array in (("videos", records), ("coarse", coarse.half().numpy())):
        atomic_write(shard_path(folder, shard, kind),
                     lambda f, array=array: np.save(f, array, allow_pickle=False))


def read_shard(folder: str | os.PathLike, shard: int, kind: str = "videos") -> MappedNpy:
    """A shard's records or stage-1 vectors, memory-mapped (nothing is read until used;
    copy-on-write, so that torch views it without a warning about read-only memory: nothing
    writes to it), their rows readable ahead (:class:`~tvr.storage.MappedNpy`)."""
    path = shard_path(folder, shard, kind)
    try:
        return MappedNpy(path)
    except (OSError, ValueError) as error:
        raise IndexStoreError(f"{path}: a shard of the index that cannot be read ({error}); "
                              f"rebuild the index with --rebuild") from error


def _row_bytes(array: np.ndarray) -> Tensor:
    """A (rows, words of a row) tensor viewing ``array``'s memory, in the widest integer words
    that divide a row (a gather copies words: one byte at a time is a few times slower)."""
    rows = array.view(np.uint8).reshape(len(array), -1 if len(array) else 0)
    word = next(size for size in (8, 4, 2, 1) if rows.shape[1] % size == 0) if rows.size else 1
    return torch.from_numpy(rows.view(f"<i{word}" if word > 1 else np.uint8))


class StoredVideos:
    """The videos a manifest lists, in gallery order (by shard, then row), their shards
    memory-mapped: :meth:`parts` reads the records of the rows asked for, nothing else."""

    def __init__(self, folder: str | os.PathLike, manifest: Manifest):
        self.table = manifest.videos()  # in gallery order
        self.paths = self.table.paths
        self.shard_of = np.asarray(self.table.columns["shard"])
        self.row_of = np.asarray(self.table.columns["row"])
        self.ids = (self.shard_of << 32) | self.row_of  # sorted: gallery order
        self.folder = folder
        shards = self.shard_of[np.flatnonzero(np.diff(self.shard_of, prepend=-1))]  # sorted
        self.records = {shard: read_shard(folder, shard) for shard in shards}
        self.words = {shard: _row_bytes(records.array) for shard, records in self.records.items()}
        self.asked = np.zeros(len(self.paths), dtype=bool)  # rows read ahead (_read_ahead)

    def __len__(self) -> int:
        return len(self.paths)

    def _gather(self, rows: Tensor, template: np.ndarray,
                shard_words: Callable[[int], Tensor]) -> np.ndarray:
        """The rows ``rows`` (gallery rows), in their order, of arrays like ``template`` whose
        bytes ``shard_words(shard)`` views (:func:`_row_bytes`): one ``index_select`` a shard."""
        rows = rows.cpu().numpy()
        out = np.empty((len(rows), *template.shape[1:]), template.dtype)
        order = np.argsort(rows, kind="stable")
        shards, local = self.shard_of[rows[order]], torch.from_numpy(self.row_of[rows[order]])
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])[:len(rows)]
        target = _row_bytes(out)
        for a, b in zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist()):
            torch.index_select(shard_words(int(shards[a])), 0, local[a:b], out=target[a:b])
        if np.array_equal(order, np.arange(len(order))):  # asked in gallery order (a union)
            return out
        return out[np.argsort(order)]  # out[j] is row order[j]

    def _read_ahead(self, rows: np.ndarray) -> None:
        """:meth:`~tvr.storage.MappedNpy.read_ahead` of the records of ``rows`` this process
        has not read before (those stay mapped here, so cached, unless memory runs short)."""
        rows = np.unique(rows[~self.asked[rows]])  # sorted: by shard, then row
        self.asked[rows] = True
        for part in np.split(rows, np.flatnonzero(np.diff(self.shard_of[rows])) + 1):
            if len(part):
                self.records[int(self.shard_of[part[0]])].read_ahead(self.row_of[part])

    def parts(self, rows: Tensor) -> dict[str, Tensor]:
        """The stored compact state of the videos ``rows`` (frames float16, the rest float32),
        read ahead at once: views of the fields of the gathered records (:func:`_record_dtype`)."""
        self._read_ahead(rows.cpu().numpy())
        records = self._gather(rows, next(iter(self.records.values())).array, self.words.get)
        return {name: torch.from_numpy(records[name]) for name in records.dtype.names}

    def coarse(self, rows: Optional[Tensor] = None) -> Tensor:
        """(rows, S, d) float32 stage-1 vectors of ``rows`` (default: every video)."""
        rows = torch.arange(len(self)) if rows is None else rows
        shards = np.unique(self.shard_of[rows.numpy()]).tolist() or [int(self.shard_of[0])]
        maps = {shard: read_shard(self.folder, shard, "coarse").array for shard in shards}
        return torch.from_numpy(self._gather(
            rows, next(iter(maps.values())), lambda shard: _row_bytes(maps[shard]))).float()


def restage(folder: str | os.PathLike, manifest: Manifest, engine: Scorer,
            stage1_frames: int) -> int:
    """Write again, from the frames it keeps, through :func:`write_shard`, every shard whose
    records are not those ``engine`` computes now (format 3's) or whose stage-1 vectors are not
    (n, 1 + ``stage1_frames``, d) (format 3's, or another ``--stage1_frames``), by a build; the
    stage-1 index is then trained anew (:func:`update_stage1`). Returns how many were written."""
    rewritten, layout = 0, None
    for shard, mapped in StoredVideos(folder, manifest).records.items():
        records = mapped.array
        frames = torch.from_numpy(np.ascontiguousarray(records["frames"])).float()
        mask = torch.from_numpy(np.ascontiguousarray(records["mask"])).float()
        if layout is None:
            layout = _record_dtype(stored_parts(engine, frames[:1], mask[:1]))
        if records.dtype == layout and \
                read_shard(folder, shard, "coarse").array.shape[1:-1] == (1 + stage1_frames,):
            continue
        write_shard(folder, shard, engine, frames, mask, stage1_frames)
        rewritten += 1
    if rewritten:  # an IVF index holds the vectors as they were: train a new one
        manifest.stage1 = {"kind": "exact", **{k: v for k, v in manifest.stage1.items()
                                               if k == "number"}}
    return rewritten


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
        _remove_numbered(Path(folder) / "stage1", keep=())
        return f"stage 1: exact inner product search over {len(videos)} videos"
    import faiss
    vectors = videos.coarse()
    per_video = vectors.shape[1]
    if old.get("kind") == "ivf" and 4 * old["trained_on"] >= len(videos):
        ivf = faiss.read_index(str(Path(folder) / old["file"]))
        held = np.load(Path(folder) / old["ids"], allow_pickle=False)
        ivf.remove_ids(faiss.IDSelectorBatch(np.setdiff1d(held, videos.ids)))
        new = ~np.isin(videos.ids, held)
        ivf.add_with_ids(vectors[new].flatten(0, 1).numpy(), videos.ids[new].repeat(per_video))
        trained_on = old["trained_on"]
    else:
        ivf = train_ivf(vectors.flatten(0, 1).numpy(), videos.ids.repeat(per_video))
        trained_on = len(videos)
    number = old.get("number", -1) + 1
    files = {"file": f"stage1/{number:05d}.faiss", "ids": f"stage1/{number:05d}.ids.npy"}
    atomic_write(Path(folder) / files["ids"],
                 lambda f: np.save(f, videos.ids, allow_pickle=False))
    atomic_write(Path(folder) / files["file"],
                 lambda f: f.write(faiss.serialize_index(ivf).tobytes()))
    search = ApproximateSearch(ivf, videos.ids, (torch.empty(0, dtype=torch.long),
                                                 vectors[:0]), per_video)
    recall = stage1_recall(search, vectors, k)
    manifest.stage1 = {"kind": "ivf", "number": number, **files, "trained_on": trained_on,
                       "per_video": per_video, "lists": ivf.nlist, "nprobe": ivf.nprobe,
                       "recall": recall, "k": k}
    manifest.save(folder)
    _remove_numbered(Path(folder) / "stage1", keep=(number, old.get("number")))
    return (f"stage 1: faiss IVF{ivf.nlist},SQ8 probing {ivf.nprobe} lists over {len(videos)} "
            f"videos ({per_video} vectors each); recall@{k} of the exact search "
            f"{100 * recall:.1f}% (200 of the videos as queries)")


def _remove_numbered(directory: Path, keep: tuple) -> None:
    """Delete the files ``<number>.*`` of ``directory`` (stage-1 files, tables) but those of
    the numbers ``keep``."""
    for path in directory.glob("[0-9]*.*"):
        if int(path.name.split(".")[0]) not in keep:
            path.unlink()


def open_gallery(folder: str | os.PathLike, manifest: Manifest,
                 backend: Stage1 = "auto") -> Gallery:
    """The videos of ``manifest`` as a :class:`~tvr.evaluation.retrieval.Gallery`, shards
    mapped. The IVF index is read at open up to :data:`IVF_IN_MEMORY_MAX` bytes (a search
    scans an eighth of it: mapped, the first searches read it from disk), else mapped; an
    exact stage 1 (``backend`` "torch", no IVF index, or no faiss) reads every stage-1 vector.
    Videos the IVF index misses (a build is adding them) are searched exactly."""
    videos = StoredVideos(folder, manifest)
    record = manifest.stage1
    if record.get("kind") != "ivf" or backend == "torch" or not faiss_available():
        return Gallery(videos, Stage1Search(videos.coarse(), backend))
    import faiss
    path = Path(folder) / record["file"]
    ivf = faiss.read_index(str(path), faiss.IO_FLAG_MMAP
                           if path.stat().st_size > IVF_IN_MEMORY_MAX else 0)
    ivf.nprobe = record["nprobe"]
    held = np.load(Path(folder) / record["ids"], allow_pickle=False)  # sorted, as videos.ids
    at = np.searchsorted(held, videos.ids).clip(max=len(held) - 1)  # it holds one at least
    missing = torch.from_numpy(np.flatnonzero(held[at] != videos.ids))
    return Gallery(videos, ApproximateSearch(ivf, videos.ids, (missing, videos.coarse(missing)),
                                             record["per_video"]))


def thumbnail_dir(folder: str | os.PathLike, path: str) -> Path:
    """The folder of a video's frame thumbnails (``<k>.jpg``), keyed by a hash of its path."""
    return Path(folder) / "thumbs" / hashlib.sha1(path.encode()).hexdigest()[:16]

