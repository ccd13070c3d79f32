"""preprocess/compress_video.py (docs/behaviour.md §3): 3 fps, short side 224 px, H.264 without
audio, relative names kept, failures reported with a non-zero exit status, no temporary files left,
and a rerun that re-encodes nothing.

Input clips are made with the imageio-ffmpeg binary (lavfi test sources); outputs are checked
by decoding them with OpenCV and by ffmpeg's own description of their streams.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "preprocess"))
import compress_video  # noqa: E402  (a script folder, not a package)

FFMPEG = compress_video.find_ffmpeg()
GOOD = {"landscape.mp4": (298, 224), "sub/portrait.avi": (224, 298)}  # input -> output w, h
BAD = ["corrupt.mp4", "truncated.mp4", "audio_only.mp4", "sub/text.mkv"]


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("raw")
    (src / "sub").mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi",
           "-i", "sine=duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(src / "landscape.mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=240x320:rate=25:duration=2", "-c:v", "mpeg4",
           str(src / "sub/portrait.avi"))
    (src / "corrupt.mp4").write_bytes(bytes(range(256)) * 64)
    whole = (src / "landscape.mp4").read_bytes()  # index (moov) at the end: lost when cut
    (src / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(src / "audio_only.mp4"))
    (src / "sub/text.mkv").write_text("not a video\n")
    (src / "notes.txt").write_text("not a video either\n")
    return src


@pytest.fixture(scope="module")
def first_run(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "compressed"
    status = compress_video.main(["--input_root", str(videos), "--output_root", str(out),
                                  "--workers", "2", "--no_progress"])
    return out, status


def test_good_videos_are_compressed(first_run):
    out, _ = first_run
    for name, (width, height) in GOOD.items():
        path = out / Path(name).with_suffix(".mp4")
        cap = cv2.VideoCapture(str(path))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(3.0)
        frames = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (height, width, 3)
            frames += 1
        cap.release()
        assert frames == 6  # 2 s at 3 fps
        streams = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)],
                                 capture_output=True, text=True).stderr
        assert "Video: h264" in streams and "Audio:" not in streams


def test_failures_are_reported_and_nothing_else_is_written(first_run):
    out, status = first_run
    assert status == 1
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["landscape.mp4", "sub/portrait.mp4"]  # no failed output, no temporary file, no .txt


def test_failure_report_names_each_file_and_reason(videos, tmp_path, capsys):
    status = compress_video.main(["--input_root", str(videos), "--output_root",
                                  str(tmp_path), "--workers", "2", "--no_progress"])
    err = capsys.readouterr().err
    assert status == 1 and "4 failed" in err
    for name in BAD:
        assert f"  {name}: ffmpeg exit status" in err
    assert "moov atom not found" in err and "matches no streams" in err
    assert "notes.txt" not in err


def test_unreadable_result_is_a_failure_and_leaves_no_file(videos, tmp_path, monkeypatch):
    monkeypatch.setattr(compress_video, "is_readable", lambda path: False)
    summary = compress_video.compress_folder(videos, tmp_path, workers=1, progress=False)
    assert summary.done == [] and len(summary.failed) == len(GOOD) + len(BAD)
    assert [r for n, r in summary.failed if n in GOOD] == \
        ["ffmpeg succeeded but the output has no decodable frame"] * len(GOOD)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_rerun_does_no_work(videos, first_run):
    out, _ = first_run
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    summary = compress_video.compress_folder(videos, out, workers=1, progress=False)
    assert summary.done == [] and summary.skipped == sorted(GOOD)
    assert [name for name, _ in summary.failed] == sorted(BAD)
    assert summary.ignored == ["notes.txt"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_incomplete_output_is_redone(videos, tmp_path):
    (tmp_path / "landscape.mp4").write_bytes(b"half a file")
    summary = compress_video.compress_folder(videos, tmp_path, workers=2, progress=False)
    assert sorted(summary.done) == sorted(GOOD) and summary.skipped == []
    assert compress_video.is_readable(tmp_path / "landscape.mp4")


def test_clashing_outputs_and_bad_arguments(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("clip.avi", "clip.mkv"):
        (tmp_path / "in" / name).write_bytes(b"")
    summary = compress_video.compress_folder(tmp_path / "in", tmp_path / "out", progress=False)
    assert [reason for _, reason in summary.failed] == \
        ["several inputs map to the same output (clip.avi, clip.mkv)"] * 2
    assert compress_video.main(["--input_root", str(tmp_path / "in"), "--output_root",
                                str(tmp_path / "in")]) == 2
    assert compress_video.main(["--input_root", str(tmp_path / "in"), "--output_root",
                                str(tmp_path / "out"), "--ffmpeg", "/no/such/ffmpeg"]) == 2
    assert "/no/such/ffmpeg" in capsys.readouterr().err


def test_no_ffmpeg_anywhere_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(compress_video.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    with pytest.raises(FileNotFoundError, match="no ffmpeg found"):
        compress_video.find_ffmpeg()


FAKE_FFMPEG = """#!/bin/sh
# An ffmpeg that lists libx264 and then 'encodes' for a minute: writes its output, sleeps.
case "$*" in *-encoders*) echo " V..... libx264  H.264"; exit 0;; esac
for last; do :; done
echo partial > "$last"
echo > "$FAKE_PID_DIR/$$"
exec sleep 60
"""
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _running(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_kills_ffmpeg_and_removes_temporary_files(tmp_path, signum, status, workers):
    fake = tmp_path / "slow_ffmpeg"
    fake.write_text(FAKE_FFMPEG)
    fake.chmod(0o755)
    (tmp_path / "in").mkdir()
    for k in range(4):
        (tmp_path / "in" / f"clip{k}.mp4").write_bytes(b"x")
    out = tmp_path / "out"
    script = Path(compress_video.__file__)
    # As from a terminal: SIGINT at its default, even when this test runs under a launcher
    # that ignores it (GNU time in a detached session), whose children inherit the ignoring.
    command = [sys.executable, "-c", DEFAULT_SIGINT, str(script), "--input_root",
               str(tmp_path / "in"), "--output_root", str(out), "--workers", str(workers),
               "--no_progress", "--ffmpeg", str(fake)]
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FAKE_PID_DIR": str(pids)})
    deadline = time.monotonic() + 60
    while len(list(out.glob(".*.part"))) < workers:  # every worker is inside ffmpeg
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status and time.monotonic() - started < 20  # not the 60 s sleep
    assert [p for p in out.rglob("*") if p.is_file()] == []
    ffmpegs = [int(p.name) for p in pids.iterdir()]
    assert len(ffmpegs) == workers and not any(_running(pid) for pid in ffmpegs)
    if signum == signal.SIGINT:
        assert "interrupted; finished videos are kept" in err


@pytest.mark.parametrize("workers", ["0", "-3", "100000"])
def test_a_worker_count_out_of_range_is_one_line(workers, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        compress_video.main(["--input_root", str(tmp_path), "--output_root",
                             str(tmp_path / "out"), "--workers", workers])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and "argument --workers: must be an integer in [1, 256]" in error
