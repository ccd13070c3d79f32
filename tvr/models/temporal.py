"""Temporal aggregation of frame embeddings (docs/behaviour.md §5): ``--agg_module``.

Every module maps frame embeddings (B, F, d) and the frame mask (B, F) to new frame embeddings
(B, F, d) of the same shape; the GARE similarity then pools them per text.

- ``seqTransf``: learned frame position embeddings + a stack of CLIP residual blocks with padded
  frames masked as attention keys, then the input added back. The position table (77 rows) is
  initialised from CLIP's text positional embedding and the blocks from the first
  ``num_hidden_layers`` blocks of CLIP's text transformer (:meth:`SeqTransf.init_from_clip`).
  A CLIP trained from scratch (``tiny``) has no learned positions to give: its table is random
  at std 0.01, which beside frame embeddings of norm ~sqrt(d) leaves frame order invisible to
  the blocks. The table then keeps ``nn.Embedding``'s N(0, 1) initialisation, so frame order
  is visible (why: docs/demo.md §2).
  The blocks' LayerNorms use eps 1e-12 (:data:`SEQ_TRANSF_LN_EPS`), not CLIP's 1e-5: the
  reference builds this transformer from the CLIP4Clip/DRL cross-module code, whose TF-style
  LayerNorm has eps 1e-12, and loads only the weights from CLIP. Kept for fidelity
  (docs/behaviour.md §5; the demo: docs/demo.md §5).
- ``seqLSTM``: a 1-layer LSTM over the real frames (packed), padded back, plus residual. As in
  the reference, positions beyond the longest real video of the batch keep their input, so after
  the residual they hold twice the input; padded positions inside that length hold the input.
- ``meanP`` / ``None``: no aggregation (GARE pools frames itself; the names are the reference's).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tvr.models.clip import CLIP, Transformer
from tvr.models.config import AGG_MODULES

SEQ_TRANSF_LN_EPS = 1e-12  # the reference's TF-style LayerNorm in its temporal transformer


class SeqTransf(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, max_frames: int = 77):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(max_frames, width)
        self.transformer = Transformer(width, layers, heads, eps=SEQ_TRANSF_LN_EPS)

    @torch.no_grad()
    def init_from_clip(self, clip: CLIP) -> None:
        """Copy CLIP's first text blocks and, from a pretrained CLIP, its text positional
        embedding (docs/behaviour.md §5; see the module doc for a CLIP trained from scratch)."""
        layers = len(self.transformer.resblocks)
        if layers > len(clip.transformer.resblocks):
            raise ValueError(f"seqTransf has {layers} layers but the CLIP text transformer only "
                             f"{len(clip.transformer.resblocks)} to initialise them from; lower "
                             f"--num_hidden_layers")
        if clip.pretrained:
            self.frame_position_embeddings.weight.copy_(clip.positional_embedding)
        for ours, theirs in zip(self.transformer.resblocks, clip.transformer.resblocks):
            ours.load_state_dict(theirs.state_dict())

    def forward(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        positions = self.frame_position_embeddings.weight[:frames.shape[1]]
        out = self.transformer(frames + positions, key_mask=video_mask.bool())
        return out + frames


class SeqLSTM(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lstm = nn.LSTM(width, width, num_layers=1, batch_first=True)

    def forward(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        lengths = video_mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        out = torch.cat([out, frames[:, out.shape[1]:]], dim=1)
        return out + frames


class NoAggregation(nn.Module):
    def forward(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        return frames


def build_temporal(agg_module: str, clip: CLIP, num_hidden_layers: int = 4) -> nn.Module:
    """The aggregation module for ``--agg_module``, initialised from ``clip`` where it applies.

    Widths follow CLIP's text tower, as in the reference (equal to the embedding width d for
    every OpenAI CLIP and for the tiny configuration)."""
    cfg = clip.config
    if agg_module in ("seqTransf", "seqLSTM") and cfg.text_width != cfg.embed_dim:
        raise ValueError(f"{agg_module} needs CLIP's text width ({cfg.text_width}) to equal its "
                         f"embedding width ({cfg.embed_dim})")
    if agg_module == "seqTransf":
        module = SeqTransf(cfg.text_width, num_hidden_layers, cfg.text_heads, cfg.context_length)
        module.init_from_clip(clip)
        return module
    if agg_module == "seqLSTM":
        return SeqLSTM(cfg.text_width)
    if agg_module in ("meanP", "None"):
        return NoAggregation()
    raise ValueError(f"unknown --agg_module {agg_module!r}; choose one of {AGG_MODULES}")
