"""Stage 2 of a video-index search on stored candidates: GARE on K candidates read from the
memory-mapped shards of a synthetic index, one sentence per call, broken down into its steps.

    python -m bench.bench_stage2 --n 20000 --k 500 1000 2000 5000 --threads 2

A synthetic index of ``--n`` videos (bench/synthetic_index.py: F = 12, d = 512, float16 frames
and the engine's compact per-video state, written through the store's write API) is written
under ``--folder`` once, then opened as a search opens it (``Manifest.load`` +
``open_gallery``). For each K, ``--calls`` one-sentence calls, each with K random distinct
rows (sorted, as ``score_candidates`` passes the union), cycling through 20 sentences; the
shards are read once before the timing, so the figures are those of a warm page cache.
Columns, medians in ms:

- read: ``StoredVideos.parts`` (the records of the K rows out of the mapped shards);
- convert: ``engine.adopt`` (float16 frames and the rest to the engine's float32);
- score: ``engine.score`` of the sentence against the adopted videos;
- total: ``Gallery.scores`` (all three, with ``prepare_texts``), timed separately;
- rescore: ``Gallery.rescore`` with the top 10 (what ``bench_index`` calls "GARE on K").
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.common import machine
from bench.synthetic_index import similarity, write_index
from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.retrieval import faiss_available
from tvr.index.store import Manifest, open_gallery

TOP = 10
STEPS = ("read", "convert", "score", "total", "rescore")


def median_ms(run: Callable[[int], object], calls: int) -> float:
    """Median milliseconds of ``run(i)`` over ``calls`` calls, after one warm-up call."""
    run(0)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def measure_k(gallery, engine: SimilarityEngine, text: torch.Tensor, k: int,
              calls: int, seed: int) -> dict[str, float]:
    """The step medians (ms) of one-sentence stage-2 calls on ``k`` random candidates."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(len(gallery), generator=g)[:k].sort().values for _ in range(calls)]
    sentence = [text[i % len(text):i % len(text) + 1] for i in range(calls)]
    parts = [gallery.videos.parts(r) for r in rows]
    adopted = [engine.adopt(p) for p in parts]
    texts = [engine.prepare_texts(s) for s in sentence]
    return {
        "read": median_ms(lambda i: gallery.videos.parts(rows[i]), calls),
        "convert": median_ms(lambda i: engine.adopt(parts[i]), calls),
        "score": median_ms(lambda i: engine.score(texts[i], adopted[i]), calls),
        "total": median_ms(lambda i: gallery.scores(engine, sentence[i], rows[i]), calls),
        "rescore": median_ms(lambda i: gallery.rescore(engine, sentence[i],
                                                       rows[i].unsqueeze(0), TOP), calls),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="videos in the synthetic index")
    parser.add_argument("--k", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--calls", type=int, default=50, help="timed calls per K and step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default="/tmp/bench_stage2")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the index")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    if faiss_available():
        import faiss
        faiss.omp_set_num_threads(options.threads)
    folder = Path(options.folder) / f"n{options.n}"
    if not (folder / "text.npy").exists():
        shutil.rmtree(folder, ignore_errors=True)
        written, _ = write_index(folder, options.n, 20, 1000, options.seed, 4096,
                                 options.n, max(options.k))
        np.save(folder / "text.npy", written.text.numpy())
    gallery = open_gallery(folder, Manifest.load(folder))
    gallery.videos.parts(torch.arange(len(gallery)))  # the page cache holds the shards
    engine = SimilarityEngine(similarity(options.seed))
    text = torch.from_numpy(np.load(folder / "text.npy"))
    print(f"machine: {machine()}; threads {options.threads}; N = {options.n}; "
          f"load {os.getloadavg()[0]:.2f}\n")
    print("| K | " + " | ".join(f"{step} ms" for step in STEPS) + " | load |")
    print("|---:|" + "---:|" * (len(STEPS) + 1))
    for k in options.k:
        times = measure_k(gallery, engine, text, min(k, len(gallery)), options.calls,
                          options.seed)
        print(f"| {k} | " + " | ".join(f"{times[step]:.2f}" for step in STEPS)
              + f" | {os.getloadavg()[0]:.2f} |", flush=True)
    if not options.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
