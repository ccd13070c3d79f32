"""A build split over the processes of ``torchrun`` (tvr/training/distributed.py).

    torchrun --nproc_per_node 4 -m tvr.index build --checkpoint ckpt_best.pt --videos DIR \\
        --out IDX --device cuda

Rank 0 holds the index's writer lock and alone reads and writes ``manifest.json``; it decides
what to encode (:func:`on_main` hands its answer, or its error, to every rank). The files left
to encode are dealt out in turn (rank r takes every ``world_size``-th from the r-th), and each
rank decodes and encodes its share on its own device and writes its own shards, numbered
``base + r``, ``base + r + world_size``, ... so that no two ranks write the same file, with
their entries in its own manifest, ``shares/<r>/manifest.json`` (the :class:`Manifest` of its
share, saved after each shard as a single build saves the index's). After a barrier rank 0
merges the shares into ``manifest.json`` and deletes them (:func:`merge_shares`), then alone
brings the stage-1 index up to date (:func:`~tvr.index.store.update_stage1`, once, over every
rank's shards). Shards are written by :func:`~tvr.index.store.write_shard` as a single build
writes them, and a share's manifest saves its own table (tvr/index/table.py) beside it. A build
that was interrupted leaves its shares; the next build, with any number of processes, merges
them first, so each rank's finished shards are kept and only the rest is encoded again.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch.distributed as dist

from tvr.index.store import MANIFEST, IndexStoreError, Manifest
from tvr.training.distributed import DistContext

SHARES = "shares"
T = TypeVar("T")


def on_main(context: DistContext, action: Callable[[], T]) -> T:
    """``action()`` run on rank 0; every rank returns its result, or raises its
    :class:`IndexStoreError` (so that no rank waits for a rank 0 that gave up)."""
    outcome: tuple[Optional[T], Optional[str]] = (None, None)
    if context.is_main:
        try:
            outcome = (action(), None)
        except IndexStoreError as error:
            outcome = (None, str(error))
    if context.distributed:
        box = [outcome]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    if outcome[1] is not None:
        raise IndexStoreError(outcome[1])
    return outcome[0]


def share_home(out: Path, context: DistContext) -> Path:
    """Where this rank saves the manifest of its share: the index itself for one process."""
    return out / SHARES / str(context.rank) if context.distributed else out


def share_manifest(manifest: Manifest, context: DistContext) -> Manifest:
    """The manifest this rank writes its entries to: the index's own for one process, else an
    empty one whose shards are numbered from the index's next shard plus the rank."""
    if not context.distributed:
        return manifest
    return Manifest(manifest.videos_root, manifest.checkpoint, manifest.config,
                    manifest.sampling, next_shard=manifest.next_shard + context.rank)


def merge_shares(out: Path, manifest: Manifest) -> list[str]:
    """Fold the shares left below ``out`` into ``manifest``, save it, delete the shares, and
    return the paths of the videos they encoded, sorted."""
    merged = []
    for home in sorted((out / SHARES).glob(f"*/{MANIFEST}")):
        share = Manifest.load(home.parent, convert=True)  # an interrupted format-3 build's
        manifest.entries.update(share.entries)
        manifest.failed.update(share.failed)
        manifest.next_shard = max(manifest.next_shard, share.next_shard)
        merged += share.entries
    manifest.save(out)
    shutil.rmtree(out / SHARES, ignore_errors=True)
    return sorted(merged)
