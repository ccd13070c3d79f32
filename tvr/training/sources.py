"""Where a run's tower outputs come from: the seam between the trainer and its data.

A source gives the trainer three things: the training batches of a split
(:meth:`train_loader`), the model's keyword inputs for one such batch (:meth:`inputs`), and
how an evaluation split becomes features (:meth:`encode`, with
:func:`tvr.evaluation.encode.encode_split`'s signature). :class:`VideoSource` decodes videos
and runs the whole model; feature mode (:class:`tvr.training.feature_mode.FeatureMode`) reads
cached outputs of a frozen CLIP. The trainer picks one in a single place and is otherwise the
same for both; a new source (e.g. features computed elsewhere) implements these three.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from torch.utils.data import DataLoader

from tvr.data.datasets import RetrievalDataset
from tvr.data.loaders import ResumableSampler, SeededItems, train_loader
from tvr.evaluation.encode import EncodedSplit, encode_split
from tvr.models.gare import GARE
from tvr.training.config import RunConfig
from tvr.training.optim import freeze_clip_towers


class TowerSource(Protocol):
    """What the trainer needs of a source (module docstring)."""

    encode: Callable[..., EncodedSplit]

    def train_loader(self, dataset: RetrievalDataset, rank: int, world_size: int,
                     local_batch: int) -> tuple[Any, ResumableSampler, Any]:
        """(batches, their sampler, the per-epoch items whose ``.epoch`` the trainer sets)."""

    def inputs(self, data: Any) -> dict[str, Any]:
        """The model's keyword arguments for one batch's data (already on the device)."""


class VideoSource:
    """Frames decoded from the videos (or a frame cache), through the whole model. With
    ``--coef_lr 0`` the CLIP towers are frozen: a zero-lr parameter never moves, so this only
    skips their backward (tvr/training/optim.py, freeze_clip_towers)."""

    encode = staticmethod(encode_split)

    def __init__(self, config: RunConfig, model: GARE, log: Callable[[str], None]):
        self.config = config
        if config.train.coef_lr == 0:
            freeze_clip_towers(model)
            log("--coef_lr 0: CLIP's towers are frozen (no backward through them)")

    def train_loader(self, dataset: RetrievalDataset, rank: int, world_size: int,
                     local_batch: int) -> tuple[DataLoader, ResumableSampler, SeededItems]:
        data = self.config.data
        return train_loader(dataset, rank, world_size, local_batch, seed=self.config.train.seed,
                            workers=data.workers, per_video=data.augment_per == "video")

    @staticmethod
    def inputs(data: Any) -> dict[str, Any]:
        return {"text_ids": data.text_ids, "text_mask": data.text_mask, "video": data.video,
                "video_mask": data.video_mask}
