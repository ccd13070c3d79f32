"""A tiny untrained checkpoint for the tests of the video index (tests only): written in a
second, with the record and sampling of a real one, so an index of toy videos builds fast; and a
CLIP file of random weights for zero-shot indexes."""
from __future__ import annotations

from pathlib import Path

import torch

from tvr.cli.flags import run_config
from tvr.cli.retrieval import parse_args
from tvr.index.build import build_index
from tvr.index.config import BuildConfig
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS
from tvr.models.factory import create_model
from tvr.training import checkpoint as ckpt

TINY_FLAGS = ["--base_encoder", "tiny", "--num_hidden_layers", "2", "--max_frames", "4",
              "--max_words", "16", "--video_framerate", "3"]


def tiny_checkpoint(path: Path) -> Path:
    """A ``ckpt_best.pt`` at ``path`` of an untrained tiny model (:data:`TINY_FLAGS`)."""
    config = run_config(parse_args([*TINY_FLAGS, "--anno_path", "a", "--video_path", "v"]))
    model = create_model(config.model)
    record = ckpt.model_record(config.model, config.data.sampling, model)
    return ckpt.save_model(path, model, config=record, epoch=0, global_step=0, metric=None,
                           args=config.arguments)


def build(checkpoint: Path, videos: Path, out: Path) -> None:
    """Index ``videos`` into ``out`` (no loader processes, no progress bar); every file reads."""
    report = build_index(BuildConfig(str(videos), str(out), str(checkpoint), workers=0),
                         progress=False)
    assert report.encoded and not report.failed, report.format()


def tiny_clip_file(path: Path, seed: int = 0) -> Path:
    """A CLIP file at ``path``: the tiny CLIP with random weights, saved as a state dict in the
    OpenAI key layout (what tvr/models/pretrained.py reads from a release file)."""
    torch.manual_seed(seed)
    torch.save(CLIP(CLIP_CONFIGS["tiny"]).state_dict(), path)
    return path
