"""Two-stage search against exhaustive GARE on a toy gallery encoded by a trained checkpoint.

    python -m bench.bench_toy_containment --checkpoint outputs/demo/ckpt_best.pt \\
        --data /tmp/toy_gallery --index /tmp/toy_index --n 20000

Writes ``--n`` toy videos with varied sizes, speeds and start points under ``--data``
(:func:`tvr.data.toy.make_toy_dataset` with a default :class:`~tvr.data.toy_scene.ToyVariation`,
64 px, 12 frames at 3 fps as the demo's; kept when already there), indexes them with the
checkpoint into ``--index`` (:func:`tvr.index.build.build_index`; a rerun encodes only what is
new), and asks ``--queries`` captions in the toy language, a third each in plain words ("red
circle left"), in the training forms and in the held-out forms, each of a random colour, shape and
direction. The ground truth is each query's exhaustive GARE top-10
(``VideoIndex.search(..., exhaustive=True)``); for every ``--k`` the table gives the share of
those items in the two-stage top-10, the share of queries whose top-10 is complete, the same by
kind of query, the share of the top-10 items that show the query's content (colour, shape and
direction, read from each video's caption), and the latency of one query per call (median and
90th percentile of ``--single`` calls) and of all queries in one call. A two-stage top-10
holds an exhaustive item exactly when stage 1 kept it among its K candidates, since stage 2
scores them with GARE as exhaustive search does, so this is the top-10 containment of
bench/RESULTS.md §4 (short of ties in score). Only the index's public API is used.
``--stage1_frames 0`` ranks stage 1 by each video's mean frame alone (a rerun on the same
``--index`` rewrites its stage-1 vectors, without encoding again).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from tvr.data.toy import make_toy_dataset
from bench.common import machine
from tvr.data.toy_language import (COLOUR_WORDS, HELD_OUT_FORMS, SHAPE_WORDS, TRAIN_FORMS,
                                   caption, motions, plain_caption)
from tvr.data.toy_scene import COLOURS, DIRECTIONS, SHAPES, ToyVariation
from tvr.index.build import build_index
from tvr.index.config import DEFAULT_K, BuildConfig
from tvr.index.search import VideoIndex

KINDS = ("plain words", "training forms", "held-out forms")
Content = tuple[str, str, str]  # colour, shape, direction


class Query(NamedTuple):
    kind: str
    text: str
    content: Content


def toy_queries(count: int, seed: int) -> list[Query]:
    """``count`` captions of random contents, the kinds of :data:`KINDS` in turn."""
    rng = np.random.default_rng(seed)
    queries = []
    for i in range(count):
        content = (list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
                   list(DIRECTIONS)[rng.integers(len(DIRECTIONS))])
        kind = KINDS[i % len(KINDS)]
        if kind == "plain words":
            text = plain_caption(*content)
        else:
            forms = TRAIN_FORMS if kind == "training forms" else HELD_OUT_FORMS
            text = caption(rng, *content, forms)
        queries.append(Query(kind, text, content))
    return queries


def read_content(text: str) -> Content:
    """What a one-object toy caption names, read with the toy language's word tables."""
    words = set(text.replace(",", " ").split())
    colour, = (c for c, names in COLOUR_WORDS.items() if words & set(names))
    shape, = (s for s, names in SHAPE_WORDS.items() if words & set(names))
    direction, = (d for d in DIRECTIONS
                  if any(re.search(rf"\b{phrase}\b", text)
                         for wording in motions(d) for phrase in wording))
    return colour, shape, direction


def gallery_contents(root: Path) -> dict[str, Content]:
    """The content of each video of a toy set, by its path in the index (from its caption)."""
    sentences = json.loads((root / "MSRVTT_data.json").read_text())["sentences"]
    return {f"{s['video_id']}.mp4": read_content(s["caption"]) for s in sentences}


def prepare(options: argparse.Namespace) -> tuple[str, dict[str, Content]]:
    """Write the gallery and build (or update) its index: a line on what that took, and the
    gallery's contents by path."""
    start = time.perf_counter()
    toy = make_toy_dataset(options.data, seed=options.seed, num_train=options.n - 1, num_val=0,
                           num_test=1, captions_per_video=1, variation=ToyVariation(),
                           workers=options.workers)
    made = time.perf_counter() - start
    report = build_index(BuildConfig(videos=str(toy.video_path), out=options.index,
                                     checkpoint=options.checkpoint, workers=options.workers,
                                     stage1_frames=options.stage1_frames),
                         progress=options.progress)
    if report.failed:
        raise SystemExit(report.format())
    gallery = f"written in {made:.0f} s" if toy.created else "already there"
    return (f"gallery {toy.video_path}: {options.n} videos, {gallery}; index {options.index}: "
            + "; ".join(report.format().splitlines()) + f" ({report.seconds:.0f} s)",
            gallery_contents(toy.root))


def timed(call: Callable[[], list]) -> tuple[list, float]:
    """What ``call`` returns and the seconds it took."""
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def top10(index: VideoIndex, texts: list[str], **search) -> list[set[str]]:
    """The paths of each text's top-10 (``search``: ``k`` or ``exhaustive``)."""
    return [{hit.path for hit in answer.hits}
            for answer in index.search(texts, top=10, **search)]


def one_per_call(index: VideoIndex, texts: list[str], **search) -> str:
    """Median / 90th percentile milliseconds of one text per call, over ``texts``."""
    if not texts:
        return "–"
    times = [timed(lambda: top10(index, [text], **search))[1] * 1000 for text in texts]
    return f"{np.median(times):.1f} / {np.percentile(times, 90):.1f}"


def containment(exact: list[set[str]], found: list[set[str]]) -> tuple[float, float]:
    """Share of the exact top-10 items in ``found`` and share of queries with all of them."""
    inside = [len(e & f) / len(e) for e, f in zip(exact, found)]
    return float(np.mean(inside)), float(np.mean([share == 1.0 for share in inside]))


def cell(exact: list[set[str]], found: list[set[str]]) -> str:
    items, complete = containment(exact, found)
    return f"{100 * items:.1f}% / {100 * complete:.0f}%"


def matching(found: list[set[str]], queries: list[Query], contents: dict[str, Content]) -> str:
    """Share of the top-10 items that show what their query names."""
    hits = [contents[path] == query.content for paths, query in zip(found, queries)
            for path in paths]
    return f"{100 * np.mean(hits):.1f}%"


def table(index: VideoIndex, queries: list[Query], contents: dict[str, Content],
          ks: Sequence[int], single: int) -> list[str]:
    """The markdown table: exhaustive GARE, then two-stage at each K."""
    texts = [query.text for query in queries]
    exact, seconds = timed(lambda: top10(index, texts, exhaustive=True))
    kinds = {kind: [i for i, q in enumerate(queries) if q.kind == kind] for kind in KINDS}
    head = ("| K | top-10 items inside / queries complete | " + " | ".join(KINDS)
            + " | top-10 showing the query's content | one query per call, median / p90 ms "
              "| all queries in one call, s |")
    lines = [head, "|" + "---|" * (6 + len(KINDS))]
    lines.append(f"| exhaustive | 100.0% / 100% | {' | '.join('–' for _ in KINDS)} | "
                 f"{matching(exact, queries, contents)} | "
                 f"{one_per_call(index, texts[:single], exhaustive=True)} | {seconds:.2f} |")
    for k in ks:
        k = min(k, len(index))
        found, seconds = timed(lambda: top10(index, texts, k=k))
        by_kind = [cell([exact[i] for i in rows], [found[i] for i in rows])
                   for rows in kinds.values()]
        default = " (default)" if k == DEFAULT_K else ""
        lines.append(f"| {k}{default} | {cell(exact, found)} | {' | '.join(by_kind)} | "
                     f"{matching(found, queries, contents)} | "
                     f"{one_per_call(index, texts[:single], k=k)} | {seconds:.2f} |")
    return lines


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a trained ckpt_best.pt")
    parser.add_argument("--data", required=True, help="folder of the toy gallery")
    parser.add_argument("--index", required=True, help="folder of its index")
    parser.add_argument("--n", type=int, default=20_000, help="videos in the gallery")
    parser.add_argument("--seed", type=int, default=1, help="seed of the gallery")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--query_seed", type=int, default=0)
    parser.add_argument("--k", type=int, nargs="+",
                        default=sorted({200, 500, 1000, DEFAULT_K, 5000}))
    parser.add_argument("--single", type=int, default=20,
                        help="queries timed one per call, at each K and exhaustive")
    parser.add_argument("--workers", type=int, default=2,
                        help="ffmpeg processes writing, decoding processes indexing")
    parser.add_argument("--progress", action="store_true", help="progress bar while indexing")
    parser.add_argument("--stage1_frames", type=int, default=None,
                        help="the index's --stage1_frames (default: the build's); another "
                             "value rewrites the stage-1 vectors of an existing --index")
    options = parser.parse_args(argv)
    if options.n < 2 or options.queries < 1:
        parser.error("need --n >= 2 and --queries >= 1")
    return options


def main(argv: Optional[list[str]] = None) -> None:
    options = parse(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {machine()}; torch threads "
          f"{torch.get_num_threads()}, load average "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    done, contents = prepare(options)
    print(done)
    index = VideoIndex.open(options.index)
    queries = toy_queries(options.queries, options.query_seed)
    top10(index, [queries[0].text], k=10)  # builds and self-checks the engine: not timed below
    print(f"checkpoint {Path(options.checkpoint).resolve()}; {len(queries)} queries "
          f"(seed {options.query_seed}), e.g. " + "; ".join(repr(q.text) for q in queries[:3]))
    print("\n".join(table(index, queries, contents, options.k, options.single)))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} load average "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
