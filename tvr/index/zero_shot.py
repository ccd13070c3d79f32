"""A zero-shot index: plain CLIP, no GARE checkpoint (CLIP4Clip's zero-shot setting, meanP).

    python -m tvr.index build --clip_path ViT-B-32.pt --videos DIR --out IDX

Each sampled frame is encoded by CLIP's image tower and scaled to unit length; those are the
video's stored ``frames`` (float16, in the index's format-3 shards, tvr/index/store.py: they give
the best frame's time and thumbnail). Its stage-1 vector (:func:`~tvr.evaluation.engine.
coarse_vectors`, the unit mean of its real frames) is then CLIP4Clip's meanP video embedding,
and a sentence's score is the cosine of its CLIP text embedding with that vector
(:class:`MeanCosine`, which stands in for the GARE engine: stage 1 ranks by the stored float16
vectors, stage 2 and ``--exhaustive`` by the same cosine in float32 from the stored frames).
Frames are sampled as the MSR-VTT recipe samples (:class:`~tvr.data.config.SamplingConfig`'s
defaults: 1 frame/s, at most 12), sentences cut to :data:`MAX_WORDS` tokens as CLIP4Clip does.
The manifest records the kind of model (``checkpoint["kind"]``: :data:`ZERO_SHOT`, else a GARE
checkpoint) and, as its model record, the CLIP's shapes.

**No good match.** A zero-shot index has no labelled data to learn a threshold from, as a GARE
checkpoint does on its validation split (tvr/evaluation/calibration.py). What it can learn
without labels is a one-sided bound: the best scores over the indexed videos of the
random-letter queries of :func:`~tvr.evaluation.calibration.nonsense_queries`, the model's
answer to sentences that describe nothing. The threshold is their :data:`REFUSED` quantile, so
a query below it does no better than most gibberish does on this gallery; how many real matches
it keeps is unknown (no captions to count them), and a real sentence about something absent
can still pass it. It is learned again whenever a build changes the gallery, and
``--min_score`` replaces it.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvr.evaluation.calibration import nonsense_queries
from tvr.evaluation.encode import encode_sentences
from tvr.evaluation.engine import Prepared, coarse_vectors
from tvr.index.store import IndexStoreError, Manifest, StoredVideos
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS
from tvr.models.gare import TextFeatures, VideoFeatures
from tvr.models.pretrained import CLIPFileError, clip_from_state_dict, read_state_dict

ZERO_SHOT = "clip-zero-shot"  # the manifest's checkpoint["kind"] of a zero-shot index
MAX_WORDS = 32                # CLIP4Clip's caption length for MSR-VTT
REFUSED = 0.95                # share of the nonsense queries the threshold refuses
QUERY_BATCH = 64              # nonsense queries encoded at once


class ZeroShotCLIP(nn.Module):
    """CLIP behind the two encoders of :class:`~tvr.models.gare.GARE` that an index uses."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip

    def encode_text(self, ids: Tensor, mask: Tensor) -> TextFeatures:
        sentence, words = self.clip.encode_text(ids, return_hidden=True)
        return TextFeatures(sentence.float(), words.float(), mask)

    def encode_video(self, video: Tensor, mask: Tensor) -> VideoFeatures:
        """(B, F, 3, H, W) frames -> (B, F, d) unit-length CLIP image embeddings."""
        batch, count = video.shape[:2]
        frames = self.clip.encode_image(video.flatten(0, 1)).float().view(batch, count, -1)
        return VideoFeatures(F.normalize(frames, dim=-1), mask)


class MeanCosine:
    """The scorer of a zero-shot index (a :class:`~tvr.evaluation.retrieval.Scorer`, as the
    GARE engine is): the cosine of each sentence with each video's unit mean frame."""

    def prepare_texts(self, text: Tensor) -> Prepared:
        return Prepared("texts", {"text": F.normalize(text.float(), dim=-1)}, self)

    def prepare_videos(self, frames: Tensor, mask: Tensor) -> Prepared:
        """The frames and mask (what an index stores: they are this scorer's whole state) and
        the unit mean frame (``coarse``, the stage-1 vectors)."""
        return Prepared("videos", {"frames": frames, "mask": mask,
                                   "coarse": coarse_vectors(frames.float(), mask)}, self)

    def adopt(self, parts: dict[str, Tensor]) -> Prepared:
        """Videos stored by :meth:`prepare_videos` (float16 frames)."""
        return self.prepare_videos(parts["frames"].float(), parts["mask"])

    def score(self, texts: Prepared, videos: Prepared) -> Tensor:
        return texts.parts["text"] @ videos.parts["coarse"].T


def load_zero_shot(clip_path: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> tuple[ZeroShotCLIP, dict[str, Any]]:
    """The CLIP of the file ``clip_path`` (eval mode) and the model record of its index."""
    try:
        clip = clip_from_state_dict(read_state_dict(clip_path))
    except (CLIPFileError, ValueError, KeyError, RuntimeError) as error:
        raise IndexStoreError(f"--clip_path {clip_path}: not a CLIP ViT file this project can "
                              f"build ({error}); give an OpenAI release file such as "
                              f"ViT-B-32.pt") from error
    record = {"clip": asdict(clip.config), "max_words": MAX_WORDS, "calibration": None}
    return ZeroShotCLIP(clip).to(device).eval(), record


def describe(record: dict[str, Any]) -> str:
    """What scores a zero-shot index, e.g. "CLIP ViT-B/32 zero-shot (mean of frame embeddings,
    cosine)"; the architecture is named by its shapes."""
    names = [name for name, config in CLIP_CONFIGS.items() if asdict(config) == record["clip"]]
    name = names[0] if names else "ViT ({vision_layers} layers, {patch_size} px patches, " \
                                  "{image_size} px)".format(**record["clip"])
    return f"CLIP {name} zero-shot (mean of frame embeddings, cosine)"


@torch.no_grad()
def calibrate_nonsense(folder: str | os.PathLike, manifest: Manifest, model: ZeroShotCLIP
                       ) -> dict[str, Any]:
    """The "no good match" threshold of the zero-shot index ``folder`` (module docstring):
    the :data:`REFUSED` quantile of the nonsense queries' best scores over its videos, by
    their stored stage-1 vectors (float16: within 1e-4 of a search's cosine, measured 5e-5
    on 256 x 2000 random unit vectors of 512 dimensions)."""
    videos = StoredVideos(folder, manifest).coarse()[:, 0]  # the mean frame (STAGE1_FRAMES)
    queries = nonsense_queries()
    text = torch.cat([encode_sentences(model, queries[i:i + QUERY_BATCH], MAX_WORDS).sentence
                      for i in range(0, len(queries), QUERY_BATCH)])
    best = (F.normalize(text.float().cpu(), dim=-1) @ videos.float().T).max(dim=1).values
    threshold = float(torch.quantile(best.double(), REFUSED))
    return {"threshold": threshold, "refused": float((best < threshold).double().mean()),
            "nonsense": len(queries), "videos": len(videos),
            "rule": f"{REFUSED:.0%} quantile of the best scores of {len(queries)} "
                    f"random-letter queries"}
