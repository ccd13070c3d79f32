"""The data layer's configurations: which dataset, where, how its videos are read and fed, and
how a frame cache stores them. No torch: main_retrieval.py's flags are declared from them."""
from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, field, fields
from typing import Optional

from tvr.data.datasets.registry import DATASETS
from tvr.data.video import VIDEO_BACKENDS
from tvr.settings import FRACTION, POSITIVE, check_settings, integer, setting

MAX_FRAMES = 1024  # frames per video: more is a typo (the paragraph recipes use 64)
MAX_WORKERS = 256  # loader processes per rank: more is a typo, not a machine
FORMATS = ("jpeg", "raw")  # how a frame cache (tvr/data/frame_cache.py) stores frames


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
    noisy_pairs: float = setting(
        0.0, "fraction of TRAINING captions re-assigned to a random other training video (seeded "
             "by --seed), to test robustness to noisy supervision; validation and test are "
             "untouched (tvr/data/noise.py)", FRACTION)
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


@dataclass(frozen=True)
class CacheParams:
    """What the frames of a frame cache (tvr/data/frame_cache.py) depend on: the ``sampling``,
    which must be the run's, and how the frames are stored."""

    sampling: SamplingConfig
    short_side: int = setting(224, "frames are shrunk (never enlarged) to this short side in px",
                              integer(1, 4096))
    format: str = setting("jpeg", "how frames are stored: JPEG (4:4:4) or raw RGB (exact, about "
                                  "5x larger)", choices=FORMATS)
    quality: int = setting(95, "JPEG quality", integer(1, 100))

    def __post_init__(self) -> None:
        check_settings(self)

    def mismatch(self, wanted: SamplingConfig) -> list[str]:
        """``--flag cache-value (this run: wanted)`` for every sampling setting that differs."""
        names = [f.name for f in fields(SamplingConfig)]
        return [f"--{name} {ours} (this run: {theirs})" for name, ours, theirs
                in zip(names, astuple(self.sampling), astuple(wanted)) if ours != theirs]

    def record(self) -> dict[str, object]:
        """The parameters as ``frame_cache.json`` holds them: one flat object, the frame rate a
        float."""
        sampling = asdict(self.sampling)
        sampling["video_framerate"] = float(sampling["video_framerate"])
        return {**sampling, "short_side": self.short_side, "format": self.format,
                "quality": self.quality}

    @classmethod
    def from_record(cls, record: dict[str, object]) -> CacheParams:
        """The parameters of a :meth:`record` (``KeyError`` for a missing one)."""
        sampling = SamplingConfig(**{f.name: record[f.name] for f in fields(SamplingConfig)})
        return cls(sampling, **{f.name: record[f.name] for f in fields(cls)[1:]})
