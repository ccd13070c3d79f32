"""From the data configuration to datasets and data loaders (docs/behaviour.md §3-4, §10).

Training order and augmentation are functions of (seed, epoch, position) only, so that a run
resumed mid-epoch sees exactly the batches and augmentations of an uninterrupted one:

- :class:`ResumableSampler` is a DistributedSampler (the same shuffle on every launch, a
  disjoint share per process, set_epoch) that can start at a given batch of the epoch;
- :class:`SeededItems` seeds torch's generator per item from (seed, epoch, index) before the
  dataset draws its augmentation, so results do not depend on the number of workers either.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tvr.data.config import DataConfig
from tvr.data.datasets import RetrievalDataset, build_dataset, collate_skipping
from tvr.data.cached_frames import CachedFrameLoader, CachedVideoFiles
from tvr.data.frame_cache import FrameCacheError, open_frame_cache
from tvr.data.frames import VideoFrameLoader
from tvr.data.transforms import build_frame_transform
from tvr.models.tokenizer import ClipTokenizer


def build_split(data: DataConfig, split: str, image_size: int, max_words: int, *,
                on_device: bool = False, train: bool = False) -> RetrievalDataset:
    """The ``split`` of ``data.datatype`` for a model of input ``image_size`` and caption
    length ``max_words``, with the train (augmented) or eval frame transform, its frames decoded
    from the videos or read from ``data.frame_cache`` (then, ``on_device``, left for the run's
    device to decode)."""
    augment = train and data.augment
    if not data.frame_cache:
        loader = VideoFrameLoader(data.sampling, build_frame_transform(image_size, augment))
        return build_dataset(data.datatype, split, data.anno_path, data.video_path,
                             ClipTokenizer(), loader, max_words, data.skip_bad_videos)
    cache = open_frame_cache(data.frame_cache)
    cache.require(image_size, data.sampling)
    loader = CachedFrameLoader(cache, data.video_path, image_size, augment, on_device)
    dataset = build_dataset(data.datatype, split, data.anno_path, data.video_path,
                            ClipTokenizer(), loader, max_words, data.skip_bad_videos)
    dataset.video_files = CachedVideoFiles(dataset.video_files, cache)
    missing = [] if data.skip_bad_videos else loader.uncached(dataset)
    if missing:
        raise FrameCacheError(f"frame cache {cache.root} lacks {len(missing)} of the "
                              f"{len(dataset.video_ids)} videos of {dataset.name} (e.g. "
                              f"{', '.join(missing[:3])}): build it for these annotations "
                              f"(preprocess/build_frame_cache.py --splits {split}), or pass "
                              f"--skip_bad_videos to skip them")
    return dataset


class SeededItems(Dataset):
    """``dataset[i]`` drawn with torch's generator seeded from (seed, epoch, i).

    ``per_video``: seed from (seed, epoch, ``dataset.caption_to_video[i]``) instead, so every
    caption of a video sees the same augmentation draw in an epoch (``--augment_per video``),
    the draw that feature mode's view of the video holds (tvr/training/feature_mode.py).
    """

    def __init__(self, dataset: Dataset, seed: int, per_video: bool = False):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.per_video = per_video

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        key = self.dataset.caption_to_video[index] if self.per_video else index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, key)) % 2**63)
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (drop_last) whose epoch may start at batch ``start_batch``."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.batch_size = batch_size
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[:self.batches_per_epoch * self.batch_size]
        return iter(indices[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def train_loader(dataset: RetrievalDataset, rank: int, world_size: int, local_batch: int, *,
                 seed: int, workers: int, per_video: bool = False
                 ) -> tuple[DataLoader, ResumableSampler, SeededItems]:
    """Loader of this process' share of each global batch; call ``set_epoch`` on the returned
    sampler and items before every epoch. ``per_video``: :class:`SeededItems`'."""
    items = SeededItems(dataset, seed, per_video)
    sampler = ResumableSampler(items, world_size, rank, seed, local_batch)
    if sampler.batches_per_epoch == 0:
        raise ValueError(f"{dataset!r} has fewer pairs per process ({sampler.num_samples}) than "
                         f"one batch ({local_batch}); lower --batch_size")
    loader = DataLoader(items, batch_size=local_batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate_skipping, pin_memory=torch.cuda.is_available(),
                        drop_last=True, generator=torch.Generator().manual_seed(seed),
                        persistent_workers=False)
    return loader, sampler, items
