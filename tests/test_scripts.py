"""The per-dataset shell scripts pass flags that main_retrieval.py accepts, with the paper's
settings (SPEC: 32 words / 12 frames; 64 / 64 for DiDeMo and ActivityNet; ActivityNet trains 10
epochs with Δ on the video side)."""
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
