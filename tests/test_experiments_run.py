"""``python -m tvr.experiments`` end to end on toy data laid out as a real dataset folder
(DATA/msrvtt/anns, DATA/msrvtt/videos): a 2-row and a 3-row table, 2 seeds, a demo-sized
recipe, 1 epoch. Stopped after the first row, a rerun trains only the second; a job with a
ckpt_last.pt resumes; a job that fails is reported and the others go on; a job that ran another
setting is refused; the reports set the paper's numbers beside ours. Nothing is downloaded."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tvr.data.toy import make_toy_dataset
from tvr.training.checkpoint import read_metadata

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--", "--max_frames", "4", "--batch_size", "8", "--batch_size_val", "16",
         "--workers", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A root holding one dataset folder, msrvtt/ with anns/ and videos/ (README, Datasets)."""
    toy = make_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=24, num_val=0,
                           num_test=12, captions_per_video=2, workers=2)
    root = tmp_path_factory.mktemp("data")
    (root / "msrvtt").mkdir()
    (root / "msrvtt" / "anns").symlink_to(toy.root)
    (root / "msrvtt" / "videos").symlink_to(toy.video_path)
    return root


def experiments(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "tvr.experiments", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def run_table(out: Path, data: Path, table: str, rows: str, *more: str
              ) -> subprocess.CompletedProcess:
    return experiments("run", table, "--data", str(data), "--rows", rows, "--seeds", "2",
                       "--recipe", "demo", "--out", str(out), *more, *SMALL)


def attempts(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "attempts.jsonl").read_text().splitlines()]


def recorded(folder: Path) -> dict:
    return read_metadata(folder / "ckpt_best.pt")


def report(out: Path, table: str) -> tuple[str, dict]:
    result = experiments("report", table, "--out", str(out), "--reps", "200")
    assert result.returncode == 0, result.stderr
    return (out / f"{table}.md").read_text(), json.loads((out / f"{table}.json").read_text())


def test_a_stopped_table_resumes_and_its_report_sets_paper_beside_ours(data, tmp_path):
    """Table 7's η pair: the first row alone (as if stopped), then both: only the second
    trains. Each checkpoint records its row's η; a job without metrics resumes from its
    ckpt_last.pt; a job that ran another setting is a reported failure."""
    out = tmp_path / "tables"
    first = run_table(out, data, "table7", "2:3")
    assert first.returncode == 0, first.stderr
    both = run_table(out, data, "table7", "2:4")
    assert both.returncode == 0, both.stderr
    assert "2 trained, 2 done before, 0 failed" in both.stdout
    folder = out / "table7"
    for row, sign in (("t_frames_neg", -1), ("t_frames_pos", 1)):
        for seed in (0, 1):
            job = folder / row / f"seed{seed}"
            assert len(attempts(job)) == 1, job
            meta = recorded(job)
            assert (meta["args"]["gap_sign"], meta["args"]["seed"]) == (sign, seed)
            assert meta["config"]["gare"]["similarity"]["gap_sign"] == sign

    markdown, record = report(out, "table7")
    assert markdown.startswith("# Table 7") and "recipe demo, not the paper's" in markdown
    rows = {row["name"]: row for row in record["rows"]}
    assert len(rows) == 8 and rows["t_words_neg"]["seeds"] == []
    assert "| t_words_neg |" in markdown and "not run" in markdown
    for name in ("t_frames_neg", "t_frames_pos"):
        row, metrics = rows[name], []
        for seed in (0, 1):
            metrics.append(json.loads((folder / name / f"seed{seed}" /
                                       "metrics_test.json").read_text())["raw"]["t2v"]["R1"])
        assert row["seeds"] == [0, 1]
        assert row["ours"]["t2v"]["R1"]["mean"] == pytest.approx(sum(metrics) / 2)
        assert row["difference"]["t2v"]["R1"] == pytest.approx(
            row["ours"]["t2v"]["R1"]["mean"] - row["paper"]["t2v"]["R1"])
        interval = row["r1_interval"]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        paper = f"| {row['paper']['t2v']['R1']:.1f} | {row['ours']['t2v']['R1']['mean']:.1f} ± "
        assert f"| {name} |" in markdown and paper in markdown
    assert rows["t_frames_neg"]["vs_reference"]["against"] == "t_frames_pos"
    assert rows["t_frames_pos"]["reference"]

    resumed = folder / "t_frames_pos" / "seed1"
    (resumed / "metrics_test.json").unlink()
    shutil.copytree(folder / "t_frames_neg" / "seed0", folder / "t_frames_pos" / "seed2")
    again = experiments("run", "table7", "--data", str(data / "msrvtt"), "--rows", "3",
                        "--seeds", "3", "--recipe", "demo", "--out", str(out), *SMALL)
    assert again.returncode == 1
    assert "table7/t_frames_pos/seed1: resuming" in again.stdout
    assert attempts(resumed)[-1]["command"][-1] == "--resume"
    assert (resumed / "metrics_test.json").is_file()
    assert "failed: table7/t_frames_pos/seed2:" in again.stderr
    assert "--gap_sign -1 (asked: 1)" in again.stderr.splitlines()[-1]
    _, record = report(out, "table7")
    pos = next(row for row in record["rows"] if row["name"] == "t_frames_pos")
    assert pos["seeds"] == [0, 1] and "seed 2 left out" in pos["notes"][0]


def test_a_failed_job_is_reported_and_the_others_go_on(data, tmp_path):
    """Table 8's α at three values; one job's ckpt_last.pt is damaged, so it fails at once."""
    out = tmp_path / "tables"
    broken = out / "table8" / "a1" / "seed0"
    broken.mkdir(parents=True)
    (broken / "ckpt_last.pt").write_bytes(b"")
    result = run_table(out, data, "table8", "0:3")
    assert result.returncode == 1
    assert "5 trained, 0 done before, 1 failed" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "table8/a1/seed0: exit status 2" in last and "the file is empty" in last
    for row, alpha in (("a0.5", 0.5), ("a1", 1.0), ("a2", 2.0)):
        for seed in (0, 1):
            if (row, seed) != ("a1", 0):
                meta = recorded(out / "table8" / row / f"seed{seed}")
                assert meta["config"]["gare"]["loss"]["alpha"] == alpha
    _, record = report(out, "table8")
    rows = {row["name"]: row for row in record["rows"]}
    assert rows["a1"]["seeds"] == [1] and rows["a0.5"]["seeds"] == [0, 1]
    assert rows["a0.5"]["vs_reference"]["against"] == "a2"
    assert rows["orthogonal"]["ours"] == {}


def test_feature_mode_runs_on_frozen_clip_and_says_so(data, tmp_path):
    out, features = tmp_path / "tables", tmp_path / "features"
    result = experiments("run", "table9", "--data", str(data), "--seeds", "1", "--recipe",
                         "demo", "--out", str(out), "--feature_mode", str(features), *SMALL)
    assert result.returncode == 0, result.stderr
    for row in ("kl_text", "kl_video"):
        args = recorded(out / "table9" / row / "seed0")["args"]
        assert args["clip_features"] == str(features / "msrvtt" / "all_seeds")
        assert args["kl_anchor"] == row.removeprefix("kl_")
    markdown, record = report(out, "table9")
    assert record["frozen_clip"] and "frozen CLIP" in markdown.splitlines()[0]
