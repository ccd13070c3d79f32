"""Training checkpoints: atomic writes, exact resume, weights for evaluation.

Files in ``--output_dir`` (rank 0 alone writes them, docs/behaviour.md §10):

- ``ckpt_last.pt`` (:data:`LAST`): the full training state, rewritten at every save; what
  ``--resume`` (without a value) continues from;
- ``ckpt_best.pt`` (:data:`BEST`): the model weights of the best validation text-to-video R@1
  so far, with their epoch, step, metric, args and ``calibration``, the validation split's
  "no good match" threshold for search (tvr/evaluation/calibration.py; None in older files),
  but no optimiser and no RNG: a third of the size.

Every file records ``config``, the model's configuration (:func:`model_record`: the CLIP
architecture, the whole GAREConfig, max_words and the sampling as trained), and
``code_version`` (``git describe --always --dirty`` of this repository, None outside a git
checkout). :func:`load_model` rebuilds the model from ``config``; files written before it
existed hold no ``config``.

Both are dicts of tensors and plain Python values (str, int, float, bool, None, lists, dicts):
RNG states are stored as tensors and ints, the args as a dict of plain values, so every file of
this project loads with ``torch.load(..., weights_only=True)``: loading never runs pickled code.

A full checkpoint holds: ``model`` (state dict of the unwrapped model: no ``module.`` prefix),
``optimizer`` (BertAdam's state dict: moments, per-parameter step counts, schedule settings),
``global_step`` (optimiser updates done: a resumed run continues in epoch
``global_step // steps_per_epoch`` after its first ``global_step % steps_per_epoch`` batches),
``epoch`` (0-based epoch in which the file was written, for the record), ``best_metric``,
``args`` and ``rng`` (python ``random``, numpy, torch CPU and, when CUDA is available, the
current GPU's generator). The RNG states are those of the rank that wrote the file (rank 0) and
every rank restores them: the ranks' generators are alike anyway when every rank is seeded with
the same ``--seed`` and draws alike, as in the recipe.

A file that cannot serve (not a torch.save file, damaged, of another kind, not matching the
model) raises :class:`CheckpointError`, saying what the file is and what it should be;
:func:`check_checkpoint` finds this out cheaply, before any model is built.

Writes are atomic (:func:`tvr.storage.atomic_save`): a crash at any point leaves either the
previous file or the new one under the final name, never a partial file. The temporary file of
a write whose process was killed is removed by the next save into the folder
(:func:`tvr.storage.remove_stale_temporaries`).
"""
from __future__ import annotations

import contextlib
import pickle
import re
import subprocess
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from tvr.data.config import SamplingConfig
from tvr.models.config import CLIPConfig, ModelConfig
from tvr.models.factory import config_from_record, create_model, record_of
from tvr.models.gare import GARE
from tvr.storage import PathLike, atomic_save, remove_stale_temporaries
from tvr.training.distributed import unwrap_model
from tvr.training.rng import rng_state, set_rng_state

LAST = "ckpt_last.pt"
BEST = "ckpt_best.pt"
FORMAT_VERSION = 1
METADATA = ("kind", "epoch", "global_step", "best_metric", "args", "config", "code_version",
            "calibration")  # what a file of this project holds besides its tensors
EXPECTED = f"expected a file written by main_retrieval.py, e.g. outputs/<recipe>/{BEST}"


class CheckpointError(ValueError):
    """A file that cannot serve as a checkpoint here; the message says what the file is and
    what it should be."""


def not_a_checkpoint(path: PathLike, why: str) -> CheckpointError:
    """The error for ``path``, which is not a checkpoint of this project because of ``why``."""
    return CheckpointError(f"{path} is not a checkpoint of this project: {why} ({EXPECTED})")


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint says about its run; the module docstring describes each field."""

    epoch: int
    global_step: int
    best_metric: Optional[float]
    args: dict[str, Any] = field(default_factory=dict)


def plain_args(args: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The run's arguments as a dict of plain values (others, e.g. paths, become strings)."""
    return {str(k): _plain(v) for k, v in (args or {}).items()}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


@lru_cache(maxsize=1)
def code_version() -> Optional[str]:
    """``git describe --always --dirty --abbrev=40`` of this repository: the commit, with
    ``-dirty`` when the working tree has uncommitted changes; None when git cannot tell."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                                cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return result.stdout.strip()


def _provenance(config: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "config": _plain(config),
            "code_version": code_version()}


def save_checkpoint(path: PathLike, model: nn.Module, optimizer: Optimizer, *, epoch: int,
                    global_step: int, best_metric: Optional[float],
                    config: Optional[dict[str, Any]],
                    args: Optional[dict[str, Any]] = None) -> Path:
    """Write the full training state (``ckpt_last.pt``) atomically; call on rank 0 only.
    ``config``: the model's recorded configuration (module docstring)."""
    return _save({
        **_provenance(config), "kind": "training",
        "model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": int(epoch), "global_step": int(global_step),
        "best_metric": None if best_metric is None else float(best_metric),
        "args": plain_args(args), "rng": rng_state(),
    }, path)


def save_model(path: PathLike, model: nn.Module, *, epoch: int, global_step: int,
               metric: Optional[float], config: Optional[dict[str, Any]],
               args: Optional[dict[str, Any]] = None,
               calibration: Optional[dict[str, Any]] = None) -> Path:
    """Write model weights and their provenance (``ckpt_best.pt``) atomically; rank 0 only.
    ``config``: the model's recorded configuration (module docstring); ``calibration``: the
    validation split's "no good match" threshold (tvr/evaluation/calibration.py)."""
    return _save({
        **_provenance(config), "kind": "model",
        "model": unwrap_model(model).state_dict(), "epoch": int(epoch),
        "global_step": int(global_step), "best_metric": None if metric is None else float(metric),
        "args": plain_args(args), "calibration": calibration,
    }, path)


def _save(checkpoint: dict[str, Any], path: PathLike) -> Path:
    """Write ``checkpoint`` atomically, first removing what killed writes left in its folder."""
    remove_stale_temporaries(Path(path).parent)
    return atomic_save(checkpoint, path)


def load_checkpoint(path: PathLike, model: nn.Module, optimizer: Optional[Optimizer] = None,
                    restore_rng: bool = True) -> TrainingState:
    """Restore a full checkpoint into ``model`` (strictly) and ``optimizer``, and the RNGs.

    Call it after building the model, the optimiser and the data loaders, right before the
    training loop, so that nothing draws from the restored generators before training does.
    """
    checkpoint = _read(path)
    _require_training(path, checkpoint)
    _load_model(path, unwrap_model(model), checkpoint["model"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if restore_rng:
        set_rng_state(checkpoint["rng"])
    return TrainingState(checkpoint["epoch"], checkpoint["global_step"],
                         checkpoint["best_metric"], checkpoint["args"])


def load_weights_for_eval(path: PathLike, model: nn.Module) -> dict[str, Any]:
    """Load model weights for evaluation into a built ``model``; returns the file's metadata.

    Accepts this project's ``ckpt_last.pt`` and ``ckpt_best.pt`` files and a bare state dict of
    this model (``torch.save(model.state_dict())``, a ``module.`` prefix from DDP is removed).
    Loading is strict, unlike the reference's ``strict=False``, which silently keeps random
    weights for every key that does not match: a mismatch is an error listing the keys.
    """
    checkpoint = _read(path)
    _require_weights(path, checkpoint)
    return _load_weights(path, checkpoint, model)


def _load_weights(path: PathLike, checkpoint: dict[str, Any], model: nn.Module
                  ) -> dict[str, Any]:
    if "format_version" in checkpoint:
        state_dict = checkpoint["model"]
    else:
        state_dict = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    _load_model(path, unwrap_model(model), state_dict)
    return _metadata(checkpoint)


def _metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says besides its tensors (:data:`METADATA`); a bare state dict says
    only that it is one."""
    if "format_version" not in checkpoint:
        return {"kind": "state_dict"}
    return {k: checkpoint.get(k) for k in METADATA}


def read_metadata(path: PathLike) -> dict[str, Any]:
    """:data:`METADATA` of checkpoint ``path`` (the run's ``args``, the model's ``config``,
    ...), without loading a model. The file is memory-mapped: its tensors are not read."""
    return _metadata(_read(path, mmap=True))


def read_model_record(path: PathLike) -> Optional[dict[str, Any]]:
    """The model configuration that checkpoint ``path`` records, or None (an older file, or a
    bare state dict). The file is memory-mapped: its tensors are not read."""
    return read_metadata(path).get("config")


def model_record(config: ModelConfig, sampling: SamplingConfig, model: GARE) -> dict[str, Any]:
    """The configuration a checkpoint records: enough to rebuild ``model`` without any flag
    (:func:`tvr.models.factory.record_of`: the CLIP architecture, the whole GAREConfig,
    base_encoder and max_words) and the sampling it was trained with."""
    return {**record_of(config, model), "sampling": asdict(sampling)}


def recorded_sampling(record: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings a record holds; a record of an older version holds only
    ``max_frames``."""
    return dict(record["sampling"]) if "sampling" in record else {"max_frames":
                                                                  record["max_frames"]}


def sampling_of(info: dict[str, Any]) -> SamplingConfig:
    """The sampling a checkpoint's model was trained with (``info``: what :func:`load_model`
    returns beside the model); the settings an older record lacks come from the run's
    recorded arguments, else the defaults."""
    args = info.get("args") or {}
    defaults = {name: args[name] for name in ("video_framerate", "video_backend") if name in args}
    return SamplingConfig(**{**defaults, **recorded_sampling(info["config"])})


def load_model(path: PathLike, config: Optional[ModelConfig] = None
               ) -> tuple[GARE, dict[str, Any]]:
    """The model checkpoint ``path`` holds, with its weights, and the file's metadata (kind,
    epoch, global_step, best_metric, args, config (the record), code_version): the one way
    from a file to a model. The file is read once.

    Without ``config`` the model is the one the record describes (a file without a record is
    an error); with it (flags reconciled with the record by the command line), that model is
    built: with the recorded CLIP architecture when there is a record (no CLIP release file
    needed), else from ``config.base_encoder``'s release file."""
    checkpoint = _read(path)
    _require_weights(path, checkpoint)
    record = checkpoint.get("config") if "format_version" in checkpoint else None
    if record is None and config is None:
        raise CheckpointError(f"{path} records no model configuration (written by an older "
                              f"version of this project, or a bare state dict): evaluate it "
                              f"with main_retrieval.py --init_model and the flags it was "
                              f"trained with")
    clip = None
    if record is not None:
        recorded, clip = _parse_record(path, record, None if config is None else
                                       config.clip_path)
        config = config or recorded
    model = create_model(config, clip)
    meta = _load_weights(path, checkpoint, model)
    return model, meta


def _parse_record(path: PathLike, record: Any, clip_path: Optional[str]
                  ) -> tuple[ModelConfig, CLIPConfig]:
    """:func:`config_from_record`, with :class:`CheckpointError` for a record that does not
    parse (a damaged or hand-made file): its model settings, CLIP shapes (positive integers)
    and sampling (what :func:`sampling_of` reads) are checked."""
    try:
        model, clip = config_from_record(record, clip_path)
        if not all(type(v) is int and v > 0 for v in asdict(clip).values()):
            raise ValueError(f"CLIP shapes must be positive integers, got {asdict(clip)}")
        SamplingConfig(**recorded_sampling(record))  # raises for a sampling out of bounds
    except (KeyError, TypeError, ValueError) as error:
        raise not_a_checkpoint(path, f"its model record does not parse ("
                                     f"{type(error).__name__}: {error})") from error
    return model, clip


def resume_path(resume: PathLike, output_dir: PathLike) -> Path:
    """The checkpoint ``--resume`` names: "auto" means ``<output_dir>/ckpt_last.pt``; a folder
    means its ``ckpt_last.pt``; otherwise the file itself. Missing: a clear error."""
    path = Path(output_dir) / LAST if str(resume) == "auto" else Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path} (training writes {LAST} "
                                f"into --output_dir at every save)")
    return path


def check_checkpoint(path: PathLike, training: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a file that
    :func:`load_weights_for_eval` accepts (``training``: that :func:`load_checkpoint` accepts).
    Cheap: the file is memory-mapped and its tensors are not read."""
    checkpoint = _read(path, mmap=True)
    _require_weights(path, checkpoint)
    if training:
        _require_training(path, checkpoint)


def _require_weights(path: PathLike, checkpoint: dict[str, Any]) -> None:
    if "format_version" in checkpoint:
        if not isinstance(checkpoint.get("model"), dict):
            raise not_a_checkpoint(path, "it records no model weights")
    elif not checkpoint or not all(isinstance(v, Tensor) or str(k).endswith("_extra_state")
                                   for k, v in checkpoint.items()):  # a module's extra state
        raise not_a_checkpoint(path, "it holds a dict that is neither a checkpoint nor a state "
                                     "dict of tensors")


def _require_training(path: PathLike, checkpoint: dict[str, Any]) -> None:
    if checkpoint.get("kind") != "training":
        raise CheckpointError(f"{path} is not a training checkpoint of this project (it holds no "
                              f"optimiser and RNG state); resume from a {LAST} file")


def _read(path: PathLike, mmap: bool = False) -> dict[str, Any]:
    """The dict in checkpoint ``path``; :class:`CheckpointError` says why a file is unusable.
    ``mmap`` maps the tensors of a zip-format file (the only kind that can be mapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's format since torch 1.6
    try:
        with warnings.catch_warnings():  # a TorchScript file is refused below, with the reason
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused too
            checkpoint = torch.load(path, map_location="cpu", weights_only=True,
                                    mmap=mmap and is_zip)
    except OSError as error:
        raise not_a_checkpoint(path, f"it cannot be read ({error})") from error
    except Exception as error:  # torch.load fails in many ways on a file it cannot parse
        raise not_a_checkpoint(path, _unreadable(path, is_zip, error)) from error
    if not isinstance(checkpoint, dict):
        raise not_a_checkpoint(path, f"it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _unreadable(path: Path, is_zip: bool, error: Exception) -> str:
    """What a file that torch.load (weights_only) rejects appears to be."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if is_zip:
        with contextlib.suppress(zipfile.BadZipFile, OSError):
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("constants.pkl") for name in archive.namelist()):
                    return ("it is a TorchScript archive (an OpenAI CLIP release file goes to "
                            "--clip_path)")
                if archive.testzip() is None:  # intact: what it holds was refused
                    found = re.search(r"GLOBAL ([\w.]+)", str(error))
                    what = f" (e.g. {found.group(1)})" if found else ""
                    return (f"it holds objects other than tensors and plain values{what}, "
                            f"which loading refuses: loading never runs pickled code")
        return "it is a damaged zip archive (truncated or corrupt)"
    with open(path, "rb") as f:
        head = f.read(512)
    if all(c.isprintable() or c.isspace() for c in head.decode("utf-8", errors="replace")):
        return "it is a text file"
    if isinstance(error, pickle.UnpicklingError):
        return ("torch.load refuses it: not a torch.save file, or it holds objects other "
                "than tensors and plain values (loading never runs pickled code)")
    return f"torch.load cannot parse it ({type(error).__name__})"


def _load_model(path: PathLike, model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    own = model.state_dict()
    expected, found = set(own), set(state_dict)
    if expected != found:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise CheckpointError(f"{path} does not match the model: {len(missing)} missing keys "
                              f"{missing[:5]}, {len(unexpected)} unexpected keys "
                              f"{unexpected[:5]} (first five of each shown)")
    shapes = [f"{k} {tuple(v.shape)} (the model's: {tuple(own[k].shape)})"
              for k, v in state_dict.items()
              if isinstance(v, Tensor) and isinstance(own[k], Tensor) and v.shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"{path} does not match the model: {len(shapes)} tensors of "
                              f"another shape, e.g. {'; '.join(shapes[:3])}")
    model.load_state_dict(state_dict)
