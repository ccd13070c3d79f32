"""The video index (tvr/index) at scale: query latency, memory and top-10 containment on
synthetic galleries, and index build throughput.

    python -m bench.bench_index --sizes 10000 100000 1000000
    python -m bench.bench_index --sizes --build demo vit-b32

Search (``--sizes``; each gallery size runs in its own process, so that its memory figures are
its own). A gallery holds N synthetic videos of F = 12 frame features of width d = 512 with
structure (:func:`make_gallery`): ``--topics`` topic directions; each video is a topic plus its
own offset, each real frame that plus frame noise, padded frames (a quarter of the videos are
shorter than F) a fixed "blank image" feature; features have CLIP-like norms and a modality gap
between texts and videos. Half of the ``--queries`` sentences are noisy versions of one video's
content, half of one topic. The GARE similarity is ``GapAwareSimilarity(SimilarityConfig(dim=512))``
with its initial weights (seeded), wrapped in a stand-in model (:class:`SyntheticModel`): no text
encoder is run, the sentence embeddings are given. The index is a :class:`VideoIndex` built in
memory. Frames are stored as float16 (``--frame_dtype``; 1M x 12 x 512 float32 frames would take
25.2 GB, more than a 24 GiB machine): :meth:`VideoIndex.scores` gathers the candidates' frames and
the evaluation engine casts them to float32, so the scores are those of the float16-rounded
frames, in float32 arithmetic. The stage-1 vectors are float32, as the index stores them.

Timed, for one sentence per call and for the batch of ``--queries`` sentences in one call (median
of up to ``--repeats`` runs, fewer when they exceed ``--time_budget`` seconds together; single
sentences cycle through the queries):

- stage 1 alone: ``Stage1Search.top`` for the largest K, with faiss (IndexFlatIP) and torch;
- GARE on the K candidates alone: what ``VideoIndex.search`` does after stage 1 (union of the
  candidates, :meth:`VideoIndex.scores`, gather, stable sort);
- two-stage K end to end: the torch stage 1, then the same (:func:`two_stage`);
- exhaustive GARE on every video (:func:`exhaustive`): single sentences for
  N <= ``--exhaustive_max`` (default 100k); one batch call, which also gives the containment,
  for N <= ``--containment_max`` (default 1M; it costs about as much as one sentence, since
  preparing the N videos dominates: about 10 minutes at 1M on 2 CPU cores). Larger N print a
  linear extrapolation from the largest measured N, marked as such.

Left out: the sentence encoding and the per-hit best-frame lookup of ``search`` (10 rows).
Containment (:func:`~tvr.evaluation.two_stage.topk_containment`): the fraction of the exhaustive
GARE top-10 items inside the K stage-1 candidates, and of sentences whose whole top-10 is inside.
Memory: the array sizes, the resident set (VmRSS) once the index is open, and the peak resident
set (VmHWM, reset through /proc/self/clear_refs before each phase) while timing the two-stage
searches and the exhaustive ones. faiss keeps its own float32 copy of the stage-1 vectors next to
the index's; to stay within about 16 GiB at 1M it is built after the GARE phases, once the
frames are freed. Its copy is given as computed (N x d float32, what IndexFlatIP stores): the
growth of the resident set shows it only where no freed heap memory is reused (it did at 1M).

Build (``--build demo vit-b32``): videos/s of ``tvr.index.build.build_index`` with ``--workers``
decoding processes, as ``python -m tvr.index build`` prints it (whole build: model load, checkpoint
hash, decoding, encoding, thumbnails, shards), and the start-up part (model load and checkpoint
hash) timed alone. "demo": ``--demo_checkpoint`` (``python main_retrieval.py`` writes one) on the
videos of ``--demo_videos``. "vit-b32": a ViT-B/32 GARE model with random weights, saved as a
checkpoint of this project (no CLIP file needed: the model is rebuilt from its recorded
configuration), on ``--vit_videos`` toy clips of 224 x 224 pixels, 12 s at 3 fps, sampled as the
MSR-VTT recipe samples (1 frame/s, 12 frames); all written to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from tvr.evaluation.engine import coarse_vectors
from tvr.evaluation.two_stage import topk_containment
from tvr.index.search import Stage1Search, VideoIndex, faiss_available
from tvr.index.store import Manifest
from tvr.models.gare import TextFeatures
from tvr.models.similarity import GapAwareSimilarity, SimilarityConfig

DIM, FRAMES, TOP = 512, 12, 10
GiB = 2 ** 30
# The synthetic features (make_gallery). Directions are unit vectors; noise vectors have norm ~1.
VIDEO_SPREAD = 0.8    # a video's own offset from its topic
FRAME_SPREAD = 0.6    # frame-to-frame noise within a video
QUERY_NOISE = 0.8     # a sentence's noise around the video or topic it describes
FRAME_NORM = 10.0     # norm of every frame feature (CLIP ViT-B/32 image features: about 10)
TEXT_NORM = 8.0       # norm of every sentence embedding
SHORT_SHARE = 0.25    # share of videos with fewer than F real frames (2 to F - 1)


# ---------------------------------------------------------------------------------- gallery
@dataclass
class Gallery:
    """Frames (N, F, d) in the storage dtype, mask (N, F) int64, stage-1 vectors (N, d) float32,
    sentence embeddings (Q, d) and, per sentence, whether it describes a video or a topic."""

    frames: Optional[Tensor]
    mask: Tensor
    coarse: Tensor
    text: Tensor
    topic_query: Tensor


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _noise(generator: torch.Generator, *shape: int) -> Tensor:
    """Gaussian vectors of norm about 1 along the last dimension."""
    return torch.randn(*shape, generator=generator).mul_(shape[-1] ** -0.5)


def make_gallery(n: int, queries: int, topics: int, seed: int, dtype: torch.dtype,
                 chunk: int = 8192) -> Gallery:
    """A synthetic gallery of ``n`` videos and ``queries`` sentences (module docstring).

    Video b of topic j: content c_b = τ_j + VIDEO_SPREAD·ε_b; real frame k:
    FRAME_NORM · unit(ν + c_b + FRAME_SPREAD·η_bk), ν the direction shared by all video
    features; padded frame: FRAME_NORM · unit(ν + β), β a fixed "blank image" direction.
    Sentence describing video b (or topic j): TEXT_NORM · unit(ω + c_b (or τ_j) +
    QUERY_NOISE·ξ), ω the direction shared by all sentences (≠ ν: the modality gap).
    Generated in chunks of ``chunk`` videos, deterministic for a given ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    video_dir, text_dir, blank = _unit(torch.randn(3, DIM, generator=g)).unbind(0)
    topic = _unit(torch.randn(topics, DIM, generator=g))
    targets = torch.randperm(n, generator=g)[:queries]
    content_of: dict[int, Tensor] = {}
    frames = torch.empty(n, FRAMES, DIM, dtype=dtype)
    mask = torch.empty(n, FRAMES, dtype=torch.int64)
    coarse = torch.empty(n, DIM)
    padded = FRAME_NORM * _unit(video_dir + blank)
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        content = (topic[torch.randint(topics, (count,), generator=g)]
                   + VIDEO_SPREAD * _noise(g, count, DIM))
        for row in targets[(targets >= start) & (targets < start + count)].tolist():
            content_of[row] = content[row - start]  # described by a sentence
        short = torch.rand(count, generator=g) < SHORT_SHARE
        lengths = torch.where(short, torch.randint(2, FRAMES, (count,), generator=g), FRAMES)
        real = torch.arange(FRAMES) < lengths.unsqueeze(1)
        block = _noise(g, count, FRAMES, DIM).mul_(FRAME_SPREAD)  # in place: memory-bound
        block.add_((video_dir + content).unsqueeze(1))
        block.mul_(FRAME_NORM / block.norm(dim=-1, keepdim=True))
        block[~real] = padded
        frames[start:start + count] = block
        mask[start:start + count] = real
        # from the float32 features, as a build computes them (the frames are then stored)
        coarse[start:start + count] = coarse_vectors(block, real)
    topic_query = torch.arange(queries) % 2 == 1
    described = torch.stack([topic[j] for j in torch.randint(topics, (queries,), generator=g)])
    for q, row in enumerate(targets.tolist()):
        if not topic_query[q]:
            described[q] = content_of[row]
    text = TEXT_NORM * _unit(text_dir + described + QUERY_NOISE * _noise(g, queries, DIM))
    return Gallery(frames, mask, coarse, text, topic_query)


class SyntheticModel(torch.nn.Module):
    """Stands in for a GARE model in :class:`VideoIndex`: the index reads ``similarity`` and
    calls ``encode_text`` only to self-check its evaluation engine, on two sample sentences;
    this one returns the first of the given sentence embeddings for them."""

    def __init__(self, similarity: GapAwareSimilarity, sample_text: Tensor):
        super().__init__()
        self.similarity = similarity
        self.sample_text = sample_text

    def encode_text(self, ids: Tensor, mask: Tensor) -> TextFeatures:
        return TextFeatures(self.sample_text[:len(ids)], None, mask)


def open_index(gallery: Gallery, seed: int, stage1: str = "torch") -> VideoIndex:
    """An in-memory :class:`VideoIndex` of ``gallery`` (as ``VideoIndex.open`` builds one from
    shards), with a seeded GARE similarity at d = 512 and its engine built. The torch stage 1
    (default) shares the gallery's stage-1 tensor; faiss would copy it."""
    torch.manual_seed(seed)
    similarity = GapAwareSimilarity(SimilarityConfig(dim=DIM)).eval()
    manifest = Manifest(videos_root=".", checkpoint={}, config={"max_words": 32}, sampling={})
    paths = [f"video{i}.mp4" for i in range(len(gallery.mask))]
    index = VideoIndex(Path("."), manifest, SyntheticModel(similarity, gallery.text), paths,
                       gallery.frames, gallery.mask, gallery.coarse, stage1)
    index.engine  # noqa: B018 (built and self-checked on first use)
    return index


# ---------------------------------------------------------------------------------- search
def unit_text(text: Tensor) -> Tensor:
    return text / text.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def rescore(index: VideoIndex, text: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """GARE on the candidates (Q, K) as ``VideoIndex.search`` does it: the best TOP rows per
    sentence, best first, and the scores (Q, K) of the candidates."""
    return index.rescore(text, candidates, TOP)


def two_stage(index: VideoIndex, text: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Stage 1 (the index's backend) for the top ``k``, then GARE on them."""
    return rescore(index, text, index.candidates(text, k))


def exhaustive(index: VideoIndex, text: Tensor) -> tuple[Tensor, Tensor]:
    """GARE on every video (``search(..., exhaustive=True)``); scores (Q, N) in row order."""
    return rescore(index, text, index.candidates(text, len(index), exhaustive=True))


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


def measure_size(options: argparse.Namespace) -> dict:
    """Every search figure of one gallery size (runs in a child process)."""
    n, q, ks = options.n, options.queries, sorted(options.k)

    def log(message: str) -> None:
        print(f"[N={n}] {message}", file=sys.stderr, flush=True)

    result: dict = {"n": n, "queries": q, "load_start": os.getloadavg()[0]}
    dtype = getattr(torch, options.frame_dtype)
    start = time.perf_counter()
    gallery = make_gallery(n, q, options.topics, options.seed, dtype)
    result["generate_s"] = time.perf_counter() - start
    result["bytes"] = {"frames": gallery.frames.nbytes, "mask": gallery.mask.nbytes,
                       "coarse": gallery.coarse.nbytes}
    result["peak_generate"] = memory("VmHWM")
    log(f"gallery generated in {result['generate_s']:.0f} s")
    index = open_index(gallery, options.seed)
    result["rss_open"] = memory("VmRSS")
    text = gallery.text
    budget, repeats = options.time_budget, options.repeats
    times: dict[str, dict] = {}

    def time_both(name: str, run: Callable[[Tensor], object]) -> None:
        """Time ``run(rows)`` for one sentence per call (cycling through the sentences) and
        for all sentences in one call; ``rows`` indexes the sentences."""
        run(torch.tensor([0]))  # warm-up
        times[f"{name}/1"] = timed(lambda i: run(torch.tensor([i % q])), repeats, budget)
        times[f"{name}/{q}"] = timed(lambda i: run(torch.arange(q)), repeats, budget)
        log(f"{name}: {1e3 * times[f'{name}/1']['seconds']:.1f} ms per sentence, "
            f"{1e3 * times[f'{name}/{q}']['seconds']:.1f} ms per batch of {q}")

    reset_peak()
    time_both("stage1_torch", lambda rows: index.stage1.top(unit_text(text[rows]), ks[-1]))
    candidates = index.candidates(text, ks[-1])
    result["union"] = {k: len(torch.unique(candidates[:, :k])) for k in ks}
    for k in ks:
        time_both(f"gare_on_{k}", lambda rows, k=k: rescore(index, text[rows],
                                                            candidates[rows, :k]))
        time_both(f"two_stage_{k}", lambda rows, k=k: two_stage(index, text[rows], k))
    result["peak_two_stage"] = memory("VmHWM")

    if n <= options.containment_max:
        reset_peak()
        if n <= options.exhaustive_max:
            times["exhaustive/1"] = timed(lambda i: exhaustive(index, text[i % q:i % q + 1]),
                                          repeats, budget)
            log(f"exhaustive: {times['exhaustive/1']['seconds']:.1f} s per sentence")
        start = time.perf_counter()
        full = exhaustive(index, text)[1]
        times[f"exhaustive/{q}"] = {"seconds": time.perf_counter() - start, "runs": 1}
        result["peak_exhaustive"] = memory("VmHWM")
        log(f"exhaustive: {times[f'exhaustive/{q}']['seconds']:.1f} s per batch of {q}")
        result["containment"] = {}
        for k in ks:
            result["containment"][k] = {
                kind: topk_containment(full[sel], candidates[sel, :k], top=TOP)
                for kind, sel in (("all", slice(None)), ("video", ~gallery.topic_query),
                                  ("topic", gallery.topic_query))}
        del full

    del index
    gallery.frames = None  # free the frames before faiss copies the stage-1 vectors
    if faiss_available():
        import faiss
        faiss.omp_set_num_threads(options.threads)
        reset_peak()
        flat = Stage1Search(gallery.coarse, "faiss")
        result["faiss_copy"] = gallery.coarse.nbytes
        time_both("stage1_faiss", lambda rows: flat.top(unit_text(text[rows]), ks[-1]))
        result["peak_faiss"] = memory("VmHWM")
    result["times"] = times
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


def print_search_tables(results: list[dict], options: argparse.Namespace) -> None:
    q, ks = options.queries, sorted(options.k)

    def ms(r: dict, key: str) -> str:
        if key not in r["times"]:
            return "–"
        return f"{1e3 * r['times'][key]['seconds']:.1f} ({r['times'][key]['runs']})"

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
            cells = [ms(r, f"{key}/{per_call}") for key in keys]
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

    print("\nMemory (GiB): arrays; resident set once the index is open; peak resident set "
          "while timing (generation, two-stage, exhaustive, faiss stage 1):\n")
    print("| N | frames | stage-1 vectors | mask | faiss copy | RSS open | peak generate | "
          "peak two-stage | peak exhaustive | peak faiss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def gib(r: dict, key: str) -> str:
        return f"{r[key] / GiB:.2f}" if key in r else "–"

    for r in results:
        b = r["bytes"]
        print(f"| {r['n']} | {b['frames'] / GiB:.2f} | {b['coarse'] / GiB:.2f} | "
              f"{b['mask'] / GiB:.3f} | {gib(r, 'faiss_copy')} | {gib(r, 'rss_open')} | "
              f"{gib(r, 'peak_generate')} | {gib(r, 'peak_two_stage')} | "
              f"{gib(r, 'peak_exhaustive')} | {gib(r, 'peak_faiss')} |")

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


# ---------------------------------------------------------------------------------- build
def vit_b32_checkpoint(path: Path) -> Path:
    """A ViT-B/32 GARE model with random weights, saved as a checkpoint of this project (its
    recorded configuration rebuilds it without the CLIP file)."""
    from tvr.models.clip import CLIP, CLIP_CONFIGS
    from tvr.models.gare import GARE
    from tvr.options import gare_config, model_record, parse_args
    from tvr.training.checkpoint import save_model

    args = parse_args(["--base_encoder", "ViT-B/32", "--anno_path", "a", "--video_path", "v"])
    torch.manual_seed(0)
    model = GARE(CLIP(CLIP_CONFIGS["ViT-B/32"]), gare_config(args))
    save_model(path, model, epoch=0, global_step=0, metric=None,
               config=model_record(args, model), args=args)
    return path


def time_build(checkpoint: Path, videos: Path, scratch: Path,
               options: argparse.Namespace) -> dict:
    """Whole builds (median videos/s) and the start-up alone (model load + checkpoint hash)."""
    from tvr.index.build import build_index, load_checkpoint_model
    from tvr.index.store import file_sha256

    start = time.perf_counter()
    model, args, _ = load_checkpoint_model(checkpoint)
    file_sha256(checkpoint)
    startup = time.perf_counter() - start
    frames = args.max_frames
    del model
    rates, seconds, encoded = [], [], 0
    for run in range(options.build_repeats):
        report = build_index(checkpoint, videos, scratch / f"index{run}", workers=options.workers,
                             rebuild=True, progress=False)
        encoded = len(report.encoded)
        rates.append(encoded / report.seconds)
        seconds.append(report.seconds)
        print(f"[build {checkpoint.name}] {report.format()}", file=sys.stderr, flush=True)
    return {"videos": encoded, "frames": frames, "videos_per_s": statistics.median(rates),
            "seconds": statistics.median(seconds), "startup_s": startup, "runs": len(rates)}


def bench_build(options: argparse.Namespace) -> None:
    from tvr.data.toy import make_toy_dataset

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
            toy = make_toy_dataset(scratch / "toy224", num_train=count - count // 2,
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
    if options.measure:
        options.n = options.measure
        print(json.dumps(measure_size(options)))
        return
    print(f"machine: {machine()}; threads {options.threads}; faiss "
          f"{'installed' if faiss_available() else 'not installed'}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if options.sizes:
        print_search_tables([run_size(n, options) for n in options.sizes], options)
    if options.build:
        bench_build(options)


if __name__ == "__main__":
    main()
