"""The frame pipeline: a video file to model input, decode -> sample -> transform -> pad.

Every path from a video to the model's input runs through these functions (docs/behaviour.md
§3): the datasets' :class:`VideoFrameLoader`, the frame cache's build
(``preprocess/build_frame_cache.py``) and loader (:mod:`tvr.data.cached_frames`), and the index
build (:class:`tvr.index.build.VideoFiles`). They differ only in where the frames come from (a
decoded video or the cache) and in what they keep besides (the index: times, duration and
thumbnails).

* :class:`SamplingConfig`: which frames (``--video_framerate``, ``--max_frames``,
  ``--video_backend``);
* :func:`sample_frames`: a video file's sampled frames, with their indices and times;
* :func:`frame_transform`, :func:`seeded_frame_transform`: the train or eval transform;
* :func:`pad_frames`, :func:`frames_to_input`: zero-padded to ``max_frames``, with the mask.

Frame sampling (:func:`sample_frame_indices`) follows the reference's decord loader:

* a window ``[start, end]`` in seconds, when given, is first truncated to whole seconds
  (``int(start)``, ``int(end)``), clamped at 0, swapped if reversed, and widened to
  ``end = start + 1`` if both are equal; a missing ``start`` is 0 and a missing ``end`` is the
  end of the video;
* its first frame is ``int(start * fps)`` and its last frame ``int(min(end * fps, n - 1))``, both
  included, where ``n`` is the number of frames (so the window is also clamped at the video's
  end, and it is empty when it starts after the last frame);
* every ``stride = round(fps / framerate)``-th frame of the window is a candidate (Python's
  ``round``, i.e. halves go to the even integer as in the reference; at least 1);
* with more than ``max_frames`` candidates, ``np.linspace(0, k - 1, max_frames)`` cast to int
  picks ``max_frames`` of them.

Frame count: ``n`` is the number of frames the decoder actually delivers, as decord's ``len``
counts frames (decoding: :mod:`tvr.data.video`). The container's count is only a hint:
:func:`read_frames` plans with it and decodes one frame past the window's last frame, which
proves the plan right (one pass, the usual case) or gives the exact count to re-plan with (rare:
one or two more passes). Without a hint it counts the frames first. Both backends therefore agree
on ``n``. A video without a usable frame rate, or an empty window, raises
:class:`VideoReadError`; it never becomes a silent all-zero input.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from tvr.data.config import SamplingConfig
from tvr.data.transforms import FrameEvalTransform, build_frame_transform
from tvr.data.video import VideoReader, VideoReadError, open_video


def frame_window(num_frames: int, fps: float, start: float | None = None,
                 end: float | None = None) -> tuple[int, int]:
    """First and last frame (both included) of the window ``[start, end]`` seconds.

    See the module docstring for the rules; ``last < first`` means the window is empty.
    """
    first_s = 0 if start is None else max(int(start), 0)
    if end is None:
        return int(first_s * fps), num_frames - 1
    last_s = max(int(end), 0)
    if first_s > last_s:
        first_s, last_s = last_s, first_s
    elif first_s == last_s:
        last_s = first_s + 1
    return int(first_s * fps), int(min(last_s * fps, num_frames - 1))


def sample_frame_indices(num_frames: int, fps: float, framerate: float, max_frames: int,
                         start: float | None = None, end: float | None = None) -> np.ndarray:
    """Indices (int64, increasing) of the frames sampled from a video of ``num_frames`` frames.

    ``framerate`` is the wanted frames per second (``--video_framerate``), ``max_frames`` the
    most frames kept (``--max_frames``); the result is empty when the window holds no frame.
    """
    if framerate <= 0 or max_frames < 1 or not fps > 0:
        raise ValueError(f"need framerate > 0, max_frames >= 1 and fps > 0; got {framerate}, "
                         f"{max_frames}, {fps}")
    first, last = frame_window(num_frames, fps, start, end)
    stride = max(1, int(round(float(fps) / framerate)))
    positions = np.arange(first, last + 1, stride, dtype=np.int64)
    if len(positions) > max_frames:
        positions = positions[np.linspace(0, len(positions) - 1, num=max_frames).astype(int)]
    return positions


def read_frames(video: VideoReader, framerate: float, max_frames: int, start: float | None = None,
                end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The sampled frames of the open ``video`` (RGB uint8 (T, H, W, 3), 1 <= T <= max_frames)
    and their indices, as :func:`sample_frame_indices` with the exact frame count (module
    docstring)."""
    if not video.fps > 0:
        raise VideoReadError.for_file(video.path,
                                      f"the stream reports no usable frame rate ({video.fps})")
    count, exact = video.header_frames, False
    if count is None:
        count, exact = video.num_frames, True
    while True:
        indices = sample_frame_indices(count, video.fps, framerate, max_frames, start, end)
        if len(indices) == 0:
            if exact:
                reason = ("no frame decodes" if count == 0 else
                          f"the window start={start} end={end} s holds no frame of its {count} "
                          f"frames at {video.fps:g} fps")
                raise VideoReadError.for_file(video.path, reason)
            count, exact = video.num_frames, True
            continue
        last = frame_window(count, video.fps, start, end)[1]
        frames, decoded = video.decode(indices.tolist(), last + 1)
        # Frame `last + 1` decoding proves n > last + 1, which matters only if `last` was the
        # video's (supposed) last frame; stopping right after `last` proves n == last + 1.
        if decoded == last + 1 or (decoded == last + 2 and last < count - 1):
            return np.stack([frames[int(i)] for i in indices]), indices
        if exact:
            raise VideoReadError.for_file(video.path, "decoding is not repeatable: the frame "
                                                      "count changed between two passes")
        # The stream ended before `last + 1`: `decoded` is the count; else it goes on past the
        # header's count, which must then be counted.
        count, exact = (decoded if decoded <= last else video.num_frames), True


class SampledFrames(NamedTuple):
    """A video's sampled ``frames`` (RGB uint8 (T, H, W, 3)), their ``indices`` in it (int64,
    increasing), the stream's ``fps`` and ``header_frames`` (the container's frame count,
    ``None`` if unknown)."""

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    header_frames: int | None

    @property
    def times(self) -> np.ndarray:
        """Each sampled frame's time in the video, in seconds."""
        return self.indices / self.fps

    @property
    def duration(self) -> float:
        """The video's length in seconds: the container's frame count (if unknown, up to the
        last sampled frame) over fps."""
        return (self.header_frames or int(self.indices[-1]) + 1) / self.fps


def sample_frames(path: str, sampling: SamplingConfig, start: float | None = None,
                  end: float | None = None, threads: int = 1) -> SampledFrames:
    """The frames that ``sampling`` picks from the window ``[start, end]`` s of the video file
    ``path``, decoded with ``threads`` threads; :class:`VideoReadError` for a bad video."""
    with open_video(path, sampling.video_backend, threads) as video:
        frames, indices = read_frames(video, sampling.video_framerate, sampling.max_frames,
                                      start, end)
        return SampledFrames(frames, indices, video.fps, video.header_frames)


@lru_cache(maxsize=None)
def frame_transform(image_size: int, augment: bool) -> FrameEvalTransform:
    """The (stateless) train or eval transform, built once per process."""
    return build_frame_transform(image_size, augment)


def seeded_frame_transform(frames: Tensor, seed: int, image_size: int, augment: bool) -> Tensor:
    """The transform of uint8 (T, 3, H, W) ``frames`` with torch's generator seeded by ``seed``
    (so it draws the same augmentation wherever it runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return frame_transform(image_size, augment)(frames)


def frame_mask(count: int, max_frames: int) -> Tensor:
    """int64 (max_frames,): 1 on the first ``count`` frames, 0 on the padding."""
    mask = torch.zeros(max_frames, dtype=torch.int64)
    mask[:count] = 1
    return mask


def pad_frames(frames: Tensor, max_frames: int) -> tuple[Tensor, Tensor]:
    """(T, ...) ``frames`` zero-padded to (max_frames, ...) and their int64 (max_frames,) frame
    mask (1 on the T real frames)."""
    padded = frames.new_zeros((max_frames, *frames.shape[1:]))
    padded[:frames.shape[0]] = frames
    return padded, frame_mask(frames.shape[0], max_frames)


def frames_to_input(frames: np.ndarray, transform: Callable[[Tensor], Tensor],
                    max_frames: int) -> tuple[Tensor, Tensor]:
    """Sampled RGB uint8 (T, H, W, 3) ``frames`` as model input: ``transform`` applied to them as
    a uint8 (T, 3, H, W) tensor, then :func:`pad_frames`."""
    return pad_frames(transform(torch.from_numpy(frames).permute(0, 3, 1, 2)), max_frames)


class VideoFrameLoader:
    """``loader(path, start=None, end=None) -> (video, video_mask)`` for the datasets.

    ``video`` is float (max_frames, 3, S, S): ``transform`` applied to the sampled frames (given
    as a uint8 (T, 3, H, W) tensor) and zero-padded after the T real frames; ``video_mask`` is
    int64 (max_frames,), 1 on the real frames. Raises :class:`VideoReadError` for a bad video.
    """

    def __init__(self, sampling: SamplingConfig, transform: Callable[[Tensor], Tensor],
                 threads: int = 1) -> None:
        self.sampling = sampling
        self.transform = transform
        self.threads = threads

    def __call__(self, path: str, start: float | None = None,
                 end: float | None = None) -> tuple[Tensor, Tensor]:
        sampled = sample_frames(path, self.sampling, start, end, self.threads)
        return frames_to_input(sampled.frames, self.transform, self.sampling.max_frames)
