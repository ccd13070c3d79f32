"""Does the loader keep up with the model? Training steps with the frame-cache loader in the
loop against the same steps on a batch already in memory.

Encodes ``--videos`` 3 fps, 224 px H.264 videos (as bench_loader.py), builds a JPEG frame cache
of them, and trains GARE (``--arch``, random init, bf16 autocast on CUDA) with the reference's
optimiser for ``--steps`` steps three ways: on one synthetic batch resident on the device (the
step alone), with a DataLoader of ``--workers`` processes reading the cache in the loop (frames
decoded in the workers, or batched on the device with ``--frame_decode device``), and the
loader alone (no step). If the loader hides behind the step, the second time equals the first.
The first ``--warmup`` steps of each are not timed.

    python -m bench.bench_feed --arch ViT-B/32 --batch 128 --workers 8 --frame_decode device
    python -m bench.bench_feed --arch tiny --batch 8 --workers 2 --device cpu --steps 4  (smoke)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from bench.bench_loader import make_videos
from preprocess.build_frame_cache import build_cache
from tvr.data.cached_frames import CachedFrameLoader, to_device
from tvr.data.datasets import RetrievalItem, collate_skipping
from tvr.data.frame_cache import CacheParams, FrameCache, cache_key
from tvr.data.config import SamplingConfig
from tvr.data.loaders import SeededItems
from tvr.models.clip import CLIP, CLIP_CONFIGS
from tvr.models.gare import GARE
from tvr.training.optim import build_optimizer, clamp_logit_scale


class Pairs(Dataset):
    """``length`` training pairs cycling over the cached videos, with random 32-token ids."""

    def __init__(self, loader: CachedFrameLoader, paths: list[Path], length: int) -> None:
        self.loader, self.paths, self.length = loader, paths, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> RetrievalItem:
        ids = torch.zeros(32, dtype=torch.long)
        ids[:20] = torch.randint(1, 49000, (20,))
        ids[0], ids[19] = 49406, 49407
        video, mask = self.loader(str(self.paths[index % len(self.paths)]))
        return RetrievalItem(ids, (ids != 0).long(), video, mask, index, index)


def timed(steps, warmup: int, device: torch.device) -> float:
    """Seconds per step of the iterator ``steps`` after ``warmup`` steps."""
    for i, _ in enumerate(steps):
        if i + 1 == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, done = time.perf_counter(), 0
        elif i + 1 > warmup:
            done += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / done


def main() -> None:
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
    args = parser.parse_args()
    device = torch.device(args.device)
    size = CLIP_CONFIGS[args.arch].image_size
    torch.manual_seed(0)
    model = GARE(CLIP(CLIP_CONFIGS[args.arch])).to(device).train()
    optimizer = build_optimizer(model, 1e-4, 1e-3, 0.2, 0.1, args.steps, 1)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def step(batch: RetrievalItem) -> float:
        ids, mask, video_mask = (t.to(device, non_blocking=True)
                                 for t in (batch.text_ids, batch.text_mask, batch.video_mask))
        video = to_device(batch.video, device)
        with autocast:
            loss = model(ids, mask, video, video_mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        clamp_logit_scale(model)
        return loss

    with tempfile.TemporaryDirectory() as folder:
        videos = Path(folder) / "videos"
        videos.mkdir()
        paths = make_videos(videos, args.videos, 20)
        params = CacheParams(SamplingConfig(1.0, args.frames, "opencv"))
        build_cache([(cache_key(p.name, None, None), str(p), None, None) for p in paths],
                    Path(folder) / "cache", params, workers=os.cpu_count() or 1)
        cached = CachedFrameLoader(FrameCache(Path(folder) / "cache"), str(videos), size,
                                   augment=True, on_device=args.frame_decode == "device")
        items = SeededItems(Pairs(cached, paths, args.batch * (args.steps + args.warmup)), 0)
        loader = DataLoader(items, batch_size=args.batch, num_workers=args.workers,
                            collate_fn=collate_skipping, pin_memory=device.type == "cuda",
                            drop_last=True)
        resident = next(iter(DataLoader(items, batch_size=args.batch,
                                        collate_fn=collate_skipping))).data
        resident = resident._replace(video=to_device(resident.video, device))
        synthetic = timed((step(resident) for _ in range(args.steps + args.warmup)),
                          args.warmup, device)
        in_loop = timed((step(batch.data) for batch in loader), args.warmup, device)
        alone = timed((to_device(batch.data.video, device) for batch in loader), args.warmup,
                      device)
    print(f"{args.arch}, batch {args.batch} x {args.frames} frames, {args.workers} workers, "
          f"frame_decode {args.frame_decode}, {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| what | s/step | clips/s |")
    print("|---|---:|---:|")
    for name, seconds in (("step on a resident batch", synthetic),
                          ("step with the loader in the loop", in_loop),
                          ("loader alone", alone)):
        print(f"| {name} | {seconds:.3f} | {args.batch / seconds:.0f} |")


if __name__ == "__main__":
    main()
