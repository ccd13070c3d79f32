"""Decoding on one CPU core: the frame cache's JPEGs per decoder, and a clip per video decoder.

Encodes ``--videos`` 3 fps H.264 videos with a 224 px short side (as bench_loader.py) and builds
a JPEG frame cache of them (12 frames at 1 fps, 4:4:4, quality 95). Then:

- **JPEG**: every cached clip's frames decoded ``--repeats`` times by each decoder: ``opencv``
  (``tvr.data.frame_cache.decode_jpegs``, what the cache reader uses), ``torchvision``
  (``torchvision.io.decode_jpeg``, the one it replaced; deprecated since torchvision 0.29, the
  row is left out once it is gone) and ``torchcodec`` (``torchcodec.decoders.decode_jpeg``, when
  installed);
- **video**: the same clips' sampled frames read from the mp4 (sequential decode up to the last
  one) by each ``--video_backend`` and by TorchCodec's CPU ``VideoDecoder`` (not a backend:
  bench/RESULTS.md §7 says why), when it loads.

Each decoder's frames are compared with OpenCV's. torch, OpenCV and FFmpeg use one thread, so
the rates are per core. The table gives the best and the median of the repeats.

    python -m bench.bench_decode     (from the repository root)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.bench_loader import make_videos
from preprocess.build_frame_cache import build_cache
from tvr.data.config import SamplingConfig
from tvr.data.frame_cache import CacheParams, FrameCache, cache_key, decode_jpegs
from tvr.data.video import VIDEO_BACKENDS, open_video

Decoder = Callable[[np.ndarray, list[int], list[int]], np.ndarray]


def torchvision_jpegs() -> Decoder | None:
    """torchvision's JPEG decoder (CHW tensors), as RGB (T, H, W, 3); None once it is gone."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None

    def decode(data: np.ndarray, lengths: list[int], shape: list[int]) -> np.ndarray:
        with warnings.catch_warnings():  # deprecated: measured here as the decoder replaced
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            frames = decode_jpeg(list(torch.from_numpy(data).split(lengths)))
        return torch.stack(frames).permute(0, 2, 3, 1).numpy()
    return decode


def torchcodec_jpegs() -> Decoder | None:
    """TorchCodec's JPEG decoder on the CPU, as RGB (T, H, W, 3); None if not installed."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:
        return None

    def decode(data: np.ndarray, lengths: list[int], shape: list[int]) -> np.ndarray:
        frames = decode_jpeg(list(torch.from_numpy(data).split(lengths)))
        return torch.stack(frames).permute(0, 2, 3, 1).numpy()
    return decode


def torchcodec_video() -> Callable[[str, list[int]], np.ndarray] | str:
    """A reader of frames ``indices`` of an mp4 with TorchCodec's CPU decoder, or why none."""
    try:
        from torchcodec.decoders import VideoDecoder  # its FFmpeg libraries load on first use
    except ImportError as exc:
        return f"not installed ({exc})"

    def read(path: str, indices: list[int]) -> np.ndarray:
        decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1,
                               seek_mode="approximate")
        return decoder.get_frames_at(indices).data.numpy()
    return read


def backend_video(backend: str) -> Callable[[str, list[int]], np.ndarray]:
    def read(path: str, indices: list[int]) -> np.ndarray:
        with open_video(path, backend, threads=1) as reader:
            return reader.read(indices)
    return read


def rates(run: Callable[[], object], repeats: int, clips: int) -> tuple[float, float]:
    """Best and median clips/s of ``repeats`` timed calls of ``run`` (after one untimed)."""
    run()
    measured = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        measured.append(clips / (time.perf_counter() - start))
    return max(measured), statistics.median(measured)


def row(what: str, name: str, frames_per_clip: float, best: float, median: float,
        same: bool) -> str:
    return (f"| {what} | {name} | {best:.1f} | {median:.1f} | {1000 / best:.2f} | "
            f"{best * frames_per_clip:.0f} | {'yes' if same else 'NO'} |")


def jpeg_rows(cache: FrameCache, repeats: int) -> list[str]:
    """One row per JPEG decoder: all cached clips decoded, per repeat."""
    clips = [(*cache.stored(key), entry["shape"]) for key, (_, entry) in cache.entries.items()]
    want = [decode_jpegs(*clip) for clip in clips]
    decoders = {"opencv": decode_jpegs, "torchvision": torchvision_jpegs(),
                "torchcodec": torchcodec_jpegs()}
    rows = []
    for name, decode in decoders.items():
        if decode is None:
            print(f"JPEG {name}: not installed")
            continue
        same = all(np.array_equal(decode(*clip), frames) for clip, frames in zip(clips, want))
        best, median = rates(lambda: [decode(*clip) for clip in clips], repeats, len(clips))
        frames = statistics.mean(len(lengths) for _, lengths, _ in clips)
        rows.append(row("JPEG", name, frames, best, median, same))
    return rows


def video_rows(cache: FrameCache, paths: list[Path], repeats: int) -> list[str]:
    """One row per video decoder: every video's cached frames read from the mp4, per repeat."""
    clips = [(str(path), [int(i) for i in cache.indices(cache_key(path.name, None, None))])
             for path in paths]
    readers = {backend: backend_video(backend) for backend in VIDEO_BACKENDS}
    readers["torchcodec"] = torchcodec_video()
    want = [readers["opencv"](*clip) for clip in clips]
    rows = []
    for name, read in readers.items():
        if isinstance(read, str):
            print(f"video {name}: {read}")
            continue
        try:
            same = all(np.array_equal(read(*clip), frames) for clip, frames in zip(clips, want))
        except RuntimeError as exc:  # TorchCodec without the FFmpeg libraries it links to
            print(f"video {name}: cannot decode: {str(exc).splitlines()[0]}")
            continue
        best, median = rates(lambda: [read(*clip) for clip in clips], repeats, len(clips))
        decoded = statistics.mean(max(indices) + 1 for _, indices in clips)
        rows.append(row("video", name, decoded, best, median, same))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="distinct video files (clips)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each video")
    parser.add_argument("--max_frames", type=int, default=12)
    parser.add_argument("--video_framerate", type=float, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per decoder")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as folder:
        videos = Path(folder) / "videos"
        videos.mkdir()
        paths = make_videos(videos, args.videos, args.seconds)
        entries = [(cache_key(path.name, None, None), str(path), None, None) for path in paths]
        sampling = SamplingConfig(args.video_framerate, args.max_frames, "opencv")
        build_cache(entries, Path(folder) / "cache", CacheParams(sampling), workers=1)
        cache = FrameCache(Path(folder) / "cache")
        rows = jpeg_rows(cache, args.repeats) + video_rows(cache, paths, args.repeats)
    print(f"\n{len(paths)} videos of {args.seconds:g} s, 3 fps, 224 px short side; "
          f"{args.max_frames} frames at {args.video_framerate:g} fps a clip; one thread\n")
    print("| what | decoder | best clips/s | median clips/s | ms per clip | frames/s "
          "| same pixels as opencv |")
    print("|---|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
