"""MSR-VTT (docs/behaviour.md §4), the 9k-train / 1k-A split of the CLIP4Clip family.

Files in ``anno_path`` (format of the reference ``dataloader_msrvtt_retrieval.py``):

- ``MSRVTT_train.9k.csv``: column ``video_id``, the 9,000 training videos (unique);
- ``MSRVTT_data.json``: ``{"sentences": [{"video_id", "caption", "sen_id"}, ...], ...}``, the
  captions of all 10,000 videos; train = every caption of the listed videos (about 180k pairs,
  in the JSON's order), and every listed video must have at least one;
- ``MSRVTT_JSFUSION_test.csv``: columns ``key, vid_key, video_id, sentence``; the 1,000 pairs
  of "1k-A" (``key`` unique), the test split, and the val split too, as in the reference;
- ``MSRVTT_JSFUSION_val.csv`` (optional, same columns): a validation split of its own, used
  instead of the test pairs when the folder has it (the built-in demo's data does, so that its
  best checkpoint is not chosen on its test split).

Videos are ``<video_path>/<video_id>.mp4``; whole videos (no timestamps).
"""
from __future__ import annotations

from pathlib import Path

from tvr.data.datasets.annotations import (AnnotationError, Annotations, Pair, annotation_file,
                                           caption_text, check_video_id, read_csv, read_json,
                                           required, split_file)

TRAIN_LIST = "MSRVTT_train.9k.csv"
TEST_PAIRS = "MSRVTT_JSFUSION_test.csv"
VAL_PAIRS = "MSRVTT_JSFUSION_val.csv"
SENTENCES = "MSRVTT_data.json"


def video_names(video_id: str) -> list[str]:
    """The file name of an MSR-VTT video."""
    return [f"{video_id}.mp4"]


def load(split: str, anno_path: Path) -> Annotations:
    """The caption pairs and videos of ``split`` (train, val or test)."""
    val = VAL_PAIRS if (anno_path / VAL_PAIRS).is_file() else TEST_PAIRS
    name = split_file("msrvtt", split, {"train": TRAIN_LIST, "val": val, "test": TEST_PAIRS})
    path = annotation_file(anno_path, name)
    return _load_train(path, anno_path) if split == "train" else _load_test(path)


def _load_train(list_path: Path, anno_path: Path) -> Annotations:
    listed: dict[str, int] = {}
    for line, row in read_csv(list_path, ["video_id"]):
        video_id = check_video_id(row["video_id"].strip(), video_names, list_path, line=line)
        if video_id in listed:
            raise AnnotationError(list_path, f"duplicate video_id {video_id!r} (first on line "
                                             f"{listed[video_id]})", line=line)
        listed[video_id] = line

    json_path = annotation_file(anno_path, SENTENCES)
    sentences = required(read_json(json_path), "sentences", json_path, "top level")
    if not isinstance(sentences, list):
        raise AnnotationError(json_path, "'sentences' must be a list", key="sentences")
    pairs = []
    for i, item in enumerate(sentences):
        key = f"sentences[{i}]"
        video_id = check_video_id(required(item, "video_id", json_path, key), video_names,
                                  json_path, key=key)
        text = required(item, "caption", json_path, key)
        if video_id in listed:
            pairs.append(Pair(caption_text(text, json_path, key=key), video_id))

    captioned = {pair.video_id for pair in pairs}
    for video_id, line in listed.items():
        if video_id not in captioned:
            raise AnnotationError(json_path, f"no caption for video {video_id!r} "
                                             f"({list_path.name} line {line})", key=video_id)
    return Annotations(pairs, list(listed))


def _load_test(path: Path) -> Annotations:
    keys: dict[str, int] = {}
    pairs = []
    for line, row in read_csv(path, ["key", "video_id", "sentence"]):
        if row["key"] in keys:
            raise AnnotationError(path, f"duplicate key {row['key']!r} (first on line "
                                        f"{keys[row['key']]})", line=line)
        keys[row["key"]] = line
        video_id = check_video_id(row["video_id"].strip(), video_names, path, line=line)
        pairs.append(Pair(caption_text(row["sentence"], path, line=line), video_id))
    return Annotations(pairs, list(dict.fromkeys(pair.video_id for pair in pairs)))
