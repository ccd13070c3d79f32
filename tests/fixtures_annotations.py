"""Writers of small annotation folders in the real formats of each ``--datatype`` (tests only).

Each writer takes plain Python data and writes the files a loader in ``tvr.data.datasets``
reads, exactly as the public releases lay them out (see the loaders' docstrings).
"""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path


def write_msrvtt(root: Path, captions: dict[str, list[str]], train: list[str],
                 test: list[tuple[str, str]]) -> None:
    """``MSRVTT_data.json`` (all ``captions``), ``MSRVTT_train.9k.csv`` (``train`` video ids)
    and ``MSRVTT_JSFUSION_test.csv`` (``test`` = (video_id, sentence) pairs)."""
    root.mkdir(parents=True, exist_ok=True)
    flat = [(v, c) for v, cs in captions.items() for c in cs]
    sentences = [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(flat)]
    videos = [{"video_id": v, "id": i} for i, v in enumerate(captions)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos,
                                                       "sentences": sentences}))
    write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in train])
    write_csv(root / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
              [[f"ret{i}", v.replace("video", "msr"), v, s] for i, (v, s) in enumerate(test)])


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A comma-separated file with ``header``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_msvd(root: Path, captions: dict[str, list[str]], splits: dict[str, list[str]]) -> None:
    """``raw-captions.pkl`` (captions as token lists) and ``<split>_list.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "raw-captions.pkl", "wb") as f:
        pickle.dump({v: [c.split() for c in cs] for v, cs in captions.items()}, f)
    for split, ids in splits.items():
        (root / f"{split}_list.txt").write_text("".join(f"{v}\n" for v in ids))


LSMDC_FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}


def write_lsmdc(root: Path, split: str, pairs: list[tuple[str, str]]) -> None:
    """The tab-separated LSMDC file of ``split`` from (clip_id, sentence) pairs."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{clip}\t00.00.01.000\t00.00.03.000\t00.00.01.100\t00.00.02.900\t{sentence}\n"
             for clip, sentence in pairs]
    (root / LSMDC_FILES[split]).write_text("".join(lines))


def write_activitynet(root: Path, split: str, videos: dict[str, tuple[float, list[str]]],
                      ids: list[str] | None = None) -> None:
    """``train_ids.json``/``train.json`` (split train) or ``val_ids.json``/``val_1.json``;
    ``videos``: id -> (duration, sentences); ``ids`` defaults to the keys of ``videos``."""
    root.mkdir(parents=True, exist_ok=True)
    ids_name, captions_name = (("train_ids.json", "train.json") if split == "train"
                               else ("val_ids.json", "val_1.json"))
    data = {v: {"duration": d, "sentences": s,
                "timestamps": [[i, i + 1.0] for i in range(len(s))]}
            for v, (d, s) in videos.items()}
    (root / captions_name).write_text(json.dumps(data))
    (root / ids_name).write_text(json.dumps(list(videos) if ids is None else ids))


def write_didemo(root: Path, split: str, moments: list[tuple[str, str]],
                 listed: list[str] | None = None) -> None:
    """``<split>_data.json`` from (video, description) moments; ``<split>_list.txt`` when
    ``listed`` is given."""
    root.mkdir(parents=True, exist_ok=True)
    data = [{"video": v, "description": d, "times": [[0, 1], [0, 1], [1, 1], [0, 0]],
             "annotation_id": i} for i, (v, d) in enumerate(moments)]
    (root / f"{split}_data.json").write_text(json.dumps(data))
    if listed is not None:
        (root / f"{split}_list.txt").write_text("".join(f"{v}\n" for v in listed))


def touch_videos(video_dir: Path, names: list[str]) -> None:
    """Empty files standing for videos (the tests' clip loader never opens them)."""
    for name in names:
        path = video_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
