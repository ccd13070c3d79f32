"""DiDeMo paragraph retrieval (docs/behaviour.md §4), format of the reference
``dataloader_didemo_retrieval.py`` (CLIP4Clip, EMCL).

Files in ``anno_path``:

- ``train_data.json`` / ``val_data.json`` / ``test_data.json`` (LocalizingMoments): a JSON list
  of moments ``{"video": id, "description": str, "times": [[s, e], ...], ...}``;
- optionally ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``, one video id per line,
  which select and order the videos as in the reference. Without a list, every video of the
  JSON is used, in order of first appearance.

Each video is ONE caption: the descriptions of its moments, stripped and joined with a space in
JSON order (paragraph retrieval). Start and end are 0 and 31 s for every video, the
reference's choice (the annotators saw at most the first 30 s, in 5 s chunks; moment times are
not used). The usual setting is 64 words and 64 frames, chosen by the caller. With a list,
every listed video must have descriptions; in val/test every described video must be listed
(train drops the others, as the reference does).

Video files: the id may carry the original extension (``...@N00_2479355440_c9d7fcd9a8.mov``);
accepted names are ``<id>.mp4``, ``<id>`` itself and ``<id without extension>.mp4`` (what
``preprocess/compress_video.py`` makes of a raw ``<id>``).
"""
from __future__ import annotations

from pathlib import Path

from tvr.data.datasets.annotations import (AnnotationError, Annotations, Pair, annotation_file,
                                           caption_text, check_listed, check_video_id, read_id_list,
                                           read_json, required, split_file)

MOMENTS = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
CLIP_BOUNDS = (0.0, 31.0)


def video_names(video_id: str) -> list[str]:
    """Accepted file names of a DiDeMo video, preferred first."""
    return [f"{video_id}.mp4", video_id, f"{Path(video_id).stem}.mp4"]


def load(split: str, anno_path: Path) -> Annotations:
    """One paragraph pair per video of ``split`` (train, val or test)."""
    json_path = annotation_file(anno_path, split_file("didemo", split, MOMENTS))
    moments = read_json(json_path)
    if not isinstance(moments, list):
        raise AnnotationError(json_path, f"expected a list of moments, got "
                                         f"{type(moments).__name__}")
    descriptions: dict[str, list[str]] = {}
    for i, moment in enumerate(moments):
        key = f"[{i}]"
        video_id = check_video_id(required(moment, "video", json_path, key), video_names,
                                  json_path, key=key)
        text = caption_text(required(moment, "description", json_path, key), json_path, key=key)
        descriptions.setdefault(video_id, []).append(text)

    list_path = Path(anno_path) / LISTS[split]
    if list_path.is_file():
        video_ids = [video_id for _, video_id in read_id_list(list_path)]
        check_listed(split, video_ids, descriptions, list_path, json_path)
    else:
        video_ids = list(descriptions)
    pairs = [Pair(" ".join(descriptions[v]), v, *CLIP_BOUNDS) for v in video_ids]
    return Annotations(pairs, video_ids)
