"""Batches on the run's device: the one place where loader output moves to the device.

:class:`DeviceLoader` wraps any iterable of :class:`~tvr.data.datasets.Batch` (a DataLoader,
feature mode's batches) the way timm's ``PrefetchLoader`` does: every tensor of a batch is moved
to the device (non-blocking), and work that a loader worker left for the device is finished
there. Such work is a :class:`Deferred` field: :func:`collate` keeps it as a list instead of
stacking it, and the wrapper hands the list to its class's :meth:`Deferred.finish` (a frame
cache's decoded frames, transformed on the GPU: tvr/data/cached_frames.py). The trainer, the
encoder and feature mode thus receive ready tensors and know nothing of decoding.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate


class Deferred:
    """Base of item fields whose last step runs on the device, for a whole batch at once."""

    @classmethod
    def finish(cls, batch: list[Any], device: torch.device) -> Tensor:
        """The batch of these fields as one tensor on ``device``."""
        raise NotImplementedError


def _is_record(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def collate(items: list[Any]) -> Any:
    """``default_collate``, except that :class:`Deferred` fields of named-tuple items become
    lists (finished later by :class:`DeviceLoader`)."""
    first = items[0]
    if _is_record(first) and any(isinstance(value, Deferred) for value in first):
        return type(first)(*(list(column) if isinstance(column[0], Deferred)
                             else default_collate(list(column)) for column in zip(*items)))
    return default_collate(items)


def on_device(data: Any, device: torch.device) -> Any:
    """``data`` (a collated batch's fields) on ``device``: tensors moved, lists of
    :class:`Deferred` finished there, named tuples field by field, anything else unchanged."""
    if isinstance(data, Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, list) and data and isinstance(data[0], Deferred):
        return type(data[0]).finish(data, device)
    if _is_record(data):
        return type(data)(*(on_device(value, device) for value in data))
    return data


class DeviceLoader:
    """An iterable of batches whose ``data`` is :func:`on_device` (module docstring); its
    length is the wrapped loader's."""

    def __init__(self, loader: Iterable[Any], device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch._replace(data=on_device(batch.data, self.device))
