"""Files on disk, for every store of this project: atomic writes and versioned manifests.

The stores (training checkpoints, the frame cache, the CLIP-feature store, the video index)
write through :func:`atomic_write`: the file is written under a temporary name in the same
folder, flushed and fsync'ed, then renamed over the final name (``os.replace``), and the folder
is fsync'ed. A crash at any point leaves either the previous file or the new one under the final
name, never a partial file; a writer that fails leaves the previous file and no temporary one.

A store's manifest is a JSON object holding a format version under a key of the store's
choosing; :func:`read_manifest` refuses one of another version, and :func:`require_same`
refuses a store whose recorded configuration differs from the one asked for, naming each
differing field (:func:`differences`) with both values and what to do.

This module is the bottom layer of ``tvr``: it imports only the standard library and torch.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

import torch

PathLike = Union[str, os.PathLike]


class ConfigMismatchError(ValueError):
    """A recorded configuration differs from the one asked for."""


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically (module docstring): ``write(f)`` fills a temporary file in the
    same folder, which is fsync'ed and renamed over ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: PathLike, value: Any, pretty: bool = False) -> Path:
    """``value`` as JSON in ``path``, written atomically; returns the path. ``pretty``: one
    item a line (indent 1) and keys sorted, else compact in the given order."""
    text = json.dumps(value, indent=1, sort_keys=True) if pretty else json.dumps(value)
    return atomic_write(path, lambda f: f.write(text.encode()))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(path: PathLike, version_key: str, version: int, error: type[Exception],
                  remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``, whose ``version_key`` must hold ``version``. Raises
    ``error`` (the store's) for a file that cannot be read or parsed, or that holds another
    version, with ``remedy``: what to do then."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not a readable manifest ({exc}); {remedy}") from exc
    found = record.get(version_key) if isinstance(record, dict) else None
    if found != version:
        raise error(f"{path}: format version {found}, this code reads version {version}; "
                    f"{remedy}")
    return record


def differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """``field: stored X, this run Y`` for every leaf where two JSON values differ; a field of
    a dict is named by its keys joined with dots, and one missing on a side reads as None."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return [line for key in sorted(set(stored) | set(wanted))
                for line in differences(stored.get(key), wanted.get(key), f"{prefix}{key}.")]
    if stored != wanted:
        return [f"{prefix.rstrip('.')}: stored {stored!r}, this run {wanted!r}"]
    return []


def require_same(stored: Any, wanted: Any, error: type[Exception], what: str,
                 remedy: str) -> None:
    """Raise ``error`` unless the recorded ``stored`` equals ``wanted``: ``{what}: {each
    difference}. {remedy}``, where ``what`` names the store and how it differs, and ``remedy``
    says what to do."""
    found = differences(stored, wanted)
    if found:
        raise error(f"{what}: {'; '.join(found)}. {remedy}")
