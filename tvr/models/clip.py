"""OpenAI CLIP (ViT variants) with the OpenAI state-dict key names.

The modules mirror the OpenAI release closely enough that an OpenAI or open_clip ViT state dict
loads unchanged (``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``, ...),
but attention runs through ``F.scaled_dot_product_attention`` on batch-first tensors, so the
fused (flash / memory-efficient) kernels are used where the device has them.

Architecture hyper-parameters live in :class:`CLIPConfig` (tvr/models/config.py); they are read
from a checkpoint's tensor shapes (:meth:`CLIPConfig.from_state_dict`) or taken from
:data:`CLIP_CONFIGS`, which also holds the small ``"tiny"`` configuration used by the tests and
the CPU demo. docs/behaviour.md §1.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvr.models.config import CLIPConfig

NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI TorchScript


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, batch-first."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's default

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x: (N, L, width). key_mask: optional (N, L) bool, True for keys that may be attended."""
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask,
                                             is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with QuickGELU.

    ``eps``: the LayerNorms' epsilon (CLIP's 1e-5; the temporal transformer passes its own).
    """

    def __init__(self, width: int, heads: int, eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_mask, causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, eps: float = 1e-5):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, eps)
                                       for _ in range(layers))

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        for block in self.resblocks:
            x = block(x, key_mask, causal)
        return x


class VisionTransformer(nn.Module):
    """Frames (N, 3, H, W) -> embeddings (N, embed_dim) = ln_post(CLS) @ proj.

    ``conv1`` (the patch embedding) is frozen, as in the GARE/DRL recipe (docs/behaviour.md §1).
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        width = cfg.vision_width
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.conv1.weight.requires_grad_(False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.grid_size ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (N, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP with a ViT image tower and the causal text transformer (docs/behaviour.md §1)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.pretrained = False  # set by the loader once released weights are in
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI's initialisation (used for the tiny model trained from scratch and for tests),
        except the image position table, which starts N(0, 1) rather than N(0, 1/width).

        conv1 is frozen, so its random patch embeddings (per-dimension std about 1 on normalised
        pixels) never shrink; a position table 1/sqrt(width) as large is lost beside them after
        ln_pre, and a model trained from scratch then barely knows where an object is
        (measurements: docs/demo.md §2). Loaded checkpoints replace all of it.
        """
        cfg = self.config
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        v_scale = cfg.vision_width ** -0.5
        nn.init.normal_(self.visual.conv1.weight, std=(3 * cfg.patch_size ** 2) ** -0.5)
        nn.init.normal_(self.visual.class_embedding, std=v_scale)
        nn.init.normal_(self.visual.positional_embedding, std=1.0)
        nn.init.normal_(self.visual.proj, std=v_scale)
        nn.init.normal_(self.text_projection, std=cfg.text_width ** -0.5)
        for tower in (self.visual.transformer, self.transformer):
            width, layers = tower.width, len(tower.resblocks)
            proj_std = width ** -0.5 * (2 * layers) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
                nn.init.zeros_(block.mlp.c_fc.bias)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
                nn.init.zeros_(block.mlp.c_proj.bias)

    def encode_image(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) normalised images -> (N, embed_dim) embeddings (not normalised)."""
        return self.visual(images)

    def encode_text(self, ids: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(N, L) token ids with L <= context_length -> (N, embed_dim) EOT embeddings.

        The sentence embedding is the final hidden state at the EOT token (the highest id in
        each row) projected by ``text_projection``. The causal mask alone is applied: padding
        sits after EOT, so masking padded keys as well would not change the EOT output. With
        ``return_hidden`` the projected hidden states of every position, (N, L, embed_dim), are
        returned too (positions after EOT are padding and must be masked by the caller).
        """
        length = ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"text length {length} exceeds the context length "
                             f"{self.config.context_length} of this CLIP")
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.transformer(x, causal=True)
        x = self.ln_final(x)
        sentence = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        sentence = sentence @ self.text_projection
        if return_hidden:
            return sentence, x @ self.text_projection
        return sentence
