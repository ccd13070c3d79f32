"""Check a dataset folder before any GPU is used: ``bash scripts/check_data.sh DATA [--datatype X]``.

``DATA`` is laid out as the train and eval scripts expect it: ``DATA/anns`` holds the dataset's
annotation files, ``DATA/videos`` its videos. Every split is read as a run would read it (no
video is decoded); a missing or malformed annotation file is named with where the dataset
publishes it, and each split's videos are looked up by name, the missing ones counted and the
first few listed. Exit status 0 when everything a run needs is there, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from tvr.data.datasets.annotations import AnnotationError
from tvr.data.datasets.registry import DATASETS

SPLITS = ("train", "val", "test")
SOURCES = {  # where each dataset's annotation files and videos are published
    "msrvtt": "the annotation files (MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv, "
              "MSRVTT_data.json) are in msrvtt_data.zip of CLIP4Clip's release v0.0 "
              "(github.com/ArrowLuo/CLIP4Clip); the videos in MSRVTT.zip of Frozen in Time "
              "(github.com/m-bain/frozen-in-time)",
    "msvd": "the annotation files (raw-captions.pkl and the split lists) are in msvd_data.zip of "
            "CLIP4Clip's release v0.0 (github.com/ArrowLuo/CLIP4Clip); the videos "
            "(YouTubeClips) on the MSVD page of UT Austin's video description project",
    "lsmdc": "the annotation files and videos come from MPII's LSMDC download page, after "
             "permission",
    "activitynet": "the captions (train.json, val_1.json) are ActivityNet Captions' (Stanford's "
                   "dense video captioning page); the videos from activity-net.org's download "
                   "page",
    "didemo": "the annotation files (train_data.json, val_data.json, test_data.json) and the "
              "videos are published with github.com/LisaAnne/LocalizingMoments",
}
SHOWN = 3  # missing videos listed per split


def check_split(datatype: str, split: str, anns: Path, videos: Path) -> list[str]:
    """The problems of one split: its annotations, then its video files."""
    from tvr.data.datasets.base import VideoFiles  # imports torch: not for --help
    try:
        annotations = DATASETS[datatype].load(split, anns)
    except AnnotationError as error:
        where = f" ({SOURCES[datatype]})" if "annotation file not found" in str(error) else ""
        return [f"{split}: {error}{where}"]
    files = VideoFiles(videos, DATASETS[datatype].video_names)
    ids = list(dict.fromkeys(pair.video_id for pair in annotations.pairs))
    missing = [video_id for video_id in ids
               if not any(path.is_file() for path in files.candidates(video_id))]
    print(f"{split}: {len(annotations.pairs)} captions of {len(ids)} videos, "
          f"{len(ids) - len(missing)} found in {videos}")
    if not missing:
        return []
    return [f"{split}: {len(missing)} of {len(ids)} videos are missing from {videos}, e.g. "
            f"{', '.join(str(files.candidates(v)[0]) for v in missing[:SHOWN])} "
            f"({SOURCES[datatype]})"]


def check_data(datatype: str, root: Path) -> list[str]:
    """Every problem a run on ``root`` would meet before its first step."""
    anns, videos = root / "anns", root / "videos"
    missing = [f"{folder} is not a folder: DATA must hold anns/ (annotation files) and "
               f"videos/ ({SOURCES[datatype]})" for folder in (anns, videos)
               if not folder.is_dir()]
    if missing:
        return missing
    return [problem for split in SPLITS for problem in check_split(datatype, split, anns,
                                                                    videos)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="check_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the dataset folder, holding anns/ and videos/")
    parser.add_argument("--datatype", default="msrvtt", choices=sorted(DATASETS),
                        help="the dataset's format (default: msrvtt)")
    args = parser.parse_args(argv)
    root = Path(args.data).resolve()
    problems = check_data(args.datatype, root)
    for problem in problems:
        print(f"check_data: {problem}", file=sys.stderr)
    if not problems:
        print(f"{root}: every {args.datatype} split and its videos are there")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
