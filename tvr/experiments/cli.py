"""``python -m tvr.experiments {list,run,report}``: reproduce the paper's tables with one
command each (README.md, "Reproducing the paper").

- ``list [TABLE]``: the tables, their rows and each row's flags (tvr/experiments/tables.py);
- ``run TABLE --data FOLDER [--seeds 3] [--gpus ...] [-- main_retrieval.py flags]``: train and
  test every row at every seed into ``<out>/<table>/<row>/seed<k>/``, resumable
  (tvr/experiments/jobs.py, runner.py);
- ``report TABLE``: ``<out>/<table>.md`` and ``.json``, the paper's numbers beside ours with
  error bars (tvr/experiments/report.py).

Bad input (an unknown table, a missing data folder, an extra flag that main_retrieval.py
refuses or that a row sets) is one ``error:`` line and exit status 2, before anything runs;
``--debug`` or ``TVR_DEBUG=1`` adds the traceback. ``run`` ends with exit status 1 when a job
failed (each failure is listed with its log), 0 otherwise. Parsing imports no torch: ``--help``
answers at once.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from tvr.cli.checks import debug_requested
from tvr.cli.flags import ShowDefaults
from tvr.experiments.jobs import PlanError, Setup, plan, record_setup
from tvr.experiments.runner import command, device_slots, run_jobs
from tvr.experiments.tables import TABLES

PROG = "python -m tvr.experiments"


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def per_row(text: str) -> str:
    if text != "all":
        count(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Reproduce the paper's tables: "
                                     "list them, run a table's rows, report it.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the tables, their rows and the rows' flags")
    listing.add_argument("table", nargs="?", choices=list(TABLES))
    run = commands.add_parser(
        "run", help="train and test every row of a table at every seed (resumable)",
        usage="%(prog)s TABLE --data FOLDER [flags] [-- main_retrieval.py flags]",
        formatter_class=ShowDefaults)
    run.add_argument("table", choices=list(TABLES))
    run.add_argument("--data", action="append", required=True, metavar="FOLDER",
                     help="a dataset folder (anns/, videos/), a folder holding one per dataset "
                          "(msrvtt/, didemo/, ...), or NAME=FOLDER; repeatable")
    run.add_argument("--seeds", type=count, default=3, help="seeds 0 .. N-1 of every row")
    run.add_argument("--gpus", default="auto",
                     help="GPU ids (0,1,2,3), auto (those this process sees) or none (the CPU)")
    run.add_argument("--per_row", type=per_row, default="1",
                     help="GPUs per job: 1 runs a job per GPU at once, N or all run each job "
                          "on N (all) GPUs with torchrun")
    run.add_argument("--rows", help="only rows START:END (0-based, as a Python slice) or one "
                                    "row's index, e.g. to share a table between nodes")
    run.add_argument("--feature_mode", metavar="DIR",
                     help="train on frozen CLIP features cached under DIR (main_retrieval.py "
                          "--clip_features; docs/feature_mode.md)")
    run.add_argument("--recipe", help="one recipe (tvr/cli/recipes.py, or a .json recipe) for "
                                      "every row instead of each dataset's; the report says so")
    run.add_argument("--out", default="outputs/tables", help="where the tables' runs go")
    run.add_argument("--dry_run", action="store_true",
                     help="print each job's command line and state, run nothing")
    report = commands.add_parser("report", help="write <out>/<table>.md and .json",
                                 formatter_class=ShowDefaults)
    report.add_argument("table", choices=list(TABLES))
    report.add_argument("--out", default="outputs/tables", help="where the tables' runs are")
    report.add_argument("--reps", type=count, default=2000, help="bootstrap resamples")
    for command_parser in (listing, run, report):
        command_parser.set_defaults(parser=command_parser)
        command_parser.add_argument("--debug", action="store_true",
                                    help="show the traceback of an error under its line")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    extra = tuple(argv[split + 1:])
    try:
        if extra and args.command != "run":
            raise PlanError("flags after -- are main_retrieval.py flags for run")
        if args.command == "list":
            print(listing(args.table))
            return 0
        if args.command == "report":
            from tvr.experiments.report import write_report
            for path in write_report(TABLES[args.table], Path(args.out), args.reps):
                print(f"wrote {path}")
            return 0
        return run(args, extra)
    except PlanError as error:
        if debug_requested(args):
            traceback.print_exc()
        args.parser.error(str(error))
    except KeyboardInterrupt:
        print(f"{PROG}: stopped; the same command resumes", file=sys.stderr)
        return 130


def run(args: argparse.Namespace, extra: tuple[str, ...]) -> int:
    """``run``: plan the jobs, run those not done, list what failed."""
    table, out = TABLES[args.table], Path(args.out)
    setup = Setup(args.recipe, None if args.feature_mode is None else Path(args.feature_mode),
                  extra)
    jobs, skipped = plan(table, args.rows, range(args.seeds), out, args.data, setup)
    for row, reason in skipped:
        print(f"{table.name}/{row.name}: skipped: {reason}", flush=True)
    if not jobs:
        raise PlanError(f"nothing to run: {skipped[0][1]}")
    slots = device_slots(args.gpus, args.per_row)
    if setup.feature_dir is not None and any(slot and len(slot) > 1 for slot in slots):
        raise PlanError("--feature_mode runs each job in one process (a feature store is "
                        "extracted by one: docs/feature_mode.md); use --per_row 1")
    if args.dry_run:
        for index, job in enumerate(jobs):
            devices = slots[index % len(slots)]  # the slot it gets when every job lasts alike
            where = "" if devices is None else f"CUDA_VISIBLE_DEVICES={','.join(devices)} "
            argv = command(job, devices, job.state() == "resume")[0]
            print(f"{job.name} ({job.state()}): {where}{shlex.join(argv)}")
        return 0
    record_setup(out / table.name, setup)
    outcomes = run_jobs(jobs, slots, setup, lambda text: print(text, flush=True))
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    trained = sum(outcome.status == "trained" for outcome in outcomes)
    print(f"{table.name}: {trained} trained, {len(outcomes) - trained - len(failed)} done "
          f"before, {len(failed)} failed, {len(skipped)} rows skipped; the report: {PROG} "
          f"report {table.name} --out {out}")
    for outcome in failed:
        print(f"{PROG}: failed: {outcome.job.name}: {outcome.message}", file=sys.stderr)
    return 1 if failed else 0


def listing(name: Optional[str]) -> str:
    """The tables (or one), their rows and each row's flags and comparison."""
    lines = []
    for table in [TABLES[name]] if name else TABLES.values():
        lines.append(f"{table.name}: {table.title}")
        for index, row in enumerate(table.rows):
            other = table.reference_of(row)
            lines.append(f"  {index:2d} {row.name:22s} {row.dataset:12s} "
                         f"{shlex.join(row.flags) or '(the recipe)'}"
                         f"{'  [reference]' if other is None else f'  [vs {other.name}]'}")
    return "\n".join(lines)
