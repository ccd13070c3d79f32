"""Run a table's jobs (tvr/experiments/jobs.py) through main_retrieval.py: on this node's GPUs,
one after another on a CPU machine; resumable; a failed job is reported and the others go on.

Devices: ``--gpus`` (default: the GPUs this process sees, ``CUDA_VISIBLE_DEVICES`` first) is
cut into groups of ``--per_row`` GPUs (1: one job per GPU, several at once; ``all``: every job
on all of them, one after another). A job runs with ``CUDA_VISIBLE_DEVICES`` set to its group,
as ``python main_retrieval.py`` on one GPU and through torchrun (``python -m
torch.distributed.run --standalone``, which picks a free port, so groups do not collide) on
several. Without a GPU the jobs run one after another on the CPU. Nodes share a table by
running different ``--rows`` ranges into the same ``--out``.

Each launch appends the job's stdout and stderr to ``stdout.log`` and ``stderr.log`` in its
folder, and a line (command, devices, start, seconds, exit status) to ``attempts.jsonl``. A
finished job is checked against its row (:func:`tvr.experiments.jobs.differences`); a job that
exits nonzero, writes no metrics or ran another setting is reported with its log and its last
error line. In feature mode (``--clip_features``) the first job of each CLIP-feature store
runs alone on it: one process extracts into a store at a time (docs/feature_mode.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tvr.experiments.jobs import MAIN, METRICS_FILE, Job, PlanError, Setup, differences

Devices = Optional[tuple[str, ...]]  # a job's GPUs; None: the CPU
POLL_S = 0.25


@dataclass(frozen=True)
class Outcome:
    """What became of a job: ``done`` (finished before), ``trained`` or ``failed``."""

    job: Job
    status: str
    message: str = ""


@dataclass
class Launch:
    """A job's running process."""

    job: Job
    process: subprocess.Popen
    devices: Devices
    command: list[str]
    started: float = field(default_factory=time.time)
    error_offset: int = 0           # where this launch's part of stderr.log begins


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES``, else all that torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    import torch
    return [str(index) for index in range(torch.cuda.device_count())]


def device_slots(gpus: str, per_row: str) -> list[Devices]:
    """The device groups that run a job each at the same time (module docstring)."""
    ids = visible_gpus() if gpus == "auto" else \
        [] if gpus == "none" else [gpu.strip() for gpu in gpus.split(",") if gpu.strip()]
    if not ids:
        return [None]
    size = len(ids) if per_row == "all" else int(per_row)
    if size > len(ids):
        raise PlanError(f"--per_row {per_row}: more GPUs per job than the {len(ids)} of --gpus "
                        f"({','.join(ids)})")
    return [tuple(ids[start:start + size]) for start in range(0, len(ids) - size + 1, size)]


def command(job: Job, devices: Devices, resume: bool) -> tuple[list[str], dict[str, str]]:
    """The job's command line and environment on ``devices``."""
    env = dict(os.environ)
    launcher = [sys.executable]
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        if len(devices) > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone",
                         f"--nproc_per_node={len(devices)}"]
    return [*launcher, str(MAIN), *job.argv, *(["--resume"] if resume else [])], env


def start(job: Job, devices: Devices) -> Launch:
    """Launch ``job`` on ``devices``, resuming from its ``ckpt_last.pt`` when it has one."""
    job.folder.mkdir(parents=True, exist_ok=True)
    argv, env = command(job, devices, job.state() == "resume")
    errors = job.folder / "stderr.log"
    offset = errors.stat().st_size if errors.is_file() else 0
    with open(job.folder / "stdout.log", "a") as out, open(errors, "a") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
    return Launch(job, process, devices, argv, error_offset=offset)


def last_error(path: Path, offset: int) -> str:
    """The last line of ``path`` after ``offset`` that reports an error (main_retrieval.py's
    one-line error, also under torchrun), else its last line."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()
                 if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(nothing on stderr)"])[-1]


def finish(launch: Launch, returncode: int, setup: Setup) -> Outcome:
    """Record the launch in ``attempts.jsonl`` and judge its job."""
    job, seconds = launch.job, time.time() - launch.started
    with open(job.folder / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"command": launch.command, "devices": launch.devices,
                            "started": launch.started, "seconds": round(seconds, 1),
                            "returncode": returncode}) + "\n")
    if returncode != 0:
        errors = job.folder / "stderr.log"
        return Outcome(job, "failed", f"exit status {returncode}: "
                                      f"{last_error(errors, launch.error_offset)} (log: {errors})")
    if not (job.folder / METRICS_FILE).is_file():
        return Outcome(job, "failed", f"it wrote no {METRICS_FILE} (log: "
                                      f"{job.folder / 'stdout.log'})")
    return judged(job, setup, "trained", f"in {seconds / 60:.1f} min")


def judged(job: Job, setup: Setup, status: str, message: str = "") -> Outcome:
    """``status``, or a failure when the job's checkpoint records another setting than its
    row's."""
    found = differences(job, setup)
    if found:
        return Outcome(job, "failed", f"{job.folder} ran another setting than its row: "
                                      f"{'; '.join(found)}. Delete the folder to run the row")
    return Outcome(job, status, message)


def run_jobs(jobs: list[Job], slots: list[Devices], setup: Setup,
             say: Callable[[str], None]) -> list[Outcome]:
    """Run the jobs that are not done, as many at a time as there are ``slots``; the done
    ones are checked. Ctrl-C stops the running jobs (their ``ckpt_last.pt`` stays)."""
    outcomes = [judged(job, setup, "done") for job in jobs if job.state() == "done"]
    for outcome in outcomes:
        say(f"{outcome.job.name}: done before, skipped" if outcome.status == "done" else
            f"{outcome.job.name}: failed: {outcome.message}")
    pending = [job for job in jobs if job.state() != "done"]
    free, running, ready = list(slots), [], set()
    try:
        while pending or running:
            for job in _startable(pending, running, ready, len(free)):
                pending.remove(job)
                launch = start(job, free.pop(0))
                running.append(launch)
                where = "the CPU" if launch.devices is None else \
                    f"GPU {','.join(launch.devices)}"
                say(f"{job.name}: {'resuming' if '--resume' in launch.command else 'training'}"
                    f" on {where} (log: {job.folder / 'stdout.log'})")
            time.sleep(POLL_S)
            for launch in [item for item in running if item.process.poll() is not None]:
                running.remove(launch)
                free.append(launch.devices)
                outcome = finish(launch, launch.process.returncode, setup)
                if outcome.status != "failed" and launch.job.store is not None:
                    ready.add(launch.job.store)
                outcomes.append(outcome)
                say(f"{launch.job.name}: {outcome.status}: {outcome.message}")
    except KeyboardInterrupt:
        for launch in running:
            launch.process.terminate()
        for launch in running:
            launch.process.wait()
        raise
    return outcomes


def _startable(pending: list[Job], running: list[Launch], ready: set[Path],
               free: int) -> list[Job]:
    """Up to ``free`` pending jobs that may start now: in feature mode, not a second job on a
    store whose first job is still running (it may be extracting)."""
    chosen: list[Job] = []
    for job in pending:
        if len(chosen) == free:
            break
        busy = {launch.job.store for launch in running} | {other.store for other in chosen}
        if job.store is None or job.store in ready or job.store not in busy:
            chosen.append(job)
    return chosen
