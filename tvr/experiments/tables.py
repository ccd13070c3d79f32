"""The paper's tables as declarative lists of rows, and the published numbers beside them.

A :class:`Row` is its dataset's recipe (tvr/cli/recipes.py) plus the flags of main_retrieval.py
that make it that row; each mapping is reviewed against docs/behaviour.md (cited per table).
Every row states the whole setting its table varies (e.g. each Table 7 row gives
``--delta_side``, ``--psi_context`` and ``--gap_sign``), so that no row falls back silently on
a default, and after training the checkpoint's recorded flags are compared with the row's
(tvr/experiments/jobs.py). A row with no flags is the published recipe itself.

The published numbers live in ``paper_tables.csv`` beside this module (its header names the
source); a row finds its numbers by (table number, ``paper`` key, dataset, direction).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

PAPER_CSV = Path(__file__).with_name("paper_tables.csv")
DIRECTIONS = ("t2v", "v2t")
METRICS = ("R1", "R5", "R10", "MdR", "MnR")  # the columns the paper reports


@dataclass(frozen=True)
class Row:
    """One setting of a table: the flags over its dataset's recipe that make it."""

    name: str                     # its folder under outputs/tables/<table>/
    flags: tuple[str, ...]        # main_retrieval.py flags over the recipe
    paper: Optional[str] = None   # its key in paper_tables.csv (None: no published numbers)
    dataset: str = "msrvtt"       # the dataset, and the recipe of the same name
    against: Optional[str] = None  # the row it is compared with, if not the table's reference
    setting: str = ""             # what it is, for rows without a paper row


@dataclass(frozen=True)
class Table:
    """A table of the paper (``number``) or of this project (``number`` None)."""

    name: str
    title: str
    number: Optional[int]
    rows: tuple[Row, ...]
    reference: tuple[str, ...]    # the published recipe's row, one per dataset

    def row(self, name: str) -> Row:
        return next(row for row in self.rows if row.name == name)

    def reference_of(self, row: Row) -> Optional[Row]:
        """The row that ``row`` is compared with (paired bootstrap), None for a reference."""
        if row.against is not None:
            return self.row(row.against)
        if row.name in self.reference:
            return None
        return next(self.row(name) for name in self.reference
                    if self.row(name).dataset == row.dataset)

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.dataset for row in self.rows))


Numbers = dict[str, Optional[float]]


@lru_cache(maxsize=1)
def _paper_rows() -> dict[tuple[int, str, str, str], tuple[str, Numbers]]:
    """(table, row, dataset, direction) -> (the paper's description, its numbers)."""
    lines = [line for line in PAPER_CSV.read_text(encoding="utf-8").splitlines()
             if not line.startswith("#")]
    found = {}
    for item in csv.DictReader(lines):
        numbers = {m: float(item[m]) if item[m] else None for m in METRICS}
        key = (int(item["table"]), item["row"], item["dataset"], item["direction"])
        found[key] = (item["setting"], numbers)
    return found


def paper_numbers(table: Table, row: Row) -> dict[str, Numbers]:
    """The published numbers of ``row`` by direction (empty without a paper row)."""
    rows = _paper_rows()
    return {d: rows[key][1] for d in DIRECTIONS
            if (key := (table.number, row.paper, row.dataset, d)) in rows}


def setting_of(table: Table, row: Row) -> str:
    """What the row is: the paper's description of it, else the row's own."""
    described = _paper_rows().get((table.number, row.paper, row.dataset, "t2v"))
    return described[0] if described else row.setting


def _flags(**values: object) -> tuple[str, ...]:
    """``--name value`` pairs; True gives a bare switch."""
    out: list[str] = []
    for name, value in values.items():
        out += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return tuple(out)


def _paper(name: str, **flags: object) -> Row:
    """An MSR-VTT row of the paper, named as in paper_tables.csv."""
    return Row(name, _flags(**flags), paper=name)


# Table 1 (MSR-VTT): the paper's Baseline is --no_delta, "no Psi, s = cos(t, pooled video)"
# (docs/behaviour.md §6); GARE is the recipe.
TABLE1 = Table("table1", "Table 1: GARE against its baseline on MSR-VTT 1k-A", 1,
               (_paper("baseline", no_delta=True), _paper("gare")), ("gare",))

# Table 2: each dataset's recipe (ActivityNet's puts Δ on the video side, tvr/cli/recipes.py)
# and its baseline, --no_delta (docs/behaviour.md §6).
TABLE2 = Table("table2", "Table 2: GARE against its baseline on DiDeMo, ActivityNet, MSVD", 2,
               tuple(Row(f"{dataset}_{name}", flags, paper=name, dataset=dataset)
                     for dataset in ("didemo", "activitynet", "msvd")
                     for name, flags in (("baseline", ("--no_delta",)), ("gare", ()))),
               ("didemo_gare", "activitynet_gare", "msvd_gare"))

# Table 3 (MSR-VTT): the loss terms; "a weight of 0 skips its term" (docs/behaviour.md §7):
# KL = --beta (recipe 1e-4), L_eps = --lambda_epsilon (0.01), L_dir = --lambda_dir (0.01).
_TERMS = {"delta": (0, 0, 0), "delta_eps": (0, 0.01, 0), "delta_dir": (0, 0, 0.01),
          "delta_eps_dir": (0, 0.01, 0.01), "delta_ib": (1e-4, 0, 0), "all": (1e-4, 0.01, 0.01)}
TABLE3 = Table("table3", "Table 3: the loss terms (MSR-VTT, text-to-video)", 3,
               (_paper("baseline", no_delta=True),
                *(_paper(name, beta=beta, lambda_epsilon=eps, lambda_dir=direction)
                  for name, (beta, eps, direction) in _TERMS.items())), ("all",))

# Table 5 (MSR-VTT): Psi's query, --psi_query gap (g_ab) or text (t_a) (docs/behaviour.md §6).
TABLE5 = Table("table5", "Table 5: Psi's query (MSR-VTT, text-to-video)", 5,
               (_paper("query_text", psi_query="text"), _paper("query_gap", psi_query="gap")),
               ("query_gap",))

# Table 6 (MSR-VTT): the KL prior N(0, s^2 I), --kl_prior_std s (docs/behaviour.md §7), and Δ
# normalised to unit length, --normalize_delta with σ = 1 (§6).
TABLE6 = Table("table6", "Table 6: the KL prior's scale, and a normalised Δ (MSR-VTT, "
                         "text-to-video)", 6,
               (_paper("normalized_s1", normalize_delta=True, kl_prior_std=1),
                *(_paper(f"s{std}", kl_prior_std=std) for std in ("0.1", "1", "10", "100"))),
               ("s1",))

# Table 7 (MSR-VTT): where Δ is added (--delta_side), Psi's keys and values (--psi_context
# words = T_word, frames = V_frame) and η (--gap_sign) (docs/behaviour.md §6).
_SIDES = {"t": "text", "v": "video"}
_T7 = [("t", "words"), ("t", "frames"), ("v", "frames"), ("v", "words")]
TABLE7 = Table("table7", "Table 7: Δ's side, Psi's context and the gap's sign (MSR-VTT, "
                         "text-to-video)", 7,
               tuple(_paper(f"{side}_{context}_{sign}", delta_side=_SIDES[side],
                            psi_context=context, gap_sign=-1 if sign == "neg" else 1)
                     for side, context in _T7 for sign in ("neg", "pos")), ("t_frames_pos",))

# Table 8 (MSR-VTT): the direction-diversity kernel's sharpness --alpha with --dir_loss
# uniformity, and the strict-orthogonality L_dir over j != k, --dir_loss orthogonal (which has no
# alpha) (docs/behaviour.md §7).
TABLE8 = Table("table8", "Table 8: the direction-diversity term (MSR-VTT)", 8,
               (*(_paper(f"a{alpha}", alpha=alpha, dir_loss="uniformity")
                  for alpha in ("0.5", "1", "2", "3", "4", "5")),
                _paper("orthogonal", dir_loss="orthogonal")), ("a2",))

# Table 9 (MSR-VTT): the KL's statistics per video or per text, --kl_anchor
# (docs/behaviour.md §7).
TABLE9 = Table("table9", "Table 9: the KL's anchor (MSR-VTT, text-to-video)", 9,
               (_paper("kl_text", kl_anchor="text"), _paper("kl_video", kl_anchor="video")),
               ("kl_video",))


def _noisy(model: str, fraction: str) -> Row:
    baseline = model == "baseline"
    return Row(f"{model}_p{fraction}",
               _flags(**({"no_delta": True} if baseline else {}), noisy_pairs=fraction),
               against=f"gare_p{fraction}" if baseline else None,
               setting=f"{'baseline (no Δ)' if baseline else 'GARE'}, --noisy_pairs {fraction}")


# Robustness (this project's, no paper numbers): the baseline (--no_delta, docs/behaviour.md §6)
# and GARE with a share P of the training captions paired with another video (--noisy_pairs P,
# §4); each baseline row is compared with GARE at the same P, each noisy GARE row with GARE at
# P = 0.
ROBUSTNESS = Table("robustness", "Robustness to noisy training pairs (MSR-VTT; no paper "
                                 "numbers)", None,
                   tuple(_noisy(model, fraction) for model in ("baseline", "gare")
                         for fraction in ("0", "0.2", "0.5")), ("gare_p0",))

TABLES: dict[str, Table] = {table.name: table for table in (
    TABLE1, TABLE2, TABLE3, TABLE5, TABLE6, TABLE7, TABLE8, TABLE9, ROBUSTNESS)}
