"""main_retrieval.py end to end on a small generated toy dataset (CPU, tiny CLIP)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tvr.data import toy_language
from tvr.data.toy import make_toy_dataset
from tvr.models.tokenizer import ClipTokenizer
from tvr.cli.recipes import RECIPES

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--base_encoder", "tiny", "--max_words", "16", "--max_frames", "4",
         "--video_framerate", "3", "--batch_size", "8", "--batch_size_val", "16", "--workers", "0",
         "--lr", "1e-3", "--coef_lr", "1", "--num_hidden_layers", "2", "--train_augment", "none",
         "--n_display", "1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=24, num_val=0,
                            num_test=12, captions_per_video=2, workers=2)


def data_flags(toy) -> list[str]:
    return ["--anno_path", str(toy.root), "--video_path", str(toy.video_path)]


def run_main(args: list[str], launcher: list[str] = (), check: bool = True,
             **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, *launcher, str(REPO / "main_retrieval.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, **popen)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def train_losses(output_dir: Path) -> dict[int, float]:
    """Step -> loss from scalars.jsonl; for a step logged twice (resumed), the last line."""
    losses = {}
    for line in (output_dir / "scalars.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["prefix"] == "train":
            losses[record["step"]] = record["loss"]
    return losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_then_evaluate_learns_and_eval_only_reproduces_it(toy, tmp_path):
    """The pipeline: training lowers the loss, the test metrics are written, and evaluating the
    checkpoint alone gives them again. (Retrieval far above chance: tests/test_demo.py; these
    24 videos, in the toy captions' many wordings, are too few for it in a few steps.)"""
    out = tmp_path / "run"
    run_main(["--do_train", "1", "--epochs", "8", "--output_dir", str(out), *SMALL,
              *data_flags(toy)])
    metrics = json.loads((out / "metrics_test.json").read_text())["raw"]
    losses = train_losses(out)
    first, last = ([losses[s] for s in steps] for steps in (range(1, 7), range(43, 49)))
    assert sum(last) < 0.8 * sum(first), losses
    assert 0 <= metrics["t2v"]["R1"] <= metrics["t2v"]["R5"] <= 100, metrics
    for name in ("log.txt", "ckpt_best.pt", "ckpt_last.pt", "metrics_test.md", "curves.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())

    again = tmp_path / "eval"
    run_main(["--do_eval", "1", "--init_model", str(out / "ckpt_best.pt"),
              "--output_dir", str(again), "--eval_dsl_temp", "0.01", "--eval_bank_size", "10",
              *SMALL, *data_flags(toy)])
    evaluated = json.loads((again / "metrics_test.json").read_text())
    assert evaluated["raw"] == metrics
    assert set(evaluated) == {"raw", "DSL", "QB-Norm", "NCL", "ranks", "skipped_videos"}
    assert set(evaluated["ranks"]) == {"raw", "DSL", "QB-Norm", "NCL"}  # side by side
    assert evaluated["skipped_videos"] == {"count": 0, "videos": []}
    assert set(evaluated["NCL"]) == {"t2v", "v2t"}
    assert "| QB-Norm | text-to-video |" in (again / "metrics_test.md").read_text()


def test_killed_run_resumes_with_identical_losses(toy, tmp_path):
    flags = ["--do_train", "1", "--epochs", "2", "--save_every_steps", "1", *SMALL,
             *data_flags(toy)]
    reference = tmp_path / "reference"
    run_main([*flags, "--output_dir", str(reference)])
    expected = train_losses(reference)
    assert len(expected) == 12  # 2 epochs x (24 videos x 2 captions / batch 8)

    killed = tmp_path / "killed"
    command = [sys.executable, str(REPO / "main_retrieval.py"), *flags, "--output_dir", str(killed)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (killed / "scalars.jsonl").is_file() and len(train_losses(killed)) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = len(train_losses(killed))
    assert done_before < 12

    run_main([*flags, "--output_dir", str(killed), "--resume"])
    resumed = train_losses(killed)
    assert sorted(resumed) == sorted(expected)
    for step in range(done_before, 13):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


def test_reference_readme_command_runs_with_the_legacy_launcher(toy, tmp_path):
    """The reference README's flags, verbatim but for the data paths and a tiny CLIP."""
    readme = ["--do_train", "1", "--workers", "0", "--n_display", "50", "--epochs", "1",
              "--lr", "1e-4", "--coef_lr", "1e-3", "--batch_size", "48", "--batch_size_val", "48",
              *data_flags(toy), "--datatype", "msrvtt", "--max_words", "32",
              "--max_frames", "12", "--video_framerate", "1",
              "--output_dir", str(tmp_path / "ckpts"), "--temp", "3", "--alpha", "2",
              "--beta", "0.07", "--lambda_dir", "0.01", "--lambda_epsilon", "0.01",
              "--lambda_lower", "0.5", "--base_encoder", "tiny"]
    launcher = ["-m", "torch.distributed.launch", "--master_port", str(free_port()),
                "--nproc_per_node=1"]
    run_main(readme, launcher)
    assert len(train_losses(tmp_path / "ckpts")) == 1  # 48 pairs / global batch 48


def test_global_batch_not_divisible_by_world_size_is_a_clear_error(toy, tmp_path):
    result = run_main(["--do_train", "1", *SMALL, "--batch_size", "7", *data_flags(toy),
                       "--output_dir", str(tmp_path)],
                      ["-m", "torch.distributed.run", "--nproc_per_node=2",
                       f"--master_port={free_port()}"], check=False, timeout=300)
    assert result.returncode != 0
    assert "--batch_size 7 is the GLOBAL batch" in result.stderr


def test_two_gloo_processes_train_like_one(toy, tmp_path):
    """torchrun with 2 CPU processes (gloo) and one process, same global batch: the same losses
    step after step. The gathered batch is a permutation of the single process' one (rank 0's
    share first); every loss term is invariant to it, but two things are not bit-stable under
    it: Psi's dropout masks (turned off here) and the fp32 gradient of the relaxed-VIB KL,
    whose per-video std of Δ over texts starts near 1e-4 from scratch, so rounding differences
    are amplified by 1/σ (turned off with --beta 0; the KL path is the same code either way)."""
    flags = ["--do_train", "1", "--epochs", "1", *SMALL, *data_flags(toy), "--psi_dropout", "0",
             "--beta", "0"]
    run_main([*flags, "--output_dir", str(tmp_path / "one")])
    run_main([*flags, "--output_dir", str(tmp_path / "two")],
             ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"],
             timeout=300)
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in (1, 2, 3, 6):
        assert two[step] == pytest.approx(one[step], abs=1e-5), step


def test_demo_max_words_holds_every_toy_caption():
    tokenizer = ClipTokenizer()
    tokens = {}  # a caption's tokens are its words' (the tokenizer splits at spaces first)

    def count(text: str) -> int:
        return sum(tokens.setdefault(w, len(tokenizer.tokenize(w))) for w in text.split())

    language = toy_language
    longest = max(count(form.format(c=c, s=s, moves=moves, moving=moving, way=way)) + 2
                  for form in language.TRAIN_FORMS + language.HELD_OUT_FORMS
                  for c in sum(language.COLOUR_WORDS.values(), ())
                  for s in sum(language.SHAPE_WORDS.values(), ())
                  for d in language.WAY_WORDS for moves, moving, way in language.motions(d))
    assert longest <= RECIPES["demo"]["max_words"], "the demo would cut its own captions"
    assert longest >= RECIPES["demo"]["max_words"] - 2, "max_words is larger than it needs"


def test_a_checkpoint_rebuilds_its_model_and_refuses_contradicting_flags(toy, tmp_path):
    """Trained with non-default model flags, evaluated with none: the checkpoint's recorded
    configuration rebuilds the model, so the metrics are reproduced exactly; a model flag that
    contradicts it is an error naming the flag and both values, unless --override_config."""
    trained = tmp_path / "trained"
    ablation = ["--delta_side", "video", "--temp", "1.5", "--agg_module", "meanP"]
    run_main(["--do_train", "1", "--epochs", "1", "--output_dir", str(trained), *SMALL,
              *ablation, *data_flags(toy)])
    metrics = json.loads((trained / "metrics_test.json").read_text())["raw"]

    # No model flag at all: not even the architecture (the default would be ViT-B/32).
    eval_only = ["--do_eval", "1", "--init_model", str(trained / "ckpt_best.pt"),
                 "--video_framerate", "3", "--batch_size_val", "16", "--workers", "0",
                 *data_flags(toy)]
    run_main([*eval_only, "--output_dir", str(tmp_path / "eval")])
    assert json.loads((tmp_path / "eval" / "metrics_test.json").read_text())["raw"] == metrics
    log = (tmp_path / "eval" / "log.txt").read_text()
    assert '"temp": 1.5' in log and '"delta_side": "video"' in log and '"max_frames": 4' in log

    clash = run_main([*eval_only, "--temp", "3", "--output_dir", str(tmp_path / "clash")],
                     check=False)
    assert clash.returncode == 2
    assert "--temp 3.0 (the checkpoint's: 1.5)" in clash.stderr
    assert "--override_config" in clash.stderr and "Traceback" not in clash.stderr

    run_main([*eval_only, "--temp", "3", "--override_config", "--output_dir",
              str(tmp_path / "override")])
    overridden = json.loads((tmp_path / "override" / "metrics_test.json").read_text())["raw"]
    assert overridden != metrics  # the model was built with temp 3: other scores


def test_skip_bad_videos_trains_through_a_corrupt_video_and_reports_it(toy, tmp_path):
    """One training video overwritten with garbage: without --skip_bad_videos the run stops
    naming it; with it, an epoch trains (every step but none lost) and the log lists it."""
    data = tmp_path / "toy"
    shutil.copytree(toy.root, data)
    train_ids = (data / "MSRVTT_train.9k.csv").read_text().split()[1:]
    corrupt = data / toy.video_path.name / f"{train_ids[0]}.mp4"
    corrupt.write_bytes(b"not a video at all")
    flags = ["--do_train", "1", "--epochs", "1", *SMALL, "--anno_path", str(data),
             "--video_path", str(corrupt.parent)]

    stopped = run_main([*flags, "--output_dir", str(tmp_path / "stopped")], check=False)
    assert stopped.returncode != 0 and corrupt.name in stopped.stderr

    out = tmp_path / "skipping"
    run_main([*flags, "--skip_bad_videos", "--output_dir", str(out)])
    log = (out / "log.txt").read_text()
    assert "epoch 1: skipped 1 unreadable videos" in log and str(corrupt) in log
    assert sorted(train_losses(out)) == list(range(1, 7))  # 48 pairs / 8: no batch lost
    assert (out / "metrics_test.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_device_flag_is_honoured(toy, tmp_path):
    """--device reaches the trainer: cuda on a machine without one is refused, not ignored."""
    result = run_main(["--do_eval", "1", *SMALL, *data_flags(toy), "--device", "cuda",
                       "--output_dir", str(tmp_path)], check=False)
    assert result.returncode != 0 and "--device cuda" in result.stderr


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line a failed run ends with (no traceback before it)."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("main_retrieval.py: error: "), result.stderr[-3000:]
    return last


def test_a_non_finite_loss_stops_the_run_at_that_step(toy, tmp_path):
    """--temp 1e-320 passes the flag check (a finite positive number) but overflows the
    pooling softmax: the run stops at step 1 naming the loss terms, and saves nothing."""
    result = run_main(["--do_train", "1", "--epochs", "2", *SMALL, *data_flags(toy),
                       "--temp", "1e-320", "--output_dir", str(tmp_path)], check=False)
    line = error_line(result)
    assert "step 1: the loss is not finite (nce nan" in line, line
    assert not list(tmp_path.glob("ckpt_*.pt"))


def test_a_split_with_no_readable_video_is_one_line(toy, tmp_path):
    data = tmp_path / "toy"
    shutil.copytree(toy.root, data)
    for video in (data / toy.video_path.name).glob("*.mp4"):
        video.write_bytes(b"not a video at all")
    flags = [*SMALL, "--anno_path", str(data), "--video_path", str(data / toy.video_path.name),
             "--skip_bad_videos"]
    trained = run_main(["--do_train", "1", *flags, "--output_dir", str(tmp_path / "t")],
                       check=False)
    assert "epoch 1 made no update: no batch held two readable videos" in error_line(trained)
    evaluated = run_main(["--do_eval", "1", *flags, "--output_dir", str(tmp_path / "e")],
                         check=False)
    assert "no video of msrvtt/test could be read (12 unreadable" in error_line(evaluated)


def test_the_metrics_files_name_the_videos_left_out(toy, tmp_path):
    data = tmp_path / "toy"
    shutil.copytree(toy.root, data)
    test_id = (data / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1].split(",")[2]
    corrupt = data / toy.video_path.name / f"{test_id}.mp4"
    corrupt.write_bytes(b"not a video at all")
    run_main(["--do_eval", "1", *SMALL, "--anno_path", str(data), "--video_path",
              str(corrupt.parent), "--skip_bad_videos", "--output_dir", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "metrics_test.json").read_text())
    assert record["skipped_videos"] == {"count": 1, "videos": [str(corrupt)]}
    table = (tmp_path / "out" / "metrics_test.md").read_text()
    assert "1 unreadable video(s) left out of the gallery" in table and str(corrupt) in table
