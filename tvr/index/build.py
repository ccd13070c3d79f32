"""Build or update a video index: walk a folder, encode each video once, write shards.

    python -m tvr.index build --checkpoint outputs/demo/ckpt_best.pt --videos data/toy/videos \\
        --out outputs/demo_index

Every video file below ``--videos`` (recursively, by extension) is decoded with the sampling of
the run that trained the checkpoint (its ``--video_framerate``, ``--max_frames`` and
``--video_backend``), transformed as for evaluation, and encoded by the checkpoint's model (CLIP
frames, then the temporal module), once. A rerun over the same folder encodes only new or
changed files (size, modification time, or where its symbolic links lead), drops deleted
ones, and continues an interrupted build; a file that cannot be read is listed with the reason
(:class:`BuildReport`), never dropped in silence. Decoding runs in ``workers`` loader
processes; the progress bar shows videos/s. Each shard keeps the scorer's per-video state
(tvr/index/store.py); once the shards are written the stage-1 index is brought up to date
(:func:`~tvr.index.store.update_stage1`). ``--clip_path`` instead of ``--checkpoint`` indexes
with plain CLIP, zero-shot (tvr/index/zero_shot.py); under ``torchrun`` the files are split over
the processes (tvr/index/shares.py).
"""
from __future__ import annotations

import contextlib
import copy
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tvr.data.config import SamplingConfig
from tvr.data.frames import frame_transform, frames_to_input, sample_frames
from tvr.data.video import VideoReadError
from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.retrieval import Scorer
from tvr.index.config import DEFAULT_K, BuildConfig
from tvr.index.shares import merge_shares, on_main, share_home, share_manifest
from tvr.index.store import (CONVERTIBLE, FORMAT_VERSION, MANIFEST, Failure, IndexStoreError,
                             Manifest, thumbnail_dir, update_stage1,
                             restage, write_shard)
from tvr.index.table import Entry, VideoFile, walk_videos
from tvr.index.zero_shot import (ZERO_SHOT, MeanCosine, ZeroShotCLIP, calibrate_nonsense,
                                 load_zero_shot)
from tvr.models.gare import GARE
from tvr.storage import file_sha256, require_same, writer_lock
from tvr.training.checkpoint import CheckpointError, code_version, load_model, sampling_of
from tvr.training.distributed import DistContext

GARE_KIND = "gare"  # the manifest's checkpoint["kind"] of an index built by a GARE checkpoint
# The default --stage1_frames (tvr.evaluation.engine.stage1_vectors): one frame beside the mean
# for GARE (bench/RESULTS.md §4: the mean alone misses near-duplicates GARE tells apart); none
# for a zero-shot index, whose score is the cosine of the mean itself
STAGE1_FRAMES = {GARE_KIND: 1, ZERO_SHOT: 0}

SAVE_SHARE = 0.1  # of a build's time, at most, spent saving its manifest (ShardWriter.flush)
THUMBNAIL_SIDE = 160  # short side of the frame thumbnails, pixels


def load_checkpoint_model(checkpoint: str | Path, device: torch.device | str = "cpu"
                          ) -> tuple[GARE, dict[str, Any]]:
    """The model a checkpoint records (eval mode, weights loaded) and the file's metadata
    (:func:`tvr.training.checkpoint.load_model`). The checkpoint must record its configuration
    (every checkpoint of this version does): an index has no command line to trust instead."""
    try:
        model, info = load_model(checkpoint)
    except CheckpointError as error:
        raise IndexStoreError(str(error)) from error
    return model.to(device).eval(), info


class Decoded(NamedTuple):
    path: str
    video: Optional[torch.Tensor]   # (F, 3, S, S) normalised, zero-padded; None if unreadable
    mask: Optional[torch.Tensor]    # (F,)
    times: list[float]
    duration: float
    error: str                      # why it is unreadable (no training advice), else ""


class VideoFiles(Dataset):
    """Decodes ``paths`` (relative to ``root``) for the model and writes their thumbnails."""

    def __init__(self, root: Path, paths: list[str], out: Path, sampling: SamplingConfig,
                 image_size: int):
        self.root, self.paths, self.out = root, paths, out
        self.sampling = sampling
        self.transform = frame_transform(image_size, False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        path = self.paths[i]
        try:
            sampled = sample_frames(str(self.root / path), self.sampling)
        except (VideoReadError, OSError, ValueError) as error:
            reason = error.reason if isinstance(error, VideoReadError) else None
            return Decoded(path, None, None, [], 0.0, reason or str(error))
        self._thumbnails(path, sampled.frames)
        video, mask = frames_to_input(sampled.frames, self.transform, self.sampling.max_frames)
        return Decoded(path, video, mask, sampled.times.round(3).tolist(), sampled.duration, "")

    def _thumbnails(self, path: str, frames: np.ndarray) -> None:
        folder = thumbnail_dir(self.out, path)
        folder.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(frames):
            scale = THUMBNAIL_SIDE / min(frame.shape[:2])
            small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{k}.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 85])


@dataclass
class BuildReport:
    """What a build did: files encoded, dropped (deleted or changed), and unreadable."""

    encoded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # path -> reason (all, old and new)
    seconds: float = 0.0
    calibration: Optional[dict[str, Any]] = None  # a zero-shot index's (tvr/index/zero_shot.py)
    stage1: str = ""  # what stage 1 is now (tvr.index.store.update_stage1)
    converted: bool = False  # the index was of the older format CONVERTIBLE
    restaged: int = 0  # shards written again from their frames (tvr.index.store.restage)

    def format(self) -> str:
        rate = len(self.encoded) / self.seconds if self.seconds else 0.0
        advice = " (listed below and skipped: fix or remove each, then run build again)"
        lines = [f"converted the index from format {CONVERTIBLE} to format {FORMAT_VERSION} "
                 f"(its videos' entries now a table beside manifest.json)"] * self.converted
        lines += [f"wrote {self.restaged} shards again from their stored frames"] * bool(
            self.restaged)
        lines += [f"encoded {len(self.encoded)} videos ({rate:.1f} videos/s), removed "
                 f"{len(self.removed)}, {len(self.failed)} unreadable"
                 + (advice if self.failed else "")]
        lines += [f"  unreadable: {path}: {reason}" for path, reason in sorted(self.failed.items())]
        if self.calibration:
            lines.append("'no good match' below {threshold:.4f}: the {rule} over these {videos} "
                         "videos (no labelled data: how many real matches it keeps is "
                         "unknown)".format(**self.calibration))
        return "\n".join(lines + [self.stage1] * bool(self.stage1))


def build_index(config: BuildConfig, progress: bool = True,
                context: Optional[DistContext] = None) -> Optional[BuildReport]:
    """Create or update the index ``config.out`` of the videos below ``config.videos`` with the
    model of ``config.checkpoint``, or plain CLIP from ``config.clip_path`` (module docstring).

    Raises :class:`IndexStoreError` when ``out`` was built by another model (kind, and file by
    content hash), another sampling or another videos folder, unless ``rebuild`` starts it
    over; and, before anything is loaded, when ``rebuild`` would delete a folder that is no
    index. One build writes ``out`` at a time (:func:`tvr.storage.writer_lock`): another one
    waits for it with ``config.wait``, else raises :class:`IndexStoreError` at once.

    ``context``: this process's place among the ranks of a ``torchrun`` build
    (tvr/index/shares.py; default: a single process on ``config.device``). Rank 0 returns the
    report of the whole build, the other ranks None.
    """
    context = context or DistContext(0, 1, 0, torch.device(config.device))
    if not Path(config.videos).is_dir():
        raise IndexStoreError(f"--videos {config.videos}: no such folder")
    if config.rebuild:
        _require_index_or_empty(Path(config.out))
    with contextlib.ExitStack() as held:
        on_main(context, lambda: held.enter_context(
            writer_lock(config.out, "wait for it, or pass --wait", wait=config.wait,
                        error=IndexStoreError)))
        return _build(config, progress, context)


class Encoder(NamedTuple):
    """The model that encodes the videos, the scorer whose per-video state the shards keep
    (on the CPU, where the shards are written), what the manifest records of the model, and
    its sampling."""

    model: GARE | ZeroShotCLIP
    scorer: Scorer
    identity: dict[str, Any]   # the manifest's checkpoint: kind, path, sha256, code_version
    record: dict[str, Any]     # the manifest's config: the model's record
    sampling: SamplingConfig


def load_encoder(config: BuildConfig, device: torch.device) -> Encoder:
    """The GARE model of ``config.checkpoint``, or the zero-shot CLIP of ``config.clip_path``."""
    if config.clip_path is not None:
        path, kind = config.clip_path, ZERO_SHOT
        model, record = load_zero_shot(path, device)
        scorer, sampling = MeanCosine(), SamplingConfig()
    else:
        path, kind = config.checkpoint, GARE_KIND
        model, info = load_checkpoint_model(path, device)
        scorer = SimilarityEngine(copy.deepcopy(model.similarity).cpu())
        record, sampling = info["config"], sampling_of(info)
    identity = {"kind": kind, "path": str(Path(path).resolve()), "sha256": file_sha256(path),
                "code_version": code_version()}
    return Encoder(model, scorer, identity, record, sampling)


def stage1_frames(config: BuildConfig, encoder: Encoder) -> int:
    """The frames a video keeps as stage-1 vectors beside its mean (``--stage1_frames``)."""
    if config.stage1_frames is not None:
        return config.stage1_frames
    return STAGE1_FRAMES[encoder.identity["kind"]]


def _build(config: BuildConfig, progress: bool, context: DistContext) -> Optional[BuildReport]:
    """:func:`build_index`, rank 0 holding the lock of ``config.out``."""
    start = time.time()
    root, out = Path(config.videos).resolve(), Path(config.out)
    encoder = load_encoder(config, context.device)
    report = BuildReport()
    files = dict(walk_videos(root))
    manifest = on_main(context, lambda: _prepare(config, root, encoder, files, report))
    todo = [p for p in files if p not in manifest.entries and p not in manifest.failed]
    share = share_manifest(manifest, context)
    dataset = VideoFiles(root, todo[context.rank::context.world_size], out, encoder.sampling,
                         encoder.model.clip.config.image_size)
    writer = ShardWriter(out, share_home(out, context), share, encoder.scorer,
                         stage1_frames(config, encoder), files, report,
                         context.world_size)
    _encode_all(encoder.model, dataset, writer, config, context, progress)
    if context.distributed:
        dist.barrier()
        if not context.is_main:
            return None
        report.encoded = merge_shares(out, manifest)
    if encoder.identity["kind"] == ZERO_SHOT and manifest.entries and \
            (report.encoded or report.removed or manifest.config["calibration"] is None):
        manifest.config["calibration"] = calibrate_nonsense(out, manifest, encoder.model)
    if encoder.identity["kind"] == ZERO_SHOT:
        report.calibration = manifest.config["calibration"]
    report.stage1 = update_stage1(out, manifest, config.stage1_exact_max, DEFAULT_K)  # saves it
    report.failed = {path: f.reason for path, f in manifest.failed.items()}
    report.seconds = time.time() - start
    return report


def _prepare(config: BuildConfig, root: Path, encoder: Encoder, files: dict[str, VideoFile],
             report: BuildReport) -> Manifest:
    """Rank 0's part before encoding: start over if asked, open the manifest, fold in the
    shares an interrupted build left, and forget the files deleted or changed since."""
    out = Path(config.out)
    if config.rebuild and out.exists():
        shutil.rmtree(out)
    manifest = _open_manifest(out, root, encoder)
    report.converted = manifest.converted
    merge_shares(out, manifest)
    report.restaged = restage(out, manifest, encoder.scorer, stage1_frames(config, encoder))
    _forget_changed(out, manifest, files, report)
    return manifest


def _encode_all(model: GARE | ZeroShotCLIP, dataset: VideoFiles, writer: ShardWriter,
                config: BuildConfig, context: DistContext, progress: bool) -> None:
    """Decode and encode ``dataset`` on ``context.device``, written through ``writer``."""
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers,
                        collate_fn=list)
    bar = tqdm(total=len(dataset), unit="video", disable=not progress or not context.is_main,
               desc="index", mininterval=0.5 if sys.stderr.isatty() else 30)
    failed = writer.manifest.failed
    pending: list[tuple[Decoded, torch.Tensor]] = []
    try:
        for batch in loader:
            readable = [item for item in batch if item.video is not None]
            for item in batch:
                if item.video is None:
                    failed[item.path] = Failure(**asdict(writer.files[item.path]),
                                                reason=item.error)
            if readable:
                features = _encode(model, readable, context.device).unbind(0)
                pending += [(item._replace(video=None), f) for item, f in zip(readable, features)]
            while len(pending) >= config.shard_size:
                writer.flush(pending[:config.shard_size])
                pending = pending[config.shard_size:]
            bar.update(len(batch))
            bar.set_postfix(failed=len(failed))
        writer.flush(pending)
    finally:  # the whole shards written, also when interrupted
        writer.save()
        bar.close()


def _require_index_or_empty(out: Path) -> None:
    """Refuse to start ``out`` over (delete it) unless it is an index or an empty folder."""
    if out.exists() and not (out / MANIFEST).is_file() and \
            (not out.is_dir() or any(out.iterdir())):
        raise IndexStoreError(f"--out {out} is not an index (no {MANIFEST}) and not an empty "
                              f"folder: --rebuild deletes only an index; choose another --out")


def _forget_changed(out: Path, manifest: Manifest, files: dict[str, VideoFile],
                    report: BuildReport) -> None:
    """Drop the entries of deleted or changed files (they are listed as removed, their
    thumbnails deleted) and the failures of changed files (they are tried again)."""

    def unchanged(item: VideoFile, path: str) -> bool:
        return path in files and item.same_file(files[path])

    for path in [p for p, e in manifest.entries.items() if not unchanged(e, p)]:
        del manifest.entries[path]
        report.removed.append(path)
        shutil.rmtree(thumbnail_dir(out, path), ignore_errors=True)
    for path in [p for p, f in manifest.failed.items() if not unchanged(f, p)]:
        del manifest.failed[path]
    manifest.save(out)


def _open_manifest(out: Path, root: Path, encoder: Encoder) -> Manifest:
    """The existing manifest of ``out`` if it was made alike, else a new one (see build)."""
    if not (out / MANIFEST).exists():
        return Manifest(str(root), encoder.identity, encoder.record, asdict(encoder.sampling))
    manifest = Manifest.load(out, convert=True)
    require_same({"model": manifest.checkpoint.get("kind", GARE_KIND),
                  "model file (sha256)": manifest.checkpoint["sha256"],
                  "sampling": manifest.sampling, "videos folder": manifest.videos_root},
                 {"model": encoder.identity["kind"],
                  "model file (sha256)": encoder.identity["sha256"],
                  "sampling": asdict(encoder.sampling), "videos folder": str(root)},
                 IndexStoreError,
                 f"index {out} was built with another checkpoint or model, sampling or "
                 f"videos folder",
                 "Choose another --out, or pass --rebuild to start it over")
    return manifest


@torch.no_grad()
def _encode(model: GARE | ZeroShotCLIP, items: list[Decoded], device: torch.device
            ) -> torch.Tensor:
    video = torch.stack([item.video for item in items]).to(device)
    mask = torch.stack([item.mask for item in items]).to(device)
    return model.encode_video(video, mask).frames.cpu()


@dataclass
class ShardWriter:
    """Writes encoded videos as shards of ``out`` (with ``scorer``'s per-video state) and their
    entries to ``manifest``, saved in ``home`` (``out`` itself, or a rank's share); shard
    numbers advance by ``step``."""

    out: Path
    home: Path
    manifest: Manifest
    scorer: Scorer
    stage1_frames: int  # tvr.index.store.write_shard
    files: dict[str, VideoFile]
    report: BuildReport
    step: int = 1
    saved_at: float = field(default_factory=time.monotonic)  # when the last save ended
    save_seconds: float = 0.0                                 # and what it took

    def flush(self, pending: list[tuple[Decoded, torch.Tensor]]) -> None:
        """Write ``pending`` as the next shard, then the manifest that points into it when
        saving takes at most :data:`SAVE_SHARE` of the time: a large index's manifest takes
        seconds to save (its table is rewritten whole); the build saves it at its end, also
        when interrupted, and a killed build loses at most about ten saves' time of shards."""
        manifest = self.manifest
        if pending:
            shard = manifest.next_shard
            frames = torch.stack([features for _, features in pending])
            mask = torch.stack([item.mask for item, _ in pending])
            write_shard(self.out, shard, self.scorer, frames, mask, self.stage1_frames)
            manifest.next_shard += self.step
            for row, (item, _) in enumerate(pending):
                manifest.entries[item.path] = Entry(**asdict(self.files[item.path]),
                                                    shard=shard, row=row,
                                                    duration=round(item.duration, 3),
                                                    times=item.times)
                self.report.encoded.append(item.path)
        if time.monotonic() - self.saved_at >= self.save_seconds / SAVE_SHARE:
            self.save()

    def save(self) -> None:
        """Save the manifest in ``home``."""
        start = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.manifest.save(self.home)
        self.saved_at = time.monotonic()
        self.save_seconds = self.saved_at - start
