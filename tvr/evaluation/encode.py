"""Encode the captions and the videos of an evaluation split once each (docs/behaviour.md §11).

Each process encodes a contiguous share of the items; the shares are all-gathered so that every
process ends with the features of the whole split, in dataset order. Videos the data layer
skipped (``--skip_bad_videos``) are left out and listed: the caller removes them, and their
captions, from the gallery and reports them.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from tvr.data.datasets import RetrievalDataset, collate_skipping
from tvr.data.device_loader import DeviceLoader
from tvr.data.video import VideoReadError
from tvr.models.gare import GARE, TextFeatures, VideoFeatures
from tvr.models.tokenizer import ClipTokenizer


class EncodedSplit(NamedTuple):
    """Features of a split. ``video_index[i]``: dataset position of row i of ``videos``."""

    texts: TextFeatures
    videos: VideoFeatures
    video_index: Tensor
    skipped: list[str]


def _share(count: int) -> range:
    """This process' contiguous share of ``count`` items."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    bounds = np.linspace(0, count, world + 1).astype(int)
    return range(bounds[rank], bounds[rank + 1])


def _gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every process' rows in rank order (shares may differ in length by one)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    counts = [torch.zeros(1, dtype=torch.long, device=tensor.device)
              for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([tensor.shape[0]], device=tensor.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(c.item())] for part, c in zip(parts, counts)])


def _gather_list(items: list[str]) -> list[str]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return items
    everyone: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


@torch.no_grad()
def encode_sentences(model: GARE, sentences: list[str], max_words: int,
                     tokenizer: ClipTokenizer | None = None,
                     autocast: Callable[[], contextlib.AbstractContextManager]
                     = contextlib.nullcontext) -> TextFeatures:
    """The text features of free sentences (search queries, calibration queries), encoded as
    captions are (``max_words`` tokens), on the model's device."""
    tokenizer = tokenizer or ClipTokenizer()
    encoded = [tokenizer.encode_caption(sentence, max_words) for sentence in sentences]
    device = next(model.parameters()).device
    ids = torch.from_numpy(np.stack([e[0] for e in encoded])).to(device)
    mask = torch.from_numpy(np.stack([e[1] for e in encoded])).to(device)
    with autocast():
        return model.encode_text(ids, mask)


@torch.no_grad()
def encode_split(model: GARE, dataset: RetrievalDataset, batch_size: int, workers: int,
                 device: torch.device,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 limit: int | None = None) -> EncodedSplit:
    """Encode every caption and every video of ``dataset`` once, on all processes.

    ``limit``: only that many captions and that many videos, evenly spaced over the split (a
    bank of training queries for the normalisers). ``video_index`` keeps dataset positions.
    """
    model.eval()

    def loader(view):
        chosen = range(len(view)) if limit is None or limit >= len(view) else \
            np.unique(np.linspace(0, len(view) - 1, limit).astype(int)).tolist()
        share = Subset(view, [chosen[i] for i in _share(len(chosen))])
        return DeviceLoader(DataLoader(share, batch_size=batch_size, num_workers=workers,
                                       collate_fn=collate_skipping,
                                       pin_memory=device.type == "cuda"), device)

    sentences, words, masks = [], [], []
    for batch in loader(dataset.captions()):
        ids, mask, _ = batch.data
        with autocast():
            text = model.encode_text(ids, mask)
        sentences.append(text.sentence)
        masks.append(mask)
        if model.uses_words:
            words.append(text.words)

    frames, frame_masks, positions, skipped = [], [], [], []
    for batch in loader(dataset.videos()):
        skipped.extend(s.path for s in batch.skipped)
        if batch.data is None:
            continue
        video, video_mask, video_index = batch.data
        with autocast():
            features = model.encode_video(video, video_mask)
        frames.append(features.frames)
        frame_masks.append(features.mask)
        positions.append(video_index)

    if not frames:  # every video of this process' share was skipped
        raise VideoReadError(f"no video of {dataset.name} could be read ({len(skipped)} "
                             f"unreadable, e.g. {skipped[0] if skipped else 'none listed'}): "
                             f"check --video_path and the files")
    texts = TextFeatures(_gather_rows(torch.cat(sentences)),
                         _gather_rows(torch.cat(words)) if words else None,
                         _gather_rows(torch.cat(masks)))
    videos = VideoFeatures(_gather_rows(torch.cat(frames)), _gather_rows(torch.cat(frame_masks)))
    return EncodedSplit(texts, videos, _gather_rows(torch.cat(positions)), _gather_list(skipped))
