"""Video decoding: one file, frame by frame, with OpenCV or PyAV (docs/behaviour.md §3).

Which frames are sampled, and how their exact count is found: :mod:`tvr.data.frames`.

Decoding backends (``--video_backend``): ``opencv`` (``cv2.VideoCapture``) and ``pyav`` (PyAV).
Both wrap FFmpeg and decode **sequentially from the first frame**, so "frame i" is the i-th frame
the decoder outputs, with no timestamp-to-index arithmetic (which breaks on variable frame rate
streams and makes keyframe seeking land on different frames in the two libraries); on the 3 fps
videos of ``preprocess/compress_video.py`` a full decode is cheap. Both convert to RGB with
FFmpeg's default swscale conversion and ignore rotation metadata (as decord does), so they
return identical frames. ``fps`` is the stream's average frame rate (for a stream without one,
OpenCV reports 1 / time base where PyAV gives NaN, which
:func:`tvr.data.frames.read_frames` rejects).

TorchCodec's CPU decoder was tried as a third backend: same frames, same speed per core, but
it decodes only with FFmpeg's shared libraries installed apart from pip, so it is not one
(bench/RESULTS.md §7).

Damaged streams: OpenCV ends a video at the first packet FFmpeg rejects (dropping the frames
still buffered in the decoder), and the PyAV backend does the same, so a truncated file gives
the same decodable prefix in both. A missing, unreadable or frameless video, or an empty window,
raises :class:`VideoReadError`; it never becomes a silent all-zero video.

OpenCV is imported by :class:`OpenCVReader`, when it opens a video, so that importing this
module costs none: main_retrieval.py declares and checks its flags with :data:`VIDEO_BACKENDS`
(tvr/data/config.py) and :class:`VideoReadError` before any video is opened.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import cv2

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
        import cv2  # here, not at the top: the module docstring says why
        super().__init__(path, threads)
        self._capture = self._open()
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.header_frames = count if count > 0 else None
        self._fresh = True

    def _open(self) -> cv2.VideoCapture:
        import cv2
        capture = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_N_THREADS, self.threads])
        if not capture.isOpened():
            raise VideoReadError.for_file(self.path, "FFmpeg (through OpenCV) cannot open it as "
                                                     "a video")
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
        return capture

    def _frames(self) -> Iterator[Callable[[], np.ndarray]]:
        import cv2
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


def check_video_backend(backend: str) -> None:
    """ValueError unless ``backend`` names one of :data:`VIDEO_BACKENDS`."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; "
                         f"choose from {sorted(VIDEO_BACKENDS)}")


def open_video(path: str, backend: str = "opencv", threads: int = 1) -> VideoReader:
    """Open ``path`` with the backend named ``backend`` (a key of :data:`VIDEO_BACKENDS`)."""
    check_video_backend(backend)
    return VIDEO_BACKENDS[backend](path, threads)


def _av():  # -> the av module, imported on first use (PyAV is an optional dependency)
    try:
        import av
    except ImportError as exc:
        raise ImportError("--video_backend pyav needs PyAV: pip install av") from exc
    return av
