"""The video index (tvr/index) at scale: query latency, memory and top-10 containment on
synthetic galleries, and index build throughput.

    python -m bench.bench_index --sizes 10000 100000 1000000
    python -m bench.bench_index --sizes --build demo vit-b32

Search (``--sizes``; each gallery size runs in its own process, so that its memory figures are
its own): a :class:`VideoIndex` built in memory over a synthetic gallery of N videos
(bench/synthetic_index.py: ``--topics`` topics, ``--queries`` sentence embeddings given, no text
encoder, an untrained seeded GARE similarity at d = 512, frames stored as ``--frame_dtype``).

Timed, for one sentence per call and for the batch of ``--queries`` sentences in one call (median
of up to ``--repeats`` runs, fewer when they exceed ``--time_budget`` seconds together; single
sentences cycle through the queries), each the index's own code, ``index.gallery`` (a
:class:`~tvr.evaluation.retrieval.Gallery`):

- stage 1 alone: ``Stage1Search.candidates`` for the largest K, with faiss (IndexFlatIP) and torch;
- GARE on the K candidates alone: ``Gallery.rescore``, what ``VideoIndex.search`` does after
  stage 1 (union of the candidates, ``Gallery.scores``, gather, stable sort);
- two-stage K end to end: ``Gallery.search`` with the torch stage 1;
- exhaustive GARE on every video (``Gallery.search(..., exhaustive=True)``): single sentences for
  N <= ``--exhaustive_max`` (default 100k); one batch call, which also gives the containment,
  for N <= ``--containment_max`` (default 1M; it costs about as much as one sentence, since
  preparing the N videos dominates). Larger N print a linear extrapolation from the largest
  measured N, marked as such.

Left out: the sentence encoding and the per-hit best-frame lookup of ``search`` (10 rows).
Containment (:func:`~tvr.evaluation.retrieval.topk_containment`): the fraction of the exhaustive
GARE top-10 items inside the K stage-1 candidates, and of sentences whose whole top-10 is inside.
Memory: the array sizes, the resident set (VmRSS) once the index is open, and the peak resident
set (VmHWM, reset through /proc/self/clear_refs before each phase) while timing the two-stage
searches and the exhaustive ones. faiss keeps its own float32 copy of the stage-1 vectors next to
the index's; to bound the peak it is built after the GARE phases, once the frames are freed. Its
copy is given as computed (N x d float32, what IndexFlatIP stores): the growth of the resident
set shows it only where no freed heap memory is reused.

Build (``--build demo vit-b32``): index build throughput, bench/index_build.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from torch import Tensor

from bench.common import run_child
from bench.synthetic_index import SyntheticGallery, make_gallery, open_index
from tvr.evaluation.retrieval import Stage1Search, faiss_available, topk_containment
from tvr.index.search import VideoIndex

TOP = 10
GiB = 2 ** 30


# ---------------------------------------------------------------------------------- search
def timed(run: Callable[[int], object], repeats: int, budget: float) -> dict:
    """Median seconds of ``run(i)`` over up to ``repeats`` runs, stopping once they have taken
    ``budget`` seconds together (at least one run)."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        run(len(times))
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "runs": len(times)}


def memory(field: str) -> int:
    """Bytes of ``field`` (VmRSS, VmHWM) of this process, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM restart from the current resident set (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Timer:
    """The timings of one gallery size (``times``), logged as they come."""

    def __init__(self, options: argparse.Namespace):
        self.n, self.queries = options.n, options.queries
        self.repeats, self.budget = options.repeats, options.time_budget
        self.times: dict[str, dict] = {}

    def log(self, message: str) -> None:
        print(f"[N={self.n}] {message}", file=sys.stderr, flush=True)

    def both(self, name: str, run: Callable[[Tensor], object]) -> None:
        """Time ``run(rows)`` for one sentence per call (cycling through the sentences) and
        for all sentences in one call; ``rows`` indexes the sentences."""
        q = self.queries
        run(torch.tensor([0]))  # warm-up
        self.times[f"{name}/1"] = timed(lambda i: run(torch.tensor([i % q])), self.repeats,
                                        self.budget)
        self.times[f"{name}/{q}"] = timed(lambda i: run(torch.arange(q)), self.repeats,
                                          self.budget)
        self.log(f"{name}: {1e3 * self.times[f'{name}/1']['seconds']:.1f} ms per sentence, "
                 f"{1e3 * self.times[f'{name}/{q}']['seconds']:.1f} ms per batch of {q}")


def time_two_stage(index: VideoIndex, text: Tensor, ks: list[int], timer: Timer,
                   result: dict) -> Tensor:
    """Stage 1 alone (torch), GARE on the K candidates and two-stage K; the candidates (Q, K)
    for the largest K."""
    gallery, engine = index.gallery, index.engine
    reset_peak()
    timer.both("stage1_torch", lambda rows: gallery.stage1.candidates(text[rows], ks[-1]))
    candidates = gallery.candidates(text, ks[-1])
    result["union"] = {k: len(torch.unique(candidates[:, :k])) for k in ks}
    for k in ks:
        timer.both(f"gare_on_{k}", lambda rows, k=k: gallery.rescore(
            engine, text[rows], candidates[rows, :k], TOP))
        timer.both(f"two_stage_{k}", lambda rows, k=k: gallery.search(
            engine, text[rows], TOP, k))
    result["peak_two_stage"] = memory("VmHWM")
    return candidates


def time_exhaustive(index: VideoIndex, data: SyntheticGallery, candidates: Tensor,
                    ks: list[int], timer: Timer, options: argparse.Namespace,
                    result: dict) -> None:
    """Exhaustive GARE (one sentence per call up to ``--exhaustive_max``, the batch once) and
    the containment of the two-stage candidates in its top-10."""
    gallery, engine, text, q = index.gallery, index.engine, data.text, options.queries

    def exhaustive(rows: Tensor) -> Tensor:
        return gallery.search(engine, rows, TOP, len(gallery), exhaustive=True).scores

    reset_peak()
    if options.n <= options.exhaustive_max:
        timer.times["exhaustive/1"] = timed(lambda i: exhaustive(text[i % q:i % q + 1]),
                                            options.repeats, options.time_budget)
        timer.log(f"exhaustive: {timer.times['exhaustive/1']['seconds']:.1f} s per sentence")
    start = time.perf_counter()
    full = exhaustive(text)
    timer.times[f"exhaustive/{q}"] = {"seconds": time.perf_counter() - start, "runs": 1}
    result["peak_exhaustive"] = memory("VmHWM")
    timer.log(f"exhaustive: {timer.times[f'exhaustive/{q}']['seconds']:.1f} s per batch of {q}")
    kinds = (("all", slice(None)), ("video", ~data.topic_query), ("topic", data.topic_query))
    result["containment"] = {
        k: {kind: topk_containment(full[sel], candidates[sel, :k], top=TOP)
            for kind, sel in kinds}
        for k in ks}


def measure_size(options: argparse.Namespace) -> dict:
    """Every search figure of one gallery size (runs in a child process)."""
    ks, timer = sorted(options.k), Timer(options)
    result: dict = {"n": options.n, "queries": options.queries,
                    "load_start": os.getloadavg()[0]}
    start = time.perf_counter()
    data = make_gallery(options.n, options.queries, options.topics, options.seed,
                        getattr(torch, options.frame_dtype))
    result["generate_s"] = time.perf_counter() - start
    result["bytes"] = {"frames": data.frames.nbytes, "mask": data.mask.nbytes,
                       "coarse": data.coarse.nbytes}
    result["peak_generate"] = memory("VmHWM")
    timer.log(f"gallery generated in {result['generate_s']:.0f} s")
    index = open_index(data, options.seed)
    result["rss_open"] = memory("VmRSS")
    candidates = time_two_stage(index, data.text, ks, timer, result)
    if options.n <= options.containment_max:
        time_exhaustive(index, data, candidates, ks, timer, options, result)
    del index
    data.frames = None  # free the frames before faiss copies the stage-1 vectors
    if faiss_available():
        import faiss
        faiss.omp_set_num_threads(options.threads)
        reset_peak()
        flat = Stage1Search(data.coarse, "faiss")
        result["faiss_copy"] = data.coarse.nbytes
        timer.both("stage1_faiss", lambda rows: flat.candidates(data.text[rows], ks[-1]))
        result["peak_faiss"] = memory("VmHWM")
    result["times"] = timer.times
    result["load_end"] = os.getloadavg()[0]
    return result


def run_size(n: int, options: argparse.Namespace) -> dict:
    """:func:`measure_size` for ``n`` videos in a child process (its own memory figures)."""
    cmd = [sys.executable, "-m", "bench.bench_index", "--measure", str(n),
           "--queries", str(options.queries), "--k", *map(str, options.k),
           "--topics", str(options.topics), "--seed", str(options.seed),
           "--frame_dtype", options.frame_dtype, "--threads", str(options.threads),
           "--repeats", str(options.repeats), "--time_budget", str(options.time_budget),
           "--exhaustive_max", str(options.exhaustive_max),
           "--containment_max", str(options.containment_max)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _ms(r: dict, key: str) -> str:
    if key not in r["times"]:
        return "–"
    return f"{1e3 * r['times'][key]['seconds']:.1f} ({r['times'][key]['runs']})"


def _gib(r: dict, key: str) -> str:
    return f"{r[key] / GiB:.2f}" if key in r else "–"


def print_latency(results: list[dict], q: int, ks: list[int]) -> None:
    print(f"\nLatency, ms per call (runs), K for stage 1 alone = {ks[-1]}, torch stage 1 in "
          f"the two-stage columns:\n")
    columns = (["stage 1 faiss", "stage 1 torch"] + [f"GARE on {k}" for k in ks]
               + [f"two-stage K={k}" for k in ks] + ["exhaustive"])
    keys = (["stage1_faiss", "stage1_torch"] + [f"gare_on_{k}" for k in ks]
            + [f"two_stage_{k}" for k in ks] + ["exhaustive"])
    print("| N | sentences per call | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for r in results:
        for per_call in (1, q):
            cells = [_ms(r, f"{key}/{per_call}") for key in keys]
            print(f"| {r['n']} | {per_call} | " + " | ".join(cells) + " |")
    for r in results:
        unions = ", ".join(f"{u} for K = {k}" for k, u in r["union"].items())
        print(f"\nN = {r['n']}: the batch's candidates hold {unions} distinct videos", end="")
    print()
    measured = [r for r in results if "exhaustive/1" in r["times"]]
    for r in results:
        if "exhaustive/1" not in r["times"] and measured:
            base = measured[-1]
            estimate = base["times"]["exhaustive/1"]["seconds"] * r["n"] / base["n"]
            print(f"\nexhaustive, one sentence, N = {r['n']}: not measured; EXTRAPOLATED "
                  f"linearly from N = {base['n']}: about {estimate:.0f} s")


def print_memory(results: list[dict]) -> None:
    print("\nMemory (GiB): arrays; resident set once the index is open; peak resident set "
          "while timing (generation, two-stage, exhaustive, faiss stage 1):\n")
    print("| N | frames | stage-1 vectors | mask | faiss copy | RSS open | peak generate | "
          "peak two-stage | peak exhaustive | peak faiss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        b = r["bytes"]
        print(f"| {r['n']} | {b['frames'] / GiB:.2f} | {b['coarse'] / GiB:.2f} | "
              f"{b['mask'] / GiB:.3f} | {_gib(r, 'faiss_copy')} | {_gib(r, 'rss_open')} | "
              f"{_gib(r, 'peak_generate')} | {_gib(r, 'peak_two_stage')} | "
              f"{_gib(r, 'peak_exhaustive')} | {_gib(r, 'peak_faiss')} |")


def print_containment(results: list[dict]) -> None:
    print(f"\nTop-{TOP} containment of two-stage in exhaustive GARE (items inside / sentences "
          f"with all {TOP} inside):\n")
    print("| N | K | all sentences | video sentences | topic sentences |")
    print("|---|---:|---|---|---|")
    for r in results:
        for k, kinds in r.get("containment", {}).items():
            cells = [f"{100 * c['items']:.1f}% / {100 * c['queries']:.0f}%"
                     for c in (kinds["all"], kinds["video"], kinds["topic"])]
            print(f"| {r['n']} | {k} | " + " | ".join(cells) + " |")
    for r in results:
        print(f"\nN = {r['n']}: generated in {r['generate_s']:.0f} s; load {r['load_start']:.2f} "
              f"at the start, {r['load_end']:.2f} at the end", end="")
    print()


# ---------------------------------------------------------------------------------- main
def machine() -> str:
    """CPU model (with family and model numbers), CPUs, RAM, Python and torch versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                        if ":" in line)
        info = {key.strip(): value.strip() for key, value in info.items()}
        model = (f"{info['model name']} (family {info['cpu family']} model {info['model']}, "
                 f"{'with' if 'avx512f' in info['flags'].split() else 'no'} AVX-512)")
    except (OSError, KeyError):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (f"{model}, {os.cpu_count()} CPUs, {ram:.1f} GiB RAM, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000, 1000000],
                        help="gallery sizes (none: skip the search benchmark)")
    parser.add_argument("--queries", type=int, default=20, help="sentences per batch")
    parser.add_argument("--k", type=int, nargs="+", default=[100, 500], help="stage-1 K")
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame_dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch (and faiss) threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs at most")
    parser.add_argument("--time_budget", type=float, default=10.0,
                        help="no further run once the runs of a measurement took this long (s)")
    parser.add_argument("--exhaustive_max", type=int, default=100000,
                        help="largest N where exhaustive search of one sentence is timed")
    parser.add_argument("--containment_max", type=int, default=1000000,
                        help="largest N where the whole batch is scored exhaustively (timed "
                             "once) for the containment")
    parser.add_argument("--build", nargs="*", default=[], choices=["demo", "vit-b32"],
                        help="also time index builds with these models")
    parser.add_argument("--demo_checkpoint", default="outputs/demo/ckpt_best.pt")
    parser.add_argument("--demo_videos", default="data/toy/videos")
    parser.add_argument("--vit_videos", type=int, default=48, help="224 px clips to encode")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (build)")
    parser.add_argument("--build_repeats", type=int, default=2, help="builds per model")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if run_child(options, "n", measure_size):
        return
    print(f"machine: {machine()}; threads {options.threads}; faiss "
          f"{'installed' if faiss_available() else 'not installed'}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if options.sizes:
        results = [run_size(n, options) for n in options.sizes]
        print_latency(results, options.queries, sorted(options.k))
        print_memory(results)
        print_containment(results)
    if options.build:  # imported here: the search children measure their resident set
        from bench.index_build import bench_build
        bench_build(options)


if __name__ == "__main__":
    main()
