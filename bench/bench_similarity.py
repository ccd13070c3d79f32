"""All-pairs GARE scoring: the evaluation engine vs the reference evaluation loop.

"reference" restates the reference implementation's evaluation (main_retrieval.py,
``_run_on_single_gpu`` with ``mini_batch=16``) with this project's naive module: 16 x 16 blocks of
texts x videos, each through the per-pair similarity, keeping the per-pair corrected texts t',
increments Δ and pooled videos v_ab of the WHOLE matrix (three N x N x d float32 arrays, as the
reference keeps them) next to the score matrix. "engine" is :class:`SimilarityEngine` (folded path:
prepare_videos + prepare_texts + score). Every measurement runs in its own subprocess; peak memory
is the growth of the process's ru_maxrss (CPU) or of torch.cuda.max_memory_allocated (CUDA) over
the state after building the inputs and a small warm-up. Inputs: trained-looking Psi weights (every
parameter moved off its initialisation) and CLIP-like features (a shared direction plus noise, so
the text-video gap is small), 1 to F real frames per video.

    python -m bench.bench_similarity --sizes 250 500 1000 --threads 1
    python -m bench.bench_similarity --precision-check --sizes 250     (errors vs an fp64 reference)

It also prints the engine's FLOP count, this machine's fp32 matmul throughput (4096 x 4096,
same threads) and the time of the engine's dense matrix products alone at its own shapes
(``products_alone``: the floor of the engine's time, hence the largest speed-up this
formulation can reach on the machine), measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from bench.common import perturb_parameters, run_child
from tvr.evaluation.engine import PREPARE_VIDEOS, SimilarityEngine
from tvr.models.config import SimilarityConfig
from tvr.models.similarity import GapAwareSimilarity


def build(n: int, dim: int, frames: int, device: str, dtype=torch.float32, seed: int = 0):
    """Trained-looking model and CLIP-like inputs (deterministic)."""
    torch.manual_seed(seed)
    model = GapAwareSimilarity(SimilarityConfig(dim=dim))
    g = torch.Generator().manual_seed(seed + 1)
    perturb_parameters(model, g)
    common = torch.randn(dim, generator=g)
    text = common + 0.5 * torch.randn(n, dim, generator=g)
    video = common + 0.5 * torch.randn(n, frames, dim, generator=g)
    lengths = torch.randint(1, frames + 1, (n,), generator=g)
    mask = (torch.arange(frames).unsqueeze(0) < lengths.unsqueeze(1)).float()
    model = model.to(device, dtype).eval()
    return model, text.to(device, dtype), video.to(device, dtype), mask.to(device)


@torch.no_grad()
def reference_loop(model: GapAwareSimilarity, text, frames, mask, mini_batch: int = 16) -> np.ndarray:
    """The reference evaluation loop: 16 x 16 blocks, per-pair arrays of the whole matrix kept."""
    n_t, n_v, d = len(text), len(frames), text.shape[1]
    kept_t = np.empty((n_t, n_v, d), dtype=np.float32)       # t' = t + Δ
    kept_delta = np.empty((n_t, n_v, d), dtype=np.float32)   # Δ
    kept_pooled = np.empty((n_t, n_v, d), dtype=np.float32)  # v_ab
    sim_matrix = []
    for i in range(0, n_t, mini_batch):
        t = text[i:i + mini_batch]
        each_row = []
        for j in range(0, n_v, mini_batch):
            pooled = model.pool(t, frames[j:j + mini_batch], mask[j:j + mini_batch])
            delta = model.delta(t, frames[j:j + mini_batch])
            each_row.append(model.combine(t, pooled, delta).cpu().numpy())
            kept_t[i:i + mini_batch, j:j + mini_batch] = (t.unsqueeze(1) + delta).cpu().numpy()
            kept_delta[i:i + mini_batch, j:j + mini_batch] = delta.cpu().numpy()
            kept_pooled[i:i + mini_batch, j:j + mini_batch] = pooled.cpu().numpy()
        sim_matrix.append(np.concatenate(each_row, axis=-1))
    return np.concatenate(sim_matrix, axis=0)


def engine_scores(model, text, frames, mask, precision: str, budget: int) -> np.ndarray:
    engine = SimilarityEngine(model, memory_budget_bytes=budget, precision=precision)
    scores = engine.score(engine.prepare_texts(text), engine.prepare_videos(frames, mask))
    return scores.double().cpu().numpy()


def engine_flops(n_t: int, n_v: int, d: int, f: int) -> float:
    """Multiply-adds x 2 of the folded path (default setting); elementwise work counted roughly.
    Per video: the per-frame maps (3·F·d²), α (d²) and the small matrices; per text: its two
    projections (2·d²); per pair: the two products ((F + 1)·d and 2F·(d + 3)), the two batched
    ones with the small matrices ((5F + 5)·F) and about 30 operations per frame."""
    per_video = 2 * (3 * f * d * d + d * d + (2 * f + 2) * f * d + 3 * f * f * d + 4 * f * d)
    per_pair = 2 * ((f + 1) * d + 2 * f * (d + 3) + (5 * f + 5) * f) + 30 * f
    return n_v * per_video + n_t * 4 * d * d + n_t * n_v * per_pair


def matmul_gflops(device: str, size: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def products_alone(n: int, dim: int, frames: int, device: str, budget: int,
                   repeats: int = 3) -> float:
    """Seconds (best of ``repeats``) of the folded engine's dense matrix products alone, at its
    shapes for N = ``n`` (texts = videos): prepare_videos' per-frame maps ((chunk·F x d) @
    (d x 3d) per chunk of PREPARE_VIDEOS videos) and the per-pair products of each block
    ((V·F x d) @ (d x T) and (V·F x d) @ (d x 2T)). The engine does this arithmetic and more:
    the floor of its time on this machine."""
    engine = SimilarityEngine(GapAwareSimilarity(SimilarityConfig(dim=dim)),
                              memory_budget_bytes=budget)
    block_t, block_v = engine.block_shape(n, n, frames)
    flat = torch.randn(n * frames, dim, device=device)
    maps, texts = torch.randn(dim, 3 * dim, device=device), torch.randn(3 * n, dim, device=device)
    step = PREPARE_VIDEOS * frames

    def run() -> None:
        for start in range(0, len(flat), step):
            flat[start:start + step] @ maps
        for t in range(0, n, block_t):
            rows, folded = texts[t:t + block_t], texts[n + 2 * t:n + 2 * (t + block_t)]
            for v in range(0, n * frames, block_v * frames):
                flat[v:v + block_v * frames] @ rows.T
                flat[v:v + block_v * frames] @ folded.T
        sync(device)

    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_mark(device: str) -> int:
    """Bytes in use now (CUDA: allocated, peak counter reset) or the peak RSS so far (CPU)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args) -> dict:
    """One measurement (runs in a child process): time and added peak memory of one method."""
    model, text, frames, mask = build(args.n, args.dim, args.frames, args.device)
    small = [x[:16] for x in (text, frames, mask)]
    run = ((lambda t, f, m: reference_loop(model, t, f, m)) if args.method == "reference" else
           (lambda t, f, m: engine_scores(model, t, f, m, args.method.split(":")[1], args.budget)))
    run(*small)                                             # warm-up
    sync(args.device)
    base = memory_mark(args.device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = run(text, frames, mask)
        sync(args.device)
        times.append(time.perf_counter() - start)
    np.save(args.save, scores)
    return {"method": args.method, "n": args.n, "seconds": min(times), "first": times[0],
            "added_peak_bytes": peak_bytes(args.device) - base}


def child(method: str, n: int, args, save: str, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_similarity", "--measure", method, "--n", str(n),
           "--dim", str(args.dim), "--frames", str(args.frames), "--threads", str(args.threads),
           "--device", args.device, "--budget", str(args.budget), "--save", save,
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def precision_check(args) -> None:
    """Max |engine - exact| (exact = the naive module in float64) per precision, and ranking
    agreement (fraction of texts whose top-1 video is unchanged)."""
    n = args.sizes[0]
    model, text, frames, mask = build(n, args.dim, args.frames, args.device)
    exact = SimilarityEngine(model, precision="fp64", naive=True, memory_budget_bytes=args.budget)
    ref = exact.score(exact.prepare_texts(text), exact.prepare_videos(frames, mask)).cpu()
    naive32 = SimilarityEngine(model, naive=True, memory_budget_bytes=args.budget)
    rows = [("naive module, fp32", naive32.score(naive32.prepare_texts(text),
                                                 naive32.prepare_videos(frames, mask)).cpu())]
    for precision in ("fp64", "fp32", "tf32", "bf16"):
        rows.append((f"engine, {precision}", torch.from_numpy(
            engine_scores(model, text, frames, mask, precision, args.budget))))
    print(f"N = {n}, d = {args.dim}, F = {args.frames}, device {args.device}\n")
    print("| scores | max abs error vs fp64 naive | top-1 agreement |\n|---|---|---|")
    for name, s in rows:
        agree = (s.double().argmax(1) == ref.argmax(1)).double().mean().item()
        print(f"| {name} | {(s.double() - ref).abs().max().item():.2e} | {100 * agree:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=int, default=256 * 2**20, help="engine memory budget, bytes")
    parser.add_argument("--engine-precision", default="fp32")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--precision-check", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if run_child(args, "method", measure):
        return
    if args.precision_check:
        precision_check(args)
        return
    gflops = matmul_gflops(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch "
          f"{torch.__version__}, threads {args.threads}, device {args.device}, "
          f"load {os.getloadavg()[0]:.2f}; fp32 matmul 4096^3 (best of 5, same threads): "
          f"{gflops:.1f} GFLOP/s\n")
    print("| N | reference s | engine s | speed-up | its matrix products alone s (speed-up at "
          "most) | reference added peak | engine added peak | max abs diff | engine GFLOP | "
          "engine GFLOP/s (% of matmul) | load |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        eng = child(f"engine:{args.engine_precision}", n, args, "/tmp/bench_engine.npy", repeats=3)
        ref = None if args.skip_reference else child("reference", n, args, "/tmp/bench_ref.npy", repeats=1)
        floor = products_alone(n, args.dim, args.frames, args.device, args.budget)
        flop = engine_flops(n, n, args.dim, args.frames) / 1e9
        rate = flop / eng["seconds"]
        ref_cols = ("–", "–", "–", "–", "–") if ref is None else (
            f"{ref['seconds']:.3g}", f"{ref['seconds'] / eng['seconds']:.1f}x",
            f"{ref['seconds'] / floor:.1f}x",
            f"{ref['added_peak_bytes'] / 2**30:.2f} GiB",
            f"{np.abs(np.load('/tmp/bench_engine.npy') - np.load('/tmp/bench_ref.npy')).max():.1e}")
        print(f"| {n} | {ref_cols[0]} | {eng['seconds']:.3g} | {ref_cols[1]} | {floor:.3g} "
              f"({ref_cols[2]}) | {ref_cols[3]} | {eng['added_peak_bytes'] / 2**20:.0f} MiB | "
              f"{ref_cols[4]} | {flop:.1f} | "
              f"{rate:.1f} ({100 * rate / gflops:.0f}%) | {os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
