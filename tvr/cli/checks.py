"""Checks of main_retrieval.py's flags and inputs, so that a bad one stops the run at once.

- :func:`check_values`: every flag within what its declaration accepts (tvr/cli/flags.py) and
  flags that contradict each other; no file is touched.
- :func:`check_run`: what a run needs: existing input folders and files, checkpoints that load,
  a writable ``--output_dir``, a ``--batch_size`` the launch can split, a usable ``--device``.
- :func:`check_data`: reads the annotations of the splits a run uses (no video is decoded) and
  checks that one training batch fits in the training split.

All three run before any model is built. A flag problem is a :class:`UsageError`, which
:func:`tvr.cli.retrieval.parse_args` prints as argparse does (``main_retrieval.py: error: argument
--lr: ...``, exit status 2). Failures expected at run time (:func:`expected_errors`: a
malformed annotation file, an unreadable video, an unusable checkpoint) are printed by
main_retrieval.py as one line (:func:`describe`), exit status 1 (also: a store, e.g. the
``--clip_features`` folder, that another run is writing); ``--debug`` or
``TVR_DEBUG=1`` adds their traceback (:func:`debug_requested`). Other errors keep theirs.

The path checks (:func:`check_exists`, :func:`check_folder`, :func:`check_writable`,
:func:`check_loads`) and :func:`check_device` check ``python -m tvr.index``'s flags too
(tvr/cli/index.py).

This module imports no torch, so that ``--help`` and the flag checks answer at once: the
checks that need it (checkpoints, CUDA, the launch) import what they use when they run.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from tvr.data.datasets.annotations import AnnotationError
from tvr.data.video import VideoReadError
from tvr.cli.flags import FLAGS
from tvr.models.config import CLIP_CONFIGS, CONTEXT_LENGTH
from tvr.storage import StoreBusyError

DEBUG_ENV = "TVR_DEBUG"


class UsageError(ValueError):
    """A flag value the run cannot use; the message names the flag."""


def flag_error(args: argparse.Namespace, name: str, problem: str) -> UsageError:
    """``argument --name: problem``, saying so when the value came from the recipe."""
    source = "" if name in getattr(args, "given", (name,)) else \
        f" (set by --recipe {getattr(args, 'recipe', '?')})"
    return UsageError(f"argument --{name}: {problem}{source}")


def check_values(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for the first flag that its declaration refuses (out of its
    bounds or not one of its choices: argparse checks the command line, this also a recipe's
    values) or that contradicts another; reads no file."""
    for name, flag in FLAGS.items():
        problem = flag.setting.problem(getattr(args, name))
        if problem is not None:
            raise flag_error(args, name, problem)
    if args.agg_module == "seqTransf":
        if args.max_frames > CONTEXT_LENGTH:
            raise flag_error(args, "max_frames", f"seqTransf embeds at most {CONTEXT_LENGTH} "
                                                 f"frame positions, got {args.max_frames}")
        clip = CLIP_CONFIGS.get(args.base_encoder)
        if clip is not None and args.num_hidden_layers > clip.text_layers:
            raise flag_error(args, "num_hidden_layers",
                             f"seqTransf starts from the first CLIP text blocks and "
                             f"{args.base_encoder} has {clip.text_layers}, got "
                             f"{args.num_hidden_layers}")


def world_size() -> int:
    """The number of processes of this launch (``WORLD_SIZE``, set by torchrun), else 1."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise UsageError(f"the environment variable WORLD_SIZE={value!r} is not a process "
                         f"count (the launcher sets it; unset it for a single process)")
    return size


def check_run(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` unless the run can start: something to do, existing inputs,
    loadable checkpoints, a writable ``--output_dir``, a batch the launch can split, and the
    ``--device``. Cheap: checkpoints are memory-mapped, no model is built."""
    from tvr.models.pretrained import CheckpointNotFoundError, find_checkpoint
    from tvr.training.checkpoint import resume_path
    from tvr.training.distributed import check_batch_size
    if not args.do_train and not args.do_eval:
        raise UsageError("nothing to do: pass --do_train 1 (train, then test the best "
                         "checkpoint) or --do_eval 1 (evaluate, e.g. an --init_model)")
    if args.resume and not args.do_train:
        raise flag_error(args, "resume", "continues training and needs --do_train 1 (to "
                                         "evaluate a checkpoint, pass it as --init_model)")
    try:
        check_batch_size(args.batch_size, world_size())
    except ValueError as error:  # its message starts with "--batch_size N"
        raise UsageError(str(error)) from error
    check_device(args, "--device cpu or auto")
    if not args.demo:  # the demo writes its data when it starts
        check_folder(args, "anno_path", "the annotation folder")
        if args.video_path is None:
            raise flag_error(args, "video_path", "required with --anno_path (the folder of "
                                                 "the videos)")
        check_folder(args, "video_path", "the video folder")
    check_writable(args, "output_dir")
    if getattr(args, "frame_cache", None):
        check_exists(args, "frame_cache")
    if args.clip_features and Path(args.clip_features).exists():
        check_folder(args, "clip_features", "the folder of a CLIP-feature store (or a new one)")
    if args.clip_path:
        check_exists(args, "clip_path")
    if not (args.init_model or args.resume) and args.base_encoder != "tiny":
        try:
            find_checkpoint(args.base_encoder, args.clip_path)
        except CheckpointNotFoundError as error:
            raise UsageError(str(error)) from error
    if args.init_model:
        check_exists(args, "init_model", file=True)
        check_loads(args, "init_model", args.init_model)
    if args.resume:
        try:
            path = resume_path(args.resume, args.output_dir)
        except FileNotFoundError as error:
            raise UsageError(f"argument {error}") from error
        check_loads(args, "resume", path, training=True)


def check_device(args: argparse.Namespace, instead: str) -> None:
    """``--device cuda`` needs a CUDA device that this torch build sees; else use ``instead``."""
    if args.device != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        raise flag_error(args, "device", f"this torch build (torch {torch.__version__}) sees no "
                                         f"CUDA device for --device cuda; use {instead}")


def check_exists(args: argparse.Namespace, name: str, file: bool = False) -> Path:
    path = Path(getattr(args, name))
    if not path.exists():
        raise flag_error(args, name, f"{path} does not exist")
    if file and not path.is_file():
        raise flag_error(args, name, f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise flag_error(args, name, f"{path} is not readable (permission denied)")
    return path


def check_folder(args: argparse.Namespace, name: str, what: str) -> None:
    path = check_exists(args, name)
    if not path.is_dir():
        raise flag_error(args, name, f"{path} is a file; expected {what}")
    if not os.access(path, os.X_OK):
        raise flag_error(args, name, f"{path} cannot be listed (permission denied)")


def check_writable(args: argparse.Namespace, name: str) -> None:
    """The folder exists and is writable, or its nearest existing parent is (nothing is
    created here)."""
    target = Path(getattr(args, name)).absolute()
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise flag_error(args, name, f"cannot create {target}: {existing} is a file, not a "
                                     f"folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == target else f" (the nearest existing folder of {target})"
        raise flag_error(args, name, f"{existing}{where} is not writable")


def check_loads(args: argparse.Namespace, name: str, path: Path | str, training: bool = False
                ) -> None:
    from tvr.training.checkpoint import CheckpointError, check_checkpoint
    try:
        check_checkpoint(path, training=training)
    except CheckpointError as error:
        raise flag_error(args, name, str(error)) from error


def check_data(args: argparse.Namespace) -> None:
    """Read the annotations of the splits the run uses (a malformed file raises
    :class:`AnnotationError`), and raise :class:`UsageError` when one global ``--batch_size``
    does not fit in the training split. No video is opened."""
    from tvr.data.datasets.registry import DATASETS
    load = DATASETS[args.datatype].load
    splits = ["test"] + (["train", "val"] if args.do_train else []) + \
        (["train"] if args.eval_bank_size else [])
    read = {split: load(split, Path(args.anno_path)) for split in dict.fromkeys(splits)}
    if args.do_train:
        pairs, world = len(read["train"].pairs), world_size()
        most = pairs // world * world
        if args.batch_size > most:
            raise flag_error(args, "batch_size",
                             f"the global batch {args.batch_size} is larger than the {pairs} "
                             f"caption pairs of {args.datatype}/train in {args.anno_path}"
                             + (f" split over {world} processes" if world > 1 else "")
                             + f"; use at most {most}")


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures that main_retrieval.py reports in one line, without a traceback."""
    from tvr.data.frame_cache import FrameCacheError  # imported when a run needs them
    from tvr.models.pretrained import CheckpointNotFoundError, CLIPFileError
    from tvr.training.checkpoint import CheckpointError
    from tvr.training.trainer import NonFiniteLossError
    return (UsageError, AnnotationError, VideoReadError, CheckpointError,
            CheckpointNotFoundError, CLIPFileError, FrameCacheError, NonFiniteLossError,
            StoreBusyError)


def describe(error: BaseException, args: Optional[argparse.Namespace] = None) -> str:
    """The one-line message of an expected error. An error re-raised from a DataLoader worker
    carries the worker's traceback in its message: its last line, the original message, is
    kept."""
    text = str(error)
    marker = f"{type(error).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text[text.rfind(marker) + len(marker):]
    text = " ".join(line.strip() for line in text.strip().splitlines())  # every line break
    if isinstance(error, AnnotationError) and args is not None:
        text += (f" (the {args.datatype} annotation files that --anno_path holds, and their "
                 f"format, are described in tvr/data/datasets/{args.datatype}.py)")
    return text


def debug_requested(args: Optional[argparse.Namespace] = None) -> bool:
    """``--debug``, or ``TVR_DEBUG`` set to anything but empty or 0."""
    return bool(getattr(args, "debug", False)) or \
        os.environ.get(DEBUG_ENV, "") not in ("", "0")


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
