"""A frame cache: every video decoded once into the frames that training and evaluation sample.

Reading a video's frames from an mp4 decodes it from its first frame up to the last sampled
one; the cache stores just the sampled frames, so a video costs a JPEG decode of ``max_frames``
small images (or a copy of raw pixels). ``preprocess/build_frame_cache.py`` writes it;
``--frame_cache DIR`` makes the loaders read from it
(:class:`tvr.data.cached_frames.CachedFrameLoader`).

Which frames: exactly those of the video path, :func:`tvr.data.frames.sample_frames` with the
run's sampling (:class:`tvr.data.frames.SamplingConfig`) over the caption's window (same indices,
stored with each entry), then the short side brought down to ``short_side`` (224) with the
bicubic, antialiased uint8 resize of CLIP's eval transform (never enlarged). The eval transform
then resizes an already-224 frame to 224, a no-op, so for evaluation raw frames give the very
input of the video path and JPEG frames differ only by the compression (PSNR > 40 dB at quality
95 with 4:4:4 chroma). Training augmentation (RandAugment) then acts on the 224 px frame instead
of the decoded one: geometric ops interpolate at the lower resolution.

Layout of ``DIR``::

    frame_cache.json     parameters (sampling, size, storage format): written first, checked
                         by every reader and by a resumed build
    shard_00000.bin      frames of many entries, back to back (JPEG files or raw RGB pixels)
    shard_00000.json     its index, written atomically once the shard is complete:
                         {"clips": {key: {"indices", "shape", "frames": [[offset, length]...]}},
                          "bad": {key: reason}}   ("clips": the entries, as format 1 names them)

A build that stops leaves at most one shard without its index; the next build deletes that
shard and goes on from the entries the indexed shards hold, so no work is lost but the last
shard's. One build writes a cache at a time (:func:`tvr.storage.writer_lock`); a reader takes
no lock and sees the shards whose index was written, each whole and never written again. An
entry is a video file and a caption's window of it, keyed by the file's path relative to
``--video_path`` plus the window (:func:`cache_key`).
"""
from __future__ import annotations

import contextlib
import json
import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from tvr.data.config import CacheParams, SamplingConfig
from tvr.storage import atomic_write_json, read_manifest, require_same, writer_lock

PARAMS_FILE = "frame_cache.json"
FORMAT_VERSION = 1
SHARD_BYTES = 1 << 30  # start a new shard after ~1 GiB
REBUILD_HINT = "rebuild it with preprocess/build_frame_cache.py, or drop --frame_cache"


class FrameCacheError(ValueError):
    """A frame cache that cannot serve this run: missing, incomplete, or built otherwise."""


def cache_key(name: str, start: float | None, end: float | None) -> str:
    """The key of an entry: the video's path relative to the video folder (POSIX form), and its
    window in seconds when it has one."""
    name = Path(name).as_posix()
    return name if start is None and end is None else f"{name}@{start}:{end}"


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames with the short side brought down to ``short_side`` (bicubic,
    antialiased, as CLIP's eval transform); frames already that small are returned unchanged."""
    if min(frames.shape[1:3]) <= short_side:
        return frames
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2)
    tensor = F.resize(tensor, short_side, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return tensor.permute(0, 2, 3, 1).contiguous().numpy()


def encode_frame(frame: np.ndarray, params: CacheParams) -> bytes:
    """One RGB uint8 (H, W, 3) frame as stored: a 4:4:4 JPEG, or its raw pixels."""
    if params.format == "raw":
        return np.ascontiguousarray(frame).tobytes()
    options = [cv2.IMWRITE_JPEG_QUALITY, params.quality,
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise RuntimeError("OpenCV could not encode a frame as JPEG")
    return data.tobytes()


def _read_params(root: Path) -> CacheParams:
    path = root / PARAMS_FILE
    if not path.exists():
        raise FrameCacheError(f"{root} is not a frame cache (no {PARAMS_FILE}); "
                              f"build one with preprocess/build_frame_cache.py")
    record = read_manifest(path, "version", FORMAT_VERSION, FrameCacheError, REBUILD_HINT)
    return CacheParams.from_record(record)


def _shard_indices(root: Path) -> list[tuple[Path, dict]]:
    """The complete shards of ``root`` (those with an index) and their indices."""
    shards = []
    for index_path in sorted(root.glob("shard_*.json")):
        shards.append((index_path.with_suffix(".bin"), json.loads(index_path.read_text())))
    return shards


class FrameCacheWriter:
    """Appends entries to a cache folder, resuming a build with the same parameters.

    ``writer.done`` holds the keys already cached (or recorded as bad); :meth:`add` and
    :meth:`add_bad` record an entry; :meth:`close` completes the last shard. A writer holds the
    folder's lock from its creation to :meth:`close`: while another one does, it waits when
    ``wait``, else raises :class:`FrameCacheError`.
    """

    def __init__(self, root: str | Path, params: CacheParams, shard_bytes: int = SHARD_BYTES,
                 wait: bool = False):
        self.root = Path(root)
        self.params = params
        self.shard_bytes = shard_bytes
        with contextlib.ExitStack() as lock:
            lock.enter_context(writer_lock(self.root, "wait for it, or pass --wait", wait=wait,
                                           error=FrameCacheError))
            self._open()
            self._lock = lock.pop_all()

    def _open(self) -> None:
        """Create the cache, or check its parameters and resume it (module docstring)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / PARAMS_FILE).exists():
            require_same(_read_params(self.root).record(), self.params.record(), FrameCacheError,
                         f"{self.root} holds a frame cache built with other parameters",
                         "Choose another folder or delete it")
        else:
            atomic_write_json(self.root / PARAMS_FILE,
                              {"version": FORMAT_VERSION, **self.params.record()})
        shards = _shard_indices(self.root)
        self.done: set[str] = set()
        for _, index in shards:
            self.done.update(index["clips"], index["bad"])
        for orphan in self.root.glob("shard_*.bin"):  # a shard whose build was interrupted
            if not orphan.with_suffix(".json").exists():
                orphan.unlink()
        self._number = len(shards)
        self._file = None

    def _open_shard(self) -> None:
        self._path = self.root / f"shard_{self._number:05d}.bin"
        self._file = open(self._path, "wb")
        self._entries: dict[str, dict] = {}
        self._bad: dict[str, str] = {}

    def add(self, key: str, frames: np.ndarray, indices: np.ndarray) -> None:
        """Store uint8 (T, H, W, 3) ``frames`` (already resized) sampled at ``indices``."""
        if self._file is None:
            self._open_shard()
        spans = []
        for frame in frames:
            data = encode_frame(frame, self.params)
            spans.append([self._file.tell(), len(data)])
            self._file.write(data)
        self._entries[key] = {"indices": [int(i) for i in indices],
                            "shape": list(frames.shape[1:3]), "frames": spans}
        self.done.add(key)
        if self._file.tell() >= self.shard_bytes:
            self._finish_shard()

    def add_bad(self, key: str, reason: str) -> None:
        """Record that ``key`` could not be read (a reader raises ``VideoReadError`` for it)."""
        if self._file is None:
            self._open_shard()
        self._bad[key] = reason
        self.done.add(key)

    def _finish_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        atomic_write_json(self._path.with_suffix(".json"),
                          {"clips": self._entries, "bad": self._bad})
        self._number += 1

    def close(self) -> None:
        """Complete the open shard (if any), then let the next writer in; the cache is then
        whole for what was added."""
        try:
            if self._file is not None:
                self._finish_shard()
        finally:
            self._lock.close()


class FrameCache:
    """Read access to a cache folder (safe to share with DataLoader workers: files are opened
    lazily in each process)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FrameCacheError(f"frame cache {self.root} does not exist; build it with "
                                  f"preprocess/build_frame_cache.py")
        self.params = _read_params(self.root)
        self.shards: list[Path] = []
        self.entries: dict[str, tuple[int, dict]] = {}
        self.bad: dict[str, str] = {}
        for number, (path, index) in enumerate(_shard_indices(self.root)):
            self.shards.append(path)
            self.entries.update((key, (number, entry)) for key, entry in index["clips"].items())
            self.bad.update(index["bad"])
        self._maps: dict[int, np.memmap] = {}
        self._pid = os.getpid()

    def require(self, image_size: int, sampling: SamplingConfig) -> None:
        """Refuse a cache whose sampling differs from the run's ``sampling``, or whose frames are
        smaller than the model's input."""
        problems = self.params.mismatch(sampling)
        if self.params.short_side < image_size:
            problems.append(f"short side {self.params.short_side} px (the model's input: "
                            f"{image_size} px)")
        if problems:
            raise FrameCacheError(f"frame cache {self.root} was built with other sampling "
                                  f"parameters: {'; '.join(problems)}; {REBUILD_HINT}")

    def missing(self, keys: list[str]) -> list[str]:
        """The keys that are neither cached nor recorded as bad."""
        return [key for key in keys if key not in self.entries and key not in self.bad]

    def _map(self, shard: int) -> np.memmap:
        if self._pid != os.getpid():  # a forked worker: open its own maps
            self._maps, self._pid = {}, os.getpid()
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.shards[shard], dtype=np.uint8, mode="r")
        return self._maps[shard]

    def stored(self, key: str) -> tuple[np.ndarray, list[int]]:
        """The stored bytes of ``key``'s frames, back to back in one uint8 1-D array (a single
        read), and each frame's length. ``KeyError`` if the cache does not hold it (see
        :attr:`bad`)."""
        shard, entry = self.entries[key]
        (first, _), (last, last_length) = entry["frames"][0], entry["frames"][-1]
        data = np.array(self._map(shard)[first:last + last_length])
        return data, [length for _, length in entry["frames"]]

    def indices(self, key: str) -> np.ndarray:
        """The frame indices (in the video) of ``key``'s frames."""
        return np.asarray(self.entries[key][1]["indices"], dtype=np.int64)

    def frames(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The frames of ``key`` as RGB uint8 (T, H, W, 3), decoded on the CPU, and their
        indices."""
        data, lengths = self.stored(key)
        shape = self.entries[key][1]["shape"]
        if self.params.format == "raw":
            return data.reshape(len(lengths), *shape, 3), self.indices(key)
        frames = decode_jpegs(data, lengths, shape)
        if frames is None:
            raise FrameCacheError(f"frame cache {self.root}: a stored frame of {key} is not a "
                                  f"{shape[0]} x {shape[1]} JPEG (a damaged shard); "
                                  f"{REBUILD_HINT}")
        return frames, self.indices(key)


@lru_cache(maxsize=4)
def open_frame_cache(root: str | Path) -> FrameCache:
    """The :class:`FrameCache` at ``root``, read once per process."""
    return FrameCache(root)


def decode_jpegs(data: np.ndarray, lengths: list[int], shape: list[int]) -> np.ndarray | None:
    """JPEG files back to back in ``data`` (``lengths`` bytes each), decoded with OpenCV into
    RGB uint8 (T, H, W, 3) frames of ``shape`` (H, W); None if one is not such a JPEG.

    OpenCV (its libjpeg-turbo) gives the pixels that ``torchvision.io.decode_jpeg`` (deprecated)
    gave for these files, bit for bit (tested; bench/RESULTS.md §7), so caches built before read
    the same. EXIF orientation is ignored, as the encoder writes none.
    """
    frames = np.empty((len(lengths), *shape, 3), dtype=np.uint8)
    offset = 0
    for frame, length in zip(frames, lengths):
        jpeg = data[offset:offset + length]
        bgr = (cv2.imdecode(jpeg, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
               if jpeg.size else None)
        if bgr is None or bgr.shape != frame.shape:
            return None
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=frame)
        offset += length
    return frames
