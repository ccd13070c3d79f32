"""The retrieval dataset shared by every ``--datatype`` (docs/behaviour.md §4).

A dataset is a list of caption pairs ``(caption, video_id, start, end)`` plus the ordered list
of its videos (the :class:`~tvr.data.datasets.annotations.Annotations` that a ``--datatype``'s
format reads; :func:`build_dataset` builds one). Indexing it gives one training pair, a
:class:`RetrievalItem`::

    text_ids    LongTensor (max_words,)   CLIP token ids, 0-padded (docs/behaviour.md §2)
    text_mask   LongTensor (max_words,)   1 on real tokens
    video       FloatTensor (F, 3, S, S)  frames from the injected frame loader, 0-padded
    video_mask  LongTensor (F,)           1 on real frames
    index       int                       caption index: row of this pair in ``pairs``
    video_index int                       position of its video in ``video_ids``

Evaluation encodes each caption and each video once: :meth:`RetrievalDataset.captions` and
:meth:`RetrievalDataset.videos` are Datasets over the unique captions (:class:`CaptionItem`)
and the unique videos (:class:`VideoItem`). ``caption_to_video[i]`` is the video of caption
``i`` and ``video_to_captions[v]`` the captions of video ``v``, so metrics rank every caption
against every video (text-to-video) and score video-to-text by the best-ranked caption. A
training split may be re-paired (:meth:`RetrievalDataset.pair_captions`, ``--noisy_pairs``):
then ``caption_to_video`` is the pairing that training uses, and ``pairs`` keep the annotations'.

With ``skip_bad_videos=True`` an unreadable video gives a :class:`SkippedVideo` marker instead
of an item (see :mod:`tvr.data.datasets.skipping`); by default its ``VideoReadError``
propagates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from tvr.data.datasets.annotations import Annotations
from tvr.data.datasets.registry import DATASETS
from tvr.data.datasets.skipping import SkippedVideo
from tvr.data.video import VideoReadError


class RetrievalItem(NamedTuple):
    """One (caption, video) pair; see the module docstring for shapes."""

    text_ids: torch.Tensor
    text_mask: torch.Tensor
    video: torch.Tensor
    video_mask: torch.Tensor
    index: int
    video_index: int


class CaptionItem(NamedTuple):
    """One caption of :meth:`RetrievalDataset.captions`."""

    text_ids: torch.Tensor
    text_mask: torch.Tensor
    index: int


class VideoItem(NamedTuple):
    """One video of :meth:`RetrievalDataset.videos`."""

    video: torch.Tensor
    video_mask: torch.Tensor
    video_index: int


class CaptionTokenizer(Protocol):
    """``tvr.models.tokenizer.ClipTokenizer`` or anything with its ``encode_caption``."""

    def encode_caption(self, text: str, max_words: int) -> tuple[np.ndarray, np.ndarray]: ...


FrameLoader = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``loader(path, start=None, end=None) -> (video (F,3,S,S) float, video_mask (F,) long)``,
raising ``VideoReadError`` for a video it cannot read: ``tvr.data.frames.VideoFrameLoader`` or
``tvr.data.cached_frames.CachedFrameLoader``."""


class VideoFiles:
    """Maps a video id to its file: the first existing ``root / name`` for the names that
    ``names(video_id)`` accepts (e.g. ``<id>.mp4`` then ``<id>.avi``)."""

    def __init__(self, root: str | Path, names: Callable[[str], Sequence[str]]):
        self.root = Path(root)
        self.names = names

    def candidates(self, video_id: str) -> list[Path]:
        """The accepted paths of ``video_id``, preferred first."""
        return [self.root / name for name in dict.fromkeys(self.names(video_id))]

    def __call__(self, video_id: str) -> Path:
        """The file of ``video_id``; ``VideoReadError`` naming every path tried if none exists."""
        candidates = self.candidates(video_id)
        for path in candidates:
            if path.is_file():
                return path
        raise VideoReadError(f"no file for video {video_id!r}: tried "
                             f"{', '.join(str(p) for p in candidates)}; check --video_path, or "
                             "pass --skip_bad_videos to skip such videos and list them in a "
                             "report at the end of the epoch", path=str(candidates[0]),
                             reason="not found under any accepted name")


class RetrievalDataset(Dataset):
    """Caption-video pairs of one split; see the module docstring."""

    def __init__(self, annotations: Annotations, video_files: VideoFiles,
                 tokenizer: CaptionTokenizer, frame_loader: FrameLoader, max_words: int,
                 skip_bad_videos: bool = False, name: str = "retrieval"):
        self.pairs = list(annotations.pairs)
        self.video_ids = list(annotations.video_ids)
        self.video_files = video_files
        self.tokenizer = tokenizer
        self.frame_loader = frame_loader
        self.max_words = max_words
        self.skip_bad_videos = skip_bad_videos
        self.name = name

        position = {video_id: i for i, video_id in enumerate(self.video_ids)}
        if len(position) != len(self.video_ids):
            raise ValueError(f"{name}: the video list holds duplicate ids")
        self.caption_to_video: list[int] = []
        self.video_to_captions: list[list[int]] = [[] for _ in self.video_ids]
        bounds: list[tuple[float | None, float | None] | None] = [None] * len(self.video_ids)
        for i, pair in enumerate(self.pairs):
            if pair.video_id not in position:
                raise ValueError(f"{name}: caption {i} belongs to unlisted video {pair.video_id!r}")
            v = position[pair.video_id]
            self.caption_to_video.append(v)
            self.video_to_captions[v].append(i)
            if bounds[v] is None:
                bounds[v] = (pair.start, pair.end)
            elif bounds[v] != (pair.start, pair.end):
                raise ValueError(f"{name}: captions of video {pair.video_id!r} clip it differently "
                                 f"({bounds[v]} and {(pair.start, pair.end)}); videos() needs one "
                                 "clip per video")
        for v, captions in enumerate(self.video_to_captions):
            if not captions:
                raise ValueError(f"{name}: video {self.video_ids[v]!r} has no caption")
        self.video_bounds: list[tuple[float | None, float | None]] = bounds

    def pair_captions(self, videos: Sequence[int]) -> None:
        """Pair caption ``i`` with video ``videos[i]`` from now on (noisy supervision,
        tvr/data/noise.py): ``caption_to_video`` and ``video_to_captions`` follow, and so do the
        items. ``pairs``, ``video_ids`` and ``video_bounds`` stay as the annotations give them,
        so a video keeps its own clip window even with no caption left (a one-caption-per-video
        split, e.g. ActivityNet, leaves some so), and the split's captions, videos and windows,
        what feature mode caches, do not change."""
        if len(videos) != len(self.pairs):
            raise ValueError(f"{self.name}: {len(videos)} videos for {len(self.pairs)} captions")
        if any(not 0 <= v < len(self.video_ids) for v in videos):
            raise ValueError(f"{self.name}: a video index outside [0, {len(self.video_ids)})")
        self.caption_to_video = [int(v) for v in videos]
        self.video_to_captions = [[] for _ in self.video_ids]
        for i, v in enumerate(self.caption_to_video):
            self.video_to_captions[v].append(i)

    @property
    def multi_sentence(self) -> bool:
        """True when some video has more than one caption."""
        return len(self.pairs) != len(self.video_ids)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}: {len(self.pairs)} captions, "
                f"{len(self.video_ids)} videos)")

    def encode_text(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text_ids, text_mask)`` of caption ``index``, int64 tensors of ``max_words``."""
        ids, mask = self.tokenizer.encode_caption(self.pairs[index].caption, self.max_words)
        return torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)

    def load_video(self, video_index: int) -> tuple[torch.Tensor, torch.Tensor] | SkippedVideo:
        """``(video, video_mask)`` of video ``video_index`` from the frame loader.

        A ``VideoReadError`` (file not found under any accepted name, or unreadable) propagates,
        or becomes a :class:`SkippedVideo` marker when ``skip_bad_videos`` is set.
        """
        video_id = self.video_ids[video_index]
        start, end = self.video_bounds[video_index]
        path = None
        try:
            path = str(self.video_files(video_id))
            return self.frame_loader(path, start, end)
        except VideoReadError as err:
            if not self.skip_bad_videos:
                raise
            # the resolver's error carries the preferred path; a loader's may carry its own
            return SkippedVideo(video_id, err.path or path, err.reason or str(err))

    def __getitem__(self, index: int) -> RetrievalItem | SkippedVideo:
        video_index = self.caption_to_video[index]
        loaded = self.load_video(video_index)
        if isinstance(loaded, SkippedVideo):
            return loaded
        return RetrievalItem(*self.encode_text(index), *loaded, index, video_index)

    def captions(self) -> CaptionView:
        """A Dataset over the captions (no video decoding), in caption-index order."""
        return CaptionView(self)

    def videos(self) -> VideoView:
        """A Dataset over the unique videos, each decoded once, in ``video_ids`` order."""
        return VideoView(self)


class CaptionView(Dataset):
    """The captions of a :class:`RetrievalDataset`; items are :class:`CaptionItem`."""

    def __init__(self, dataset: RetrievalDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.pairs)

    def __getitem__(self, index: int) -> CaptionItem:
        return CaptionItem(*self.dataset.encode_text(index), index)


class VideoView(Dataset):
    """The unique videos of a :class:`RetrievalDataset`; items are :class:`VideoItem` (or
    :class:`SkippedVideo` markers under ``skip_bad_videos``)."""

    def __init__(self, dataset: RetrievalDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.video_ids)

    def __getitem__(self, video_index: int) -> VideoItem | SkippedVideo:
        loaded = self.dataset.load_video(video_index)
        if isinstance(loaded, SkippedVideo):
            return loaded
        return VideoItem(*loaded, video_index)


def build_dataset(datatype: str, split: str, anno_path: str | Path, video_path: str | Path,
                  tokenizer: CaptionTokenizer, frame_loader: FrameLoader, max_words: int,
                  skip_bad_videos: bool = False) -> RetrievalDataset:
    """The ``split`` (train, val, test) of ``datatype`` as a :class:`RetrievalDataset`.

    Annotations are read (and checked) here; videos are read lazily, per item, by
    ``frame_loader`` (the caller picks the train or eval transform and the frame count).
    """
    if datatype not in DATASETS:
        raise ValueError(f"unknown datatype {datatype!r}; choose from {sorted(DATASETS)}")
    fmt = DATASETS[datatype]
    return RetrievalDataset(fmt.load(split, Path(anno_path)),
                            VideoFiles(video_path, fmt.video_names), tokenizer, frame_loader,
                            max_words, skip_bad_videos, name=f"{datatype}/{split}")
