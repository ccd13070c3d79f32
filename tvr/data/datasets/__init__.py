"""Text-video retrieval datasets keyed by ``--datatype`` (docs/behaviour.md §4).

``build_dataset(datatype, split, anno_path, video_path, tokenizer, frame_loader, max_words,
skip_bad_videos=False)`` gives a :class:`RetrievalDataset`; see :mod:`.base` for the item
structure and the evaluation views, :mod:`.skipping` for unreadable videos, :mod:`.registry`
for adding a dataset.

The names below are imported from their modules when first asked for (the module's
``__getattr__``): the registry and the annotation files' reader import no torch, and the
flags of main_retrieval.py are declared from the registry (tvr/data/config.py).
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # an exported name -> the module of this package that defines it
    "AnnotationError": "annotations", "Annotations": "annotations", "Pair": "annotations",
    "CaptionItem": "base", "RetrievalDataset": "base", "RetrievalItem": "base",
    "VideoFiles": "base", "VideoItem": "base", "build_dataset": "base",
    "DATASETS": "registry", "DatasetFormat": "registry", "Batch": "skipping",
    "SkippedVideo": "skipping", "SkipReport": "skipping", "collate_skipping": "skipping",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
