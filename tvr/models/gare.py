"""The GARE retrieval model: CLIP encoders + temporal aggregation + the gap-aware similarity.

Public surface (everything a trainer, an evaluator or a forked ablation needs):

- :meth:`GARE.encode_text` — token ids and mask -> :class:`TextFeatures`;
- :meth:`GARE.encode_video` — frames and frame mask -> :class:`VideoFeatures`;
- :meth:`GARE.score` — a block of texts against a block of videos -> scores (and Δ);
- :meth:`GARE.loss` / :meth:`GARE.forward` — the training loss of a batch (docs/behaviour.md §7,
§8); ``forward(clip_outputs=...)`` starts from cached CLIP outputs (:class:`CLIPOutputs`,
:meth:`GARE.frame_embeddings`, :meth:`GARE.aggregate`; feature mode, docs/feature_mode.md).

Precision: the CLIP encoders run under whatever autocast the caller set up; their outputs are
cast to fp32 and the similarity and losses always run in fp32 (as the reference does with
``.float()``), because Psi's LayerNorms act on differences of nearly equal vectors.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from tvr.losses.gare_terms import gare_loss
from tvr.losses.ncl import FeatureQueue, ncl_batch_biases
from tvr.models.clip import CLIP
from tvr.models.config import GAREConfig
from tvr.models.similarity import GapAwareSimilarity, SimilarityOutput
from tvr.models.temporal import build_temporal


class TextFeatures(NamedTuple):
    """sentence: (B, d) EOT embeddings; words: (B, L, d) projected token states; mask: (B, L)."""

    sentence: Tensor
    words: Tensor
    mask: Tensor


class VideoFeatures(NamedTuple):
    """frames: (B, F, d) frame embeddings after temporal aggregation; mask: (B, F)."""

    frames: Tensor
    mask: Tensor


class CLIPOutputs(NamedTuple):
    """What the CLIP towers give for a batch of pairs, as feature mode caches it
    (tvr/training/feature_mode.py): the fp32 caption ``sentence`` (B, d) and ``words`` (B, L, d)
    (None when the similarity does not use them), the caption ``text_mask`` (B, L), the
    per-frame image embeddings ``frames`` (B, F, d) of every frame slot (padded ones included),
    before the temporal module, and ``video_mask`` (B, F)."""

    sentence: Tensor
    words: Optional[Tensor]
    text_mask: Tensor
    frames: Tensor
    video_mask: Tensor


def _identity(x: Tensor) -> Tensor:
    return x


def _fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """Leave any autocast region: the similarity and losses run in fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


class GARE(nn.Module):
    def __init__(self, clip: CLIP, config: GAREConfig = GAREConfig()):
        super().__init__()
        self.config = config
        self.clip = clip
        self.temporal = build_temporal(config.agg_module, clip, config.num_hidden_layers)
        self.similarity = GapAwareSimilarity(replace(config.similarity, dim=clip.config.embed_dim))
        self.text_queue = FeatureQueue(config.ncl.queue) if config.ncl.enabled else None
        self.video_queue = FeatureQueue(config.ncl.queue) if config.ncl.enabled else None

    def get_extra_state(self) -> dict:
        """NCL's query queues travel with the weights, so a resumed run continues exactly."""
        if self.text_queue is None:
            return {}
        return {"text": self.text_queue.contents(), "video": self.video_queue.contents()}

    def set_extra_state(self, state: dict) -> None:
        for name, queue in (("text", self.text_queue), ("video", self.video_queue)):
            if queue is not None:
                queue.reset()
                if state.get(name):
                    queue.enqueue(*state[name])

    @property
    def uses_words(self) -> bool:
        return self.similarity.config.psi_context == "words"

    def encode_text(self, ids: Tensor, mask: Tensor) -> TextFeatures:
        """(B, L) token ids and mask -> fp32 sentence and word features."""
        sentence, words = self.clip.encode_text(ids, return_hidden=True)
        return TextFeatures(sentence.float(), words.float(), mask)

    def encode_video(self, video: Tensor, video_mask: Tensor) -> VideoFeatures:
        """(B, F, 3, H, W) normalised frames (zero-padded) and (B, F) mask -> fp32 features.

        Every one of the F slots is encoded, padded ones included: their embeddings enter the
        pooling softmax, the gap mean and Psi's context (reference behaviour, docs/behaviour.md §6,
        §12).
        """
        return self.aggregate(self.frame_embeddings(video), video_mask)

    def frame_embeddings(self, video: Tensor) -> Tensor:
        """(B, F, 3, H, W) frames -> (B, F, d) fp32 CLIP image embeddings of every slot (the
        first half of :meth:`encode_video`; what feature mode caches)."""
        batch, frames = video.shape[:2]
        embeddings = self.clip.encode_image(video.flatten(0, 1)).float()
        return embeddings.view(batch, frames, -1)

    def aggregate(self, embeddings: Tensor, video_mask: Tensor) -> VideoFeatures:
        """(B, F, d) per-frame CLIP embeddings and (B, F) mask -> fp32 features after the
        temporal module (the second half of :meth:`encode_video`)."""
        with _fp32(embeddings.device):
            return VideoFeatures(self.temporal(embeddings.float(), video_mask), video_mask)

    def score(self, text: TextFeatures, video: VideoFeatures) -> SimilarityOutput:
        """GARE scores of B_t texts against B_v videos: (B_t, B_v), with Δ (B_t, B_v, d)."""
        words, word_mask = (text.words, text.mask) if self.uses_words else (None, None)
        with _fp32(text.sentence.device):
            return self.similarity(text.sentence, video.frames, video.mask, words, word_mask)

    def score_in_chunks(self, text: TextFeatures, video: VideoFeatures, chunk: int,
                        over: str) -> Tensor:
        """Scores only, with ``text`` (over="text") or ``video`` (over="video") cut in chunks."""
        def rows(features, start):
            return type(features)(*(None if f is None else f[start:start + chunk] for f in features))

        if over == "text":
            return torch.cat([self.score(rows(text, i), video).scores
                              for i in range(0, text.sentence.shape[0], chunk)], dim=0)
        return torch.cat([self.score(text, rows(video, i)).scores
                          for i in range(0, video.frames.shape[0], chunk)], dim=1)

    def loss(self, text: TextFeatures, video: VideoFeatures) -> dict[str, Tensor]:
        """Training loss of a batch of matched (text i, video i) pairs (docs/behaviour.md §7, with
        §8 NCL).

        Returns ``"loss"`` (the total to minimise) and each computed term for logging.
        """
        scores, delta = self.score(text, video)
        biases = self._ncl_biases(text, video, scores) if self.config.ncl.enabled else None
        with _fp32(scores.device):
            return gare_loss(scores, delta, self.clip.logit_scale, self.config.loss, biases)

    def forward(self, text_ids: Optional[Tensor] = None, text_mask: Optional[Tensor] = None,
                video: Optional[Tensor] = None, video_mask: Optional[Tensor] = None,
                gather: Callable[[Tensor], Tensor] = _identity,
                clip_outputs: Optional[CLIPOutputs] = None) -> dict[str, Tensor]:
        """Encode a (local) batch, ``gather`` the features across processes, return the loss.

        ``gather`` must be autograd-aware (each rank's features keep their gradient path), e.g.
        ``torch.distributed.nn.functional.all_gather`` concatenated along dim 0.

        Feature mode passes ``clip_outputs`` (cached CLIP outputs of the batch) instead of the
        four input tensors: the CLIP towers are skipped, everything after them is the same.
        """
        if clip_outputs is None:
            text = self.encode_text(text_ids, text_mask)
            video_features = self.encode_video(video, video_mask)
        else:
            words = clip_outputs.words
            text = TextFeatures(clip_outputs.sentence.float(),
                                None if words is None else words.float(), clip_outputs.text_mask)
            video_features = self.aggregate(clip_outputs.frames, clip_outputs.video_mask)
        text = TextFeatures(*(None if t is None else gather(t) for t in text))
        video_features = VideoFeatures(*(gather(v) for v in video_features))
        return self.loss(text, video_features)

    @torch.no_grad()
    def _ncl_biases(self, text: TextFeatures, video: VideoFeatures,
                    scores: Tensor) -> tuple[Tensor, Tensor]:
        """NCL biases of the batch's videos and texts from the batch plus the queued queries,
        then the batch joins the queues (FIFO)."""
        cfg = self.config.ncl
        bank_t2v = bank_v2t = None
        if len(self.text_queue):
            queued = self.text_queue.contents()
            queued_text = TextFeatures(queued[0], *(queued[1:] if self.uses_words else (None, None)))
            bank_t2v = self.score_in_chunks(queued_text, video, cfg.chunk, over="text")
        if len(self.video_queue):
            queued_video = VideoFeatures(*self.video_queue.contents())
            bank_v2t = self.score_in_chunks(text, queued_video, cfg.chunk, over="video").t()
        tau = cfg.tau if cfg.tau is not None else float(torch.exp(-self.clip.logit_scale))
        biases = ncl_batch_biases(scores, bank_t2v, bank_v2t, tau, cfg.iters, cfg.tol)
        self.text_queue.enqueue(*((text.sentence, text.words, text.mask) if self.uses_words
                                  else (text.sentence,)))
        self.video_queue.enqueue(video.frames, video.mask)
        return biases
