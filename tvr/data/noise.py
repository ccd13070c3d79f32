"""Noisy supervision on purpose (``--noisy_pairs P``; docs/behaviour.md §4): an addition of ours.

The GARE paper claims robustness to noisy supervision without a controlled measurement; this
makes the noise controlled. ``round(P x captions)`` captions of the TRAINING split, chosen
uniformly without replacement, are each paired with a video drawn uniformly among the other
videos of the split (never their own). The draw is a function of the split's pairing, P and the
run's ``--seed`` alone (:func:`reassign_videos`), from a numpy generator of its own, so it is the
same on every launch, every process and a resumed run, and it draws nothing from the generators
that training uses.

Only the pairing changes (:meth:`RetrievalDataset.pair_captions`): the captions, the video list
and each video's clip window stay the annotations', so every video is still read with its own
window, and feature mode's cached outputs of the clean split serve the noisy one (its
fingerprint hashes the annotations, which the noise leaves alone). Validation, test and the
evaluation bank are built without it (tvr/training/trainer.py applies it to the training split
only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tvr.data.datasets import RetrievalDataset

# The second word of the noise generator's seed, (--seed, NOISE_STREAM): keeps this draw apart
# from anything else seeded by --seed alone ("NOIS" in ASCII).
NOISE_STREAM = 0x4E4F4953


@dataclass(frozen=True)
class NoiseReport:
    """What :func:`add_noise` did to a training split: the fraction asked for, and how many of
    its ``captions`` were re-assigned."""

    fraction: float
    reassigned: int
    captions: int

    def record(self) -> dict[str, float | int]:
        """The ``"noisy_pairs"`` entry of the metrics files (tvr/evaluation/evaluate.py)."""
        return {"fraction": self.fraction, "reassigned": self.reassigned}

    def __str__(self) -> str:
        return (f"noisy_pairs {self.fraction:g}: {self.reassigned:,} of {self.captions:,} "
                f"training captions re-assigned to another video")


def reassign_videos(caption_to_video: Sequence[int], videos: int, fraction: float, seed: int
                    ) -> np.ndarray:
    """The video of each caption once ``round(fraction x captions)`` of them (Python's round:
    half to even) are re-assigned as the module docstring says, from
    ``np.random.default_rng([seed, NOISE_STREAM])``. A new array; with ``fraction`` 0, a copy of
    ``caption_to_video``. ``videos``: how many videos the split lists (indices below it)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the fraction of noisy pairs must be in [0, 1), got {fraction!r}")
    pairing = np.array(caption_to_video, dtype=np.int64)
    count = round(fraction * len(pairing))
    if count == 0:
        return pairing
    if videos < 2:
        raise ValueError(f"re-assigning captions to another video needs 2 videos, the split "
                         f"has {videos}")
    rng = np.random.default_rng([seed, NOISE_STREAM])
    chosen = rng.choice(len(pairing), size=count, replace=False)
    others = rng.integers(0, videos - 1, size=count)  # uniform over the videos - 1 others:
    pairing[chosen] = others + (others >= pairing[chosen])  # skip each caption's own video
    return pairing


def add_noise(dataset: RetrievalDataset, fraction: float, seed: int) -> NoiseReport:
    """Re-pair the captions of the training split ``dataset`` in place as
    :func:`reassign_videos` draws them for ``fraction`` and ``seed`` (the run's --noisy_pairs
    and --seed), and say what changed."""
    pairing = reassign_videos(dataset.caption_to_video, len(dataset.video_ids), fraction, seed)
    reassigned = int(np.count_nonzero(pairing != np.asarray(dataset.caption_to_video)))
    dataset.pair_captions(pairing.tolist())
    return NoiseReport(fraction, reassigned, len(pairing))
