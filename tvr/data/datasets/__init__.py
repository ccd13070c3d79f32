"""Text-video retrieval datasets keyed by ``--datatype`` (docs/behaviour.md §4).

``build_dataset(datatype, split, anno_path, video_path, tokenizer, frame_loader, max_words,
skip_bad_videos=False)`` gives a :class:`RetrievalDataset`; see :mod:`.base` for the item
structure and the evaluation views, :mod:`.skipping` for unreadable videos, :mod:`.registry`
for adding a dataset.
"""
from tvr.data.datasets.annotations import AnnotationError
from tvr.data.datasets.base import (Annotations, CaptionItem, Pair, RetrievalDataset,
                                    RetrievalItem, VideoFiles, VideoItem)
from tvr.data.datasets.registry import DATASETS, DatasetFormat, build_dataset
from tvr.data.datasets.skipping import Batch, SkippedVideo, SkipReport, collate_skipping

__all__ = ["AnnotationError", "Annotations", "Batch", "CaptionItem", "DATASETS",
           "DatasetFormat", "Pair", "RetrievalDataset", "RetrievalItem", "SkipReport",
           "SkippedVideo", "VideoFiles", "VideoItem", "build_dataset", "collate_skipping"]
