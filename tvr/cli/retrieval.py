"""main_retrieval.py's program: parse flags over a recipe, reconcile them with a checkpoint's
record, check the inputs, build the configuration and run the trainer.

Bad flags and files stop the run before any model is built, in one line (tvr/cli/checks.py):
exit status 2 for a flag, 1 for a file that fails at run time (a malformed annotation, an
unreadable video, an unusable checkpoint); ``--debug`` or ``TVR_DEBUG=1`` adds the traceback.
Unexpected errors keep theirs.

Parsing imports no torch (``--help`` and a bad flag answer at once); what a run needs is
imported by the functions that run after it.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tvr.cli.checks import (UsageError, check_data, check_run, check_values, debug_requested,
                            describe, expected_errors)
from tvr.cli.flags import FLAGS, build_parser, given_flags, run_config
from tvr.cli.recipes import DEMO_DATA, RECIPES, RecipeError, load_recipe
from tvr.storage import ConfigMismatchError
from tvr.training.config import RunConfig

PROG = "main_retrieval.py"


def parse_args(argv: Optional[Sequence[str]] = None, for_run: bool = False
               ) -> argparse.Namespace:
    """Parse ``argv`` over the defaults of its recipe (tvr/cli/recipes.py).

    Adds ``args.recipe`` (the recipe's name), ``args.given`` (sorted destinations of the flags
    the command line gave: they win over a checkpoint's recorded configuration only with
    ``--override_config``) and ``args.demo`` (the run uses the built-in toy data).
    Values are checked (:func:`check_values`), and with ``for_run`` what a run needs
    (:func:`check_run`: input files, a writable output folder, the launch): a problem is
    argparse's one ``error:`` line and exit status 2.
    """
    parser = build_parser(tuple(RECIPES))
    parser.prog, parser.usage = PROG, "%(prog)s [flags] (--help lists them)"
    first = parser.parse_args(argv)  # before given_flags, whose probe hides the defaults
    given = given_flags(parser, argv)
    recipe = first.recipe or ("demo" if first.anno_path is None else first.datatype)
    try:
        defaults = load_recipe(recipe, {a.dest for a in parser._actions})
    except RecipeError as error:
        parser.error(describe(error))
    name = Path(recipe).stem if recipe.endswith(".json") else recipe
    parser.set_defaults(**{"output_dir": f"outputs/{name}", **defaults})
    args = parser.parse_args(argv)
    args.recipe, args.given = name, sorted(given)
    args.demo = args.anno_path is None
    if args.demo and name != "demo":
        parser.error(f"--recipe {recipe} needs --anno_path and --video_path (without "
                     f"--anno_path the demo runs on its built-in toy data)")
    if args.demo:
        args.anno_path, args.video_path = str(DEMO_DATA), str(DEMO_DATA / "videos")
    try:
        check_values(args)
        if for_run:
            check_run(args)
            fit_workers(args)
    except UsageError as error:
        if debug_requested(args):
            traceback.print_exc()
        parser.error(describe(error))
    return args


def fit_workers(args: argparse.Namespace) -> None:
    """Cap the recipe's loader workers at the CPUs this process may use (a ``--workers`` given
    on the command line is kept): the published recipes ask for 8 per process."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if "workers" not in args.given and cpus and args.workers > cpus:
        print(f"note: --recipe {args.recipe} asks for {args.workers} loader workers per process "
              f"and this machine has {cpus} CPUs: using {cpus} (--workers N chooses)",
              file=sys.stderr)
        args.workers = cpus


def _record_path(flag: str) -> Optional[tuple[str, ...]]:
    """Where a checkpoint's record keeps the value of a model or sampling flag, or None."""
    path = FLAGS[flag].path
    if path[0] == "model" and flag != "clip_path":
        return path[1:]
    if path[:2] == ("data", "sampling"):
        return ("sampling", path[2])
    return None


# The flags that define a trained model, and where its checkpoint's record keeps each
# (tvr/training/checkpoint.py, model_record).
MODEL_FLAGS: dict[str, tuple[str, ...]] = {
    flag: path for flag in FLAGS if (path := _record_path(flag)) is not None}


def recorded_values(record: dict[str, Any]) -> dict[str, Any]:
    """The value of every model flag (:data:`MODEL_FLAGS`) that a checkpoint's ``record``
    holds; a sampling setting that an older record lacks is left out (its flag stands)."""
    from tvr.training.checkpoint import recorded_sampling  # imports torch, as a run does
    recorded, values = {**record, "sampling": recorded_sampling(record)}, {}
    for flag, (*parents, key) in MODEL_FLAGS.items():
        holder = recorded
        for parent in parents:
            holder = holder[parent]
        if key in holder:
            values[flag] = holder[key]
    return values


def apply_model_record(args: argparse.Namespace, record: dict[str, Any], source: str
                       ) -> list[str]:
    """Set every model flag of ``args`` to the value that ``record`` (from checkpoint
    ``source``) holds, except flags the command line gave (``args.given``): those must agree
    with the record, or :class:`ConfigMismatchError` names each contradiction, unless
    ``args.override_config``. Returns a note per overridden flag, for the log."""
    given = set(getattr(args, "given", ()))
    clashes = []
    for flag, saved in recorded_values(record).items():
        if flag in given and getattr(args, flag) != saved:
            clashes.append(f"--{flag} {getattr(args, flag)} (the checkpoint's: {saved})")
        else:
            setattr(args, flag, saved)
    if clashes and not getattr(args, "override_config", False):
        raise ConfigMismatchError(
            f"{source} was trained with other model settings than the command line gives: "
            f"{'; '.join(clashes)}. Drop these flags to use the checkpoint's values, or pass "
            f"--override_config to build the model with yours")
    return [f"overriding the checkpoint's configuration: {clash}" for clash in clashes]


def resolve(args: argparse.Namespace, warn: Callable[[str], None] = print) -> RunConfig:
    """The run's configuration: ``--resume`` resolved to its file, and the model flags of the
    ``--resume`` / ``--init_model`` checkpoint's record applied (:func:`apply_model_record`).
    A checkpoint without a record (an older version) is trusted to match the flags."""
    from tvr.training.checkpoint import read_model_record, resume_path
    if args.resume:
        args.resume = str(resume_path(args.resume, args.output_dir))
    source = args.resume or args.init_model
    record = read_model_record(source) if source else None
    if source and record is None:
        warn(f"{source} records no model configuration (written by an older version of this "
             f"project): the model is built from the command-line flags, which must be those "
             f"it was trained with")
    elif record is not None:
        for note in apply_model_record(args, record, str(source)):
            warn(note)
    try:
        check_values(args)
    except UsageError as error:  # a recorded value that the flags' checks refuse
        raise UsageError(f"{source}: {error}") from error
    return run_config(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv, for_run=True)
    try:
        return run(args)
    except (ConfigMismatchError, *expected_errors()) as error:
        if debug_requested(args):
            traceback.print_exc()
        print(f"{PROG}: error: {describe(error, args)}", file=sys.stderr)
        return 2 if isinstance(error, (ConfigMismatchError, UsageError)) else 1


def run(args: argparse.Namespace) -> int:
    if args.demo:
        from tvr.cli import demo
        demo.prepare(args.anno_path)
    check_data(args)
    config = resolve(args, warn=lambda note: print(f"warning: {note}", file=sys.stderr))
    from tvr.training.trainer import Trainer
    results = Trainer(config).run()
    if args.demo and results is not None:
        print(demo.summary(results["raw"]["t2v"], demo.test_phrasings(config), args.anno_path))
    return 0
