"""The command lines answer ``--help`` and a bad flag without importing torch or another heavy
library: their flags come from configuration modules that import none, and what runs a command
is imported after parsing (tvr/cli/*.py). Each command runs as a user starts it, under
``python -X importtime``, whose report names every module the process imported."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "cv2", "faiss", "flask", "waitress", "pandas",
         "matplotlib"}
INDEX = ["-m", "tvr.index"]
EXPERIMENTS = ["-m", "tvr.experiments"]

# (python's arguments, text that --help shows, whitespace collapsed): the flags with defaults
HELP = {
    "main_retrieval": (["main_retrieval.py", "--help"], "learning rate (default: 0.0001)"),
    "index": ([*INDEX, "--help"], "{build,search,serve}"),
    "index build": ([*INDEX, "build", "--help"], "videos encoded at once (default: 16)"),
    "index search": ([*INDEX, "search", "--help"], "results per sentence (default: 10)"),
    "index serve": ([*INDEX, "serve", "--help"], "the TCP port to listen on (default: 8765)"),
    "data_check": (["-m", "tvr.cli.data_check", "--help"], "format (default: msrvtt)"),
    "experiments": ([*EXPERIMENTS, "--help"], "{list,run,report}"),
    "experiments run": ([*EXPERIMENTS, "run", "--help"],
                        "seeds 0 .. N-1 of every row (default: 3)"),
    "experiments report": ([*EXPERIMENTS, "report", "--help"],
                           "bootstrap resamples (default: 2000)"),
    "build_frame_cache": (["preprocess/build_frame_cache.py", "--help"], "--quality QUALITY"),
    "compress_video": (["preprocess/compress_video.py", "--help"], "--output_root OUTPUT_ROOT"),
}
# (python's arguments, the end of argparse's error line): flags refused while parsing
BAD_FLAGS = {
    "main_retrieval unknown flag": (["main_retrieval.py", "--no_such_flag"],
                                    "unrecognized arguments: --no_such_flag"),
    "main_retrieval out of bounds": (["main_retrieval.py", "--lr", "-1"],
                                     "argument --lr: must be a finite number > 0, got -1.0"),
    "main_retrieval recipe": (["main_retrieval.py", "--recipe", "nope"],
                              "--recipe 'nope': not a built-in recipe (choose one of msrvtt, "
                              "msvd, lsmdc, didemo, activitynet, demo) nor a .json file"),
    "experiments data": ([*EXPERIMENTS, "run", "table7", "--data", "no_such_folder"],
                         "--data no_such_folder: no such folder (give a dataset folder with "
                         "anns/ and videos/, or a folder holding one per dataset)"),
    "experiments row flag": ([*EXPERIMENTS, "run", "table7", "--data", "docs", "--",
                              "--gap_sign", "1"],
                             "the flags after -- may not set --gap_sign: the rows of table7 set "
                             "it (python -m tvr.experiments list table7)"),
    "index serve port": ([*INDEX, "serve", "some_index", "--port", "0"],
                         "argument --port: must be an integer in [1, 65535], got 0"),
    "index search choice": ([*INDEX, "search", "some_index", "--stage1", "gpu"],
                            "argument --stage1: invalid choice: 'gpu' (choose from 'auto', "
                            "'faiss', 'torch')"),
}


def run(arguments: list[str]) -> tuple[int, str, list[str], set[str]]:
    """Run ``python -X importtime *arguments`` in the repository: its exit status, stdout, the
    lines of stderr that are not the import report, and the heavy packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *arguments], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.splitlines()
    report = [line.split("|")[-1].strip() for line in lines if line.startswith("import time:")]
    errors = [line for line in lines if not line.startswith("import time:")]
    return (result.returncode, result.stdout, errors,
            {module.split(".")[0] for module in report} & HEAVY)


@pytest.mark.parametrize("name", HELP)
def test_help_lists_the_flags_without_a_heavy_import(name: str) -> None:
    arguments, shown = HELP[name]
    code, out, errors, heavy = run(arguments)
    assert code == 0, errors
    assert shown in " ".join(out.split())
    assert heavy == set(), f"{name} --help imported {sorted(heavy)}"


@pytest.mark.parametrize("name", BAD_FLAGS)
def test_a_bad_flag_is_refused_without_a_heavy_import(name: str) -> None:
    arguments, error = BAD_FLAGS[name]
    code, _, errors, heavy = run(arguments)
    assert code == 2
    assert " ".join(errors[-1].split()).endswith(error), errors
    assert heavy == set(), f"{name} imported {sorted(heavy)}"


def test_the_report_names_a_heavy_import() -> None:
    """The probe itself: a program that imports the model code is seen importing torch."""
    code, _, _, heavy = run(["-c", "import tvr.models.clip"])
    assert code == 0
    assert heavy == {"torch"}
