"""The encoded videos of an index as a table: one row per video, in gallery order, in numpy
columns.

An index (format 4, tvr/index/store.py) keeps what it records of each encoded video
(:class:`Entry`) out of manifest.json, in these columns, each a ``.npy`` file the store maps,
rows in gallery order (by shard, then row), so that opening an index for search maps a few
files, sorts nothing and makes no Python object per video:

=================================  ================  ===========================================
``shard``, ``row``                 int64 (N,)        where the video's record is
``size``, ``mtime_ns``             int64 (N,)        the file as encoded (:class:`VideoFile`)
``followed_link``                  bool (N,)         whether a symbolic link led to it
``duration``                       float64 (N,)      seconds
``times``                          float64 (N, F)    the sampled frames' times, NaN past the last
``path``, ``real_path``            uint8             every relative (real) path in UTF-8, in turn
``path_offsets``, ``real_path_…``  int64 (N + 1,)    where each path begins, then the end
``by_path``                        int64 (N,)        the rows in the order of their paths
=================================  ================  ===========================================

Times and durations stay float64: a table gives back the values the build recorded. A path is
decoded when asked for (:attr:`VideoTable.paths`, a hit or a page's request) and found by
bisection over ``by_path`` (:meth:`VideoTable.find`); the writers turn the table into a dict of
entries (:meth:`VideoTable.entries`) and back (:meth:`VideoTable.from_entries`). Paths are
encoded with ``surrogatepass``, so that any name ``os.walk`` gives comes back unchanged.
:func:`walk_videos` lists the video files a build finds, each as a :class:`VideoFile`.
"""
from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".3gp", ".ogv", ".ts"})

ENCODING, ERRORS = "utf-8", "surrogatepass"
COLUMNS = ("shard", "row", "size", "mtime_ns", "followed_link", "duration", "times", "path",
           "path_offsets", "real_path", "real_path_offsets", "by_path")
NUMBERS = ("shard", "row", "size", "mtime_ns", "followed_link", "duration")
DTYPES = {"followed_link": np.bool_, "duration": np.float64}


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


class Strings(Sequence):
    """Strings kept as their encoded bytes back to back (``data``, uint8) and where each begins
    (``offsets``, one more than the strings: the last is the end), decoded one at a time."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = range(len(self))[i]  # negative indices; IndexError past the end (ends iteration)
        start, end = self.offsets[i:i + 2]
        return self.data[start:end].tobytes().decode(ENCODING, ERRORS)

    def decode_all(self) -> list[str]:
        """Every string, decoded in one pass (much faster than one at a time)."""
        data, offsets = np.asarray(self.data).tobytes(), np.asarray(self.offsets).tolist()
        return [data[start:end].decode(ENCODING, ERRORS)
                for start, end in zip(offsets, offsets[1:])]

    @staticmethod
    def pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(data, offsets) of ``strings``."""
        encoded = [text.encode(ENCODING, ERRORS) for text in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=offsets[1:])
        return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class VideoTable:
    """The columns of the module docstring (numpy arrays, memory-mapped or not), checked."""

    def __init__(self, columns: dict[str, np.ndarray]):
        problem = table_problem(columns)
        if problem:
            raise ValueError(problem)
        self.columns = columns
        self.paths = Strings(columns["path"], columns["path_offsets"])
        self.real_paths = Strings(columns["real_path"], columns["real_path_offsets"])

    def __len__(self) -> int:
        return len(self.columns["shard"])

    @classmethod
    def from_entries(cls, entries: Mapping[str, Entry]) -> VideoTable:
        """The table of ``entries`` (path -> :class:`Entry`), sorted into gallery order."""
        paths = sorted(entries, key=lambda path: (entries[path].shard, entries[path].row))
        rows = [entries[path] for path in paths]
        columns = {name: np.array([getattr(entry, name) for entry in rows],
                                  dtype=DTYPES.get(name, np.int64)) for name in NUMBERS}
        lengths = np.array([len(entry.times) for entry in rows], dtype=np.int64)
        times = np.full((len(rows), int(lengths.max(initial=0))), np.nan)
        times[np.arange(times.shape[1]) < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(entry.times for entry in rows), dtype=np.float64,
            count=int(lengths.sum()))
        columns["times"] = times
        columns["path"], columns["path_offsets"] = Strings.pack(paths)
        columns["real_path"], columns["real_path_offsets"] = Strings.pack(
            [entry.real_path for entry in rows])
        columns["by_path"] = np.array(sorted(range(len(paths)), key=paths.__getitem__),
                                      dtype=np.int64)
        return cls(columns)

    def times(self, row: int) -> list[float]:
        """The times of the sampled frames of video ``row``."""
        times = self.columns["times"][row]
        return times[~np.isnan(times)].tolist()

    def entry(self, row: int) -> Entry:
        """Video ``row`` as an :class:`Entry`."""
        numbers = {name: self.columns[name][row].item() for name in NUMBERS}
        return Entry(real_path=self.real_paths[row], times=self.times(row), **numbers)

    def entries(self) -> dict[str, Entry]:
        """Every video as an :class:`Entry`, by path, in gallery order (a writer's view)."""
        size, mtime_ns, followed_link, shard, row, duration = (
            np.asarray(self.columns[name]).tolist() for name in
            ("size", "mtime_ns", "followed_link", "shard", "row", "duration"))
        times = np.asarray(self.columns["times"])
        counts = (~np.isnan(times)).sum(axis=1).tolist()
        frames = (line[:count] for line, count in zip(times.tolist(), counts))
        return {path: Entry(*fields) for path, *fields in zip(
            self.paths.decode_all(), size, mtime_ns, self.real_paths.decode_all(),
            followed_link, shard, row, duration, frames)}

    def find(self, path: str) -> Optional[int]:
        """The row of video ``path``, None when the table does not list it."""
        by_path = self.columns["by_path"]
        at = bisect.bisect_left(range(len(self)), path, key=lambda i: self.paths[by_path[i]])
        return int(by_path[at]) if at < len(self) and self.paths[by_path[at]] == path else None


def table_problem(columns: dict[str, np.ndarray]) -> str:
    """What makes ``columns`` no table of the module docstring ("" when nothing): a column
    missing, of another length or shape, offsets that do not fit their bytes, or rows out of
    gallery order (ids not increasing)."""
    missing = [name for name in COLUMNS if name not in columns]
    if missing:
        return f"no column {', '.join(missing)}"
    n = len(columns["shard"])
    lengths = {name: len(columns[name]) for name in COLUMNS}
    wrong = [name for name, length in lengths.items()
             if length != n + name.endswith("_offsets") and name not in ("path", "real_path")]
    if wrong or columns["times"].ndim != 2:
        return f"columns of another length than {n} rows: {', '.join(wrong) or 'times'}"
    for name in ("path", "real_path"):
        offsets = columns[f"{name}_offsets"]
        if offsets[0] != 0 or offsets[-1] != len(columns[name]) or np.any(np.diff(offsets) < 0):
            return f"{name}_offsets do not fit the {len(columns[name])} bytes of {name}"
    ids = np.asarray(columns["shard"]) << 32 | np.asarray(columns["row"])
    if np.any(ids[1:] <= ids[:-1]):
        return "rows out of gallery order (by shard, then row, each once)"
    return ""


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
