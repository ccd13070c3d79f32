"""Skipping unreadable videos (``skip_bad_videos=True``) without ever producing an all-zero video.

A dataset built with ``skip_bad_videos=True`` returns a :class:`SkippedVideo` marker instead of
an item whose video the frame loader could not read. :func:`collate_skipping` drops the markers
and carries them in the batch, so the information travels from DataLoader worker processes to
the main process with the data itself (no shared state). The trainer feeds every batch to a
:class:`SkipReport` and prints it at the end of the epoch::

    loader = DataLoader(dataset, batch_size=32, num_workers=8, collate_fn=collate_skipping)
    report = SkipReport()
    for batch in loader:
        report.add(batch)
        if batch.data is None:          # every item of this batch was skipped
            continue
        text_ids, text_mask, video, video_mask, index, video_index = batch.data
        ...
    if report:
        print(report.format())
"""
from __future__ import annotations

from typing import Any, NamedTuple

from tvr.data.device_loader import collate


class SkippedVideo(NamedTuple):
    """Marker returned in place of an item whose video could not be read."""

    video_id: str
    path: str    # the file that failed (for a video found under no accepted name: the first one)
    reason: str  # the VideoReadError message


class Batch(NamedTuple):
    """What :func:`collate_skipping` returns.

    ``data`` is the default-collated batch of the items that were read (a ``RetrievalItem``,
    ``VideoItem`` or ``CaptionItem`` of stacked tensors), or ``None`` when every item of the
    batch was skipped; ``skipped`` lists the markers of the items that were dropped.
    """

    data: Any
    skipped: list[SkippedVideo]


def collate_skipping(samples: list[Any]) -> Batch:
    """Collate ``samples`` (:func:`tvr.data.device_loader.collate`), dropping
    :class:`SkippedVideo` markers into ``Batch.skipped``."""
    kept = [s for s in samples if not isinstance(s, SkippedVideo)]
    skipped = [s for s in samples if isinstance(s, SkippedVideo)]
    return Batch(collate(kept) if kept else None, skipped)


class SkipReport:
    """The video files skipped during an epoch, each listed once (a video with several
    captions fails once per caption)."""

    def __init__(self) -> None:
        self._skipped: dict[str, SkippedVideo] = {}

    def add(self, batch: Batch) -> None:
        """Record the skipped videos of ``batch``."""
        for marker in batch.skipped:
            self._skipped.setdefault(marker.path, marker)

    @property
    def files(self) -> list[str]:
        """The skipped files, sorted."""
        return sorted(self._skipped)

    def __len__(self) -> int:
        return len(self._skipped)

    def format(self) -> str:
        """A multi-line summary: one line per skipped file with the reason."""
        lines = [f"skipped {len(self)} unreadable video file(s):"]
        lines += [f"  {path}: {self._skipped[path].reason}" for path in self.files]
        return "\n".join(lines)

    def clear(self) -> None:
        """Forget everything recorded (start of a new epoch)."""
        self._skipped.clear()
