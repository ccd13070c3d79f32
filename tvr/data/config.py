"""The data layer's configurations: which dataset, where, how its videos are read and fed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tvr.data.datasets.registry import DATASETS
from tvr.data.video import VIDEO_BACKENDS
from tvr.settings import POSITIVE, check_settings, integer, setting

MAX_FRAMES = 1024  # frames per video: more is a typo (the paragraph recipes use 64)
MAX_WORKERS = 256  # loader processes per rank: more is a typo, not a machine


@dataclass(frozen=True)
class SamplingConfig:
    """How a video becomes frames: the sampling a model is trained with. A checkpoint records
    it, so the index, the frame cache and feature mode sample as training did."""

    video_framerate: int = setting(1, "frames sampled per second", POSITIVE)
    max_frames: int = setting(12, "frames sampled per video (at most)", integer(1, MAX_FRAMES))
    video_backend: str = setting("opencv", "video decoder", choices=tuple(VIDEO_BACKENDS))

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class DataConfig:
    """The dataset, its files and the loaders that feed it."""

    datatype: str = setting("msrvtt", "dataset (also picks dataset-specific defaults)",
                            choices=tuple(DATASETS))
    anno_path: Optional[str] = setting(
        None, "annotation folder; without it the main job runs the built-in demo", kind=str)
    video_path: Optional[str] = setting(None, "video folder", kind=str)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train_augment: str = setting(
        "randaugment", "training frame augmentation: the reference's RandAugment with one draw "
                       "per video clip, or none", choices=("randaugment", "none"))
    augment_per: str = setting(
        "caption", "training augmentation seeded per caption (seed, epoch, caption index: the "
                   "default) or per video (seed, epoch, video index: all captions of a video "
                   "share the epoch's draw, as feature mode's views do)",
        choices=("caption", "video"), group="features")
    skip_bad_videos: bool = setting(
        False, "skip unreadable videos and list them at the end of each epoch (default: stop "
               "with an error naming the file)")
    workers: int = setting(4, "data loading processes per rank", integer(0, MAX_WORKERS))
    frame_cache: Optional[str] = setting(
        None, "read the sampled frames from this cache (written by "
              "preprocess/build_frame_cache.py with the same sampling flags) instead of "
              "decoding the videos", kind=str)
    frame_decode: str = setting(
        "auto", "with --frame_cache: transform the frames in the loader workers, or batched "
                "on the run's device (the workers still decode the JPEGs); auto = device on "
                "CUDA, loader otherwise", choices=("auto", "loader", "device"))

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def augment(self) -> bool:
        """Whether training frames are augmented."""
        return self.train_augment == "randaugment"
