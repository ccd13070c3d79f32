"""How long a video index of N videos takes to open, and where the time goes.

    python -m bench.bench_index_open --n 1000000 --folder /tmp/x23open

A child process writes an index of ``--n`` videos whose shards are tiny (each record a
one-byte field, two stage-1 vectors of ``--dim`` float16 values): everything an open reads but
the features, so that a 1M index takes megabytes, not the 16 GiB of bench/bench_index.py's.
It goes through the store's write API (manifest entries with ``--frames`` frame times and
paths below a thousand folders, ``Manifest.save``, ``update_stage1``: a faiss IVF index above
``--exact_max`` videos). A second, fresh child opens it as bench/bench_index.py does
(``Manifest.load`` and ``open_gallery``), looks up one hit's path and frame time, and reports
the seconds of each step, the resident set after the open, and the functions that took the
most time (cProfile, a second open in the same child). Also timed: hashing a file of
``--checkpoint_mb`` MB (``file_sha256``, what ``VideoIndex.open`` does to the checkpoint).
The folder is deleted afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.bench_index import memory
from bench.common import GiB, machine
from tvr.index.store import Manifest, open_gallery, shard_path, update_stage1
from tvr.index.table import Entry
from tvr.storage import atomic_write, file_sha256


def generate(options: argparse.Namespace) -> dict:
    """Write the index (child process)."""
    folder = Path(options.folder)
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    manifest = Manifest("/videos", {}, {"max_words": 32}, {})
    times = [round(0.333 * k, 3) for k in range(options.frames)]
    for shard in range(-(-options.n // options.shard_size)):
        rows = min(options.shard_size, options.n - shard * options.shard_size)
        records = np.zeros(rows, dtype=[("mask", "u1")])
        coarse = rng.standard_normal((rows, 2, options.dim)).astype(np.float16)  # 2 a video
        for kind, array in (("videos", records), ("coarse", coarse)):
            atomic_write(shard_path(folder, shard, kind),
                         lambda f, array=array: np.save(f, array, allow_pickle=False))
        for row in range(rows):
            number = shard * options.shard_size + row
            path = f"folder{number % 1000:03d}/clip {number}.mp4"
            manifest.entries[path] = Entry(1_000_000 + number, 1_700_000_000_000_000_000,
                                           f"/videos/{path}", False, shard, row, 12.5,
                                           times[:options.frames - row % 3])
        manifest.next_shard = shard + 1
    stage1 = update_stage1(folder, manifest, options.exact_max, 100)  # saves the manifest
    return {"write_s": time.perf_counter() - start, "stage1": stage1,
            "manifest_mb": (folder / "manifest.json").stat().st_size / 2**20,
            "disk_mb": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20}


def open_index(folder: Path) -> tuple[dict, object]:
    """Seconds of ``Manifest.load`` and ``open_gallery``, and the gallery."""
    start = time.perf_counter()
    manifest = Manifest.load(folder)
    loaded = time.perf_counter()
    gallery = open_gallery(folder, manifest)
    return {"load_s": loaded - start, "gallery_s": time.perf_counter() - loaded}, gallery


def measure(options: argparse.Namespace) -> dict:
    """Open the index (child process): seconds, resident set, a profile of a second open."""
    folder = Path(options.folder)
    result = {"load_start": os.getloadavg()[0]}
    seconds, gallery = open_index(folder)
    result.update(seconds, rss_open=memory("VmRSS"))
    start = time.perf_counter()
    row = len(gallery) // 2
    result["hit"] = hit(gallery, row)
    result["hit_s"] = time.perf_counter() - start
    profile = cProfile.Profile()
    profile.enable()
    open_index(folder)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(options.top)
    result["profile"] = text.getvalue()
    checkpoint = folder / "checkpoint.bin"
    with open(checkpoint, "wb") as f:
        f.write(os.urandom(options.checkpoint_mb * 2**20))
    start = time.perf_counter()
    file_sha256(checkpoint)
    result["sha256_s"] = time.perf_counter() - start
    result["load_end"] = os.getloadavg()[0]
    return result


def hit(gallery, row: int) -> list:
    """What a search needs of a hit: its path and the time of one of its frames."""
    return [gallery.videos.paths[row], gallery.videos.table.times(row)[1]]


def child(phase: str, options: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_index_open", phase, "--n", str(options.n),
           "--folder", options.folder, "--shard_size", str(options.shard_size),
           "--dim", str(options.dim), "--frames", str(options.frames),
           "--exact_max", str(options.exact_max), "--top", str(options.top),
           "--checkpoint_mb", str(options.checkpoint_mb)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--n", type=int, default=1_000_000, help="videos")
    parser.add_argument("--folder", default="/tmp/bench_index_open")
    parser.add_argument("--shard_size", type=int, default=256, help="videos per shard")
    parser.add_argument("--dim", type=int, default=16, help="stage-1 vector width")
    parser.add_argument("--frames", type=int, default=12, help="frame times per video (most)")
    parser.add_argument("--exact_max", type=int, default=200000)
    parser.add_argument("--checkpoint_mb", type=int, default=600)
    parser.add_argument("--top", type=int, default=15, help="functions of the profile shown")
    parser.add_argument("--keep", action="store_true", help="keep the index folder")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.generate or options.measure:
        print(json.dumps((generate if options.generate else measure)(options)))
        return
    print(f"machine: {machine()}; load {open('/proc/loadavg').read().strip()}", flush=True)
    written = child("--generate", options)
    print(f"N={options.n} in shards of {options.shard_size}: written in "
          f"{written['write_s']:.0f} s, manifest.json {written['manifest_mb']:.1f} MB, "
          f"folder {written['disk_mb']:.0f} MB; {written['stage1']}", flush=True)
    result = child("--measure", options)
    print(result.pop("profile"))
    print(json.dumps(result))
    print(f"open {result['load_s'] + result['gallery_s']:.2f} s (Manifest.load "
          f"{result['load_s']:.2f}, open_gallery {result['gallery_s']:.2f}), resident "
          f"{result['rss_open'] / GiB:.2f} GiB; sha256 of {options.checkpoint_mb} MB "
          f"{result['sha256_s']:.2f} s; load {result['load_start']:.2f} / "
          f"{result['load_end']:.2f}; {open('/proc/loadavg').read().strip()}")
    if not options.keep:
        shutil.rmtree(options.folder)


if __name__ == "__main__":
    main()
