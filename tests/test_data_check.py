"""scripts/check_data.sh: a dataset folder checked before any GPU is used."""
import shutil
import subprocess
from pathlib import Path

import pytest

from tvr.data.toy import make_toy_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "msrvtt"


def check(data: Path, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "check_data.sh"), str(data), *flags],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/msrvtt (the real CSVs)")
def test_the_real_msrvtt_csvs_without_their_json_name_what_is_missing_and_where(tmp_path):
    (tmp_path / "DATA" / "anns").mkdir(parents=True)
    (tmp_path / "DATA" / "videos").mkdir()
    for csv in SHARED.glob("*.csv"):
        shutil.copy(csv, tmp_path / "DATA" / "anns")
    result = check(Path("DATA"), cwd=tmp_path)  # a relative DATA, from the folder it is in
    assert result.returncode == 1 and "Traceback" not in result.stderr
    train = [line for line in result.stderr.splitlines() if line.startswith("check_data: train")]
    assert len(train) == 1 and "MSRVTT_data.json: annotation file not found" in train[0]
    assert "msrvtt_data.zip of CLIP4Clip's release v0.0" in train[0]
    assert "test: 1000 captions of 1000 videos, 0 found" in result.stdout
    assert "test: 1000 of 1000 videos are missing" in result.stderr


def test_a_complete_folder_passes_and_a_missing_video_is_named(tmp_path):
    toy = make_toy_dataset(tmp_path / "toy", num_train=6, num_val=0, num_test=4,
                           captions_per_video=2, workers=1)
    data = tmp_path / "DATA"
    data.mkdir()
    (data / "anns").symlink_to(toy.root)
    shutil.copytree(toy.video_path, data / "videos")
    result = check(data, "--datatype", "msrvtt", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "every msrvtt split and its videos are there" in result.stdout
    missing = sorted((data / "videos").glob("*.mp4"))[0]
    missing.unlink()
    result = check(data, cwd=REPO)
    assert result.returncode == 1 and str(missing) in result.stderr
