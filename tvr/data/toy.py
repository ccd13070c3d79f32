"""A synthetic text-video dataset in MSR-VTT format, for the CPU demo and the tests.

Each video shows a coloured shape (circle, triangle or bar; ten named colours) on a dark
background, moving in a straight line to the left, right, up or down, and each caption says
exactly that, in one of many wordings (tvr/data/toy_language.py: "a crimson disc moves west",
"the lime bar is rising", "a video of a yellow wedge sliding to the left"). A leftward path
is the time reversal of a rightward one with the same distribution of positions (likewise
up/down), so a model that averages its frames can tell colour, shape and the axis of motion,
but not left from right or up from down: only a model that uses frame order can. With
``two_object_prob`` > 0 some videos show two objects, which never overlap and have different
colours ("the blue bar slides up and a white triangle is falling"). What a video shows and how it
is drawn lives in tvr/data/toy_scene.py; with a ``variation``
(:class:`~tvr.data.toy_scene.ToyVariation`) each object's size, speed and start point are drawn
from its ranges, for galleries less uniform than the demo's data (bench/bench_toy_containment.py).

The defaults are chosen so that the CPU demo's tiny CLIP, trained from scratch for a few
minutes, can learn every attribute: a bar rather than a square, which at the model's 32-pixel
input looks like a circle of the same width, and one object per video unless
``two_object_prob`` says otherwise, as a one-object caption tends to retrieve a two-object
video that contains its object (measurements: docs/demo.md §1).

:func:`make_toy_dataset` writes, under ``root``::

    MSRVTT_train.9k.csv         video_id of the training videos
    MSRVTT_JSFUSION_val.csv     key,vid_key,video_id,sentence: one caption per validation video
                                (only with num_val > 0; else the val split is the test split)
    MSRVTT_JSFUSION_test.csv    the same, one caption per test video
    MSRVTT_data.json            {"sentences": [{video_id, caption, sen_id}], "videos": [...]}
    paraphrase/MSRVTT_JSFUSION_test.csv   the test videos in caption forms held out of training
    plain/MSRVTT_JSFUSION_test.csv        the test videos in plain words ("red circle left")
    videos/<video_id>.mp4       H.264 (libx264, yuv420p), size x size, fps, num_frames frames
    toy_manifest.json           parameters and file sizes: written last, marks a complete set

Each of ``paraphrase/`` and ``plain/`` is an annotation folder of its own for a test run
(``--anno_path data/toy/paraphrase --video_path data/toy/videos``). Training videos get
``captions_per_video`` distinct captions; every validation and test video has one caption,
and within each of the two splits every video has a content (its set of colour, shape,
direction) no other has, so text-to-video R@1 can reach 1 and chance is exactly 1 / num_test
(:attr:`ToyDataset.chance_t2v_r1`, also in the manifest). There are 10 x 3 x 4 = 120
single-object contents, so the 100 test videos of the defaults cover most of them: the right
video is found only with colour, shape and direction all right. Video ids are ``video0`` ...
for training, then validation, then test. Everything is a function of the parameters and the
seed: the same call gives identical files (with the same ffmpeg binary). The defaults are 300
train, 100 validation and 100 test videos, 64 x 64, 12 frames at 3 fps; generating them takes
seconds (docs/demo.md §1).
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from tvr.data.toy_language import HELD_OUT_FORMS, TRAIN_FORMS, caption, plain_caption
from tvr.data.toy_scene import MovingShape, Scene, ToyVariation, render, sample_objects

MANIFEST = "toy_manifest.json"
ANNOTATIONS = ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_val.csv", "MSRVTT_JSFUSION_test.csv",
               "MSRVTT_data.json")
# test splits of the test videos in other words, each an annotation folder of its own
PHRASINGS = {"paraphrase": "held-out caption forms", "plain": "plain words"}
# Raised whenever the same parameters would draw different videos or captions, so that a set
# written by an older version of this module is regenerated rather than silently reused.
GENERATOR_VERSION = 7


@dataclass(frozen=True)
class ToyDataset:
    """Where a toy dataset lives and its sizes; ``created`` is False when it was already there."""

    root: Path
    video_path: Path
    num_train: int
    num_val: int
    num_test: int
    created: bool

    @property
    def chance_t2v_r1(self) -> float:
        """Text-to-video R@1 of a random ranking on the test split: 1 / num_test."""
        return 1.0 / self.num_test


def describe(rng: np.random.Generator, objects: list[MovingShape],
             forms: tuple[str, ...] = TRAIN_FORMS) -> str:
    """A caption of ``objects`` in one of ``forms`` (two objects: two clauses joined by
    "and")."""
    return " and ".join(caption(rng, o.colour, o.shape, o.direction, forms) for o in objects)


def _train_captions(rng: np.random.Generator, objects: list[MovingShape], count: int
                    ) -> list[str]:
    """``count`` different captions of ``objects`` (fewer if the wordings run out)."""
    captions: dict[str, None] = {}
    for _ in range(50 * count):
        captions[describe(rng, objects)] = None
        if len(captions) == count:
            break
    return list(captions)


@dataclass
class _Splits:
    """What :func:`_sample_videos` draws: (video_id, objects) of every video, the training
    captions, and (video_id, caption) of each evaluation split."""

    videos: list[tuple[str, list[MovingShape]]]
    train: list[tuple[str, list[str]]]
    val: list[tuple[str, str]]
    test: dict[str, list[tuple[str, str]]]  # "test" and the PHRASINGS


def _distinct(rng: np.random.Generator, seen: set, scene: Scene, count: int
              ) -> list[MovingShape]:
    """Objects whose content (set of colour, shape, direction) is not in ``seen`` (added)."""
    for _ in range(10_000):
        objects = sample_objects(rng, scene)
        content = frozenset((o.colour, o.shape, o.direction) for o in objects)
        if content not in seen:
            seen.add(content)
            return objects
    raise ValueError(f"cannot find {count} evaluation videos with distinct contents")


def _sample_videos(rng: np.random.Generator, num_train: int, num_val: int, num_test: int,
                   captions_per_video: int, scene: Scene) -> _Splits:
    """The videos and captions of every split: training videos first, then validation, then
    test; within the validation split and within the test split contents all differ."""
    splits = _Splits([], [], [], {"test": [], **{name: [] for name in PHRASINGS}})
    seen_val: set = set()
    seen_test: set = set()
    for i in range(num_train + num_val + num_test):
        vid = f"video{i}"
        if i < num_train:
            objects = sample_objects(rng, scene)
            splits.train.append((vid, _train_captions(rng, objects, captions_per_video)))
        elif i < num_train + num_val:
            objects = _distinct(rng, seen_val, scene, num_val)
            splits.val.append((vid, describe(rng, objects)))
        else:
            objects = _distinct(rng, seen_test, scene, num_test)
            splits.test["test"].append((vid, describe(rng, objects)))
            splits.test["paraphrase"].append((vid, describe(rng, objects, HELD_OUT_FORMS)))
            splits.test["plain"].append(
                (vid, " and ".join(plain_caption(o.colour, o.shape, o.direction)
                                   for o in objects)))
        splits.videos.append((vid, objects))
    return splits


def find_ffmpeg(explicit: str | None = None) -> str:
    """The ffmpeg binary: ``explicit``, else ``ffmpeg`` on the PATH, else imageio-ffmpeg's."""
    found = shutil.which(explicit or "ffmpeg")
    if found is not None:
        return found
    if explicit is not None:
        raise FileNotFoundError(f"ffmpeg binary not found: {explicit}")
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as err:
        raise FileNotFoundError("the toy dataset needs an ffmpeg binary with libx264: put ffmpeg "
                                f"on the PATH or pip install imageio-ffmpeg ({err})") from err


def write_mp4(frames: np.ndarray, path: Path, fps: int, ffmpeg: str) -> None:
    """Encode RGB ``frames`` (T x H x W x 3 uint8) to an H.264 mp4, bit-exact and reproducible."""
    _, height, width, _ = frames.shape
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-framerate", str(fps), "-i", "-", "-c:v", "libx264", "-crf", "18",
               "-pix_fmt", "yuv420p", "-threads", "1", "-map_metadata", "-1",
               "-fflags", "+bitexact", "-flags:v", "+bitexact", "-f", "mp4", str(path)]
    proc = subprocess.run(command, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{ffmpeg} failed to write {path} (exit status {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")


def _write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    """(video_id, caption) pairs as an MSR-VTT test file (key,vid_key,video_id,sentence)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        rows = [[f"ret{i}", f"msr{vid[len('video'):]}", vid, caption]
                for i, (vid, caption) in enumerate(pairs)]
        csv.writer(f).writerows([["key", "vid_key", "video_id", "sentence"]] + rows)


def _write_annotations(root: Path, splits: _Splits) -> list[str]:
    """The MSR-VTT annotation files of ``splits``, and a folder per test phrasing; returns the
    files written, relative to ``root``."""
    train_list, val_file, test_file, data_file = ANNOTATIONS
    with open(root / train_list, "w", newline="") as f:
        csv.writer(f).writerows([["video_id"]] + [[vid] for vid, _ in splits.train])
    if splits.val:  # else the val split is the test split, as MSR-VTT's
        _write_pairs(root / val_file, splits.val)
    _write_pairs(root / test_file, splits.test["test"])
    for name in PHRASINGS:
        _write_pairs(root / name / test_file, splits.test[name])
    pairs = ([(vid, c) for vid, captions in splits.train for c in captions] + splits.val
             + splits.test["test"])
    parts = (("train", [v for v, _ in splits.train]), ("val", [v for v, _ in splits.val]),
             ("test", [v for v, _ in splits.test["test"]]))
    data = {"videos": [{"video_id": vid, "split": split, "id": int(vid[len("video"):])}
                       for split, ids in parts for vid in ids],
            "sentences": [{"video_id": vid, "caption": c, "sen_id": i}
                          for i, (vid, c) in enumerate(pairs)]}
    (root / data_file).write_text(json.dumps(data, indent=1))
    return ([name for name in ANNOTATIONS if name != val_file or splits.val]
            + [f"{name}/{test_file}" for name in PHRASINGS])


def _complete(root: Path, manifest: dict) -> bool:
    """True when every file the manifest lists is there with its recorded size."""
    return all((root / rel).is_file() and (root / rel).stat().st_size == size
               for rel, size in manifest["files"].items())


def _reuse_or_clear(root: Path, params: dict) -> bool:
    """True when ``root`` holds a complete set made with ``params``; else delete the files of
    the set there (if any) and return False. A folder of MSR-VTT annotation files without a toy
    manifest is refused (ValueError)."""
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old["params"] == params and _complete(root, old):
            return True
        manifest_path.unlink()
        for rel in old["files"]:
            (root / rel).unlink(missing_ok=True)
    elif any((root / name).exists() for name in ANNOTATIONS):
        raise ValueError(f"{root} holds MSR-VTT annotations but no {MANIFEST}: not a toy "
                         "dataset folder, refusing to overwrite it")
    return False


def make_toy_dataset(root: str | Path, seed: int = 0, num_train: int = 300, num_val: int = 100,
                     num_test: int = 100, captions_per_video: int = 5, size: int = 64,
                     num_frames: int = 12, fps: int = 3, two_object_prob: float = 0.0,
                     ffmpeg: str | None = None, workers: int = 4,
                     variation: ToyVariation | None = None) -> ToyDataset:
    """Write the toy dataset under ``root`` (see the module doc) unless it is already there.

    Nothing is written when ``root`` holds a complete set made with the same parameters by the
    same :data:`GENERATOR_VERSION`. A set made with other parameters or an older generator is
    replaced; a folder holding MSR-VTT annotation files without a toy manifest is refused
    (ValueError) rather than overwritten. ``ffmpeg`` as in
    :func:`find_ffmpeg`; ``workers`` ffmpeg processes encode in parallel. ``variation`` draws
    each object's size, speed and start point from its ranges (:class:`ToyVariation`; the
    manifest's parameters then record them); None (the default) draws the default paths, and
    the set is the same, file for file, as before the option existed.
    """
    if min(num_train, num_test, captions_per_video, fps) < 1 or num_val < 0 or num_frames < 2 \
            or size < 32:
        raise ValueError("need num_train, num_test, captions_per_video, fps >= 1, num_val >= 0, "
                         "num_frames >= 2 and size >= 32")
    if not 0.0 <= two_object_prob <= 1.0:
        raise ValueError(f"two_object_prob must be in [0, 1], got {two_object_prob}")
    if variation is not None:
        variation.check(size)
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "seed": seed, "num_train": num_train,
              "num_val": num_val, "num_test": num_test, "captions_per_video": captions_per_video,
              "size": size, "num_frames": num_frames, "fps": fps,
              "two_object_prob": two_object_prob}
    if variation is not None:  # as lists, as they read back from the manifest's JSON
        params["variation"] = {name: list(span) for name, span in asdict(variation).items()}
    result = ToyDataset(root, root / "videos", num_train, num_val, num_test, created=True)
    if _reuse_or_clear(root, params):
        return replace(result, created=False)
    splits = _sample_videos(np.random.default_rng(seed), num_train, num_val, num_test,
                            captions_per_video,
                            Scene(size, num_frames, two_object_prob, variation))
    exe = find_ffmpeg(ffmpeg)
    result.video_path.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda item: write_mp4(render(item[1], size, num_frames),
                                             result.video_path / f"{item[0]}.mp4", fps, exe),
                      splits.videos))
    files = [f"videos/{vid}.mp4" for vid, _ in splits.videos] + _write_annotations(root, splits)
    manifest = {"params": params, "chance_t2v_r1": result.chance_t2v_r1,
                "files": {rel: (root / rel).stat().st_size for rel in files}}
    tmp = root / f".{MANIFEST}.part"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(root / MANIFEST)
    return result
