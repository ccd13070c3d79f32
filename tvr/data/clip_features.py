"""The on-disk store of feature mode (``--clip_features DIR``): cached CLIP outputs per split.

Layout of ``DIR``::

    manifest.json                 {"format", "key": what every array depends on,
                                   "splits": {name: {"fingerprint", "views", "augment",
                                   "captions", "videos", "skipped", "arrays"}}}
    <split>/text_sentence.npy     (N, d)          caption EOT embeddings
    <split>/text_words.npy        (N, L, d)       projected token states (only when stored)
    <split>/text_mask.npy         (N, L) uint8    caption token mask
    <split>/video_frames.npy      (E, V, F, d)    per-frame image embeddings, E views
    <split>/video_mask.npy        (V, F) uint8    frame mask
    <split>/progress.json         only while the split is being written

Arrays are plain ``.npy`` files read with ``mmap_mode="r"``: nothing is loaded until a batch
indexes it. ``key`` (CLIP weights hash, data flags, augmentation, views, dtype, ...) is written
when the folder is created; a run whose key differs is refused (:class:`FeatureStoreMismatch`,
naming each differing field), except that a store holding caption word states also serves a
run that does not need them. A split is listed in the manifest only once all its arrays are
complete (the manifest is replaced atomically), so a split is either absent or whole.

Writing is resumable: :class:`SplitWriter` preallocates ``<name>.npy.partial`` files, and after
every chunk flushes them and records in ``progress.json`` how many leading rows of each task
are done; an interrupted extraction continues from there if the same key and split spec are
asked again (otherwise the partial files are discarded).

One process writes the store at a time: creating it and each :class:`SplitWriter` hold the
folder's :func:`tvr.storage.writer_lock`, and a second writer is refused
(:class:`tvr.storage.StoreBusyError`). A split is published by re-reading the manifest under
the lock, so the splits that other runs added since this one opened the store are kept.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from tvr.storage import (ConfigMismatchError, atomic_write_json, read_manifest,
                          require_same, writer_lock)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
PARTIAL = ".partial"
BUSY = "wait for it to finish, then run again"


class FeatureStoreMismatch(ConfigMismatchError):
    """``--clip_features DIR`` was made with other CLIP weights, data or flags."""


class StoredSplit:
    """A complete split of the store, its arrays memory-mapped read-only.

    ``words`` is None when the store holds no word states; ``skipped`` lists the videos that
    could not be read at extraction (dicts with ``video_index``, ``video_id``, ``path``,
    ``reason``): their rows hold zeros and must be left out.
    """

    def __init__(self, folder: Path, info: dict[str, Any]):
        self.folder = folder
        self.info = info
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in info["arrays"]}
        self.sentence = arrays["text_sentence"]
        self.words = arrays.get("text_words")
        self.text_mask = arrays["text_mask"]
        self.frames = arrays["video_frames"]
        self.video_mask = arrays["video_mask"]
        self.skipped: list[dict[str, Any]] = list(info["skipped"])

    @property
    def views(self) -> int:
        return self.frames.shape[0]

    def readable_videos(self) -> np.ndarray:
        """Indices of the videos that were read (not skipped), ascending."""
        bad = {s["video_index"] for s in self.skipped}
        return np.array([v for v in range(self.frames.shape[1]) if v not in bad], dtype=np.int64)


def to_tensor(array: np.ndarray, rows: Any = slice(None), dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
    """``array[rows]`` (a memory map) as a new torch tensor of ``dtype`` (never a view of the
    read-only map)."""
    values = np.ascontiguousarray(array[rows])
    if not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values).to(dtype)


class FeatureStore:
    """The folder ``root``, created with ``key`` or checked against it (module docstring)."""

    def __init__(self, root: str | os.PathLike, key: dict[str, Any]):
        self.root = Path(root)
        self.key = key
        if not (self.root / MANIFEST).is_file():
            self._create()
        self.manifest = self._read()
        self._check(self.manifest["key"])

    def _create(self) -> None:
        """Make ``root`` a store of ``key`` (unless another run just did)."""
        with writer_lock(self.root, BUSY):
            if (self.root / MANIFEST).is_file():
                return
            if self.root.exists() and any(self.root.iterdir()):
                raise FeatureStoreMismatch(
                    f"--clip_features {self.root}: the folder exists and is not a feature store "
                    f"(no {MANIFEST}); give an empty or new folder")
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.root / MANIFEST,
                              {"format": FORMAT_VERSION, "key": self.key, "splits": {}},
                              pretty=True)

    def _read(self) -> dict[str, Any]:
        return read_manifest(self.root / MANIFEST, "format", FORMAT_VERSION,
                             FeatureStoreMismatch, "extract again into a new folder")

    def _check(self, stored: dict[str, Any]) -> None:
        wanted = dict(self.key)
        if stored.get("words") and not wanted.get("words"):
            wanted["words"] = True  # the stored word states are simply not read
        require_same(stored, wanted, FeatureStoreMismatch,
                     f"--clip_features {self.root} was extracted with other CLIP weights or "
                     f"flags than this run", "Use another folder (or delete this one) to "
                     "extract again, or run with the stored settings")

    @property
    def has_words(self) -> bool:
        return bool(self.manifest["key"].get("words"))

    def find(self, spec: dict[str, Any]) -> Optional[str]:
        """The name of a complete split extracted with ``spec`` (same annotations, views and
        transform), if any: e.g. a val split that is the test split."""
        for name, info in self.manifest["splits"].items():
            if all(info.get(k) == v for k, v in spec.items()):
                return name
        return None

    def open(self, name: str, spec: dict[str, Any]) -> Optional[StoredSplit]:
        """The complete split ``name`` (None if it is not there yet); refused if its ``spec``
        differs (e.g. the annotations changed since the extraction)."""
        info = self.manifest["splits"].get(name)
        if info is None:
            return None
        require_same({k: info.get(k) for k in spec}, spec, FeatureStoreMismatch,
                     f"--clip_features {self.root}: split {name!r} was extracted from other "
                     f"data than this run's", "Use another folder to extract again")
        return StoredSplit(self.root / name, info)

    def writer(self, name: str, spec: dict[str, Any],
               arrays: dict[str, tuple[tuple[int, ...], str]]) -> "SplitWriter":
        return SplitWriter(self, name, spec, arrays)

    def _add_split(self, name: str, info: dict[str, Any]) -> None:
        """List a complete split (its writer holds the lock): in the manifest as it is now."""
        self.manifest = self._read()
        self.manifest["splits"][name] = info
        atomic_write_json(self.root / MANIFEST, self.manifest, pretty=True)


class SplitWriter:
    """Resumable writer of one split's arrays (module docstring).

    ``arrays``: name -> (shape, numpy dtype name). ``writer.array(name)`` is the writable
    memory map; after filling rows, :meth:`commit` records a task's progress (flushing first);
    :meth:`finish` publishes the split. A writer holds the store's lock from its creation until
    it is closed (:meth:`close`, or the end of a ``with`` block).
    """

    def __init__(self, store: FeatureStore, name: str, spec: dict[str, Any],
                 arrays: dict[str, tuple[tuple[int, ...], str]]):
        with contextlib.ExitStack() as lock:
            lock.enter_context(writer_lock(store.root, BUSY))
            self._open(store, name, spec, arrays)
            self._lock = lock.pop_all()

    def _open(self, store: FeatureStore, name: str, spec: dict[str, Any],
              arrays: dict[str, tuple[tuple[int, ...], str]]) -> None:
        """Resume the split's partial files, or start them over (module docstring)."""
        self.store, self.name, self.spec = store, name, spec
        self.folder = store.root / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.layout = {k: {"shape": list(shape), "dtype": dtype}
                       for k, (shape, dtype) in arrays.items()}
        progress_path = self.folder / PROGRESS
        previous = json.loads(progress_path.read_text()) if progress_path.is_file() else None
        resume = (previous is not None and previous["key"] == store.key
                  and previous["spec"] == spec and previous["arrays"] == self.layout
                  and all(self._path(k).is_file() for k in arrays))
        if resume:
            self.progress = previous
            self.arrays = {k: np.lib.format.open_memmap(self._path(k), mode="r+")
                           for k in arrays}
        else:
            for stale in self.folder.iterdir():
                stale.unlink()
            self.progress = {"key": store.key, "spec": spec, "arrays": self.layout, "done": {},
                             "skipped": []}
            self.arrays = {k: np.lib.format.open_memmap(self._path(k), mode="w+",
                                                        dtype=np.dtype(dtype), shape=shape)
                           for k, (shape, dtype) in arrays.items()}
            atomic_write_json(progress_path, self.progress, pretty=True)
        self.resumed = resume

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the next writer in; the rows committed so far stay for a resume."""
        self._lock.close()

    def _path(self, array: str) -> Path:
        return self.folder / f"{array}.npy{PARTIAL}"

    def array(self, name: str) -> np.memmap:
        return self.arrays[name]

    def done(self, task: str) -> int:
        """How many leading rows of ``task`` are written."""
        return self.progress["done"].get(task, 0)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return self.progress["skipped"]

    def commit(self, task: str, rows_done: int, skipped: Iterable[dict[str, Any]] = ()) -> None:
        """Flush the arrays, then record that ``rows_done`` leading rows of ``task`` are
        written and the videos newly found unreadable."""
        for array in self.arrays.values():
            array.flush()
        known = {s["video_index"] for s in self.progress["skipped"]}
        self.progress["skipped"] += [s for s in skipped if s["video_index"] not in known]
        self.progress["done"][task] = rows_done
        atomic_write_json(self.folder / PROGRESS, self.progress, pretty=True)

    def finish(self, extra: dict[str, Any]) -> StoredSplit:
        """Publish the split: final file names, then its manifest entry (the commit point)."""
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        for name in self.layout:
            self._path(name).replace(self.folder / f"{name}.npy")
        info = {**self.spec, **extra, "arrays": self.layout,
                "skipped": sorted(self.progress["skipped"], key=lambda s: s["video_index"])}
        self.store._add_split(self.name, info)
        (self.folder / PROGRESS).unlink()
        return StoredSplit(self.folder, info)
