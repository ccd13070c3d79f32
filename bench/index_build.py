"""Index build throughput for ``python -m bench.bench_index --build demo vit-b32``.

Videos/s of ``tvr.index.build.build_index`` with ``--workers`` decoding processes, as
``python -m tvr.index build`` prints it (whole build: model load, checkpoint hash, decoding,
encoding, thumbnails, shards), and the start-up part (model load and checkpoint hash) timed
alone. "demo": ``--demo_checkpoint`` (``python main_retrieval.py`` writes one) on the videos of
``--demo_videos``. "vit-b32": a ViT-B/32 GARE model with random weights, saved as a checkpoint of
this project (no CLIP file needed: the model is rebuilt from its recorded configuration), on
``--vit_videos`` toy clips of 224 x 224 pixels, 12 s at 3 fps, sampled as the MSR-VTT recipe
samples (1 frame/s, 12 frames); all written to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tvr.data.toy import make_toy_dataset
from tvr.index.build import build_index, load_checkpoint_model
from tvr.index.config import BuildConfig
from tvr.storage import file_sha256
from tvr.data.config import SamplingConfig
from tvr.models.config import CLIP_CONFIGS, ModelConfig
from tvr.models.factory import create_model
from tvr.training.checkpoint import model_record, sampling_of, save_model


def vit_b32_checkpoint(path: Path) -> Path:
    """A ViT-B/32 GARE model with random weights, saved as a checkpoint of this project (its
    recorded configuration rebuilds it without the CLIP file)."""
    config = ModelConfig(base_encoder="ViT-B/32")
    torch.manual_seed(0)
    model = create_model(config, CLIP_CONFIGS["ViT-B/32"])
    save_model(path, model, epoch=0, global_step=0, metric=None,
               config=model_record(config, SamplingConfig(), model))
    return path


def time_build(checkpoint: Path, videos: Path, scratch: Path,
               options: argparse.Namespace) -> dict:
    """Whole builds (median videos/s) and the start-up alone (model load + checkpoint hash)."""
    start = time.perf_counter()
    model, info = load_checkpoint_model(checkpoint)
    file_sha256(checkpoint)
    startup = time.perf_counter() - start
    frames = sampling_of(info).max_frames
    del model
    rates, seconds, encoded = [], [], 0
    for run in range(options.build_repeats):
        config = BuildConfig(str(videos), str(scratch / f"index{run}"), str(checkpoint),
                             workers=options.workers, rebuild=True)
        report = build_index(config, progress=False)
        encoded = len(report.encoded)
        rates.append(encoded / report.seconds)
        seconds.append(report.seconds)
        print(f"[build {checkpoint.name}] {report.format()}", file=sys.stderr, flush=True)
    return {"videos": encoded, "frames": frames, "videos_per_s": statistics.median(rates),
            "seconds": statistics.median(seconds), "startup_s": startup, "runs": len(rates)}


def bench_build(options: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        scratch = Path(tmp)
        if "demo" in options.build:
            checkpoint = Path(options.demo_checkpoint)
            if checkpoint.is_file():
                rows.append(("demo (tiny CLIP, 32 px input)", options.demo_videos,
                             time_build(checkpoint, Path(options.demo_videos), scratch, options)))
            else:
                print(f"no {checkpoint}: train the demo model with `python main_retrieval.py`, "
                      f"or pass --demo_checkpoint", file=sys.stderr)
        if "vit-b32" in options.build:
            checkpoint = vit_b32_checkpoint(scratch / "vit_b32.pt")
            count = options.vit_videos
            toy = make_toy_dataset(scratch / "toy224", num_train=count - count // 2, num_val=0,
                                   num_test=count // 2, captions_per_video=1, size=224,
                                   num_frames=36, fps=3, workers=options.threads)
            rows.append(("ViT-B/32 (random weights, 224 px)", f"{count} toy clips, 224 px, 12 s",
                         time_build(checkpoint, toy.video_path, scratch, options)))
    print(f"\nIndex build, {options.workers} decoding workers, torch threads "
          f"{options.threads}, load {os.getloadavg()[0]:.2f} at the end:\n")
    print("| model | videos | frames per video | build s (median) | videos/s (whole build) | "
          "start-up s | videos/s after start-up | runs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, videos, r in rows:
        steady = r["videos"] / max(r["seconds"] - r["startup_s"], 1e-9)
        print(f"| {name} | {r['videos']} ({videos}) | {r['frames']} | {r['seconds']:.1f} | "
              f"{r['videos_per_s']:.2f} | {r['startup_s']:.1f} | {steady:.2f} | {r['runs']} |")
