"""Video decoding and frame sampling (docs/behaviour.md §3).

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

Decoding backends (``--video_backend``): ``opencv`` (``cv2.VideoCapture``) and ``pyav`` (PyAV).
Both wrap FFmpeg and decode **sequentially from the first frame**, so "frame i" is the i-th frame
the decoder outputs, with no timestamp-to-index arithmetic (which breaks on variable frame rate
streams and makes keyframe seeking land on different frames in the two libraries); on the 3 fps
videos of ``preprocess/compress_video.py`` a full decode is cheap. Both convert to RGB with
FFmpeg's default swscale conversion and ignore rotation metadata (as decord does), so they
return identical frames. ``fps`` is the stream's average frame rate (for a stream without one,
OpenCV reports 1 / time base where PyAV gives NaN, which :func:`read_frames` rejects).

Frame count: ``n`` is the number of frames the decoder actually delivers, as decord's ``len``
counts frames. The container's count (PyAV ``stream.frames``; OpenCV ``CAP_PROP_FRAME_COUNT``,
which is the same field for MP4 but a duration x fps *estimate* for e.g. Matroska, and can be
wrong) is only a hint: :func:`read_frames` plans with it and decodes one frame past the window's
last frame, which proves the plan right (one pass, the usual case) or gives the exact count to
re-plan with (rare: one or two more passes). Without a hint it counts the frames first. Both
backends therefore agree on ``n``.

Damaged streams: OpenCV ends a video at the first packet FFmpeg rejects (dropping the frames
still buffered in the decoder), and the PyAV backend does the same, so a truncated file gives
the same decodable prefix in both. A missing, unreadable or frameless video, or an empty window,
raises :class:`VideoReadError`; it never becomes a silent all-zero clip.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

VIDEO_READ_HINT = ("re-encode it with preprocess/compress_video.py (and check the caption's "
                   "start/end times if it has some), or pass --skip_bad_videos to skip such "
                   "videos and list them in a report at the end of the epoch")


class VideoReadError(OSError):
    """A video cannot be turned into frames: missing, unreadable, or no frame to sample.

    ``path`` and ``reason`` are kept as attributes for the skip report; the message names both
    and says what to do.
    """

    def __init__(self, message: str, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_file(cls, path: str, reason: str) -> VideoReadError:
        """The error for ``path`` failing because of ``reason``, with the remedy in the message."""
        return cls(f"cannot read video {path}: {reason}; {VIDEO_READ_HINT}", path, reason)


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


class VideoReader(ABC):
    """One open video file, decoded sequentially from its first frame (a context manager).

    Subclasses open the file in ``__init__`` (raising :class:`VideoReadError`), set ``fps`` and
    ``header_frames`` (the container's frame count, ``None`` if unknown) and implement
    :meth:`_frames`.
    """

    fps: float
    header_frames: int | None

    def __init__(self, path: str, threads: int = 1) -> None:
        if not os.path.isfile(path):
            raise VideoReadError.for_file(path, "no such file")
        self.path = path
        self.threads = threads
        self._num_frames: int | None = None

    @abstractmethod
    def _frames(self) -> Iterator[Callable[[], np.ndarray]]:
        """Decode from the first frame on (again on every call); per decoded frame yield a
        function that returns it as RGB uint8 (H, W, 3), valid until the next frame is decoded."""

    @abstractmethod
    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, keep: Iterable[int], stop: int) -> tuple[dict[int, np.ndarray], int]:
        """Decode frames ``0..stop`` (or to the end of the stream, if sooner).

        Returns the frames whose index is in ``keep`` (RGB uint8 (H, W, 3)) and the number of
        frames decoded.
        """
        wanted = set(keep)
        frames: dict[int, np.ndarray] = {}
        decoded = 0
        for index, get_frame in enumerate(self._frames()):
            if index in wanted:
                frames[index] = get_frame()
            decoded = index + 1
            if index >= stop:
                break
        return frames, decoded

    @property
    def num_frames(self) -> int:
        """The exact number of decodable frames (a full decode on first use, then cached)."""
        if self._num_frames is None:
            self._num_frames = sum(1 for _ in self._frames())
        return self._num_frames

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) as RGB uint8 (T, H, W, 3)."""
        if len(indices) == 0 or min(indices) < 0:
            raise ValueError(f"need a non-empty list of frame indices >= 0, got {indices!r}")
        last = int(max(indices))
        frames, decoded = self.decode((int(i) for i in indices), last)
        if decoded <= last:
            raise VideoReadError.for_file(self.path, f"frame {last} requested but only {decoded} "
                                               "frames decode")
        return np.stack([frames[int(i)] for i in indices])


class OpenCVReader(VideoReader):
    """``cv2.VideoCapture`` with the FFmpeg backend, ``threads`` decoding threads, no
    auto-rotation. ``header_frames`` is ``CAP_PROP_FRAME_COUNT`` (possibly an estimate)."""

    def __init__(self, path: str, threads: int = 1) -> None:
        super().__init__(path, threads)
        self._capture = self._open()
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.header_frames = count if count > 0 else None
        self._fresh = True

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_N_THREADS, self.threads])
        if not capture.isOpened():
            raise VideoReadError.for_file(self.path, "FFmpeg (through OpenCV) cannot open it as "
                                                     "a video")
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
        return capture

    def _frames(self) -> Iterator[Callable[[], np.ndarray]]:
        if not self._fresh:
            self._capture.release()
            self._capture = self._open()
        self._fresh = False
        capture = self._capture

        def retrieve() -> np.ndarray:
            ok, bgr = capture.retrieve()
            if not ok:
                raise VideoReadError.for_file(self.path, "OpenCV decoded a frame it cannot convert")
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        while capture.grab():
            yield retrieve

    def close(self) -> None:
        self._capture.release()


class PyAVReader(VideoReader):
    """PyAV (``av``) on the first video stream, ``threads`` decoding threads (frame and slice
    threading when above 1). ``header_frames`` is ``stream.frames`` (``None`` when 0).

    As in OpenCV, the first packet that FFmpeg rejects ends the stream (e.g. a truncated file
    gives the frames before the cut, and frames still buffered in the decoder are dropped).
    """

    def __init__(self, path: str, threads: int = 1) -> None:
        super().__init__(path, threads)
        self._container = None
        self._open()
        stream = self._container.streams.video[0]
        rate = stream.average_rate
        self.fps = float(rate) if rate is not None else math.nan
        self.header_frames = stream.frames if stream.frames > 0 else None
        self._fresh = True

    def _open(self) -> None:
        av = _av()
        try:
            self._container = av.open(self.path)
        except av.error.FFmpegError as exc:
            raise VideoReadError.for_file(self.path,
                                          f"FFmpeg (through PyAV) cannot open it: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError.for_file(self.path, "it has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_count = self.threads
        if self.threads != 1:
            stream.thread_type = "AUTO"

    def _frames(self) -> Iterator[Callable[[], np.ndarray]]:
        if not self._fresh:
            self._container.close()
            self._open()
        self._fresh = False
        av = _av()
        stream = self._container.streams.video[0]
        try:
            for packet in self._container.demux(stream):
                for frame in packet.decode():
                    yield lambda frame=frame: frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError:
            return  # like OpenCV: a packet the demuxer or decoder rejects ends the stream

    def close(self) -> None:
        self._container.close()


VIDEO_BACKENDS: dict[str, type[VideoReader]] = {"opencv": OpenCVReader, "pyav": PyAVReader}


def open_video(path: str, backend: str = "opencv", threads: int = 1) -> VideoReader:
    """Open ``path`` with the backend named ``backend`` (a key of :data:`VIDEO_BACKENDS`)."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; "
                         f"choose from {sorted(VIDEO_BACKENDS)}")
    return VIDEO_BACKENDS[backend](path, threads)


def read_frames(video: VideoReader, framerate: float, max_frames: int, start: float | None = None,
                end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The sampled frames of ``video`` (RGB uint8 (T, H, W, 3), 1 <= T <= max_frames) and their
    indices, as :func:`sample_frame_indices` with the exact frame count (module docstring)."""
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


class VideoFrameLoader:
    """``loader(path, start=None, end=None) -> (video, video_mask)`` for the datasets.

    ``video`` is float (max_frames, 3, S, S): ``transform`` applied to the sampled frames (given
    as a uint8 (T, 3, H, W) tensor) and zero-padded after the T real frames; ``video_mask`` is
    int64 (max_frames,), 1 on the real frames. Raises :class:`VideoReadError` for a bad video.
    """

    def __init__(self, backend: str, framerate: float, max_frames: int,
                 transform: Callable[[torch.Tensor], torch.Tensor], threads: int = 1) -> None:
        if backend not in VIDEO_BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; "
                             f"choose from {sorted(VIDEO_BACKENDS)}")
        self.backend = backend
        self.framerate = framerate
        self.max_frames = max_frames
        self.transform = transform
        self.threads = threads

    def __call__(self, path: str, start: float | None = None,
                 end: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with open_video(path, self.backend, self.threads) as video:
            frames, _ = read_frames(video, self.framerate, self.max_frames, start, end)
        return pad_frames(self.transform(torch.from_numpy(frames).permute(0, 3, 1, 2)),
                          self.max_frames)


def pad_frames(clip: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (T, ...) clip zero-padded to (max_frames, ...) and its int64 (max_frames,) frame mask
    (1 on the T real frames)."""
    padded = clip.new_zeros((max_frames, *clip.shape[1:]))
    padded[:clip.shape[0]] = clip
    return padded, frame_mask(clip.shape[0], max_frames)


def frame_mask(count: int, max_frames: int) -> torch.Tensor:
    """int64 (max_frames,): 1 on the first ``count`` frames, 0 on the padding."""
    mask = torch.zeros(max_frames, dtype=torch.int64)
    mask[:count] = 1
    return mask


def _av():  # -> the av module, imported on first use (PyAV is an optional dependency)
    try:
        import av
    except ImportError as exc:
        raise ImportError("--video_backend pyav needs PyAV: pip install av") from exc
    return av
