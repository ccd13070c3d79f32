"""Finding and loading CLIP weights from the user's files (docs/behaviour.md §1). Nothing is
downloaded.

Lookup order for ``--base_encoder ViT-B/32`` (file ``ViT-B-32.pt``):

1. ``clip_path`` (``--clip_path``): a checkpoint file, or a folder that holds ``ViT-B-32.pt``;
2. the environment variable ``TVR_CLIP_PATH``, with the same meaning;
3. ``tvr/models/ViT-B-32.pt`` inside this package.

A checkpoint is either an OpenAI release file (a TorchScript archive; its ``state_dict()`` is
used) or a plain state dict saved with ``torch.save`` (OpenAI key names, as open_clip's ViT
models also use). The ``"tiny"`` configuration has no checkpoint: it is initialised at random.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from tvr.models.clip import CLIP, NON_PARAMETER_KEYS
from tvr.models.config import CLIP_CONFIGS, CLIPConfig

PACKAGE_DIR = Path(__file__).resolve().parent
ENV_VAR = "TVR_CLIP_PATH"
_RELEASE = "https://openaipublic.azureedge.net/clip/models"
CHECKPOINTS: dict[str, tuple[str, str]] = {  # base encoder -> (file name, published at)
    "ViT-B/32": ("ViT-B-32.pt", f"{_RELEASE}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    "ViT-B/16": ("ViT-B-16.pt", f"{_RELEASE}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
    "ViT-L/14": ("ViT-L-14.pt", f"{_RELEASE}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
}


class CheckpointNotFoundError(FileNotFoundError):
    """Raised when no CLIP checkpoint file is found; the message says where to put one."""


class CLIPFileError(ValueError):
    """A file found as the CLIP checkpoint that is not one; the message names the file."""


def find_checkpoint(base_encoder: str, clip_path: str | os.PathLike | None = None) -> Path:
    """Return the checkpoint file for ``base_encoder`` following the lookup order above."""
    if base_encoder not in CHECKPOINTS:
        raise ValueError(f"unknown --base_encoder {base_encoder!r}; choose one of "
                         f"{sorted(CHECKPOINTS) + ['tiny']}")
    file_name, url = CHECKPOINTS[base_encoder]
    candidates = [Path(p).expanduser() for p in (clip_path, os.environ.get(ENV_VAR)) if p]
    candidates.append(PACKAGE_DIR)
    looked_at = []
    for candidate in candidates:
        path = candidate / file_name if candidate.is_dir() else candidate
        if path.is_file():
            return path
        looked_at.append(str(path))
    raise CheckpointNotFoundError(
        f"CLIP checkpoint {file_name} for --base_encoder {base_encoder} not found; looked at: "
        f"{', '.join(looked_at)}. Put the OpenAI release file at {PACKAGE_DIR / file_name}, or "
        f"pass --clip_path (the file, or a folder holding {file_name}), or set {ENV_VAR}. "
        f"The file is published by OpenAI at {url} (the list is in clip/clip.py of "
        f"github.com/openai/CLIP); this project never downloads it.")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a CLIP state dict from an OpenAI TorchScript archive or a plain ``torch.save`` file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # the OpenAI files ARE TorchScript: jit.load is the way
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:  # not a TorchScript archive: a plain state dict
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CLIPFileError(f"{path} is not a CLIP checkpoint: neither a TorchScript archive "
                                f"nor a torch.save state dict that loads with "
                                f"weights_only=True ({error})") from error
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CLIPFileError(f"{path} is not a CLIP checkpoint: it does not hold a state dict of "
                            f"tensors")
    return {k: v for k, v in state_dict.items() if k not in NON_PARAMETER_KEYS}


def clip_from_state_dict(state_dict: dict[str, Tensor]) -> CLIP:
    """Build a CLIP whose shapes are read from ``state_dict`` and load it (fp32 weights)."""
    model = CLIP(CLIPConfig.from_state_dict(state_dict))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    model.pretrained = True
    return model


def load_clip(base_encoder: str, clip_path: str | os.PathLike | None = None) -> CLIP:
    """The CLIP for ``--base_encoder``: pretrained weights from disk, or random for ``tiny``."""
    if base_encoder == "tiny":
        return CLIP(CLIP_CONFIGS["tiny"])
    path = find_checkpoint(base_encoder, clip_path)
    state_dict = read_state_dict(path)
    try:
        return clip_from_state_dict(state_dict)
    except (ValueError, KeyError, RuntimeError) as error:
        raise CLIPFileError(f"{path} is not a CLIP ViT checkpoint this project can build "
                            f"({type(error).__name__}: {error}); --clip_path takes an OpenAI "
                            f"release file such as ViT-B-32.pt") from error
