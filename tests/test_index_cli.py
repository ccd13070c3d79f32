"""``python -m tvr.index build|search|serve`` (tvr/cli/index.py) fails fast, in one line.

Every bad flag is argparse's one ``error:`` line (after its usage line) and exit status 2,
every bad file or run-time failure one ``<prog>: error:`` line and exit status 1, each naming
what is wrong and what to do; ``--debug`` or ``TVR_DEBUG=1`` adds the traceback. The index is
built with a tiny untrained model (tests/fixtures_index.py) over three toy videos.
"""
import dataclasses
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fixtures_index import tiny_checkpoint
from tvr.cli.index import absolute_paths, build_parser, main
from tvr.data.toy import make_toy_dataset
from tvr.index.config import BuildConfig, SearchConfig, ServeConfig
from tvr.settings import SettingError, settings_of

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"build": BuildConfig, "search": SearchConfig, "serve": ServeConfig}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """A tiny checkpoint, a folder of three toy videos and their index."""
    root = tmp_path_factory.mktemp("index_cli")
    toy = make_toy_dataset(root / "toy", num_train=2, num_val=0, num_test=1, workers=1)
    checkpoint = tiny_checkpoint(root / "ckpt_best.pt")
    index = root / "index"
    assert main(["build", "--checkpoint", str(checkpoint), "--videos", str(toy.video_path),
                 "--out", str(index), "--workers", "0"]) == 0
    return SimpleNamespace(root=root, checkpoint=checkpoint, videos=toy.video_path,
                           index=index)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("TVR_DEBUG", raising=False)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv): its exit status (argparse's SystemExit included), stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def fail(argv: list[str], capsys) -> tuple[int, str]:
    """Run main(argv), which must fail: its exit status and error message, after checking that
    stderr holds no traceback and one ``error:`` line (after argparse's usage line)."""
    code, _, err = run(argv, capsys)
    prefix = f"python -m tvr.index {argv[0]}: error: "
    lines = err.strip().splitlines()
    assert code in (1, 2) and "Traceback" not in err, err
    assert lines[-1].startswith(prefix) and sum("error:" in line for line in lines) == 1, err
    assert len(lines) == (2 if code == 2 and lines[0].startswith("usage:") else 1), err
    return code, lines[-1][len(prefix):]


def build_argv(files, out: Path, *flags: str) -> list[str]:
    return ["build", "--checkpoint", str(files.checkpoint), "--videos", str(files.videos),
            "--out", str(out), "--workers", "0", *flags]


BUILD_FLAGS = [  # flags, expected words
    (["--workers", "-1"], "argument --workers: must be an integer in [0, 256], got -1"),
    (["--workers", "1000"], "argument --workers: must be an integer in [0, 256], got 1000"),
    (["--batch_size", "0"], "argument --batch_size: must be an integer in [1, 1024], got 0"),
    (["--batch_size", "5000"], "argument --batch_size: must be an integer in [1, 1024]"),
    (["--shard_size", "0"], "argument --shard_size: must be an integer >= 1, got 0"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--workers", "two"], "argument --workers: invalid int value: 'two'"),
]


@pytest.mark.timeout(60)  # --shard_size 0 once rewrote the manifest forever
@pytest.mark.parametrize("flags, expected", BUILD_FLAGS)
def test_a_bad_build_flag_is_a_usage_error(flags, expected, files, tmp_path, capsys):
    code, message = fail(build_argv(files, tmp_path / "out", *flags), capsys)
    assert code == 2 and message.startswith(expected), message
    assert not (tmp_path / "out").exists()


SEARCH_FLAGS = [
    (["--k", "0"], "argument --k: must be an integer >= 1, got 0"),
    (["--k", "-5"], "argument --k: must be an integer >= 1, got -5"),
    (["--top", "-1"], "argument --top: must be an integer >= 1, got -1"),
    (["--top", "0"], "argument --top: must be an integer >= 1, got 0"),
    (["--stage1", "gpu"], "argument --stage1: invalid choice: 'gpu'"),
    (["--queries_file", "{root}/missing.txt"], "argument --queries_file: {root}/missing.txt "
                                               "does not exist"),
    (["--checkpoint", "{root}/moved.pt"], "argument --checkpoint: {root}/moved.pt does not "
                                          "exist"),
]


@pytest.mark.parametrize("flags, expected", SEARCH_FLAGS)
def test_a_bad_search_flag_is_a_usage_error(flags, expected, files, capsys):
    flags = [flag.format(root=files.root) for flag in flags]
    code, message = fail(["search", str(files.index), "a red circle", *flags], capsys)
    assert code == 2 and message.startswith(expected.format(root=files.root)), message


@pytest.mark.parametrize("flags, expected", [
    (["--port", "99999"], "argument --port: must be an integer in [1, 65535], got 99999"),
    (["--port", "0"], "argument --port: must be an integer in [1, 65535], got 0"),
    (["--top", "0"], "argument --top: must be an integer in [1, 1000], got 0"),
    (["--threads", "0"], "argument --threads: must be an integer in [1, 256], got 0"),
    (["--searches", "0"], "argument --searches: must be an integer in [1, 256], got 0"),
])
def test_a_bad_serve_flag_is_a_usage_error(flags, expected, files, capsys):
    code, message = fail(["serve", str(files.index), *flags], capsys)
    assert code == 2 and message.startswith(expected), message


def test_every_numeric_setting_has_bounds_and_help_shows_defaults(capsys):
    for command, config_type in COMMANDS.items():
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0
        blocks = {block.split()[0].rstrip(","): " ".join(block.split())
                  for block in re.split(r"\n  (?=-)", out)[1:]}
        for item, declared in settings_of(config_type):
            if item.type in ("int", "float"):
                assert declared.bounds is not None and declared.bounds.low is not None, \
                    (command, item.name)
            shown = item.default not in (None, dataclasses.MISSING) and \
                not isinstance(item.default, bool)
            assert (f"(default: {item.default})" in blocks[f"--{declared.flag}"]) == shown, \
                (command, blocks[f"--{declared.flag}"])


def test_a_configuration_checks_its_bounds_without_the_command_line():
    with pytest.raises(SettingError, match="--shard_size: must be an integer >= 1, got 0"):
        BuildConfig(checkpoint="c.pt", videos="v", out="o", shard_size=0)
    with pytest.raises(SettingError, match="--port: must be an integer in"):
        ServeConfig(port=70000)
    assert SearchConfig().top == 10 and build_parser().prog == "python -m tvr.index"


def test_missing_and_misplaced_paths_are_usage_errors(files, tmp_path, capsys):
    code, message = fail(["build", "--checkpoint", str(tmp_path / "none.pt"), "--videos",
                          str(files.videos), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message == f"argument --checkpoint: {tmp_path / 'none.pt'} does not " \
                                    f"exist", message
    code, message = fail(build_argv(files, files.checkpoint), capsys)  # --out: an existing file
    assert code == 2 and message.startswith(f"argument --out: cannot create "
                                            f"{files.checkpoint}"), message
    code, message = fail(["build", "--checkpoint", str(files.checkpoint), "--videos",
                          str(files.checkpoint), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message.startswith(f"argument --videos: {files.checkpoint} is a "
                                            f"file"), message
    code, message = fail(["search", str(files.index)], capsys)
    assert code == 2 and "give sentences to search for" in message, message
    code, message = fail(["search", str(tmp_path), "a red circle"], capsys)
    assert code == 1 and message.startswith(f"{tmp_path} is not an index"), message


def checkpoint_variants(files, folder: Path) -> dict[str, Path]:
    """Damaged and hostile copies of the tiny checkpoint; ``folder/pwned`` appears if loading
    any of them ran its code."""
    good = files.checkpoint.read_bytes()
    (folder / "truncated.pt").write_bytes(good[:len(good) // 2])
    (folder / "empty.pt").write_bytes(b"")

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {folder / 'pwned'}",)

    (folder / "pickle.pt").write_bytes(pickle.dumps(Payload(), protocol=4))
    torch.save({"format_version": 1, "model": Payload()}, folder / "zip.pt")
    saved = torch.load(files.checkpoint, weights_only=True)
    record = saved["config"]
    records = {"record": {"junk": 1}, "record_str": "a string",
               "record_clip": {**record, "clip": {**record["clip"], "vision_width": -5}},
               "record_sampling": {**record, "sampling": {**record["sampling"],
                                                          "max_frames": 0}}}
    for name, value in records.items():
        torch.save({**saved, "config": value}, folder / f"{name}.pt")
    return {name: folder / f"{name}.pt"
            for name in ("truncated", "empty", "pickle", "zip", *records)}


def test_a_damaged_or_hostile_checkpoint_is_one_line(files, tmp_path, capsys):
    for name, path in checkpoint_variants(files, tmp_path).items():
        code, message = fail(build_argv(files, tmp_path / "out", "--checkpoint", str(path)),
                             capsys)
        assert f"{path} is not a checkpoint of this project" in message, (name, message)
        recorded = name.startswith("record")  # loads, but its model record does not parse
        assert code == (1 if recorded else 2), (name, code)
        assert ("model record" in message) == recorded, message
        code, message = fail(["search", str(files.index), "a circle", "--checkpoint",
                              str(path)], capsys)
        expected = "is not the checkpoint that built" if recorded else "is not a checkpoint"
        assert code == (1 if recorded else 2) and f"{path} {expected}" in message, message
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_debug_adds_the_traceback(files, tmp_path, capsys, monkeypatch):
    argv = build_argv(files, tmp_path / "out", "--checkpoint", str(tmp_path / "none.pt"))
    code, _, err = run([*argv, "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "does not exist" in err.splitlines()[-1]
    monkeypatch.setenv("TVR_DEBUG", "1")
    code, _, err = run(["search", str(tmp_path), "a circle"], capsys)
    assert code == 1 and "Traceback" in err and "IndexStoreError" in err


def test_a_damaged_shard_is_one_line(files, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(files.index, index)
    shard = sorted((index / "shards").glob("?????.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    code, message = fail(["search", str(index), "a red circle"], capsys)
    assert code == 1 and message.startswith(f"{shard}: a shard of the index that cannot be "
                                            f"read"), message
    assert message.endswith("rebuild the index with --rebuild"), message


def test_unreadable_files_are_listed_and_skipped_with_index_advice(files, tmp_path, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(files.videos, videos, ignore=shutil.ignore_patterns("*.json"))
    (videos / "broken.mp4").write_bytes(b"not a video")
    (videos / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")  # a dangling link
    code, out, err = run(["build", "--checkpoint", str(files.checkpoint), "--videos",
                          str(videos), "--out", str(tmp_path / "out"), "--workers", "0"], capsys)
    assert code == 0, err
    assert "skip_bad_videos" not in out + err and "end of the epoch" not in out + err
    assert "2 unreadable (listed below and skipped: fix or remove each, then run build " \
           "again)" in out
    assert re.search(r"^  unreadable: broken\.mp4: \S", out, re.M), out
    assert re.search(r"^  unreadable: gone\.mp4: \S", out, re.M), out


def test_rebuild_refuses_to_delete_a_folder_that_is_not_an_index(files, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, message = fail(build_argv(files, precious, "--rebuild"), capsys)
    assert code == 1 and message.startswith(f"--out {precious} is not an index"), message
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_search_prints_the_best_videos(files, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("a blue bar moves upward\n\n")
    code, out, err = run(["search", str(files.index), "a red circle", "--queries_file",
                          str(queries), "--top", "2", "--k", "1000"], capsys)
    assert code == 0, err
    scorer, *lines = out.splitlines()
    assert scorer == (f"scored by GARE checkpoint {files.checkpoint}; no threshold for 'no "
                      f"good match' (--min_score sets one)")  # an untrained model: no threshold
    assert lines[0] == "a red circle" and lines[3] == "a blue bar moves upward"
    assert len(lines) == 6 and all(re.match(r"  +[12]  -?\d\.\d{4}  \d+:", line)
                                   for line in lines[1:3] + lines[4:])
    queries.write_bytes(b"\xff\xfe\x00 not text")
    code, message = fail(["search", str(files.index), "--queries_file", str(queries)], capsys)
    assert code == 2 and message.startswith(f"argument --queries_file: {queries} is not a "
                                            f"UTF-8 text file"), message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", [["search", "{index}", "a red circle"], ["serve", "{index}"]])
def test_cuda_without_a_cuda_device_is_a_usage_error(files, command, capsys):
    argv = [word.format(index=files.index) for word in command]
    code, message = fail([*argv, "--device", "cuda"], capsys)
    assert code == 2 and message.startswith("argument --device: this torch build"), message
    assert message.endswith("use --device cpu"), message


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_an_empty_sentence_is_a_usage_error(files, query, capsys):
    code, message = fail(["search", str(files.index), "a red circle", query], capsys)
    assert (code, message) == (2, "a sentence to search for is empty")


@pytest.mark.parametrize("argv, given", [
    (["build", "--checkpoint", "c.pt", "--videos", "v", "--out", "../o"],
     {"checkpoint": "c.pt", "videos": "v", "out": "../o"}),
    (["search", "i", "q", "--queries_file", "q.txt", "--checkpoint", "c.pt"],
     {"index": "i", "queries_file": "q.txt", "checkpoint": "c.pt"}),
    (["serve", "sub/i"], {"index": "sub/i"}),
])
def test_the_paths_given_are_absolute_from_parse_time_on(argv, given, tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    args = absolute_paths(build_parser().parse_args(argv))
    monkeypatch.chdir(tmp_path)
    assert {name: getattr(args, name) for name in given} == \
        {name: os.path.normpath(folder / path) for name, path in given.items()}


def test_serve_on_a_busy_port_is_one_line(files, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, message = fail(["serve", str(files.index), "--port", str(port)], capsys)
    assert code == 1 and message.startswith(f"cannot listen on 127.0.0.1:{port}: "), message
    assert "--port" in message


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_listens_where_it_says(files):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvr.index", "serve", str(files.index),
                               "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        announced = server.stdout.readline()
        assert f"open http://127.0.0.1:{port}/ " in announced, server.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"3 videos indexed" in page.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
