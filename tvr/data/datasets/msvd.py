"""MSVD (docs/behaviour.md §4), format of the reference ``dataloader_msvd_retrieval.py``
(CLIP4Clip, EMCL).

Files in ``anno_path``:

- ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``: one video id per line (unique;
  blank lines ignored), e.g. ``-4wsuPCjDBc_5_15``;
- ``raw-captions.pkl``: a pickled dict ``video_id -> list of captions``, each caption a list of
  word tokens (joined with spaces here, as the reference does).

Every caption of every listed video is a pair, in every split; the test split is therefore
multi-sentence (about 40 captions per video). Every listed video must have captions.

The reference finds videos by walking ``video_path`` and matching the file name without its
extension, whatever the extension; the raw MSVD clips (``YouTubeClips``) are ``.avi`` and
``preprocess/compress_video.py`` writes ``.mp4``. Here ``<video_path>/<id>.mp4`` is tried
first, then ``<video_path>/<id>.avi``.
"""
from __future__ import annotations

from pathlib import Path

from tvr.data.datasets.annotations import (AnnotationError, Annotations, Pair, annotation_file,
                                           caption_text, check_video_id, read_id_list, read_pickle,
                                           split_file)

LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
CAPTIONS = "raw-captions.pkl"


def video_names(video_id: str) -> list[str]:
    """Accepted file names of an MSVD video, preferred first."""
    return [f"{video_id}.mp4", f"{video_id}.avi"]


def load(split: str, anno_path: Path) -> Annotations:
    """The caption pairs and videos of ``split`` (train, val or test)."""
    list_path = annotation_file(anno_path, split_file("msvd", split, LISTS))
    listed = read_id_list(list_path)
    caption_path = annotation_file(anno_path, CAPTIONS)
    captions = read_pickle(caption_path)
    if not isinstance(captions, dict):
        raise AnnotationError(caption_path, "expected a dict video_id -> list of captions, got "
                                            f"{type(captions).__name__}")
    pairs = []
    for line, video_id in listed:
        check_video_id(video_id, video_names, list_path, line=line)
        if video_id not in captions:
            raise AnnotationError(caption_path, f"no captions for video {video_id!r} "
                                                f"({list_path.name} line {line})", key=video_id)
        if not isinstance(captions[video_id], list) or not captions[video_id]:
            raise AnnotationError(caption_path, "expected a non-empty list of captions",
                                  key=video_id)
        for j, tokens in enumerate(captions[video_id]):
            key = f"{video_id!r} caption {j}"
            if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
                raise AnnotationError(caption_path, "a caption must be a list of word tokens",
                                      key=key)
            pairs.append(Pair(caption_text(" ".join(tokens), caption_path, key=key), video_id))
    return Annotations(pairs, [video_id for _, video_id in listed])
