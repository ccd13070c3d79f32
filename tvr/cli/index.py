"""``python -m tvr.index {build,search,serve}``: index a folder of videos with a checkpoint
(or plain CLIP, zero-shot), search it with sentences, or browse it in a local web page.

Each command's flags are generated from the settings its configuration declares
(:class:`~tvr.index.config.BuildConfig`, :class:`~tvr.index.config.SearchConfig`,
:class:`~tvr.index.config.ServeConfig`), with their defaults in ``--help``. Everything fails
fast, in one line: a flag out of its bounds, or a path flag that names nothing usable (a
missing or damaged checkpoint, an ``--out`` that is a file, a missing ``--queries_file``), is
argparse's ``error:`` line and exit status 2, before any model is loaded; a failure at run time
(an index of another checkpoint, a checkpoint whose record does not parse, a busy port) is one
``<prog>: error:`` line and exit status 1. ``--debug`` or ``TVR_DEBUG=1`` adds the traceback.
The commands' modules (torch, faiss, Flask) are imported when a command runs, after its flags
are checked: ``--help`` and a bad flag answer at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Optional, Sequence

from tvr.cli.checks import (UsageError, check_device, check_exists, check_folder, check_loads,
                            check_writable, debug_requested, describe, flag_error, shown)
from tvr.cli.flags import ShowDefaults, add_setting_flags
from tvr.index.config import BuildConfig, SearchConfig, ServeConfig
from tvr.settings import SettingError, settings_of

PROG = "python -m tvr.index"
COMMANDS: dict[str, tuple[type, str, str]] = {  # configuration, help, usage
    "build": (BuildConfig, "create or update an index (incremental)",
              "%(prog)s (--checkpoint FILE | --clip_path FILE) --videos FOLDER --out FOLDER "
              "[flags]"),
    "search": (SearchConfig, "rank the indexed videos for sentences",
               "%(prog)s INDEX [SENTENCE ...] [flags]"),
    "serve": (ServeConfig, "a local web page to search the index", "%(prog)s INDEX [flags]"),
}
PATHS = ("index", "checkpoint", "clip_path", "videos", "out", "queries_file")  # user's paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (config_type, about, usage) in COMMANDS.items():
        command = commands.add_parser(name, help=about, description=about,
                                      usage=f"{usage} (--help lists them)",
                                      formatter_class=ShowDefaults)
        command.set_defaults(parser=command)
        if name != "build":
            command.add_argument("index", help="the index folder")
        if name == "search":
            command.add_argument("queries", nargs="*", help="sentences to search for")
            command.add_argument("--queries_file",
                                 help="a UTF-8 text file of sentences, one per line")
        add_setting_flags(command, config_type)
        command.add_argument("--debug", action="store_true",
                             help="show the Python traceback of an expected error under its "
                                  "one-line message; also TVR_DEBUG=1 in the environment")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = absolute_paths(build_parser().parse_args(argv))
    try:
        config = configuration(args)
        check(args, config)
    except (UsageError, SettingError) as error:
        if debug_requested(args):
            traceback.print_exc()
        args.parser.error(describe(error))
    try:
        run(args, config)
    except run_errors() as error:
        if debug_requested(args):
            traceback.print_exc()
        print(f"{args.parser.prog}: error: {describe(error)}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace, config: Any) -> None:
    """Run the command whose flags :func:`check` accepted."""
    if args.command == "build":
        build(config)
    elif args.command == "search":
        search(args.index, args.queries, config)
    else:
        from tvr.index.server import serve
        serve(args.index, config)


def build(config: BuildConfig) -> None:
    """Build the index, split over the processes when ``torchrun`` started this one
    (tvr/index/shares.py); rank 0 prints the report."""
    from tvr.index.build import build_index
    from tvr.training.distributed import cleanup, init_distributed
    context = init_distributed(device=config.device)
    try:
        report = build_index(config, context=context)
    finally:
        cleanup()
    if report is not None:
        print(report.format())


def run_errors() -> tuple[type[Exception], ...]:
    """The failures of a command that :func:`main` prints in one line, exit status 1."""
    from tvr.index.server import ServeError
    from tvr.index.store import IndexStoreError
    from tvr.training.checkpoint import CheckpointError
    return (IndexStoreError, CheckpointError, ServeError)


def absolute_paths(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the paths given (:data:`PATHS`) resolved against the working directory,
    once: the commands see absolute paths (a page served from a relative index finds its
    files whatever directory a library resolves against)."""
    for name in PATHS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, os.path.abspath(value))
    return args


def configuration(args: argparse.Namespace) -> Any:
    """The command's configuration from its flags (:class:`SettingError` out of bounds)."""
    config_type = COMMANDS[args.command][0]
    return config_type(**{item.name: getattr(args, declared.flag)
                          for item, declared in settings_of(config_type)})


def check(args: argparse.Namespace, config: Any) -> None:
    """Raise :class:`UsageError` for a path flag that names nothing the command can use, a
    device or stage-1 backend this machine lacks, or no sentence (or an empty one) to search
    for; reads the sentences of ``--queries_file`` into ``args.queries``. No model is loaded."""
    if args.command == "build":
        if config.checkpoint is not None:
            check_exists(args, "checkpoint", file=True)
            check_loads(args, "checkpoint", config.checkpoint)
        else:
            check_exists(args, "clip_path", file=True)
        check_folder(args, "videos", "the folder of the videos")
        check_writable(args, "out")
    check_device(args, "--device cpu")
    if args.command == "search":
        if config.checkpoint is not None:
            check_exists(args, "checkpoint", file=True)
            check_loads(args, "checkpoint", config.checkpoint)
        from tvr.evaluation.retrieval import faiss_available
        if config.stage1 == "faiss" and not faiss_available():
            raise flag_error(args, "stage1", "faiss is not installed (pip install faiss-cpu); "
                                             "use --stage1 auto or torch")
        if any(not query.strip() for query in args.queries):
            raise UsageError("a sentence to search for is empty")
        args.queries = [*args.queries, *file_queries(args)]
        if not args.queries:
            raise UsageError("give sentences to search for, or --queries_file")


def file_queries(args: argparse.Namespace) -> list[str]:
    """The non-empty lines of ``--queries_file`` (none without one)."""
    if args.queries_file is None:
        return []
    path = check_exists(args, "queries_file", file=True)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise flag_error(args, "queries_file", f"{path} is not a UTF-8 text file ({error.reason} "
                                               f"at byte {error.start}); give one sentence a "
                                               f"line") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


def search(folder: str, queries: list[str], config: SearchConfig) -> None:
    """Print the ``config.top`` best videos of each sentence: rank, score, time, path."""
    from tvr.index.search import VideoIndex
    index = VideoIndex.open(folder, config.checkpoint, config.stage1, config.device,
                            config.min_score)
    results = index.search(queries, top=config.top, k=config.k, exhaustive=config.exhaustive)
    print(f"scored by {index.scorer}"
          + ("" if index.threshold is not None else
             "; no threshold for 'no good match' (--min_score sets one)"))
    for query, answer in zip(queries, results):
        print(query)
        if answer.unknown:
            print(f"  words this model never saw in training: {', '.join(answer.unknown)}")
        if answer.good is False:
            print(f"  no good match ({answer.reason}); the closest:")
        for rank, hit in enumerate(answer.hits, 1):
            minutes, seconds = divmod(hit.time, 60)
            print(f"  {rank:3d}  {hit.score:.4f}  {int(minutes)}:{seconds:04.1f}  "
                  f"{shown(index.videos_root / hit.path)}")
