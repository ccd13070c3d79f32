"""``--datatype`` registry: each dataset format is one module with ``load`` and ``video_names``.

Adding a dataset: write ``tvr/data/datasets/<name>.py`` with

- ``load(split: str, anno_path: Path) -> Annotations`` (raise ``AnnotationError`` for a
  malformed file, ``ValueError`` for an unknown split), and
- ``video_names(video_id: str) -> list[str]`` (accepted file names under ``--video_path``,
  preferred first),

and add a line to :data:`DATASETS`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from tvr.data.datasets import activitynet, didemo, lsmdc, msrvtt, msvd
from tvr.data.datasets.base import (Annotations, CaptionTokenizer, FrameLoader,
                                    RetrievalDataset, VideoFiles)


class DatasetFormat(NamedTuple):
    """How one ``--datatype`` reads its annotations and finds its video files."""

    load: Callable[[str, Path], Annotations]
    video_names: Callable[[str], Sequence[str]]


DATASETS: dict[str, DatasetFormat] = {
    "msrvtt": DatasetFormat(msrvtt.load, msrvtt.video_names),
    "msvd": DatasetFormat(msvd.load, msvd.video_names),
    "lsmdc": DatasetFormat(lsmdc.load, lsmdc.video_names),
    "activitynet": DatasetFormat(activitynet.load, activitynet.video_names),
    "didemo": DatasetFormat(didemo.load, didemo.video_names),
}


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
