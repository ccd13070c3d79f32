"""Two-stage retrieval on a trained checkpoint: how much of the full GARE top-10 survives stage 1.

    python -m bench.bench_two_stage --checkpoint outputs/demo/ckpt_best.pt --k 5 10 20 50

The checkpoint's saved arguments rebuild the model and the test split (so the demo's
checkpoint evaluates on the toy test set). For each K: stage 1 keeps the K best videos per
caption by the Δ-free cosine, stage 2 re-scores them with GARE; the table gives the share of the
full GARE top-10 items inside the K candidates, the share of captions whose whole top-10 is
inside, and text-to-video R@1 of the two-stage ranking next to the full one.
"""
from __future__ import annotations

import argparse

import torch

from tvr.data.loaders import build_split
from tvr.evaluation.encode import encode_split
from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.metrics import retrieval_metrics
from tvr.evaluation.retrieval import topk_containment, two_stage_scores
from tvr.cli.flags import recorded_run
from tvr.training.checkpoint import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    model, info = load_model(options.checkpoint)  # the configuration the checkpoint records
    run = recorded_run(info["args"])
    dataset = build_split(run.data, "test", model.clip.config.image_size, run.model.max_words)
    split = encode_split(model, dataset, run.eval.batch_size_val, options.workers,
                         torch.device("cpu"))
    engine = SimilarityEngine(model.similarity)
    texts = engine.prepare_texts(split.texts.sentence, split.texts.words, split.texts.mask)
    videos = engine.prepare_videos(split.videos.frames, split.videos.mask)
    full = engine.score(texts, videos)
    caption_to_video = torch.as_tensor(dataset.caption_to_video)
    full_r1 = retrieval_metrics(full, caption_to_video)["t2v"]["R1"]
    print(f"{dataset!r}; full GARE text-to-video R@1 {full_r1:.1f}\n")
    print("| K | top-10 items inside | captions with all top-10 inside | two-stage t2v R@1 |")
    print("|---|---|---|---|")
    for k in options.k:
        result = two_stage_scores(engine, texts, videos, min(k, len(videos)))
        kept = topk_containment(full, result.candidates, top=10)
        r1 = retrieval_metrics(result.scores, caption_to_video)["t2v"]["R1"]
        print(f"| {k} | {100 * kept['items']:.1f}% | {100 * kept['queries']:.1f}% | {r1:.1f} |")


if __name__ == "__main__":
    main()
