"""Frames from a frame cache (``--frame_cache``), transformed in the loader or on the GPU.

:class:`CachedFrameLoader` is a drop-in for :class:`tvr.data.frames.VideoFrameLoader`: same call,
same output, frames read from a :class:`tvr.data.frame_cache.FrameCache` instead of decoded from
the video, then the same functions of :mod:`tvr.data.frames` (transform, padding, mask).

Two places to turn stored frames into model input:

- ``on_device=False`` (the CPU path): the loader (a DataLoader worker) decodes the JPEGs and
  applies the frame transform, as the video path does;
- ``on_device=True``: the loader decodes the JPEGs (OpenCV, as above) and returns the uint8
  frames as a :class:`PendingFrames` (a :class:`~tvr.data.device_loader.Deferred` field); the
  collate keeps these as a list, and the :class:`~tvr.data.device_loader.DeviceLoader` that
  every consumer reads batches through finishes them (:meth:`PendingFrames.finish`): the
  frames moved to the device and transformed there. ``--frame_decode auto`` picks this when
  the run is on CUDA.

Why the JPEGs are decoded on the CPU even then: the GPU decoder used before
(``torchvision.io.decode_jpeg``) is deprecated since torchvision 0.29. Its named successor,
TorchCodec's ``decode_jpeg`` (nvJPEG), is a separate wheel built for one torch release at a
time, and its CUDA path could not be run where this was written (no GPU), so it is not used.
Per CPU core a clip's 12 JPEGs decode in 6.6 to 10 ms, against 25 to 40 ms for the RandAugment
that this path moves to the GPU (bench/RESULTS.md §5, §7); a worker hands over the decoded
frames (about 5x the JPEG bytes) through shared memory.

Both paths draw a video's augmentation from the same seed: the loader takes one number from
torch's generator (seeded per item by :class:`tvr.data.loaders.SeededItems`), and the transform
runs under a generator seeded with it (:func:`tvr.data.frames.seeded_frame_transform`), wherever
it runs. So a batch gets the same augmentation on either path (and the same frames bit for bit on
the CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from tvr.data.device_loader import Deferred
from tvr.data.frame_cache import FrameCache, cache_key
from tvr.data.frames import frame_mask, frames_to_input, pad_frames, seeded_frame_transform
from tvr.data.video import VideoReadError


@dataclass
class PendingFrames(Deferred):
    """A video's frames, to be transformed on the device (:meth:`finish`).

    ``frames``: the decoded frames, uint8 (T, H, W, 3) (one tensor, so that a worker hands over
    one shared-memory block per video); ``seed``: the augmentation seed; ``image_size``,
    ``augment``: which transform.
    """

    frames: Tensor
    seed: int
    image_size: int
    augment: bool
    max_frames: int

    def __len__(self) -> int:
        return self.frames.shape[0]

    @classmethod
    def finish(cls, batch: list[PendingFrames], device: torch.device) -> Tensor:
        """The batch as float (B, F, 3, S, S) on ``device``: each video's frames moved there,
        then its seeded transform."""
        videos = []
        for pending in batch:
            frames = pending.frames.to(device, non_blocking=True).permute(0, 3, 1, 2)
            video = seeded_frame_transform(frames, pending.seed, pending.image_size,
                                           pending.augment)
            videos.append(pad_frames(video, pending.max_frames)[0])
        return torch.stack(videos)


class CachedFrameLoader:
    """``loader(path, start=None, end=None) -> (video, video_mask)`` from a frame cache.

    ``path`` is the video file the dataset resolved under ``video_root``; the cache is looked up
    by its relative path and the window; ``max_frames`` is the cache's. With ``on_device`` the
    ``video`` is a :class:`PendingFrames` instead of a float tensor. A video the cache recorded
    as unreadable, or does not hold, raises :class:`VideoReadError` (so ``--skip_bad_videos``
    works as usual).
    """

    def __init__(self, cache: FrameCache, video_root: str, image_size: int, augment: bool,
                 on_device: bool = False) -> None:
        self.cache = cache
        self.video_root = video_root
        self.max_frames = cache.params.sampling.max_frames
        self.image_size = image_size
        self.augment = augment
        self.on_device = on_device

    def key(self, path: str, start: float | None = None, end: float | None = None) -> str:
        return cache_key(os.path.relpath(path, self.video_root), start, end)

    def uncached(self, dataset) -> list[str]:
        """The ids of ``dataset``'s videos that the cache neither holds nor records as bad."""
        missing = []
        for video_id, (start, end) in zip(dataset.video_ids, dataset.video_bounds):
            try:
                key = self.key(str(dataset.video_files(video_id)), start, end)
            except VideoReadError:
                key = None
            if key is None or self.cache.missing([key]):
                missing.append(video_id)
        return missing

    def __call__(self, path: str, start: float | None = None,
                 end: float | None = None) -> tuple[Tensor | PendingFrames, Tensor]:
        key = self.key(path, start, end)
        if key in self.cache.bad:
            raise VideoReadError.for_file(path, f"the frame cache {self.cache.root} records it "
                                                f"as unreadable: {self.cache.bad[key]}")
        if key not in self.cache.entries:
            raise VideoReadError(f"video {path} (window {start}, {end}) is not in the frame cache "
                                 f"{self.cache.root}: rebuild the cache for these annotations",
                                 path=path, reason="not in the frame cache")
        seed = int(torch.randint(2**62, ()))
        if self.on_device:
            pending = PendingFrames(torch.from_numpy(self.cache.frames(key)[0]), seed,
                                    self.image_size, self.augment, self.max_frames)
            return pending, frame_mask(len(pending), self.max_frames)
        transform = partial(seeded_frame_transform, seed=seed, image_size=self.image_size,
                            augment=self.augment)
        return frames_to_input(self.cache.frames(key)[0], transform, self.max_frames)


class CachedVideoFiles:
    """Stands in for a dataset's :class:`tvr.data.datasets.base.VideoFiles` under
    ``--frame_cache``: a video id maps to the first accepted name the cache holds, so the video
    files themselves need not be present."""

    def __init__(self, files, cache: FrameCache) -> None:
        self.files = files
        self.root = files.root
        self.names = {key.split("@", 1)[0] for key in (*cache.entries, *cache.bad)}

    def candidates(self, video_id: str) -> list:
        return self.files.candidates(video_id)

    def __call__(self, video_id: str):
        candidates = self.candidates(video_id)
        for path in candidates:
            if os.path.relpath(path, self.root).replace(os.sep, "/") in self.names:
                return path
        raise VideoReadError(f"video {video_id!r} is not in the frame cache (looked for "
                             f"{', '.join(str(p) for p in candidates)}): rebuild the cache for "
                             "these annotations and --video_path, or pass --skip_bad_videos",
                             path=str(candidates[0]), reason="not in the frame cache")
