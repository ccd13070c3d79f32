"""The tables of tvr.experiments and the planning of their jobs, without training: every row
maps to flags main_retrieval.py accepts and that set another value per row, the published
numbers match the rows, data folders and extra flags are resolved or refused, devices are
shared out."""
import csv
import json
from pathlib import Path

import pytest

from tvr.experiments import jobs, runner
from tvr.experiments.jobs import PlanError, Setup, checked_flags, intended, plan
from tvr.experiments.tables import PAPER_CSV, TABLES, paper_numbers

FULL = Setup(None, None)


@pytest.mark.parametrize("name", TABLES)
def test_every_row_parses_and_sets_its_own_values(name):
    """Parsed as main_retrieval.py parses them (over the row's recipe), the rows of a table
    differ in the values of the flags the table varies, so no two rows run one setting."""
    table = TABLES[name]
    varied = [flag for flag in checked_flags(table) if flag != "seed"]  # dataset, recipe too
    assert len(varied) > 2, name
    settings = {}
    for row in table.rows:
        args = intended(row, 0, FULL)
        assert args["recipe"] == row.dataset and args["datatype"] == row.dataset
        settings[row.name] = tuple(args[flag] for flag in varied)
    same = {setting for setting in settings.values()
            if list(settings.values()).count(setting) > 1}
    assert not same, (name, settings)
    assert len({row.name for row in table.rows}) == len(table.rows)


def test_each_table_row_has_its_published_numbers_and_none_is_left_out():
    lines = [line for line in PAPER_CSV.read_text().splitlines() if not line.startswith("#")]
    published = {(int(item["table"]), item["row"], item["dataset"])
                 for item in csv.DictReader(lines)}
    used = set()
    for table in TABLES.values():
        for row in table.rows:
            numbers = paper_numbers(table, row)
            if table.number is None:
                assert numbers == {}
                continue
            t2v = numbers["t2v"]
            assert 0 < t2v["R1"] <= t2v["R5"] <= t2v["R10"] <= 100, row
            used.add((table.number, row.paper, row.dataset))
    assert used == published


def test_each_row_is_compared_with_a_row_of_its_dataset():
    for table in TABLES.values():
        for row in table.rows:
            other = table.reference_of(row)
            assert (other is None) == (row.name in table.reference)
            if other is not None:
                assert other.dataset == row.dataset and other.name != row.name


def dataset(folder: Path) -> Path:
    (folder / "anns").mkdir(parents=True)
    (folder / "videos").mkdir()
    return folder


def test_data_folders_by_root_by_dataset_folder_and_by_name(tmp_path):
    root = tmp_path / "root"
    msrvtt, msvd = dataset(root / "msrvtt"), dataset(root / "msvd")
    didemo = dataset(tmp_path / "elsewhere")
    table1, table2 = TABLES["table1"], TABLES["table2"]
    assert jobs.dataset_folders([str(root)], table1) == {"msrvtt": msrvtt}
    assert jobs.dataset_folders([str(msrvtt)], table1) == {"msrvtt": msrvtt}
    found = jobs.dataset_folders([str(root), f"didemo={didemo}"], table2)
    assert found["didemo"] == didemo and found["msvd"] == msvd
    assert "--data activitynet=FOLDER" in found["activitynet"]
    assert jobs.dataset_folders([str(msvd)], table2)["msvd"] == msvd  # named after it
    assert isinstance(jobs.dataset_folders([str(msrvtt)], table2)["didemo"], str)
    with pytest.raises(PlanError, match="no such folder"):
        jobs.dataset_folders([str(tmp_path / "missing")], table1)
    with pytest.raises(PlanError, match="has no anns/"):
        jobs.dataset_folders([f"msrvtt={root}"], table1)


def test_plan_skips_rows_without_data_and_sets_each_jobs_flags(tmp_path):
    dataset(tmp_path / "data" / "msvd")
    found, skipped = plan(TABLES["table2"], None, [0, 1], tmp_path / "out",
                          [str(tmp_path / "data")], FULL)
    assert {row.name for row, _ in skipped} == {"didemo_baseline", "didemo_gare",
                                                "activitynet_baseline", "activitynet_gare"}
    assert [job.name for job in found] == ["table2/msvd_baseline/seed0",
                                           "table2/msvd_baseline/seed1",
                                           "table2/msvd_gare/seed0", "table2/msvd_gare/seed1"]
    first = jobs.parse_main(found[0].argv)
    assert (first["recipe"], first["seed"], first["no_delta"]) == ("msvd", 0, True)
    assert Path(first["output_dir"]) == tmp_path / "out" / "table2" / "msvd_baseline" / "seed0"
    assert not jobs.parse_main(found[3].argv)["no_delta"]


def test_rows_ranges_and_refused_extra_flags(tmp_path):
    data = [str(dataset(tmp_path / "msrvtt"))]
    table = TABLES["table7"]
    found, _ = plan(table, "2:4", [0], tmp_path, data, FULL)
    assert [job.row.name for job in found] == ["t_frames_neg", "t_frames_pos"]
    assert [job.row.name for job in plan(table, "5", [0], tmp_path, data, FULL)[0]] == \
        ["v_frames_pos"]
    for rows in ("8:", "x", "9"):
        with pytest.raises(PlanError, match="--rows"):
            plan(table, rows, [0], tmp_path, data, FULL)
    for extra, problem in ((["--gap_sign", "1"], "the rows of table7 set it"),
                           (["--seed", "3"], "each job sets them itself"),
                           (["--lr", "-1"], "argument --lr"),
                           (["--no_such_flag"], "unrecognized arguments")):
        with pytest.raises(PlanError, match=problem):
            plan(table, None, [0], tmp_path, data, Setup(None, None, tuple(extra)))


def test_feature_stores_by_dataset_seed_and_word_states(tmp_path):
    data = [str(dataset(tmp_path / "msrvtt"))]
    setup = Setup(None, tmp_path / "features")
    found, _ = plan(TABLES["table7"], None, [0, 1], tmp_path / "out", data, setup)
    stores = {(job.row.name, job.seed): job.store for job in found}
    assert stores["t_words_neg", 0] == tmp_path / "features" / "msrvtt" / "seed0-words"
    assert stores["t_frames_pos", 1] == tmp_path / "features" / "msrvtt" / "seed1"
    assert all(jobs.parse_main(job.argv)["clip_features"] == str(job.store) for job in found)
    shared = Setup(None, tmp_path / "features", ("--train_augment", "none"))
    job = plan(TABLES["table7"], "3", [1], tmp_path / "out", data, shared)[0][0]
    assert job.store == tmp_path / "features" / "msrvtt" / "all_seeds"


def test_gpus_are_shared_out_by_per_row(monkeypatch):
    assert runner.device_slots("none", "1") == [None]
    assert runner.device_slots("0,1,2,3", "1") == [("0",), ("1",), ("2",), ("3",)]
    assert runner.device_slots("0,1,2,3", "2") == [("0", "1"), ("2", "3")]
    assert runner.device_slots("0,1,2,3", "all") == [("0", "1", "2", "3")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert runner.device_slots("auto", "1") == [("4",), ("6",)]
    with pytest.raises(PlanError, match="more GPUs per job"):
        runner.device_slots("0,1", "3")


def test_commands_on_one_gpu_on_several_and_resumed(tmp_path):
    job = plan(TABLES["table9"], "0", [0], tmp_path / "out",
               [str(dataset(tmp_path / "msrvtt"))], FULL)[0][0]
    argv, env = runner.command(job, ("2",), resume=False)
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and "torch.distributed.run" not in argv
    argv, env = runner.command(job, ("0", "1"), resume=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert argv[-1] == "--resume"
    assert job.state() == "new"
    job.folder.mkdir(parents=True)
    (job.folder / "ckpt_last.pt").write_bytes(b"")
    assert job.state() == "resume"
    (job.folder / "metrics_test.json").write_text("{}")
    assert job.state() == "done"


def test_a_second_job_waits_for_the_first_on_a_feature_store(tmp_path):
    data = [str(dataset(tmp_path / "msrvtt"))]
    found, _ = plan(TABLES["table9"], None, [0, 1], tmp_path / "out", data,
                    Setup(None, tmp_path / "features"))
    by_seed = sorted(found, key=lambda job: job.seed)  # two jobs per seed's store
    chosen = runner._startable(by_seed, [], set(), free=4)
    assert [job.seed for job in chosen] == [0, 1]      # one per store
    assert runner._startable(by_seed, [], {by_seed[0].store}, free=4) == by_seed[:3]


FAKE_MAIN = '''import json, os, sys, time
out = sys.argv[sys.argv.index("--output_dir") + 1]
start = time.time()
time.sleep(1.0)
seed = sys.argv[sys.argv.index("--seed") + 1]
with open(os.path.join(out, "fake.json"), "w") as f:
    json.dump({"devices": os.environ["CUDA_VISIBLE_DEVICES"], "start": start,
               "end": time.time()}, f)
if seed == "1":
    sys.exit("main_retrieval.py: error: seed 1 fails")
open(os.path.join(out, "metrics_test.json"), "w").write("{}")
'''


def test_jobs_share_the_gpus_and_a_failure_does_not_stop_the_others(tmp_path, monkeypatch):
    """Four jobs on two one-GPU slots, main_retrieval.py replaced by a script that records its
    GPU and time and fails for seed 1: two at a time, each on its own GPU, all run."""
    fake = tmp_path / "fake_main.py"
    fake.write_text(FAKE_MAIN)
    monkeypatch.setattr(runner, "MAIN", fake)
    monkeypatch.setattr(runner, "differences", lambda job, setup: [])
    found, _ = plan(TABLES["table9"], None, [0, 1], tmp_path / "out",
                    [str(dataset(tmp_path / "msrvtt"))], FULL)
    said = []
    outcomes = runner.run_jobs(found, runner.device_slots("0,1", "1"), FULL, said.append)
    status = {outcome.job.name: outcome.status for outcome in outcomes}
    assert status == {"table9/kl_text/seed0": "trained", "table9/kl_video/seed0": "trained",
                      "table9/kl_text/seed1": "failed", "table9/kl_video/seed1": "failed"}
    failed = next(outcome for outcome in outcomes if outcome.status == "failed")
    assert "exit status 1: main_retrieval.py: error: seed 1 fails" in failed.message
    runs = [json.loads((job.folder / "fake.json").read_text()) for job in found]
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                   if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping and all(a["devices"] != b["devices"] for a, b in overlapping)
    assert {run["devices"] for run in runs} == {"0", "1"}
    assert sum("training on GPU" in line for line in said) == 4
