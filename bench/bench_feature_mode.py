"""Training steps per second: feature mode (cached CLIP outputs) against the full model.

    python -m bench.bench_feature_mode --arch tiny ViT-B/32 --threads 1

Per architecture (random weights: the timing does not depend on them), one batch of B captions
and B videos of F frames (224 px for ViT-B/32) is made once and every step reuses it, so data
loading is excluded on both sides. Each step is ``Trainer.train_step`` of a trainer built as
main_retrieval.py builds it (bench/trainer_steps.py):

- ``full``: the trainer's step of the recipe (``--coef_lr 1e-3``): both CLIP towers forward
  and backward, seqTransf, the GARE similarity and losses on the B x B matrix, global norm
  clip, BertAdam, logit clamp;
- ``full, coef_lr 0``: the same with the towers frozen (CLIP forward only, as the trainer
  does for ``--coef_lr 0``);
- ``feature``: ``GARE.forward(clip_outputs=...)`` on the batch's CLIP outputs (computed once
  beforehand), i.e. seqTransf + similarity + losses, backward, clip, BertAdam, clamp.

Also timed: assembling one feature-mode batch from a memory-mapped store on a local disk
(``FeatureBatches``, 20 captions per video, as MSR-VTT's training set), the feature mode's
whole data loading. The first ``--warmup`` steps of each kind are not timed. Prints a markdown
table; fp32 on the CPU, ``torch.set_num_threads(--threads)``.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from bench.trainer_steps import TrainStep, bench_trainer, seconds_per_step
from tvr.data.clip_features import FeatureStore
from tvr.data.datasets import RetrievalItem
from tvr.data.loaders import ResumableSampler
from tvr.models.config import CLIP_CONFIGS
from tvr.models.gare import GARE, CLIPOutputs
from tvr.training.feature_mode import FeatureBatches

DEFAULT_BATCH = {"tiny": 32, "ViT-B/32": 32}


def batch_inputs(model: GARE, batch: int, frames: int, words: int) -> RetrievalItem:
    """One batch of random captions and videos (some shorter than ``frames``) on the CPU."""
    size = model.clip.config.image_size
    video = torch.randn(batch, frames, 3, size, size)
    video_mask = torch.ones(batch, frames, dtype=torch.long)
    video_mask[batch // 2:, frames * 2 // 3:] = 0  # some short videos
    ids = torch.randint(1, 49000, (batch, words))
    ids[:, -1] = 49407  # EOT, the highest id
    index = torch.arange(batch)
    return RetrievalItem(ids, torch.ones_like(ids), video, video_mask, index, index)


@torch.no_grad()
def clip_outputs(model: GARE, data: RetrievalItem) -> CLIPOutputs:
    """The CLIP outputs of a batch, as feature mode reads them from its store."""
    text = model.encode_text(data.text_ids, data.text_mask)
    return CLIPOutputs(text.sentence, None, data.text_mask, model.frame_embeddings(data.video),
                       data.video_mask)


def batch_read_ms(batch: int, frames: int, dim: int, words: int, repeats: int = 20) -> float:
    """Milliseconds to assemble one feature batch from a memory-mapped store."""
    videos, per_video = 4 * batch, 20
    captions = videos * per_video
    with tempfile.TemporaryDirectory() as root:
        store = FeatureStore(root, {"bench": True})
        with store.writer("train", {"views": 1}, {
                "text_sentence": ((captions, dim), "float32"),
                "text_mask": ((captions, words), "uint8"),
                "video_frames": ((1, videos, frames, dim), "float32"),
                "video_mask": ((videos, frames), "uint8")}) as writer:
            rng = np.random.default_rng(0)
            for name, array in writer.arrays.items():
                array[...] = rng.standard_normal(array.shape) if array.dtype == np.float32 else 1
            stored = writer.finish({})
        sampler = ResumableSampler(np.arange(captions), 1, 0, 0, batch)
        batches = FeatureBatches(stored, np.arange(captions),
                                 np.repeat(np.arange(videos), per_video), sampler, batch, False)
        iterator = iter(batches)
        next(iterator)
        tic = time.perf_counter()
        count = 0
        for _ in range(repeats):
            try:
                next(iterator)
            except StopIteration:
                iterator = iter(batches)
                next(iterator)
            count += 1
        return 1000 * (time.perf_counter() - tic) / count


STEPS = (("full", ["--coef_lr", "1e-3"], False), ("full, coef_lr 0", ["--coef_lr", "0"], False),
         ("feature", ["--coef_lr", "1e-3"], True))


def run(arch: str, batch: int, frames: int, words: int, full_steps: int, feature_steps: int,
        warmup: int) -> dict[str, float]:
    """Seconds per ``Trainer.train_step`` of each kind (:data:`STEPS`), and the batch read."""
    times, cpu = {}, torch.device("cpu")
    for name, flags, feature_mode in STEPS:
        with bench_trainer(arch, "cpu", flags, feature_mode) as trainer:
            data = batch_inputs(trainer.model, batch, frames, words)
            if feature_mode:
                data = clip_outputs(trainer.model, data)
            steps, warm = (feature_steps, warmup) if feature_mode else (full_steps,
                                                                         min(warmup, 1))
            step = TrainStep(trainer, warm + steps)
            times[name] = seconds_per_step((step(data) for _ in range(warm + steps)), warm, cpu)
    times["read_ms"] = batch_read_ms(batch, frames, CLIP_CONFIGS[arch].embed_dim, words)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["tiny", "ViT-B/32"],
                        choices=sorted(CLIP_CONFIGS))
    parser.add_argument("--batch", type=int, default=None,
                        help="captions and clips per step (default 32 for both)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--full_steps", type=int, default=2,
                        help="timed steps of the full model (after one untimed)")
    parser.add_argument("--feature_steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads}, fp32, load average {load:.2f} at the start")
    print("| arch | batch | full step s | full coef_lr 0 step s | feature step s | "
          "full steps/s | feature steps/s | speed-up vs full | vs coef_lr 0 | "
          "feature batch read ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch in args.arch:
        batch = args.batch or DEFAULT_BATCH.get(arch, 32)
        t = run(arch, batch, args.frames, args.words, args.full_steps, args.feature_steps,
                args.warmup)
        print(f"| {arch} | {batch} x {args.frames} | {t['full']:.3f} | "
              f"{t['full, coef_lr 0']:.3f} | {t['feature']:.4f} | {1 / t['full']:.3g} | "
              f"{1 / t['feature']:.3g} | {t['full'] / t['feature']:.0f}x | "
              f"{t['full, coef_lr 0'] / t['feature']:.0f}x | {t['read_ms']:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
