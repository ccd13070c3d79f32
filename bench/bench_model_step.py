"""Throughput of a full GARE training step and of evaluation encoding, any CLIP size, any device.

    python -m bench.bench_model_step --arch ViT-B/32 --batch 128 --frames 12 --device cuda
    python -m bench.bench_model_step --arch tiny --batch 32 --frames 12 --device cpu

A training step is the trainer's own, ``Trainer.train_step`` (tvr/training/trainer.py) of a
Trainer built from main_retrieval.py's flags (``--precision`` per row): encode B captions and
B clips of F frames (224 px for the OpenAI sizes), the GARE similarity and losses on the B x B
matrix, backward, global clip, BertAdam, logit clamp, without data loading (one synthetic batch
moved to the device once by a DeviceLoader). CLIP weights are random (the timing does not
depend on them; bench/trainer_steps.py). Evaluation encoding = videos per second through
CLIP + seqTransf under the same autocast. Prints one markdown row per precision.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from bench.trainer_steps import (TrainStep, bench_trainer, resident, seconds_per_step,
                                 synthetic_pairs)
from tvr.models.config import CLIP_CONFIGS


def run(arch: str, batch: int, frames: int, words: int, device: str, precision: str,
        steps: int, warmup: int) -> tuple[float, float, float]:
    """(seconds per training step, peak GPU memory in GiB, videos encoded per second)."""
    flags = ["--precision", precision, "--batch_size", str(batch), "--max_frames", str(frames),
             "--max_words", str(words)]
    with bench_trainer(arch, device, flags) as trainer:
        model, where = trainer.model, trainer.ctx.device
        data = resident(synthetic_pairs(batch, frames, words, trainer.image_size), where)
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        step = TrainStep(trainer, warmup + steps)
        step_time = seconds_per_step((step(data) for _ in range(warmup + steps)), warmup, where)
        peak = (torch.cuda.max_memory_allocated(where) / 2**30 if where.type == "cuda"
                else float("nan"))
        model.eval()
        with torch.no_grad(), trainer.autocast():
            encodings = (model.encode_video(data.video, data.video_mask)
                         for _ in range(1 + steps))
            videos_per_s = batch / seconds_per_step(encodings, 1, where)
    return step_time, peak, videos_per_s


def main(argv: Optional[Sequence[str]] = None) -> None:
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
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.arch}, batch {args.batch} x {args.frames} frames, {args.words} words, {name}")
    print("| precision | train step (s) | clips/s (train) | peak GPU memory (GiB) | "
          "eval encoding (videos/s) |\n|---|---|---|---|---|")
    for precision in args.precision:
        step, peak, videos = run(args.arch, args.batch, args.frames, args.words, args.device,
                                 precision, args.steps, args.warmup)
        print(f"| {precision} | {step:.3f} | {args.batch / step:.1f} | {peak:.1f} | {videos:.0f} |")


if __name__ == "__main__":
    main()
