"""ActivityNet Captions paragraph retrieval (docs/behaviour.md §4), format of the reference
``dataloader_activitynet_retrieval.py`` (CLIP4Clip, EMCL).

Files in ``anno_path``:

- ``train_ids.json`` / ``val_ids.json``: a JSON list of video ids (``"v_QOlSCBRmfWY"``), unique;
- ``train.json`` / ``val_1.json``: ``{video_id: {"duration": seconds, "timestamps": [[s, e],
  ...], "sentences": [...]}}``.

The reference has train and val only; val (``val_1``) also serves as the test split. Each
video is ONE caption: its sentences, stripped and joined with a space in order (paragraph
retrieval), over the whole video: start 0, end ``ceil(duration)`` as in the reference (the
per-sentence timestamps are not used). The usual setting is 64 words and 64 frames, chosen by
the caller (``max_words``, the frame loader). Every listed video must have captions; in val/test
every captioned video must be listed (:func:`~tvr.data.datasets.annotations.check_listed`).

Video files are named after the id, ``v_`` included: ``<video_path>/<id>.mp4``
(``preprocess/compress_video.py`` output), else the raw ``.mkv`` / ``.webm`` downloads.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from tvr.data.datasets.annotations import (AnnotationError, Annotations, Pair, annotation_file,
                                           caption_text, check_listed, check_video_id, read_json,
                                           required, split_file)

ID_LISTS = {"train": "train_ids.json", "val": "val_ids.json", "test": "val_ids.json"}
CAPTIONS = {"train": "train.json", "val": "val_1.json", "test": "val_1.json"}


def video_names(video_id: str) -> list[str]:
    """Accepted file names of an ActivityNet video, preferred first."""
    return [f"{video_id}.mp4", f"{video_id}.mkv", f"{video_id}.webm"]


def load(split: str, anno_path: Path) -> Annotations:
    """One paragraph pair per video of ``split`` (train, val or test = val)."""
    list_path = annotation_file(anno_path, split_file("activitynet", split, ID_LISTS))
    caption_path = annotation_file(anno_path, CAPTIONS[split])
    listed = _read_ids(list_path)
    videos = read_json(caption_path)
    if not isinstance(videos, dict):
        raise AnnotationError(caption_path, "expected an object video_id -> annotation, got "
                                            f"{type(videos).__name__}")
    check_listed(split, listed, videos, list_path, caption_path)
    pairs = []
    for video_id in listed:
        sentences = required(videos[video_id], "sentences", caption_path, video_id)
        duration = required(videos[video_id], "duration", caption_path, video_id)
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise AnnotationError(caption_path, "'sentences' must be a list of strings",
                                  key=video_id)
        paragraph = " ".join(s.strip() for s in sentences if s.strip())
        pairs.append(Pair(caption_text(paragraph, caption_path, key=video_id), video_id,
                          0.0, _end(duration, caption_path, video_id)))
    return Annotations(pairs, listed)


def _end(duration: Any, path: Path, video_id: str) -> float:
    """``ceil(duration)``, as the reference; ``duration`` must be a positive, finite number."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) \
            or not 0 < duration <= sys.float_info.max:
        raise AnnotationError(path, f"'duration' must be a positive number of seconds, got "
                                    f"{duration!r}", key=video_id)
    return float(math.ceil(duration))


def _read_ids(path: Path) -> list[str]:
    ids = read_json(path)
    if not isinstance(ids, list):
        raise AnnotationError(path, f"expected a list of video ids, got {type(ids).__name__}")
    seen: dict[str, int] = {}
    for i, video_id in enumerate(ids):
        check_video_id(video_id, video_names, path, key=f"[{i}]")
        if video_id in seen:
            raise AnnotationError(path, f"duplicate video id {video_id!r} (first at "
                                        f"[{seen[video_id]}])", key=f"[{i}]")
        seen[video_id] = i
    return ids
