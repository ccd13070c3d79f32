"""Does the loader keep up with the model? Training steps with the frame-cache loader in the
loop against the same steps on a batch already in memory.

Encodes ``--videos`` 3 fps, 224 px H.264 videos (as bench_loader.py), builds a JPEG frame cache
of them, and times the trainer's own step, ``Trainer.train_step`` (tvr/training/trainer.py) of
a Trainer built from main_retrieval.py's flags (``--base_encoder --arch``, random weights,
``--precision auto``: bf16 autocast on CUDA; bench/trainer_steps.py), for ``--steps`` steps
three ways: on one batch resident on the device (the step alone), with the trainer's training
loader (``VideoSource.train_loader``: ``--workers`` processes reading the cache) in the loop,
its batches moved by a DeviceLoader (frames decoded and transformed in the workers, or, with
``--frame_decode device``, decoded there and transformed on the device: the DeviceLoader
finishes them), and that loader alone (no step). If the loader hides behind the step, the second time equals the first. The first
``--warmup`` steps of each are not timed.

    python -m bench.bench_feed --arch ViT-B/32 --batch 128 --workers 8 --frame_decode device
    python -m bench.bench_feed --arch tiny --batch 8 --workers 2 --device cpu --steps 4  (smoke)
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from bench.bench_loader import make_videos
from bench.trainer_steps import TrainStep, bench_trainer, caption, seconds_per_step
from preprocess.build_frame_cache import build_cache
from tvr.data.cached_frames import CachedFrameLoader
from tvr.data.config import CacheParams, SamplingConfig
from tvr.data.datasets import RetrievalItem
from tvr.data.device_loader import DeviceLoader
from tvr.data.frame_cache import FrameCache, cache_key
from tvr.models.config import CLIP_CONFIGS
from tvr.training.trainer import Trainer


class Pairs(Dataset):
    """``length`` training pairs cycling over the cached videos, with random 32-token captions."""

    def __init__(self, loader: CachedFrameLoader, paths: list[Path], length: int) -> None:
        self.loader, self.paths, self.length = loader, paths, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> RetrievalItem:
        ids = caption(32)
        video, mask = self.loader(str(self.paths[index % len(self.paths)]))
        return RetrievalItem(ids, torch.ones_like(ids), video, mask, index, index)


def parse_flags(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B/32", choices=sorted(CLIP_CONFIGS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--frame_decode", default="device", choices=["loader", "device"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def training_loader(trainer: Trainer, args: argparse.Namespace, folder: Path) -> DeviceLoader:
    """The trainer's training loader over ``--batch x (--steps + --warmup)`` pairs of
    ``--videos`` videos encoded and cached in ``folder``, its batches on the device."""
    videos = folder / "videos"
    videos.mkdir()
    paths = make_videos(videos, args.videos, 20)
    params = CacheParams(SamplingConfig(1.0, args.frames, "opencv"))
    build_cache([(cache_key(p.name, None, None), str(p), None, None) for p in paths],
                folder / "cache", params, workers=os.cpu_count() or 1)
    cached = CachedFrameLoader(FrameCache(folder / "cache"), str(videos), trainer.image_size,
                               augment=True, on_device=args.frame_decode == "device")
    pairs = Pairs(cached, paths, args.batch * (args.steps + args.warmup))
    loader, _, _ = trainer.source.train_loader(pairs, 0, 1, args.batch)
    return DeviceLoader(loader, trainer.ctx.device)


def timings(trainer: Trainer, loader: DeviceLoader, warmup: int) -> dict[str, float]:
    """Seconds per step of the three ways (module docstring), each over the loader's length."""
    device, steps = trainer.ctx.device, len(loader)
    step = TrainStep(trainer, 2 * steps)
    batches = iter(loader)
    data = next(batches).data
    batches.close()  # its workers stop before the clocks start
    return {
        "step on a resident batch": seconds_per_step(
            (step(data) for _ in range(steps)), warmup, device),
        "step with the loader in the loop": seconds_per_step(
            (step(batch.data) for batch in loader), warmup, device),
        "loader alone": seconds_per_step(loader, warmup, device),
    }


def report(args: argparse.Namespace, device: torch.device, times: dict[str, float]) -> None:
    print(f"{args.arch}, batch {args.batch} x {args.frames} frames, {args.workers} workers, "
          f"frame_decode {args.frame_decode}, {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| what | s/step | clips/s |")
    print("|---|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.3f} | {args.batch / seconds:.0f} |")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_flags(argv)
    flags = ["--batch_size", str(args.batch), "--max_frames", str(args.frames),
             "--workers", str(args.workers), "--frame_decode", args.frame_decode]
    with bench_trainer(args.arch, args.device, flags) as trainer, \
            tempfile.TemporaryDirectory() as folder:
        times = timings(trainer, training_loader(trainer, args, Path(folder)), args.warmup)
        device = trainer.ctx.device
    report(args, device, times)


if __name__ == "__main__":
    main()
