"""The report of a table: per row the paper's numbers beside ours, with error bars.

``python -m tvr.experiments report TABLE`` reads the ``metrics_test.json`` of every finished
job of the table (tvr/experiments/jobs.py; a job whose checkpoint records another setting than
its row's is left out, with a note) and writes ``<out>/<table>.md`` and ``<out>/<table>.json``:

- per row and direction the paper's R@1, R@5, R@10, MdR, MnR (paper_tables.csv), ours as the
  mean ± sample standard deviation over the seeds, and ours minus the paper's;
- a 95 % percentile-bootstrap confidence interval of our text-to-video R@1, resampling the
  test queries (their per-query ranks in the metrics files), pooled over the seeds
  (:func:`tvr.evaluation.bootstrap.recall_interval`);
- the text-to-video R@1 difference from the row it is compared with (the table's reference row,
  the published recipe, unless the row names another; tvr/experiments/tables.py), each row
  averaged over its seeds, by the paired bootstrap over the same test queries, called
  significant only when its 95 % interval excludes 0
  (:func:`tvr.evaluation.bootstrap.paired_difference`).

A row with no finished seed is "not run". The title says "frozen CLIP" when the table ran in
feature mode and names a ``--recipe`` that replaced the rows' own (both from the table's
run.json). Metrics files written before they held per-query ranks give no interval.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

from tvr.experiments.jobs import METRICS_FILE, Job, Setup, differences, read_setup
from tvr.experiments.tables import (DIRECTIONS, METRICS, Row, Table, paper_numbers,
                                    setting_of)
from tvr.storage import atomic_write_json

OURS = {"R1": "R1", "R5": "R5", "R10": "R10", "MdR": "MedR", "MnR": "MeanR"}  # metrics files'
NAMES = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "MdR": "MdR", "MnR": "MnR"}
HEADINGS = {"t2v": "Text-to-video", "v2t": "Video-to-text"}


def finished(table: Table, row: Row, out: Path, setup: Setup
             ) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """The metrics of each seed of ``row`` that finished and ran the row, and a note for each
    seed left out."""
    results, notes = {}, []
    for path in sorted((out / table.name / row.name).glob(f"seed*/{METRICS_FILE}")):
        number = path.parent.name.removeprefix("seed")
        if not number.isdigit():
            continue
        found = differences(Job(table, row, int(number), path.parent, (), None), setup)
        if found:
            notes.append(f"seed {number} left out: it ran another setting ({'; '.join(found)})")
        else:
            results[int(number)] = json.loads(path.read_text())
    return dict(sorted(results.items())), notes


def ranks(results: dict[int, dict[str, Any]], direction: str) -> Optional[list[list[int]]]:
    """Per seed the per-query ranks of ``direction`` (raw scores), or None when a metrics file
    holds none."""
    found = [result.get("ranks", {}).get("raw", {}).get(direction)
             for result in results.values()]
    return found if found and all(item is not None for item in found) else None


def spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value) of a metric over seeds."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def row_entry(table: Table, row: Row, results: dict[int, dict[str, Any]], notes: list[str],
              reps: int) -> dict[str, Any]:
    """A row of the report (module docstring), without its comparison."""
    from tvr.evaluation.bootstrap import recall_interval
    paper = paper_numbers(table, row)
    ours = {d: {m: spread([r["raw"][d][OURS[m]] for r in results.values()]) for m in METRICS}
            for d in DIRECTIONS} if results else {}
    difference = {d: {m: ours[d][m]["mean"] - value for m, value in paper[d].items()
                      if value is not None} for d in paper if d in ours}
    t2v = ranks(results, "t2v")
    interval = None if t2v is None else recall_interval(t2v, k=1, reps=reps)
    return {"name": row.name, "setting": setting_of(table, row), "dataset": row.dataset,
            "flags": list(row.flags), "seeds": list(results), "paper": paper, "ours": ours,
            "difference": difference, "notes": notes,
            "r1_interval": None if interval is None else
            {"estimate": interval.estimate, "low": interval.low, "high": interval.high}}


def comparison(row: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]],
               against: str, reps: int) -> Optional[dict[str, Any]]:
    """The paired bootstrap of the t2v R@1 difference, row minus ``against``, each averaged
    over its own seeds; None when either has no seed with ranks."""
    from tvr.evaluation.bootstrap import paired_difference
    mine, theirs = ranks(row, "t2v"), ranks(other, "t2v")
    if mine is None or theirs is None:
        return None
    found = paired_difference(mine, theirs, k=1, reps=reps)
    return {"against": against, "estimate": found.estimate, "low": found.low,
            "high": found.high, "significant": found.significant}


def build(table: Table, out: Path, reps: int) -> dict[str, Any]:
    """The report of ``table`` from the jobs under ``out`` (module docstring)."""
    setup = read_setup(out / table.name)
    gathered = {row.name: finished(table, row, out, setup) for row in table.rows}
    rows = []
    for row in table.rows:
        results, notes = gathered[row.name]
        entry = row_entry(table, row, results, notes, reps)
        other = table.reference_of(row)
        entry["reference"] = other is None
        entry["vs_reference"] = None if other is None else \
            comparison(results, gathered[other.name][0], other.name, reps)
        rows.append(entry)
    title = table.title + (" — frozen CLIP (feature mode)" if setup.feature_dir else "") + \
        (f" — recipe {setup.recipe}, not the paper's" if setup.recipe else "")
    return {"table": table.name, "title": title, "frozen_clip": setup.feature_dir is not None,
            "recipe": setup.recipe, "extra": list(setup.extra), "reps": reps, "rows": rows}


def write_report(table: Table, out: Path, reps: int = 2000) -> tuple[Path, Path]:
    """Write ``<out>/<table>.md`` and ``.json``; returns their paths."""
    report = build(table, out, reps)
    markdown, record = out / f"{table.name}.md", out / f"{table.name}.json"
    atomic_write_json(record, report, pretty=True)
    markdown.write_text(render(report))
    return markdown, record


def render(report: dict[str, Any]) -> str:
    """The report as markdown: a table per direction (video-to-text only where the paper gives
    it), then the notes."""
    rows, paper = report["rows"], any(row["paper"] for row in report["rows"])
    lines = [f"# {report['title']}", "",
             ("The paper's numbers (tvr/experiments/paper_tables.csv) beside ours: "
              if paper else "No paper numbers for this table: ours only, ") +
             "mean ± standard deviation over seeds" + (", ours − paper in brackets" if paper
                                                         else "") +
             f". R@1 CI: 95 % bootstrap interval over the test queries ({report['reps']} "
             "resamples, seeds pooled). Compared: the paired bootstrap of the text-to-video R@1 "
             "difference from the row named, significant when its 95 % interval excludes 0."]
    if report["extra"]:
        lines += ["", f"Every run also had `{' '.join(report['extra'])}`."]
    for direction in DIRECTIONS:
        if direction == "v2t" and not any("v2t" in row["paper"] for row in rows):
            continue
        columns = [f"{NAMES[m]} {part}" for m in METRICS
                   for part in (("paper", "ours") if paper else ("ours",))]
        columns += ["R@1 CI", "compared"] if direction == "t2v" else []
        lines += ["", f"## {HEADINGS[direction]}", "",
                  "| row | setting | seeds | " + " | ".join(columns) + " |",
                  "|---" * (3 + len(columns)) + "|"]
        lines += [_line(row, direction, paper) for row in rows]
    notes = [f"- {row['name']}: {note}" for row in rows for note in row["notes"]]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _line(row: dict[str, Any], direction: str, paper: bool) -> str:
    cells = [row["name"], row["setting"], str(len(row["seeds"]))]
    for metric in METRICS:
        if paper:
            value = row["paper"].get(direction, {}).get(metric)
            cells.append("–" if value is None else f"{value:.1f}")
        cells.append(_ours(row, direction, metric))
    if direction == "t2v":
        interval = row["r1_interval"]
        cells.append("–" if interval is None else
                     f"[{interval['low']:.1f}, {interval['high']:.1f}]")
        cells.append(_compared(row))
    return "| " + " | ".join(cells) + " |"


def _ours(row: dict[str, Any], direction: str, metric: str) -> str:
    """``mean ± std (ours − paper)``, or "not run"."""
    if not row["ours"]:
        return "not run"
    found = row["ours"][direction][metric]
    text = f"{found['mean']:.1f}" + ("" if found["std"] is None else f" ± {found['std']:.1f}")
    gap = row["difference"].get(direction, {}).get(metric)
    return text + ("" if gap is None else f" ({gap:+.1f})")


def _compared(row: dict[str, Any]) -> str:
    if row["reference"]:
        return "reference"
    found = row["vs_reference"]
    if found is None:
        return "–"
    verdict = "significant" if found["significant"] else "not significant"
    return (f"{found['estimate']:+.1f} [{found['low']:+.1f}, {found['high']:+.1f}] vs "
            f"{found['against']}: {verdict}")
