"""The trainer's own training step, for the benches that time it (bench_model_step.py,
bench_feed.py, bench_train_step.py).

:func:`bench_trainer` builds a real :class:`~tvr.training.trainer.Trainer` from the command
line of main_retrieval.py (``parse_args``, then ``run_config``) with a bench's flags, its log
in a temporary folder, and a model of random weights handed to it (timings do not depend on
them; no CLIP release file is needed). :class:`TrainStep` is one call of
``Trainer.train_step`` with the optimiser and gradient scaler of ``Trainer.optimisation``;
batches reach the device through :class:`~tvr.data.device_loader.DeviceLoader`, as in training.
"""
from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
from functools import partial
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from tvr.cli.flags import run_config
from tvr.cli.retrieval import parse_args
from tvr.data.datasets import Batch, RetrievalItem
from tvr.data.device_loader import DeviceLoader
from tvr.models.config import CLIP_CONFIGS
from tvr.models.factory import create_model
from tvr.training.distributed import gather_rows
from tvr.training.trainer import Trainer

SOT_ID, EOT_ID = 49406, 49407  # CLIP's start and end of text; EOT is the highest id


@contextlib.contextmanager
def bench_trainer(arch: str, device: str, flags: Sequence[str] = (),
                  feature_mode: bool = False) -> Iterator[Trainer]:
    """A Trainer of ``--base_encoder arch --device device`` and main_retrieval.py ``flags``
    (``feature_mode``: with a CLIP-feature store, i.e. feature mode's tower source), with a
    model of random weights, the same for every call (no CLIP release file); its log and store
    go to a temporary folder, removed on exit."""
    with tempfile.TemporaryDirectory() as folder:
        argv = ["--base_encoder", arch, "--device", device, "--anno_path", folder,
                "--video_path", folder, "--output_dir", folder, *flags,
                *(["--clip_features", f"{folder}/features"] if feature_mode else [])]
        config = run_config(parse_args(argv))
        torch.manual_seed(0)
        trainer = Trainer(config, model=create_model(config.model, CLIP_CONFIGS[arch]))
        try:
            yield trainer
        finally:
            trainer.monitor.close()


class TrainStep:
    """``step(data)``: ``Trainer.train_step`` on one batch's data (on the device), with the
    optimiser (its schedule ``steps`` long) and gradient scaler that ``Trainer.train`` builds;
    returns the step's logged values."""

    def __init__(self, trainer: Trainer, steps: int):
        self.trainer = trainer
        self.optimizer, self.scaler = trainer.optimisation(steps)
        trainer.model.train()

    def __call__(self, data: Any) -> dict[str, float]:
        gather = partial(gather_rows, sizes=[len(data[0])])
        return self.trainer.train_step(self.trainer.model, self.optimizer, self.scaler, data,
                                       gather)


def caption(words: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Token ids of a random caption of ``words`` tokens: SOT, random ids, EOT."""
    ids = torch.randint(1, EOT_ID, (words,), generator=generator)
    ids[0], ids[-1] = SOT_ID, EOT_ID
    return ids


def synthetic_pairs(batch: int, frames: int, words: int, image_size: int) -> RetrievalItem:
    """A collated batch on the CPU: ``batch`` random captions of ``words`` tokens and random
    clips of ``frames`` frames of ``image_size`` px, every frame valid; the same every call."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.stack([caption(words, generator) for _ in range(batch)])
    video = torch.randn(batch, frames, 3, image_size, image_size, generator=generator)
    index = torch.arange(batch)
    return RetrievalItem(ids, torch.ones_like(ids), video,
                         torch.ones(batch, frames, dtype=torch.long), index, index)


def resident(data: Any, device: torch.device) -> Any:
    """A batch's ``data`` on ``device`` to keep there, moved (and finished) by a DeviceLoader
    as training moves its batches."""
    return next(iter(DeviceLoader([Batch(data, [])], device))).data


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(steps: Iterable[Any], warmup: int, device: torch.device) -> float:
    """Seconds per item of ``steps`` (an iterable that does one step per item), after its
    first ``warmup`` items, with the device synchronised at both ends of the clock."""
    iterator = iter(steps)
    for _ in itertools.islice(iterator, warmup):
        pass
    sync(device)
    start = time.perf_counter()
    done = sum(1 for _ in iterator)
    sync(device)
    return (time.perf_counter() - start) / done
