"""Bad flags and bad files stop main_retrieval.py at once, in one line naming the flag or file.

Most cases run ``main(argv)`` in this process with the model, the trainer and the data loaders
replaced by tripwires: the error must come before any of them is built (so before any video is
decoded). Two cases run the real script to check its exit status and stderr end to end.
"""
import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import main_retrieval
import tvr.data.loaders
import tvr.training.trainer
from fixtures_annotations import write_csv, write_msrvtt
from tvr.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
PREFIX = "main_retrieval.py: error: "
TINY = ["--base_encoder", "tiny", "--num_hidden_layers", "2", "--max_words", "16",
        "--max_frames", "2", "--batch_size", "4", "--batch_size_val", "4", "--workers", "0"]


@pytest.fixture
def data(tmp_path) -> list[str]:
    """A small MSR-VTT folder (6 train videos, 2 captions each; 2 test videos) whose video
    files are not videos, and the flags that name it."""
    anns, videos = tmp_path / "anns", tmp_path / "videos"
    captions = {f"video{i}": [f"caption {i} a", f"caption {i} b"] for i in range(8)}
    write_msrvtt(anns, captions, train=[f"video{i}" for i in range(6)],
                 test=[("video6", "caption 6 a"), ("video7", "caption 7 a")])
    videos.mkdir()
    for video_id in captions:
        (videos / f"{video_id}.mp4").write_bytes(b"not a video at all")
    return ["--anno_path", str(anns), "--video_path", str(videos),
            "--output_dir", str(tmp_path / "out")]


@pytest.fixture
def nothing_built(monkeypatch):
    """Tripwires on everything that builds a model or reads videos."""
    def tripwire(*args, **kwargs):
        raise AssertionError("built something before the error")
    for module, name in [(tvr.training.trainer, "Trainer"),
                         (tvr.training.trainer, "create_model"),
                         (ckpt, "load_model"),
                         (tvr.data.loaders, "build_split")]:
        monkeypatch.setattr(module, name, tripwire)
    monkeypatch.delenv("TVR_DEBUG", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def fail(argv: list[str], capsys) -> tuple[int, str]:
    """Run main(argv), which must fail; its exit status and the error line, after checking
    that stderr holds no traceback and one error line (after argparse's one usage line)."""
    try:
        code = main_retrieval.main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(PREFIX), err
    assert sum(PREFIX in line for line in lines) == 1, err
    if code == 2 and lines[0].startswith("usage:"):
        assert len(lines) == 2, err
    return code, lines[-1][len(PREFIX):]


RANGES = [  # flag, bad value, expected words
    ("--lr", "nan", "finite number > 0"), ("--lr", "inf", "finite number > 0"),
    ("--lr", "0", "> 0"), ("--lr", "-1e-4", "> 0"), ("--coef_lr", "-1", ">= 0"),
    ("--weight_decay", "-0.1", ">= 0"), ("--warmup_proportion", "1", "[0, 1)"),
    ("--epochs", "0", "integer >= 1"), ("--epochs", "-3", "integer >= 1"),
    ("--max_frames", "0", "[1, 1024]"), ("--max_frames", "5000", "[1, 1024]"),
    ("--video_framerate", "0", "> 0"),
    ("--max_words", "2", "[3, 77]"), ("--max_words", "100", "[3, 77]"),
    ("--batch_size", "0", "integer >= 1"), ("--batch_size_val", "0", "integer >= 1"),
    ("--workers", "-1", "[0, 256]"), ("--workers", "100000", "[0, 256]"),
    ("--n_display", "0", "integer >= 1"),
    ("--eval_every_steps", "-1", ">= 0"), ("--save_every_steps", "-1", ">= 0"),
    ("--eval_bank_size", "-1", ">= 0"), ("--eval_dsl_temp", "0", "> 0"),
    ("--qb_k", "0", ">= 1"), ("--qb_beta", "nan", "> 0"), ("--seed", "-1", "[0, 4294967295]"),
    ("--temp", "0", "> 0"), ("--temp", "-inf", "> 0"), ("--psi_dropout", "1", "[0, 1)"),
    ("--beta", "nan", ">= 0"), ("--lambda_dir", "-1", ">= 0"), ("--lambda_lower", "inf",
                                                                 "finite"),
    ("--lambda_lower", "-1", ">= 0"),  # the loss configuration refuses it: one declaration
    ("--lambda_epsilon", "-0.01", ">= 0"), ("--alpha", "0", "> 0"),
    ("--kl_prior_std", "0", "> 0"), ("--ncl_tau", "0", "> 0"), ("--ncl_iters", "0", ">= 1"),
    ("--ncl_queue", "0", ">= 1"), ("--num_hidden_layers", "0", ">= 1"),
    ("--num_hidden_layers", "5", "tiny has 4"), ("--do_train", "2", "0 or 1"),
]


@pytest.mark.parametrize("flag, value, expected", RANGES)
def test_a_value_out_of_range_is_a_usage_error_naming_the_flag(flag, value, expected, data,
                                                               nothing_built, capsys):
    code, message = fail(["--do_train", "1", *TINY, *data, f"{flag}={value}"], capsys)
    assert code == 2 and message.startswith(f"argument {flag}:") and expected in message, message


@pytest.mark.parametrize("values, expected", [
    ({"lr": -1}, "argument --lr: must be a finite number > 0, got -1"),
    ({"epochs": 2.5}, "argument --epochs: must be an integer >= 1, got 2.5"),
    ({"agg_module": "meanp"}, "argument --agg_module: invalid choice: 'meanp'"),
])
def test_a_bad_recipe_value_names_the_flag_and_the_recipe(values, expected, tmp_path, data,
                                                          nothing_built, capsys):
    recipe = tmp_path / "fast.json"
    recipe.write_text(json.dumps({"recipe_base": "msrvtt", **values}))
    code, message = fail(["--recipe", str(recipe), "--do_train", "1", *TINY, *data], capsys)
    assert code == 2 and message.startswith(expected) and "(set by --recipe fast)" in message


@pytest.mark.parametrize("argv, expected", [
    (["--do_train", "0"], "nothing to do"),
    (["--do_eval", "1", "--resume"], "argument --resume: continues training"),
    (["--do_eval", "1", "--max_frames", "78", "--agg_module", "seqTransf"],
     "argument --max_frames: seqTransf"),
])
def test_contradicting_flags_are_a_usage_error(argv, expected, data, nothing_built, capsys):
    code, message = fail([*TINY, *data, *argv], capsys)
    assert code == 2 and message.startswith(expected), message


def test_a_global_batch_the_processes_cannot_split_is_a_usage_error(data, nothing_built,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node=2 sets it
    code, message = fail(["--do_train", "1", *TINY, *data, "--batch_size", "7"], capsys)
    assert code == 2 and message.startswith("--batch_size 7 is the GLOBAL batch"), message


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.mark.parametrize("case", ["no anno_path", "anno_path is a file", "no video_path",
                                  "video_path not given", "output_dir under a file",
                                  "clip_path", "init_model", "init_model is a folder",
                                  "resume auto", "resume file", "CLIP release"])
def test_a_missing_path_is_a_usage_error_naming_it(case, tmp_path, data, nothing_built,
                                                   monkeypatch, capsys):
    missing = str(tmp_path / "nowhere")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    argv, flag, named = ["--do_eval", "1", *TINY, *data], None, missing
    if case == "no anno_path":
        argv, flag = _replace(argv, "--anno_path", missing), "--anno_path"
    elif case == "anno_path is a file":
        argv, flag, named = _replace(argv, "--anno_path", str(a_file)), "--anno_path", str(a_file)
    elif case == "no video_path":
        argv, flag = _replace(argv, "--video_path", missing), "--video_path"
    elif case == "video_path not given":
        i = argv.index("--video_path")
        argv, flag, named = argv[:i] + argv[i + 2:], "--video_path", "required"
    elif case == "output_dir under a file":  # unwritable even for root
        argv = _replace(argv, "--output_dir", str(a_file / "out"))
        flag, named = "--output_dir", str(a_file)
    elif case in ("clip_path", "init_model"):
        argv, flag = [*argv, f"--{case}", missing], f"--{case}"
    elif case == "init_model is a folder":
        argv, flag, named = [*argv, "--init_model", str(tmp_path)], "--init_model", str(tmp_path)
    elif case == "resume auto":
        argv = [*_replace(argv, "--do_eval", "0"), "--do_train", "1", "--resume"]
        flag, named = "--resume", ckpt.LAST
    elif case == "resume file":
        argv = [*_replace(argv, "--do_eval", "0"), "--do_train", "1", "--resume", missing]
        flag = "--resume"
    else:  # a real CLIP is needed (no --init_model) and none is found
        monkeypatch.delenv("TVR_CLIP_PATH", raising=False)
        argv = _replace(argv, "--base_encoder", "ViT-L/14")
        flag, named = "--base_encoder ViT-L/14", "ViT-L-14.pt"
    code, message = fail(argv, capsys)
    assert code == 2 and flag in message and named in message, message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders (the case of a path under a "
                           "regular file covers root)")
def test_a_read_only_output_dir_is_a_usage_error(tmp_path, data, nothing_built, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, message = fail(["--do_eval", "1", *TINY,
                              *_replace(data, "--output_dir", str(locked / "run"))], capsys)
    finally:
        locked.chmod(0o755)
    assert code == 2 and message.startswith("argument --output_dir:") and str(locked) in message


class _Scripted(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def write_bad_checkpoint(path: Path, kind: str) -> str:
    """A file at ``path`` that is not a usable checkpoint; returns words its error holds."""
    if kind == "empty":
        path.write_bytes(b"")
        return "the file is empty"
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
        return "text file"
    if kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
        return "torch.load"
    if kind == "truncated":
        torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
        return "damaged zip archive"
    if kind == "a list":
        torch.save([torch.zeros(2)], path)
        return "holds a list"
    if kind == "a dict of junk":
        torch.save({"epochs": 3, "note": "hello"}, path)
        return "neither a checkpoint nor a state dict"
    if kind == "a forbidden object":  # an intact file that weights_only loading refuses
        torch.save({"format_version": 1, "model": {}, "args": argparse.Namespace(lr=1)}, path)
        return "holds objects other than tensors and plain values (e.g. argparse.Namespace)"
    if kind == "TorchScript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(_Scripted()), str(path))
        return "TorchScript archive"
    raise ValueError(kind)


CORRUPT = ["empty", "text", "random bytes", "truncated", "a list", "a dict of junk",
           "a forbidden object", "TorchScript"]


@pytest.mark.parametrize("kind", CORRUPT)
def test_an_unusable_init_model_is_a_usage_error_saying_what_it_should_be(
        kind, tmp_path, data, nothing_built, capsys):
    path = tmp_path / "model.pt"
    words = write_bad_checkpoint(path, kind)
    code, message = fail(["--do_eval", "1", *TINY, *data, "--init_model", str(path)], capsys)
    assert code == 2 and message.startswith(f"argument --init_model: {path} is not a checkpoint")
    assert words in message and "expected a file written by main_retrieval.py" in message


@pytest.mark.parametrize("kind", [*CORRUPT, "model only"])
def test_an_unusable_resume_checkpoint_is_a_usage_error(kind, tmp_path, data, nothing_built,
                                                        capsys):
    out = Path(data[data.index("--output_dir") + 1])
    out.mkdir()
    path = out / ckpt.LAST
    if kind == "model only":  # a ckpt_best.pt (weights, no optimiser) renamed
        ckpt.save_model(path, nn.Linear(2, 2), epoch=0, global_step=0, metric=None, config=None)
        words = "not a training checkpoint"
    else:
        words = write_bad_checkpoint(path, kind)
    code, message = fail(["--do_train", "1", *TINY, *data, "--resume"], capsys)
    assert code == 2 and message.startswith(f"argument --resume: {path}") and words in message


def test_a_malformed_annotation_file_stops_before_any_model_is_built(data, nothing_built,
                                                                     capsys):
    anns = Path(data[data.index("--anno_path") + 1])
    write_csv(anns / "MSRVTT_JSFUSION_test.csv", ["key", "video_id", "caption"],
              [["ret0", "video6", "caption 6 a"]])
    code, message = fail(["--do_eval", "1", *TINY, *data], capsys)
    assert code == 1
    assert message.startswith(str(anns / "MSRVTT_JSFUSION_test.csv")), message
    assert "missing column(s) 'sentence'" in message and "tvr/data/datasets/msrvtt.py" in message


def test_a_batch_larger_than_the_training_split_stops_before_any_model_is_built(
        data, nothing_built, capsys):
    code, message = fail(["--do_train", "1", *TINY, *data, "--batch_size", "16"], capsys)
    assert code == 2 and message.startswith("argument --batch_size: the global batch 16"), message
    assert "12 caption pairs" in message and "use at most 12" in message


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_unreadable_video_stops_the_run_in_one_line(workers, data, monkeypatch, capsys):
    """The model is built here (a tiny one): the video is found unreadable when it is read."""
    monkeypatch.delenv("TVR_DEBUG", raising=False)
    code, message = fail(["--do_eval", "1", *TINY, *data, "--workers", workers], capsys)
    videos = data[data.index("--video_path") + 1]
    assert code == 1 and message.startswith(f"cannot read video {videos}"), message
    assert "--skip_bad_videos" in message


@pytest.mark.parametrize("how", ["--debug", "TVR_DEBUG=1"])
def test_debug_shows_the_traceback_of_an_expected_error(how, data, nothing_built, monkeypatch,
                                                         capsys):
    anns = Path(data[data.index("--anno_path") + 1])
    (anns / "MSRVTT_JSFUSION_test.csv").write_text("")
    argv = ["--do_eval", "1", *TINY, *data]
    if how == "--debug":
        argv.append("--debug")
    else:
        monkeypatch.setenv("TVR_DEBUG", "1")
    assert main_retrieval.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "AnnotationError" in err
    assert err.strip().splitlines()[-1].startswith(PREFIX + str(anns))


def test_debug_shows_the_traceback_of_a_usage_error_found_in_a_file(tmp_path, data,
                                                                    nothing_built, capsys):
    path = tmp_path / "model.pt"
    write_bad_checkpoint(path, "truncated")
    with pytest.raises(SystemExit) as stop:
        main_retrieval.main(["--do_eval", "1", *TINY, *data, "--init_model", str(path),
                             "--debug"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" in err and "CheckpointError" in err


def test_an_unexpected_error_keeps_its_traceback(data, monkeypatch):
    class Broken:
        def __init__(self, args):
            raise RuntimeError("a bug")
    monkeypatch.setattr(tvr.training.trainer, "Trainer", Broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main_retrieval.main(["--do_eval", "1", *TINY, *data])


def run_script(argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TVR_DEBUG", "WORLD_SIZE")}
    return subprocess.run([sys.executable, str(REPO / "main_retrieval.py"), *argv], cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)


def test_the_script_exits_2_on_a_bad_flag_without_a_traceback(data):
    result = run_script(["--do_train", "1", *TINY, *data, "--lr", "nan"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == \
        f"{PREFIX}argument --lr: must be a finite number > 0, got nan"
    assert len(result.stderr.splitlines()) == 2 and not result.stdout  # usage + error


def test_the_script_exits_1_on_a_malformed_annotation_without_a_traceback(data):
    anns = Path(data[data.index("--anno_path") + 1])
    (anns / "MSRVTT_data.json").write_text("{\"sentences\": [")
    result = run_script(["--do_train", "1", *TINY, *data])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{PREFIX}{anns / 'MSRVTT_data.json'}:1: invalid JSON: Expecting value (the msrvtt "
        f"annotation files that --anno_path holds, and their format, are described in "
        f"tvr/data/datasets/msrvtt.py)"]
    assert not Path(data[data.index("--output_dir") + 1]).exists()  # nothing was started


def test_clip_features_naming_a_file_is_a_usage_error(data, nothing_built, tmp_path, capsys):
    store = tmp_path / "store.txt"
    store.write_text("not a folder")
    code, message = fail(["--do_train", "1", *TINY, *data, "--clip_features", str(store)],
                         capsys)
    assert code == 2 and message.startswith("argument --clip_features:") and "is a file" in message


@pytest.mark.parametrize("content, expected", [
    (b"\x93\x11 random bytes" * 64, "is not a CLIP checkpoint: neither a TorchScript archive"),
    ("state dict", "is not a CLIP ViT checkpoint this project can build"),
], ids=["random bytes", "another state dict"])
def test_a_clip_path_that_is_not_a_clip_file_is_one_line(content, expected, data, tmp_path,
                                                         capsys):
    path = tmp_path / "ViT-B-32.pt"
    if content == "state dict":
        torch.save({"weight": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    code, message = fail(["--do_eval", "1", *TINY, *data, "--base_encoder", "ViT-B/32",
                          "--num_hidden_layers", "2", "--clip_path", str(path)], capsys)
    assert code == 1 and message.startswith(str(path)) and expected in message, message


def test_help_shows_each_flags_default(capsys):
    with pytest.raises(SystemExit) as stop:
        main_retrieval.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert stop.value.code == 0
    for shown in ("random seed (default: 42)", "learning rate (default: 0.0001)",
                  "(default: seqTransf)", "frames sampled per video (at most) (default: 12)"):
        assert shown in text, shown


def test_a_recipes_workers_are_capped_at_the_machines_cpus(data, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    capped = main_retrieval.parse_args(["--recipe", "msrvtt", "--do_train", "1", *data,
                                        "--base_encoder", "tiny"], for_run=True)
    assert capped.workers == 2 and "asks for 8 loader workers" in capsys.readouterr().err
    given = main_retrieval.parse_args(["--recipe", "msrvtt", "--do_train", "1", "--workers",
                                       "6", *data, "--base_encoder", "tiny"], for_run=True)
    assert given.workers == 6
