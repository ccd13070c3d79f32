"""The video index (tvr/index) at scale: index open time, memory, search latency and top-10
containment on synthetic galleries written as index folders, and index build throughput.

    python -m bench.bench_index --sizes 10000 100000 1000000
    python -m bench.bench_index --sizes --build demo vit-b32

Search (``--sizes``): for each N, a child process writes a synthetic gallery of N videos as an
index folder under ``--folder`` (bench/synthetic_index.py, through the store's write API:
float16 frames and per-video state in shards of ``--shard_size``, the stage-1 index, exact up
to ``--exact_max`` videos, else faiss IVF-SQ8; its build-report line is printed); a second,
fresh child opens it and measures (so that the open time and resident set are those of a
search process, with whatever the page cache holds after the write):

- open: ``Manifest.load`` + ``open_gallery`` (shards and IVF index memory-mapped), seconds,
  and the resident set (VmRSS) after it;
- one sentence per call: two-stage search (``Gallery.search``: stage 1, GARE on the union of the
  candidates from their stored state, the top 10) at each ``--k``, ``--single`` calls cycling
  through the sentences: median and 99th percentile; stage 1 alone and GARE on the K
  candidates alone (``Gallery.rescore``), medians; the smallest K once more at the end (its
  first calls read the shards from disk when the page cache does not hold them);
- the ``--queries`` sentences in one call: two-stage at each K (median of up to ``--repeats``);
- exhaustive GARE of the sentences (every video, from the stored state, in chunks of 4096):
  seconds, once; it gives the containment of the two-stage candidates in its top-10
  (:func:`~tvr.evaluation.retrieval.topk_containment`), for the first ``--containment_queries``
  sentences (all by default);
- peak resident set (VmHWM) of the measuring process;
- then, in a third, fresh child, one sentence per call with the index out of the page cache
  (``--cold`` calls at the default K, the index's files evicted from the page cache before
  each, but for the pages that child has mapped, i.e. those of the sentences before): median
  and 99th percentile.

Not included: the sentence encoding and the per-hit best-frame lookup of ``VideoIndex.search``.
The folder is deleted afterwards unless ``--keep``. Build (``--build demo vit-b32``): index build
throughput, bench/index_build.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.common import GiB, machine
from bench.synthetic_index import similarity, write_index
from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.retrieval import faiss_available, topk_containment
from tvr.index.config import DEFAULT_K
from tvr.index.store import Manifest, open_gallery

TOP = 10


# ---------------------------------------------------------------------------------- search
def timed(run: Callable[[int], object], repeats: int, budget: float) -> list[float]:
    """Seconds of ``run(i)`` for up to ``repeats`` runs, stopping once they have taken
    ``budget`` seconds together (at least one run)."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        run(len(times))
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    """Median and 99th percentile (ms) of ``times`` (s), and how many."""
    ms = 1e3 * np.array(times)
    return {"median": float(np.median(ms)), "p99": float(np.percentile(ms, 99)),
            "runs": len(ms)}


def memory(field: str) -> int:
    """Bytes of ``field`` (VmRSS, VmHWM) of this process, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def evict(folder: Path) -> bool:
    """Ask the kernel to drop the cached pages of every file of the index ``folder``
    (``posix_fadvise(DONTNEED)``: no root needed; pages this process has mapped stay); False
    where the system has no ``posix_fadvise``. Quicker than emptying the whole page cache
    (``/proc/sys/vm/drop_caches``), which walks every cached page of every file."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
    return True


def folder_of(options: argparse.Namespace) -> Path:
    return Path(options.folder) / f"bench_index_{options.n}"


def generate(options: argparse.Namespace) -> dict:
    """Write the synthetic index of ``options.n`` videos and its sentences (child process)."""
    folder = folder_of(options)
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    gallery, stage1 = write_index(folder, options.n, options.queries, options.topics,
                                  options.seed, options.shard_size, options.exact_max,
                                  max(options.k))
    np.save(folder / "text.npy", gallery.text.numpy())
    np.save(folder / "topic_query.npy", gallery.topic_query.numpy())
    return {"write_s": time.perf_counter() - start, "stage1": stage1,
            "disk": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}


def measure(options: argparse.Namespace) -> dict:
    """Open the index written by :func:`generate` and time it (child process)."""
    folder, result = folder_of(options), {"load_start": os.getloadavg()[0]}
    start = time.perf_counter()
    gallery = open_gallery(folder, Manifest.load(folder))
    result["open_s"] = time.perf_counter() - start
    result["rss_open"] = memory("VmRSS")
    engine = SimilarityEngine(similarity(options.seed))
    text = torch.from_numpy(np.load(folder / "text.npy"))
    q, times = len(text), {}
    for k in sorted(options.k):
        gallery.search(engine, text[:1], TOP, k)  # warm-up
        one = timed(lambda i: gallery.search(engine, text[i % q:i % q + 1], TOP, k),
                    options.single, options.time_budget)
        times[f"two_stage_{k}/1"] = summary(one)
        times[f"stage1_{k}/1"] = summary(timed(
            lambda i: gallery.candidates(text[i % q:i % q + 1], k), options.single, 5.0))
        candidates = gallery.candidates(text, k)
        times[f"gare_on_{k}/1"] = summary(timed(
            lambda i: gallery.rescore(engine, text[i % q:i % q + 1], candidates[i % q:i % q + 1],
                                      TOP), options.single, 5.0))
        times[f"two_stage_{k}/{q}"] = summary(timed(
            lambda i: gallery.search(engine, text, TOP, k), options.repeats, options.time_budget))
        print(f"[N={options.n}] K={k}: {json.dumps(times[f'two_stage_{k}/1'])}",
              file=sys.stderr, flush=True)
    first = min(options.k)  # its calls ran first, on the coldest page cache: once more
    times["again"] = summary(timed(lambda i: gallery.search(engine, text[i % q:i % q + 1], TOP,
                                                            first), options.single,
                                   options.time_budget))
    result["times"] = times
    used = text[:options.containment_queries or q]
    start = time.perf_counter()
    full = gallery.scores(engine, used, torch.arange(len(gallery)))
    result["exhaustive_s"] = time.perf_counter() - start
    topic = torch.from_numpy(np.load(folder / "topic_query.npy"))[:len(used)]
    kinds = (("all", slice(None)), ("video", ~topic), ("topic", topic))
    result["containment"] = {k: {kind: topk_containment(full[sel], gallery.candidates(
        used[sel], k), TOP) for kind, sel in kinds} for k in sorted(options.k)}
    result["containment_queries"] = len(used)
    result["peak"] = memory("VmHWM")
    result["load_end"] = os.getloadavg()[0]
    return result


def measure_cold(options: argparse.Namespace) -> dict:
    """``--cold`` one-sentence searches at the default K in a process that has read nothing of
    the index yet, each after the index's files were evicted from the page cache (child
    process, after :func:`measure`)."""
    folder = folder_of(options)
    gallery = open_gallery(folder, Manifest.load(folder))
    engine = SimilarityEngine(similarity(options.seed))
    text = torch.from_numpy(np.load(folder / "text.npy"))
    gallery.search(engine, torch.zeros_like(text[:1]), TOP, DEFAULT_K)  # the code warm
    times: list[float] = []
    while len(times) < options.cold and evict(folder):
        start, i = time.perf_counter(), len(times)
        gallery.search(engine, text[i % len(text):i % len(text) + 1], TOP, DEFAULT_K)
        times.append(time.perf_counter() - start)
    return {"cold": dict(summary(times), first=1e3 * times[0])} if times else {}


def child(phase: str, n: int, options: argparse.Namespace) -> dict:
    """``phase`` ("--generate" or "--measure") for ``n`` videos in a child process."""
    cmd = [sys.executable, "-m", "bench.bench_index", phase, str(n), "--folder", options.folder,
           "--queries", str(options.queries), "--k", *map(str, options.k),
           "--topics", str(options.topics), "--seed", str(options.seed),
           "--threads", str(options.threads), "--repeats", str(options.repeats),
           "--single", str(options.single), "--time_budget", str(options.time_budget),
           "--shard_size", str(options.shard_size), "--exact_max", str(options.exact_max),
           "--containment_queries", str(options.containment_queries),
           "--cold", str(options.cold)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_size(n: int, options: argparse.Namespace) -> dict:
    """Write, then measure, the index of ``n`` videos; delete it unless ``--keep``."""
    result = {"n": n, **child("--generate", n, options)}
    print(f"N={n}: written in {result['write_s']:.0f} s, {result['disk'] / GiB:.2f} GiB; "
          f"{result['stage1']}", flush=True)
    result.update(child("--measure", n, options))
    if options.cold:
        result.update(child("--measure_cold", n, options))
    if not options.keep:
        shutil.rmtree(Path(options.folder) / f"bench_index_{n}")
    return result


def print_results(results: list[dict], ks: list[int], q: int) -> None:
    print("\n| N | open s | RSS after open GiB | peak GiB | K | two-stage 1 sentence median / "
          f"p99 ms | stage 1 ms | GARE on K ms | {q} sentences ms | top-10 items / sentences "
          "complete (video, topic sentences) |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for r in results:
        for k in ks:
            t, c = r["times"], r["containment"][str(k)]
            cells = [f"{r['open_s']:.2f}", f"{r['rss_open'] / GiB:.2f}",
                     f"{r['peak'] / GiB:.2f}", str(k),
                     f"{t[f'two_stage_{k}/1']['median']:.1f} / {t[f'two_stage_{k}/1']['p99']:.1f}"
                     f" ({t[f'two_stage_{k}/1']['runs']})",
                     f"{t[f'stage1_{k}/1']['median']:.1f}", f"{t[f'gare_on_{k}/1']['median']:.1f}",
                     f"{t[f'two_stage_{k}/{q}']['median']:.0f}",
                     "; ".join(f"{100 * c[kind]['items']:.1f}% / {100 * c[kind]['queries']:.0f}%"
                               for kind in ("all", "video", "topic"))]
            print(f"| {r['n']} | " + " | ".join(cells) + " |")
    for r in results:
        cold = r.get("cold")
        print(f"\nN = {r['n']}: one sentence at K = {DEFAULT_K} with the index evicted from "
              "the page cache before each call: " + ("not measured (--cold 0, or no "
                                                    "posix_fadvise)" if cold is None else
                                                    f"median {cold['median']:.1f} ms, p99 "
                                                    f"{cold['p99']:.1f} ms ({cold['runs']}), "
                                                    f"the first {cold['first']:.1f} ms"),
              end="")
    for r in results:
        again = r["times"]["again"]
        print(f"\nN = {r['n']}: one sentence at K = {ks[0]} measured again after the other "
              f"K: median {again['median']:.1f} ms, p99 {again['p99']:.1f} ms "
              f"({again['runs']}); exhaustive GARE of {r['containment_queries']} sentences "
              f"{r['exhaustive_s']:.1f} s; load {r['load_start']:.2f} at the start of the "
              f"measurement, {r['load_end']:.2f} at the end", end="")
    print()


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000, 1000000],
                        help="gallery sizes (none: skip the search benchmark)")
    parser.add_argument("--folder", default="/tmp", help="where the indexes are written")
    parser.add_argument("--keep", action="store_true", help="keep the index folders")
    parser.add_argument("--queries", type=int, default=20, help="sentences per batch")
    parser.add_argument("--k", type=int, nargs="+", default=[500, 1000, 2000], help="stage-1 K")
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard_size", type=int, default=4096, help="videos per shard")
    parser.add_argument("--exact_max", type=int, default=200000,
                        help="largest gallery with an exact stage 1 (build's --stage1_exact_max)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch (and faiss) threads")
    parser.add_argument("--single", type=int, default=100, help="one-sentence calls timed")
    parser.add_argument("--repeats", type=int, default=5, help="batch calls timed at most")
    parser.add_argument("--time_budget", type=float, default=20.0,
                        help="no further run once the runs of a measurement took this long (s)")
    parser.add_argument("--cold", type=int, default=20,
                        help="one-sentence calls at the default K, each with the index evicted "
                        "from the page cache (0: none)")
    parser.add_argument("--containment_queries", type=int, default=0,
                        help="sentences scored exhaustively for the containment (0: all)")
    parser.add_argument("--build", nargs="*", default=[], choices=["demo", "vit-b32"],
                        help="also time index builds with these models")
    parser.add_argument("--demo_checkpoint", default="outputs/demo/ckpt_best.pt")
    parser.add_argument("--demo_videos", default="data/toy/videos")
    parser.add_argument("--vit_videos", type=int, default=48, help="224 px clips to encode")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (build)")
    parser.add_argument("--build_repeats", type=int, default=2, help="builds per model")
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure_cold", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if faiss_available():
        import faiss
        faiss.omp_set_num_threads(options.threads)
    for phase, run in (("generate", generate), ("measure", measure),
                       ("measure_cold", measure_cold)):
        if getattr(options, phase):
            options.n = getattr(options, phase)
            print(json.dumps(run(options)))
            return
    print(f"machine: {machine()}; threads {options.threads}; faiss "
          f"{'installed' if faiss_available() else 'not installed'}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if options.sizes:
        results = [run_size(n, options) for n in options.sizes]
        print_results(results, sorted(options.k), options.queries)
    if options.build:  # imported here: the search children measure their resident set
        from bench.index_build import bench_build
        bench_build(options)


if __name__ == "__main__":
    main()
