"""The per-dataset shell scripts pass flags that main_retrieval.py accepts, with the paper's
settings (docs/behaviour.md §4: 32 words / 12 frames; 64 / 64 for DiDeMo and ActivityNet;
ActivityNet trains 10 epochs with Δ on the video side)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from main_retrieval import parse_args

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
EXPECTED = {  # datatype: (max_words, max_frames, epochs, delta_side)
    "msrvtt": (32, 12, 5, "text"), "msvd": (32, 12, 5, "text"), "lsmdc": (32, 12, 5, "text"),
    "didemo": (64, 64, 5, "text"), "activitynet": (64, 64, 10, "video"),
}


def script_args(tmp_path: Path, name: str) -> list[str]:
    """The arguments a script hands to launch.sh (replaced by a recorder)."""
    for script in SCRIPTS.glob("*.sh"):
        shutil.copy(script, tmp_path)
    (tmp_path / "launch.sh").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$OUT"\n')
    (tmp_path / "launch.sh").chmod(0o755)
    out = tmp_path / "args.txt"
    subprocess.run(["bash", str(tmp_path / name), "--seed", "7"], check=True,
                   env={"OUT": str(out), "DATA": "/data/x", "PATH": "/usr/bin:/bin"})
    return out.read_text().splitlines()


@pytest.mark.parametrize("datatype", sorted(EXPECTED))
def test_train_and_eval_scripts_parse_with_the_paper_settings(datatype, tmp_path):
    words, frames, epochs, side = EXPECTED[datatype]
    train = parse_args(script_args(tmp_path, f"train_{datatype}.sh"))
    assert (train.do_train, train.datatype, train.max_words, train.max_frames, train.epochs,
            train.delta_side, train.seed) == (1, datatype, words, frames, epochs, side, 7)
    assert train.anno_path == "/data/x/anns" and train.beta == 1e-4 and train.temp == 3
    evaluation = parse_args(script_args(tmp_path, f"eval_{datatype}.sh"))
    assert evaluation.do_eval == 1 and evaluation.init_model.endswith("ckpt_best.pt")
    assert (evaluation.max_words, evaluation.max_frames, evaluation.delta_side) == (words, frames, side)


def test_recipes_set_defaults_and_the_command_line_wins(tmp_path):
    data = ["--anno_path", "/data/x/anns", "--video_path", "/data/x/videos"]
    args = parse_args(["--recipe", "activitynet", *data])
    assert (args.datatype, args.epochs, args.delta_side, args.max_frames, args.output_dir) == \
        ("activitynet", 10, "video", 64, "outputs/activitynet")
    args = parse_args(["--recipe", "activitynet", "--epochs", "2", "--output_dir", "o", *data])
    assert (args.epochs, args.output_dir, args.given) == (2, "o", sorted(
        ["recipe", "epochs", "output_dir", "anno_path", "video_path"]))
    assert parse_args([]).recipe == "demo" and parse_args([]).demo

    preset = tmp_path / "ablation.json"
    preset.write_text(json.dumps({"recipe_base": "didemo", "temp": 1.0, "psi_query": "text"}))
    args = parse_args(["--recipe", str(preset), "--temp", "2", *data])
    assert (args.datatype, args.max_words, args.psi_query, args.temp, args.output_dir) == \
        ("didemo", 64, "text", 2.0, "outputs/ablation")


@pytest.mark.parametrize("recipe, message", [
    ({"max_frame": 8}, "unknown flags ['max_frame']"),
    ({"recipe_base": "nope"}, "recipe_base 'nope'"),
    ([1, 2], "expected a JSON object"),
])
def test_a_bad_recipe_is_a_usage_error(tmp_path, capsys, recipe, message):
    preset = tmp_path / "bad.json"
    preset.write_text(json.dumps(recipe))
    with pytest.raises(SystemExit) as stop:
        parse_args(["--recipe", str(preset), "--anno_path", "a", "--video_path", "v"])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--recipe", "msrvtt"])  # a dataset recipe needs the dataset


def test_a_failed_launch_ends_with_the_ranks_error_line_and_reads_relative_paths(tmp_path):
    """launch.sh under torchrun (2 CPU processes): a relative --anno_path is taken from the
    folder the script runs in, and the ranks' one-line error is the last line printed, after
    torchrun's own failure report."""
    (tmp_path / "anns").mkdir()
    result = subprocess.run(
        ["bash", str(SCRIPTS / "launch.sh"), "--do_eval", "1", "--base_encoder", "tiny",
         "--anno_path", "anns", "--video_path", "no_videos"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NGPU": "2", "MASTER_PORT": str(29600 + os.getpid() % 300)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "main_retrieval.py: error: argument --video_path: no_videos does not exist")
