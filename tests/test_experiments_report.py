"""The report of a table from finished jobs, without training: each job is a checkpoint that
records the job's flags (written by the checkpoint module) and a metrics file with per-query
ranks, drawn at random per row and seed."""
import json
import statistics

import numpy as np
import pytest
from torch import nn

from tvr.experiments.jobs import Setup, intended, record_setup
from tvr.experiments.report import write_report
from tvr.experiments.tables import TABLES
from tvr.training.checkpoint import BEST, save_model

QUERIES = 200


def finish_job(folder, args: dict, ranks: np.ndarray) -> None:
    """A finished job: ``ckpt_best.pt`` recording ``args``, ``metrics_test.json`` from
    ``ranks`` (the same ranks for both directions)."""
    folder.mkdir(parents=True)
    save_model(folder / BEST, nn.Linear(2, 2), epoch=0, global_step=1, metric=None,
               config=None, args=args)
    metrics = {"R1": 100 * (ranks <= 1).mean(), "R5": 100 * (ranks <= 5).mean(),
               "R10": 100 * (ranks <= 10).mean(), "R50": 100 * (ranks <= 50).mean(),
               "MedR": float(np.median(ranks)), "MeanR": float(ranks.mean()),
               "queries": float(len(ranks))}
    (folder / "metrics_test.json").write_text(json.dumps({
        "raw": {"t2v": metrics, "v2t": metrics},
        "ranks": {"raw": {"t2v": ranks.tolist(), "v2t": ranks.tolist()}}}))


def recorded(row, seed: int, setup: Setup, **changed) -> dict:
    """The arguments a run of ``row`` records (in feature mode: a --clip_features folder)."""
    args = {**intended(row, seed, setup), **changed}
    if setup.feature_dir is not None:
        args["clip_features"] = str(setup.feature_dir / "store")
    return {key: value for key, value in args.items() if not isinstance(value, list)}


def fake_table(out, name: str, setup: Setup, rows: dict[str, tuple[int, ...]], hit: dict):
    """Jobs of the given rows and seeds; row r's queries hit rank 1 with probability hit[r]."""
    table, rng = TABLES[name], np.random.default_rng(0)
    record_setup(out / name, setup)
    for row_name, seeds in rows.items():
        row = table.row(row_name)
        for seed in seeds:
            ranks = np.where(rng.random(QUERIES) < hit[row_name], 1,
                             rng.integers(2, 30, QUERIES))
            finish_job(out / name / row_name / f"seed{seed}", recorded(row, seed, setup), ranks)
    return table


def test_a_table_beside_the_paper_with_its_error_bars(tmp_path):
    table = fake_table(tmp_path, "table1", Setup(None, None), {"baseline": (0, 1, 2),
                                                               "gare": (0, 1)},
                       {"baseline": 0.2, "gare": 0.6})
    markdown_path, json_path = write_report(table, tmp_path, reps=500)
    report, markdown = json.loads(json_path.read_text()), markdown_path.read_text()
    rows = {row["name"]: row for row in report["rows"]}
    baseline, gare = rows["baseline"], rows["gare"]
    values = []
    for seed in (0, 1, 2):
        metrics = json.loads((tmp_path / "table1" / "baseline" / f"seed{seed}" /
                              "metrics_test.json").read_text())
        values.append(metrics["raw"]["t2v"]["R1"])
    assert baseline["seeds"] == [0, 1, 2] and gare["seeds"] == [0, 1]
    assert baseline["ours"]["t2v"]["R1"]["mean"] == pytest.approx(statistics.fmean(values))
    assert baseline["ours"]["t2v"]["R1"]["std"] == pytest.approx(statistics.stdev(values))
    assert baseline["difference"]["v2t"]["R1"] == pytest.approx(
        baseline["ours"]["v2t"]["R1"]["mean"] - 45.6)       # the paper's Table 1 v2t R@1
    interval = baseline["r1_interval"]
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert interval["estimate"] == pytest.approx(statistics.fmean(values))
    versus = baseline["vs_reference"]
    assert versus["against"] == "gare" and versus["significant"] and versus["high"] < 0
    assert gare["reference"] and gare["vs_reference"] is None
    assert markdown.startswith("# Table 1") and "frozen CLIP" not in markdown
    assert "## Video-to-text" in markdown and "| 46.6 |" in markdown
    assert "vs gare: significant" in markdown


def test_no_paper_numbers_not_run_rows_and_a_seed_of_another_setting(tmp_path):
    setup = Setup(None, tmp_path / "features", ("--epochs", "1"))
    table = fake_table(tmp_path, "robustness", setup,
                       {"baseline_p0.2": (0,), "gare_p0.2": (0, 1)},
                       {"baseline_p0.2": 0.5, "gare_p0.2": 0.5})
    other = tmp_path / "robustness" / "gare_p0.2" / "seed1"
    for path in other.iterdir():
        path.unlink()
    other.rmdir()
    finish_job(other, recorded(table.row("gare_p0.2"), 1, setup, noisy_pairs=0.5),
               np.ones(QUERIES, dtype=int))
    _, json_path = write_report(table, tmp_path, reps=200)
    report = json.loads(json_path.read_text())
    markdown = (tmp_path / "robustness.md").read_text()
    rows = {row["name"]: row for row in report["rows"]}
    assert report["frozen_clip"] and "frozen CLIP" in markdown.splitlines()[0]
    assert "No paper numbers" in markdown and "## Video-to-text" not in markdown
    assert rows["gare_p0.2"]["seeds"] == [0]
    assert "--noisy_pairs 0.5 (asked: 0.2)" in rows["gare_p0.2"]["notes"][0]
    versus = rows["baseline_p0.2"]["vs_reference"]
    assert versus["against"] == "gare_p0.2"
    assert versus["estimate"] == pytest.approx(rows["baseline_p0.2"]["ours"]["t2v"]["R1"]["mean"]
                                               - rows["gare_p0.2"]["ours"]["t2v"]["R1"]["mean"])
    assert rows["gare_p0"]["ours"] == {} and "| gare_p0 |" in markdown
    assert markdown.count("not run") == 4 * 5  # four rows, five metrics each
