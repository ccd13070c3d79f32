"""Throughput of a full GARE training step and of evaluation encoding, any CLIP size, any device.

    python -m bench.bench_model_step --arch ViT-B/32 --batch 128 --frames 12 --device cuda
    python -m bench.bench_model_step --arch tiny --batch 32 --frames 12 --device cpu

A training step = encode B captions and B clips of F frames (224 px for the OpenAI sizes), the
GARE similarity and losses on the B x B matrix, backward, global clip, BertAdam, logit clamp —
the loop of tvr/training/trainer.py without data loading. CLIP weights are random (the timing
does not depend on them). Evaluation encoding = videos per second through CLIP + seqTransf.
Prints one markdown row per precision.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from tvr.models.clip import CLIP, CLIP_CONFIGS
from tvr.models.gare import GARE
from tvr.training.optim import build_optimizer, clamp_logit_scale


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(arch: str, batch: int, frames: int, words: int, device: torch.device, precision: str,
        steps: int, warmup: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = GARE(CLIP(CLIP_CONFIGS[arch])).to(device)
    size = model.clip.config.image_size
    video = torch.randn(batch, frames, 3, size, size, device=device)
    video_mask = torch.ones(batch, frames, dtype=torch.long, device=device)
    ids = torch.randint(1, 49000, (batch, words), device=device)
    ids[:, -1] = 49407
    text_mask = torch.ones_like(ids)
    optimizer = build_optimizer(model, 1e-4, 1e-3, 0.2, 0.1, steps + warmup, 1)
    autocast = (contextlib.nullcontext() if precision == "fp32" else
                torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            tic = time.perf_counter()
        with autocast:
            loss = model(ids, text_mask, video, video_mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        clamp_logit_scale(model)
    sync(device)
    step_time = (time.perf_counter() - tic) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model.eval()
    with torch.no_grad(), autocast:
        model.encode_video(video, video_mask)
        sync(device)
        tic = time.perf_counter()
        for _ in range(steps):
            model.encode_video(video, video_mask)
        sync(device)
    videos_per_s = batch * steps / (time.perf_counter() - tic)
    return step_time, peak, videos_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B/32", choices=sorted(CLIP_CONFIGS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"],
                        choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.arch}, batch {args.batch} x {args.frames} frames, {args.words} words, {name}")
    print("| precision | train step (s) | clips/s (train) | peak GPU memory (GiB) | "
          "eval encoding (videos/s) |\n|---|---|---|---|---|")
    for precision in args.precision:
        step, peak, videos = run(args.arch, args.batch, args.frames, args.words, device,
                                 precision, args.steps, args.warmup)
        print(f"| {precision} | {step:.3f} | {args.batch / step:.1f} | {peak:.1f} | {videos:.0f} |")


if __name__ == "__main__":
    main()
