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
from tvr.data.datasets.annotations import Annotations


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
