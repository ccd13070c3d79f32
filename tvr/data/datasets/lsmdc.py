r"""LSMDC (docs/behaviour.md §4), format of the reference ``dataloader_lsmdc_retrieval.py``
(CLIP4Clip, EMCL).

Files in ``anno_path`` (train, val, test): ``LSMDC16_annos_training.csv``,
``LSMDC16_annos_val.csv``, ``LSMDC16_challenge_1000_publictect.csv``. Despite the name they
are tab-separated without a header, six fields a line::

    <CLIP_ID>\t<START_ALIGNED>\t<END_ALIGNED>\t<START_EXTRACTED>\t<END_EXTRACTED>\t<SENTENCE>

A clip id may carry several sentences (training); the public test has one sentence a clip.
The four times locate the clip inside its movie (``00.23.28.872``); the clip files are already
cut, so the whole clip is used and the times are not read (as in the reference). The reference
drops three clips whose videos are broken (:data:`EXCLUDED_CLIPS`); so does this loader.

Clip files: ``<video_path>/<clip_id>.mp4`` (``preprocess/compress_video.py`` output), else the
raw ``.avi``; both also in a per-movie folder, ``<video_path>/<movie>/<clip_id>.<ext>`` with
``<movie>`` the clip id up to its last ``_`` (``0017_Pianist``), the layout of the LSMDC
download. (The reference walks ``video_path`` and matches file names without extension.)
"""
from __future__ import annotations

from pathlib import Path

from tvr.data.datasets.annotations import (AnnotationError, Annotations, Pair, annotation_file,
                                           caption_text, check_video_id, split_file, text_file)

FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
         "test": "LSMDC16_challenge_1000_publictect.csv"}
FIELDS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted",
          "sentence")
EXCLUDED_CLIPS = frozenset({"0017_Pianist_00.23.28.872-00.23.34.843",
                            "0017_Pianist_00.30.36.767-00.30.38.009",
                            "3064_SPARKLE_2012_01.41.07.000-01.41.11.793"})


def video_names(video_id: str) -> list[str]:
    """Accepted file names of an LSMDC clip, preferred first."""
    movie = video_id.rsplit("_", 1)[0]
    return [f"{video_id}.mp4", f"{video_id}.avi", f"{movie}/{video_id}.mp4",
            f"{movie}/{video_id}.avi"]


def load(split: str, anno_path: Path) -> Annotations:
    """The caption pairs and clips of ``split`` (train, val or test)."""
    path = annotation_file(anno_path, split_file("lsmdc", split, FILES))
    pairs = []
    with text_file(path) as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(FIELDS):
                raise AnnotationError(path, f"expected {len(FIELDS)} tab-separated fields "
                                            f"({', '.join(FIELDS)}), found {len(fields)}",
                                      line=line_no)
            clip_id = check_video_id(fields[0].strip(), video_names, path, line=line_no)
            sentence = caption_text(fields[-1], path, line=line_no)
            if clip_id not in EXCLUDED_CLIPS:
                pairs.append(Pair(sentence, clip_id))
    return Annotations(pairs, list(dict.fromkeys(pair.video_id for pair in pairs)))
