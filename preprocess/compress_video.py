"""Re-encode a folder of videos to 3 fps with the short side at 224 px (docs/behaviour.md §3).

Every file under ``input_root`` (recursively) whose extension is in :data:`VIDEO_EXTENSIONS` is
re-encoded by ffmpeg to H.264 (libx264, yuv420p), 3 frames per second, short side 224 px with
the aspect ratio kept and both sides even, audio dropped, into ``output_root`` under the same
relative path with the suffix ``.mp4`` (``a/clip.avi`` becomes ``a/clip.mp4``). Other files
are not attempted; they are counted as "ignored".

The run is resumable and safe to interrupt: each video is written to a hidden temporary name
beside its final one (``.clip.mp4.part``) and renamed only after ffmpeg succeeded and the result
decodes (OpenCV reads at least one frame), so a final name always holds a complete video. A
final name that already decodes is skipped. Ctrl-C or SIGTERM cancels the videos not started,
kills the running ffmpeg processes and removes their temporary files (exit status 130 after
Ctrl-C, 143 after SIGTERM); only a hard kill can leave a ``.part`` file, which the next run
overwrites. Failures (ffmpeg's exit status or an unreadable result) are listed with their
reason at the end and make the exit status 1.

Usage::

    python preprocess/compress_video.py --input_root raw/ --output_root compressed/ --workers 8

The ffmpeg binary is ``--ffmpeg PATH`` if given, else ``ffmpeg`` on the PATH, else the one
shipped by the ``imageio-ffmpeg`` wheel. Each ffmpeg runs single-threaded: parallelism comes from
running ``--workers`` of them at once, one video each. The workers are threads of this process
(they only wait on ffmpeg and read one frame back), not forked processes: forking a process that
already runs OpenCV or PyTorch thread pools can deadlock the child.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg", ".mpeg",
    ".3gp", ".ogv", ".ts", ".mts", ".m2ts", ".vob",
})
FPS = 3
SHORT_SIDE = 224
MAX_WORKERS = 256  # ffmpeg processes at once: more is a typo, not a machine
# Short side to SHORT_SIDE; -2 makes the other side keep the aspect ratio, rounded to even.
SCALE_FILTER = (f"scale='if(gt(iw,ih),-2,{SHORT_SIDE})':'if(gt(iw,ih),{SHORT_SIDE},-2)'"
                ":flags=bicubic")


@dataclass
class Summary:
    """What a run did, by path relative to the input folder."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: list[str] = field(default_factory=list)  # not a video extension: not attempted

    def __str__(self) -> str:
        return (f"done {len(self.done)}, skipped {len(self.skipped)} (already compressed), "
                f"failed {len(self.failed)}, ignored {len(self.ignored)} (not a video extension)")


def find_ffmpeg(explicit: str | None = None) -> str:
    """The ffmpeg binary: ``explicit``, else ``ffmpeg`` on the PATH, else imageio-ffmpeg's."""
    if explicit is not None:
        found = shutil.which(explicit)
        if found is None:
            raise FileNotFoundError(f"--ffmpeg {explicit}: no such executable")
        return found
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as err:
        raise FileNotFoundError(
            "no ffmpeg found: pass --ffmpeg PATH, put ffmpeg on the PATH, or "
            f"pip install imageio-ffmpeg ({err})") from err


def check_libx264(ffmpeg: str) -> None:
    """Raise RuntimeError unless ``ffmpeg`` runs and has the libx264 encoder."""
    proc = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True)
    if proc.returncode != 0 or " libx264 " not in proc.stdout:
        raise RuntimeError(f"{ffmpeg} cannot encode H.264 with libx264 "
                           f"(exit status {proc.returncode}); use another --ffmpeg")


def list_videos(input_root: Path, output_root: Path) -> tuple[list[Path], list[Path]]:
    """(videos, ignored files) under ``input_root``, sorted; ``output_root`` is left out."""
    videos, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(input_root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != output_root)
        for name in sorted(filenames):
            path = here / name
            (videos if path.suffix.lower() in VIDEO_EXTENSIONS else ignored).append(path)
    return videos, ignored


def is_readable(path: Path) -> bool:
    """True when OpenCV opens ``path`` and decodes at least one frame."""
    import cv2  # here, so that --help answers without loading OpenCV
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.isOpened() and cap.read()[0]
    finally:
        cap.release()


def ffmpeg_command(ffmpeg: str, src: Path, dst: Path) -> list[str]:
    """The ffmpeg command that re-encodes ``src`` into the mp4 file ``dst``."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
            "-map", "0:v:0", "-vf", f"fps={FPS},{SCALE_FILTER}", "-an", "-sn", "-dn",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1",
            "-movflags", "+faststart", "-f", "mp4", str(dst)]


def _reason(stderr: str) -> str:
    """ffmpeg's first and last error lines (the cause and the outcome), without log prefixes."""
    lines = [re.sub(r"^\[[^]]*\]\s*", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "no message"
    return (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}")[:300]


class _FFmpegRuns:
    """The ffmpeg processes of one folder run, so that an interrupted run can kill them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, command: list[str]) -> tuple[int, str]:
        """(exit status, stderr) of ``command``; killed at once when the run has stopped."""
        with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace") as proc:
            with self._lock:
                self._running.add(proc)
                if self._stopped:
                    proc.kill()
            try:
                _, stderr = proc.communicate()
            finally:
                with self._lock:
                    self._running.discard(proc)
        return proc.returncode, stderr

    def stop(self) -> None:
        """Kill every running ffmpeg, and any started from now on."""
        with self._lock:
            self._stopped = True
            for proc in self._running:
                proc.kill()


def compress_one(ffmpeg: str, src: Path, dst: Path, runs: _FFmpegRuns) -> tuple[str, str]:
    """Re-encode ``src`` to ``dst`` atomically: ("done" | "skipped" | "failed", reason)."""
    if dst.is_file() and is_readable(dst):
        return "skipped", ""
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        status, stderr = runs.run(ffmpeg_command(ffmpeg, src, tmp))
        if status != 0:
            return "failed", f"ffmpeg exit status {status}: {_reason(stderr)}"
        if not is_readable(tmp):
            return "failed", "ffmpeg succeeded but the output has no decodable frame"
        os.replace(tmp, dst)
        return "done", ""
    except OSError as err:
        return "failed", f"{type(err).__name__}: {err}"
    finally:
        tmp.unlink(missing_ok=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    """Signal handler: leave through SystemExit, so ``finally`` blocks and cleanups run."""
    raise SystemExit(128 + signum)


def _run_all(ffmpeg: str, jobs: list[tuple[Path, Path]], workers: int
             ) -> Iterator[tuple[Path, str, str]]:
    """(source, status, reason) of every job as it completes, ``workers`` at a time, on
    worker threads (also for one worker, so that signals, which reach only the main thread,
    always find it here). Leaving early (an exception, Ctrl-C, SIGTERM) cancels the jobs not
    started and kills the running ffmpeg processes; their threads remove the temporary files
    before this returns."""
    runs = _FFmpegRuns()

    def job(src: Path, dst: Path) -> tuple[Path, str, str]:
        return (src, *compress_one(ffmpeg, src, dst, runs))

    with ThreadPoolExecutor(workers, thread_name_prefix="compress") as pool:
        futures = [pool.submit(job, src, dst) for src, dst in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            runs.stop()
            raise


def compress_folder(input_root: str | Path, output_root: str | Path, workers: int | None = None,
                    ffmpeg: str | None = None, progress: bool = True) -> Summary:
    """Re-encode every video under ``input_root`` into ``output_root``; see the module doc.

    ``workers`` defaults to the number of CPUs; ``ffmpeg`` is resolved by :func:`find_ffmpeg`.
    Two inputs that map to the same output (``clip.avi`` and ``clip.mkv``) are both failures.
    """
    input_root, output_root = Path(input_root).resolve(), Path(output_root).resolve()
    if not input_root.is_dir():
        raise NotADirectoryError(f"input folder not found: {input_root}")
    if input_root == output_root:
        raise ValueError("the output folder must differ from the input folder")
    exe = find_ffmpeg(ffmpeg)
    check_libx264(exe)
    videos, ignored = list_videos(input_root, output_root)
    summary = Summary(ignored=[str(p.relative_to(input_root)) for p in ignored])
    targets: dict[Path, list[Path]] = {}
    for src in videos:
        targets.setdefault(output_root / src.relative_to(input_root).with_suffix(".mp4"),
                           []).append(src)
    jobs = []
    for dst, srcs in targets.items():
        if len(srcs) == 1:
            jobs.append((srcs[0], dst))
            continue
        names = ", ".join(str(s.relative_to(input_root)) for s in srcs)
        summary.failed += [(str(s.relative_to(input_root)),
                            f"several inputs map to the same output ({names})") for s in srcs]
    results = _run_all(exe, jobs, max(1, workers or os.cpu_count() or 1))
    for src, status, reason in tqdm(results, total=len(jobs), unit="video", desc="compress",
                                    disable=not progress):
        rel = str(src.relative_to(input_root))
        if status == "failed":
            summary.failed.append((rel, reason))
        else:
            getattr(summary, status).append(rel)
    for names in (summary.done, summary.skipped, summary.failed):
        names.sort()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when every video is compressed, 1 when any failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_root", required=True, help="folder of source videos")
    parser.add_argument("--output_root", required=True, help="folder for the .mp4 outputs")
    parser.add_argument("--workers", type=int, default=None,
                        help="ffmpeg processes run at once (default: number of CPUs)")
    parser.add_argument("--ffmpeg", default=None,
                        help="ffmpeg binary (default: ffmpeg on PATH, else imageio-ffmpeg's)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an expected error under its one line")
    args = parser.parse_args(argv)
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"argument --workers: must be an integer in [1, {MAX_WORKERS}], got "
                     f"{args.workers}")
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        summary = compress_folder(args.input_root, args.output_root, args.workers, args.ffmpeg,
                                  progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as err:
        if args.debug or os.environ.get("TVR_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"compress_video: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compress_video: interrupted; finished videos are kept, rerun to resume",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"compress_video: {summary}")
    if summary.failed:
        print(f"compress_video: {len(summary.failed)} failed:", file=sys.stderr)
        for rel, reason in summary.failed:
            print(f"  {rel}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
