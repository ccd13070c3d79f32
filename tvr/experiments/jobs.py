"""The jobs of a table: one main_retrieval.py training run per row and seed, where it writes,
whether it is done, and whether it ran the row it was meant to.

A job of row R, seed k writes into ``<out>/<table>/<R>/seed<k>/`` (checkpoints, metrics files,
logs). Its command line is the row's dataset's recipe (or the ``--recipe`` that overrides it
for every row), the row's flags, ``--seed k``, the dataset folder's ``anns/`` and ``videos/``,
and the extra flags the user gave. A job is:

- *done* when its ``metrics_test.json`` exists; it is then checked (:func:`differences`):
  the flags its ``ckpt_best.pt`` records must equal what the job asked for, on every flag that
  a row of the table sets, the seed, the dataset, the recipe and feature mode, and on the model
  flags also the model configuration the checkpoint records (docs/behaviour.md §13). A
  mismatch is a failure, never silently a result;
- *resumed* (``--resume``) when its ``ckpt_last.pt`` exists, else *new*.

Datasets: ``--data`` names folders with ``anns/`` and ``videos/`` (README.md, "Datasets"): a
dataset folder itself (for a table of one dataset, or one named after its dataset, e.g.
``/data/msvd``), a root holding one such folder per dataset (``/data/msrvtt``,
``/data/didemo``, ...), or ``NAME=FOLDER`` for one dataset. A row whose dataset is not found is
skipped, with the reason.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from tvr.experiments.tables import Row, Table
from tvr.storage import atomic_write_json, read_manifest, require_same

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "main_retrieval.py"
METRICS_FILE = "metrics_test.json"
# The flags a job's command line sets itself: extra flags may not give them.
OWN_FLAGS = ("do_train", "do_eval", "recipe", "datatype", "anno_path", "video_path", "seed",
             "output_dir", "resume", "init_model", "clip_features")
PLACEHOLDER = "DATA"  # the data folder of a command line parsed only for its values
RUN_RECORD, RECORD_FORMAT = "run.json", 1  # a table's run record (:func:`record_setup`)


class PlanError(ValueError):
    """A table, data folder or extra flag that no job can be made of; one line."""


@dataclass(frozen=True)
class Setup:
    """What every job of one ``run`` shares (recorded in the table's run.json)."""

    recipe: Optional[str]           # overrides each row's dataset recipe (e.g. demo)
    feature_dir: Optional[Path]     # --feature_mode: root of the CLIP-feature stores
    extra: tuple[str, ...] = ()     # more main_retrieval.py flags, for every job


@dataclass(frozen=True)
class Job:
    """Row ``row`` of ``table`` at ``seed``, written into ``folder``."""

    table: Table
    row: Row
    seed: int
    folder: Path
    argv: tuple[str, ...]           # main_retrieval.py's flags
    store: Optional[Path]           # its CLIP-feature store (feature mode)

    @property
    def name(self) -> str:
        return f"{self.table.name}/{self.row.name}/seed{self.seed}"

    def state(self) -> str:
        """``done``, ``resume`` or ``new`` (module docstring)."""
        if (self.folder / METRICS_FILE).is_file():
            return "done"
        return "resume" if (self.folder / "ckpt_last.pt").is_file() else "new"


def record_setup(folder: Path, setup: Setup) -> None:
    """Write the table folder's run record, or check that the runs already there share this
    recipe, mode and extra flags: one table of mixed settings would pass for one setting."""
    path = folder / RUN_RECORD
    wanted = {"recipe": setup.recipe, "feature_mode": setup.feature_dir is not None,
              "extra": list(setup.extra)}
    if path.is_file():
        stored = read_manifest(path, "format", RECORD_FORMAT, PlanError, f"delete {path}")
        require_same({key: stored.get(key) for key in wanted}, wanted, PlanError,
                     f"{folder} holds runs made with other settings",
                     f"Rerun with those, give another --out, or delete {path} to mix them")
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": RECORD_FORMAT, **wanted, "feature_dir": None if
                             setup.feature_dir is None else str(setup.feature_dir)}, pretty=True)


def read_setup(folder: Path) -> Setup:
    """The :class:`Setup` that ``run`` recorded in a table's folder."""
    path = folder / RUN_RECORD
    if not path.is_file():
        raise PlanError(f"no runs of {folder.name} in {folder.parent} (no {RUN_RECORD}): run "
                        f"python -m tvr.experiments run {folder.name} first")
    stored = read_manifest(path, "format", RECORD_FORMAT, PlanError, f"delete {path}")
    feature_dir = stored.get("feature_dir")
    return Setup(stored.get("recipe"), None if feature_dir is None else Path(feature_dir),
                 tuple(stored.get("extra", ())))


def parse_main(argv: Sequence[str]) -> Mapping[str, Any]:
    """main_retrieval.py's flag values for ``argv``, parsed as it parses them (its recipe's
    defaults under the flags), by flag name, read-only: the form in which a checkpoint records
    them (``args``); a flag it refuses is a :class:`PlanError` with its error line."""
    from tvr.cli.retrieval import parse_args
    return MappingProxyType(vars(quietly(lambda: parse_args(list(argv)))))


def quietly(call: Callable[[], T]) -> T:
    """``call()``, where argparse's failure (its message printed, SystemExit) becomes a
    :class:`PlanError` with the error line."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return call()
    except SystemExit as error:
        lines = errors.getvalue().strip().splitlines()
        raise PlanError(lines[-1] if lines else "main_retrieval.py refuses the flags") \
            from error


def row_flags(row: Row, seed: int, setup: Setup) -> list[str]:
    """The job's flags that fix its result: recipe, dataset, seed, the row's flags, extras."""
    return ["--do_train", "1", "--recipe", setup.recipe or row.dataset, "--datatype",
            row.dataset, "--seed", str(seed), *row.flags, *setup.extra]


def intended(row: Row, seed: int, setup: Setup) -> Mapping[str, Any]:
    """The flag values the job asks for (:func:`parse_main`)."""
    return parse_main([*row_flags(row, seed, setup), "--anno_path", PLACEHOLDER])


def checked_flags(table: Table) -> list[str]:
    """The flags a job's checkpoint must record as asked: every flag a row of ``table`` sets,
    and the seed, dataset and recipe."""
    from tvr.cli.flags import build_parser, given_flags
    parser = build_parser()
    parser.prog = "main_retrieval.py"
    given = set().union(*(quietly(lambda: given_flags(parser, row.flags)) for row in table.rows))
    return sorted(given | {"seed", "datatype", "recipe"})


def store_of(row: Row, seed: int, setup: Setup) -> Optional[Path]:
    """The CLIP-feature store of a job in feature mode: one per dataset, per seed when
    training augments (the store's key holds the seed then), apart for runs that need the word
    states (a store without them refuses such a run; docs/feature_mode.md)."""
    if setup.feature_dir is None:
        return None
    wanted = intended(row, seed, setup)
    name = f"seed{seed}" if wanted["train_augment"] != "none" else "all_seeds"
    return setup.feature_dir / row.dataset / (name + ("-words" if wanted["psi_context"] == "words"
                                                      else ""))


def differences(job: Job, setup: Setup) -> list[str]:
    """How the finished job's ``ckpt_best.pt`` departs from what the job asked for (module
    docstring); empty when it ran its row."""
    from tvr.cli.retrieval import recorded_values
    from tvr.training.checkpoint import BEST, CheckpointError, read_metadata
    try:
        meta = read_metadata(job.folder / BEST)
    except (OSError, CheckpointError) as error:
        return [f"its checkpoint cannot be read ({error})"]
    args, record = meta.get("args") or {}, meta.get("config")
    wanted, checked = intended(job.row, job.seed, setup), checked_flags(job.table)
    found = [f"--{flag} {args.get(flag)!r} (asked: {wanted[flag]!r})"
             for flag in checked if args.get(flag) != wanted[flag]]
    if bool(args.get("clip_features")) != (setup.feature_dir is not None):
        found.append(f"--clip_features {args.get('clip_features')!r} (asked: "
                     f"{'frozen CLIP features' if setup.feature_dir else 'the full model'})")
    model = recorded_values(record) if record else {}
    found += [f"the model's {flag} {model[flag]!r} (asked: {wanted[flag]!r})"
              for flag in checked if flag in model and model[flag] != wanted[flag]]
    return found


def select(table: Table, rows: Optional[str]) -> tuple[Row, ...]:
    """The rows of ``--rows START:END`` (Python slice of the table's rows) or ``--rows I``."""
    if rows is None:
        return table.rows
    try:
        if ":" in rows:
            start, end = (int(part) if part else None for part in rows.split(":"))
            chosen = table.rows[start:end]
        else:
            chosen = (table.rows[int(rows)],)
    except (ValueError, IndexError) as error:
        raise PlanError(f"--rows {rows}: expected START:END or an index among the "
                        f"{len(table.rows)} rows of {table.name} (python -m tvr.experiments "
                        f"list {table.name})") from error
    if not chosen:
        raise PlanError(f"--rows {rows} selects none of the {len(table.rows)} rows of "
                        f"{table.name}")
    return chosen


def dataset_folders(data: Sequence[str], table: Table) -> dict[str, Path | str]:
    """The folder of each dataset of ``table`` from the ``--data`` values (module docstring),
    or, for a dataset that none holds, why (a str)."""
    from tvr.cli.flags import FLAGS
    named: dict[str, Path] = {}
    plain: list[Path] = []
    for value in data:
        name, sep, folder = value.partition("=")
        if sep and name in FLAGS["datatype"].setting.choices:
            named[name] = Path(folder)
        else:
            plain.append(Path(value))
    for folder in [*named.values(), *plain]:
        if not folder.is_dir():
            raise PlanError(f"--data {folder}: no such folder (give a dataset folder with "
                            f"anns/ and videos/, or a folder holding one per dataset)")
    for name, folder in named.items():
        if not (folder / "anns").is_dir():
            raise PlanError(f"--data {name}={folder}: {folder} has no anns/ folder (a dataset "
                            f"folder holds anns/ and videos/: README.md, Datasets)")
    single = len(table.datasets) == 1
    return {dataset: named.get(dataset) or _find(dataset, plain, single)
            for dataset in table.datasets}


def _find(dataset: str, roots: Sequence[Path], single: bool) -> Path | str:
    """``root/<dataset>`` with anns/, or ``root`` itself when it has anns/ and is the one
    dataset of the table or named after it; else the reason there is none."""
    for root in roots:
        if (root / dataset / "anns").is_dir():
            return root / dataset
        if (root / "anns").is_dir() and (single or root.name.lower() == dataset):
            return root
    where = ", ".join(str(root) for root in roots)
    return (f"no {dataset} data: no {dataset}/anns/ in {where} (give --data {dataset}=FOLDER, "
            f"a folder with anns/ and videos/)")


def check_extra(table: Table, extra: Sequence[str]) -> None:
    """Extra flags must be main_retrieval.py's, and may not set what a job sets itself or
    what a row of ``table`` varies (that would make every row another setting)."""
    if not extra:
        return
    from tvr.cli.flags import build_parser, given_flags
    try:
        parse_main(["--recipe", "msrvtt", "--anno_path", PLACEHOLDER, *extra])
    except PlanError as error:
        problem = str(error).removeprefix("main_retrieval.py: error: ")
        raise PlanError(f"the flags after -- (main_retrieval.py's): {problem}") from error
    given = given_flags(build_parser(), list(extra))
    own = sorted(given & set(OWN_FLAGS))
    if own:
        raise PlanError(f"the flags after -- may not set --{', --'.join(own)}: each job sets "
                        f"them itself (--seeds, --out, --data, --recipe, --feature_mode)")
    varied = sorted(given & set(checked_flags(table)))
    if varied:
        raise PlanError(f"the flags after -- may not set --{', --'.join(varied)}: the rows of "
                        f"{table.name} set it (python -m tvr.experiments list {table.name})")


def plan(table: Table, rows: Optional[str], seeds: Sequence[int], out: Path,
         data: Sequence[str], setup: Setup) -> tuple[list[Job], list[tuple[Row, str]]]:
    """The jobs of the selected rows at each seed, row after row, and the rows skipped for
    want of their dataset (with the reason)."""
    check_extra(table, setup.extra)
    folders = dataset_folders(data, table)
    jobs, skipped = [], []
    for row in select(table, rows):
        folder = folders[row.dataset]
        if isinstance(folder, str):
            skipped.append((row, folder))
            continue
        for seed in seeds:
            store = store_of(row, seed, setup)
            output = out / table.name / row.name / f"seed{seed}"
            argv = (*row_flags(row, seed, setup), "--anno_path", str(folder / "anns"),
                    "--video_path", str(folder / "videos"), "--output_dir", str(output),
                    *(("--clip_features", str(store)) if store else ()))
            jobs.append(Job(table, row, seed, output, argv, store))
    return jobs, skipped
