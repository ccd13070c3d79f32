"""Decode every video of a dataset once into a frame cache for ``--frame_cache``.

The cache's format and guarantees: tvr/data/frame_cache.py.

It takes main_retrieval.py's own data flags, so the cache holds exactly the frames that a run
with the same flags samples: the frames of every caption window of the ``--splits`` of
``--datatype`` (train, val and test by default), at ``--video_framerate``, ``--max_frames``, with
``--video_backend`` (or, given ``--init_model CKPT``, the sampling that checkpoint was trained
with, as the run that evaluates it samples); then the short side is brought down to ``--short_side`` px and the frames
are stored as JPEG (``--format jpeg``, quality ``--quality``, 4:4:4) or raw RGB (``--format raw``,
~5x larger, exact) in ~1 GiB shard files::

    python preprocess/build_frame_cache.py --recipe msrvtt --anno_path data/MSR-VTT/anns \\
        --video_path data/MSR-VTT/videos --output data/MSR-VTT/frames_1fps --workers 8
    python main_retrieval.py --do_train 1 --recipe msrvtt ... --frame_cache data/MSR-VTT/frames_1fps

Resumable: rerun the same command after an interruption and it continues where the last complete
shard ended (a folder built with other parameters is refused). Videos that cannot be read are
listed at the end with their reason and recorded in the cache (a run then stops on them, or skips
them with ``--skip_bad_videos``); they make the exit status 1. Decoding runs in ``--workers``
threads (OpenCV and PyAV decode without holding the GIL).

One build writes a cache folder at a time: a second one stops at once (exit status 2, naming the
process that writes it), or with ``--wait`` waits for it and then adds what is still missing.

The modules that read and decode videos (torch, OpenCV) are imported by the functions that use
them, so that ``--help`` and a bad flag answer at once.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository's tvr package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from tvr.cli.flags import add_flag, add_setting_flags, declared  # noqa: E402
from tvr.cli.checks import (UsageError, debug_requested, describe,  # noqa: E402
                            expected_errors)
from tvr.cli.retrieval import parse_args, resolve  # noqa: E402
from tvr.data.config import MAX_WORKERS, CacheParams, DataConfig  # noqa: E402
from tvr.data.video import VideoReadError  # noqa: E402
from tvr.settings import (REQUIRED, SettingError, check_settings, integer,  # noqa: E402
                          setting, settings_of)
from tvr.storage import ConfigMismatchError  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CacheBuild:
    """Where the cache goes and how the build runs (the storage settings are
    :class:`~tvr.data.config.CacheParams`')."""

    output: str = setting(REQUIRED, "the cache folder (then --frame_cache)", kind=str)
    workers: int = setting(4, "decoding threads (0 or 1: one)", integer(0, MAX_WORKERS))
    no_progress: bool = setting(False, "hide the progress bar")
    wait: bool = setting(False, "if another build is writing --output, wait for it (else stop)")

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_frame_cache.py",
        description="Decode a dataset's videos once into a frame cache. Also takes "
                    "main_retrieval.py's data flags (--recipe, --datatype, --anno_path, "
                    "--video_path, --video_framerate, --max_frames, --video_backend).")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    add_setting_flags(parser, CacheBuild)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an expected error under its one line; also "
                             "TVR_DEBUG=1 in the environment")
    for flag in declared(CacheParams):
        if flag.path[0] != "sampling":  # the sampling comes from main_retrieval.py's flags
            add_flag(parser, flag)
    return parser


def dataset_entries(data: DataConfig, max_words: int,
                    splits: list[str]) -> list[tuple[str, str, float | None, float | None]]:
    """``(key, path, start, end)`` of every distinct cache entry (a video and a caption's
    window) of ``splits``, in split order."""
    from tvr.data.datasets import build_dataset
    from tvr.data.frame_cache import cache_key
    entries: dict[str, tuple[str, str, float | None, float | None]] = {}
    for split in splits:
        dataset = build_dataset(data.datatype, split, data.anno_path, data.video_path, None, None,
                                max_words)
        for video_id, (start, end) in zip(dataset.video_ids, dataset.video_bounds):
            try:
                path = dataset.video_files(video_id)
            except VideoReadError:  # recorded as bad by the build, named by its preferred file
                path = dataset.video_files.candidates(video_id)[0]
            key = cache_key(str(path.relative_to(data.video_path)), start, end)
            entries.setdefault(key, (key, str(path), start, end))
    return list(entries.values())


def decode(path: str, start: float | None, end: float | None,
           params: CacheParams) -> tuple[np.ndarray, np.ndarray] | str:
    """The window's sampled frames (resized) and indices, or the reason it cannot be read."""
    from tvr.data.frame_cache import resize_short_side
    from tvr.data.frames import sample_frames
    try:
        sampled = sample_frames(path, params.sampling, start, end)
    except VideoReadError as error:
        return error.reason or str(error)
    return resize_short_side(sampled.frames, params.short_side), sampled.indices


def build_cache(entries: list[tuple[str, str, float | None, float | None]], output: str | Path,
                params: CacheParams, workers: int = 4, progress: bool = False,
                wait: bool = False) -> dict[str, str]:
    """Add the ``entries`` (:func:`dataset_entries`) the cache at ``output`` lacks; returns
    ``{path: reason}`` of the bad ones (including those recorded by an earlier, resumed build).
    ``wait``: if another build writes ``output``, wait for it (else :class:`FrameCacheError`)."""
    from tvr.data.frame_cache import FrameCache, FrameCacheWriter
    writer = FrameCacheWriter(output, params, wait=wait)
    todo = [entry for entry in entries if entry[0] not in writer.done]
    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        def decoded() -> Iterator:  # results in order, at most 4 x workers in flight
            window = 4 * max(1, workers)
            futures = [pool.submit(decode, *entry[1:], params) for entry in todo[:window]]
            for i in range(len(todo)):
                if i + window < len(todo):
                    futures.append(pool.submit(decode, *todo[i + window][1:], params))
                yield todo[i], futures[i].result()
                futures[i] = None
        try:
            for (key, path, _, _), result in tqdm(decoded(), total=len(todo), disable=not progress,
                                                  desc="frame cache", unit="video"):
                if isinstance(result, str):
                    writer.add_bad(key, result)
                    bad[path] = result
                else:
                    writer.add(key, *result)
        finally:
            writer.close()
    cache = FrameCache(output)
    return {path: cache.bad[key] for key, path, _, _ in entries if key in cache.bad}


def main(argv: list[str] | None = None) -> int:
    """Build the cache; expected failures end in one line (exit status 2 for a flag or a cache
    that cannot take this build, 1 for a file that fails), ``--debug`` adds the traceback."""
    parser = build_parser()
    own, rest = parser.parse_known_args(argv)
    try:
        return build(parser, own, rest)
    except (ConfigMismatchError, *expected_errors()) as error:
        from tvr.data.frame_cache import FrameCacheError  # imported by expected_errors()
        if own.debug or debug_requested():
            traceback.print_exc()
        print(f"{parser.prog}: error: {describe(error)}", file=sys.stderr)
        usage = (ConfigMismatchError, UsageError, FrameCacheError)
        return 2 if isinstance(error, usage) else 1


def build(parser: argparse.ArgumentParser, own: argparse.Namespace, rest: list[str]) -> int:
    """:func:`main` once the cache's own flags are parsed (``rest``: main_retrieval.py's)."""
    config = resolve(parse_args(rest), warn=lambda note: print(f"warning: {note}",
                                                                 file=sys.stderr))
    try:
        run = CacheBuild(own.output, own.workers, own.no_progress, own.wait)
        params = CacheParams(config.data.sampling, **{
            item.name: getattr(own, declared.flag) for item, declared in settings_of(CacheParams)})
    except SettingError as error:
        parser.error(describe(error))
    entries = dataset_entries(config.data, config.model.max_words, own.splits)
    tic = time.time()
    bad = build_cache(entries, run.output, params, run.workers, not run.no_progress, run.wait)
    print(f"frame cache {run.output}: {len(entries) - len(bad)} of {len(entries)} entries of "
          f"{config.data.datatype} {'/'.join(own.splits)} cached in {time.time() - tic:.0f} s",
          file=sys.stderr)
    for path, reason in sorted(bad.items()):
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
