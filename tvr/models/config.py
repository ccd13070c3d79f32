"""The configurations of the models, without torch: CLIP's shapes (:class:`CLIPConfig`), the
similarity (:class:`SimilarityConfig`), GARE (:class:`GAREConfig`, :class:`NCLConfig`) and the
whole model (:class:`ModelConfig`).

They declare main_retrieval.py's model flags (tvr/settings.py), so they live apart from the
modules they configure (clip.py, similarity.py, gare.py, factory.py, which import them from
here): parsing the command line, ``--help`` included, imports no model code.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional

from tvr.losses.config import GARELossWeights
from tvr.settings import FRACTION, POSITIVE, Bounds, check_settings, integer, setting

if TYPE_CHECKING:
    from torch import Tensor

HEAD_WIDTH = 64  # every OpenAI CLIP uses 64-wide attention heads: heads = width // 64


@dataclass(frozen=True)
class CLIPConfig:
    """Shapes of a ViT CLIP. ``embed_dim`` is the joint embedding width d."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def vision_heads(self) -> int:
        return self.vision_width // HEAD_WIDTH

    @property
    def text_heads(self) -> int:
        return self.text_width // HEAD_WIDTH

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor]) -> "CLIPConfig":
        """Read every hyper-parameter from the tensor shapes of a CLIP ViT state dict."""
        if "visual.proj" not in state_dict:
            raise ValueError(
                "state dict is not a CLIP ViT checkpoint (no 'visual.proj'); only the ViT "
                "variants (ViT-B/32, ViT-B/16, ViT-L/14) are supported")
        conv1 = state_dict["visual.conv1.weight"]
        patch_size = conv1.shape[-1]
        grid = math.isqrt(state_dict["visual.positional_embedding"].shape[0] - 1)
        return cls(
            embed_dim=state_dict["text_projection"].shape[1],
            image_size=patch_size * grid,
            patch_size=patch_size,
            vision_width=conv1.shape[0],
            vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
            text_width=state_dict["ln_final.weight"].shape[0],
            text_layers=_count_blocks(state_dict, "transformer.resblocks."),
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
        )


def _count_blocks(state_dict: dict[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


CLIP_CONFIGS: dict[str, CLIPConfig] = {
    "ViT-B/32": CLIPConfig(512, 224, 32, 768, 12, 512, 12),
    "ViT-B/16": CLIPConfig(512, 224, 16, 768, 12, 512, 12),
    "ViT-L/14": CLIPConfig(768, 224, 14, 1024, 24, 768, 12),
    # Small enough to train from scratch on a CPU in minutes (tests, demo). The text tower has
    # four blocks so that seqTransf can be initialised from them as for the real models.
    "tiny": CLIPConfig(128, 32, 8, 128, 2, 128, 4),
}


@dataclass(frozen=True)
class SimilarityConfig:
    """Hyper-parameters and ablation switches of the GARE similarity (docs/behaviour.md §6).

    Defaults are the published MSR-VTT setting.

    Attributes:
        dim: embedding width d (512 for ViT-B/32 and ViT-B/16, 768 for ViT-L/14); every layer of
            Psi is d wide.
        temp: temperature of the text-conditioned pooling softmax (`--temp`, 3.0).
        dropout: dropout probability inside Psi, on W_1 x + b_1 (0.3).
        delta_side: where the increment is applied. "text" (default): s = cos(t_a + Δ_ab, v_ab).
            "video" (used for ActivityNet): s = cos(t_a, v_ab + Δ_ab).
        psi_query: query of Psi. "gap" (default): the semantic gap g_ab. "text": t_a alone.
        gap_sign: η in g_ab = η (mean_k f_bk − t_a). +1 (default): video minus text;
            −1: text minus video. No effect with psi_query="text".
        psi_context: keys/values of Psi. "frames" (default): the video's frames f_bk, all F slots,
            no mask (as the reference). "words": the text's word features (B_t, L, d) with padded
            words masked out of the attention softmax (the forward then needs `words` and
            `word_mask`; a row needs at least one real word).
        no_delta: the paper's Baseline: s_ab = cos(t_a, v_ab), no Psi is built and Δ is None.
        normalize_delta: the paper's "normalized Δ" ablation (Table 6): Psi's output is scaled to
            unit L2 norm per pair, Δ_ab / max(||Δ_ab||, 1e-12), before it enters the score; the
            returned Δ, hence every loss term, is the normalised one. No effect with no_delta.
    """

    dim: int = 512
    temp: float = setting(3.0, "temperature of the text-conditioned frame pooling softmax",
                          POSITIVE)
    dropout: float = setting(0.3, "dropout inside Psi, on W_1 x + b_1", FRACTION,
                             flag="psi_dropout")
    delta_side: Literal["text", "video"] = setting(
        "text", "apply Δ to the text (s = cos(t + Δ, v); MSR-VTT) or to the pooled video "
                "(s = cos(t, v + Δ); ActivityNet)", choices=("text", "video"))
    psi_query: Literal["gap", "text"] = setting(
        "gap", "Psi's query: the semantic gap g_ab, or the text embedding alone",
        choices=("gap", "text"))
    gap_sign: int = setting(1, "η in g = η (mean frame - text): +1 video minus text, "
                               "-1 reversed", choices=(1, -1))
    psi_context: Literal["frames", "words"] = setting(
        "frames", "Psi's keys/values: the video's frames, or the caption's words",
        choices=("frames", "words"))
    no_delta: bool = setting(False, "the paper's Baseline: no Psi, s = cos(t, pooled video)")
    normalize_delta: bool = setting(False, "scale Δ to unit L2 norm per pair before it is added "
                                           "and before the losses see it (paper Table 6)")

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        check_settings(self)


AGG_MODULES = ("seqTransf", "seqLSTM", "meanP", "None")  # --agg_module: tvr/models/temporal.py


@dataclass(frozen=True)
class NCLConfig:
    """NCL training (docs/behaviour.md §8). ``tau=None`` uses the contrastive temperature
    1/exp(logit_scale).

    ``queue`` past queries per direction (texts for text->video, videos for video->text) join
    the batch's queries when the Sinkhorn biases are computed; their scores against the batch
    are computed with the model's current similarity, in chunks of ``chunk`` queued items.
    """

    enabled: bool = setting(False, "train with NCL biases (off by default)", flag="ncl")
    tau: Optional[float] = setting(None, "Sinkhorn temperature (default: 1/exp(logit_scale))",
                                   Bounds(0, low_open=True, optional=True), flag="ncl_tau",
                                   kind=float)
    iters: int = setting(10, "Sinkhorn iterations", integer(1), flag="ncl_iters")
    tol: float = 1e-4
    queue: int = setting(4096, "past queries kept per direction for the training-time biases",
                         integer(1), flag="ncl_queue")
    chunk: int = 512

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class GAREConfig:
    """Everything of the model beyond CLIP. Defaults = the published MSR-VTT recipe.

    ``similarity.dim`` is ignored: the similarity always takes CLIP's embedding width.
    """

    agg_module: str = setting("seqTransf", "frame aggregation before the similarity (the msvd "
                                           "recipe uses None: the reference skips it there)",
                              choices=AGG_MODULES)
    num_hidden_layers: int = setting(4, "seqTransf blocks, initialised from the first CLIP text "
                                        "blocks", integer(1))
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    loss: GARELossWeights = field(default_factory=GARELossWeights)
    ncl: NCLConfig = field(default_factory=NCLConfig)

    def __post_init__(self) -> None:
        check_settings(self)


BASE_ENCODERS = ("ViT-B/32", "ViT-B/16", "ViT-L/14", "tiny")
CONTEXT_LENGTH = min(config.context_length for config in CLIP_CONFIGS.values())


@dataclass(frozen=True)
class ModelConfig:
    """The CLIP backbone, the caption length and everything GARE adds (:class:`GAREConfig`)."""

    base_encoder: str = setting("ViT-B/32", "CLIP architecture; 'tiny' is a small CLIP trained "
                                            "from scratch", choices=BASE_ENCODERS)
    clip_path: Optional[str] = setting(
        None, "CLIP checkpoint file, or a folder holding ViT-B-32.pt etc. (default: "
              "$TVR_CLIP_PATH, then tvr/models/)", kind=str)
    max_words: int = setting(32, "caption tokens incl. SOT/EOT", integer(3, CONTEXT_LENGTH),
                             group="data")
    gare: GAREConfig = field(default_factory=GAREConfig)

    def __post_init__(self) -> None:
        check_settings(self)


def config_from_dict(config_type: type, values: dict[str, Any]) -> Any:
    """A (nested) frozen configuration from the plain dict ``dataclasses.asdict`` made of it;
    keys the class does not have are an error (a record of another version)."""
    hints = typing.get_type_hints(config_type)
    unknown = set(values) - {item.name for item in dataclasses.fields(config_type)}
    if unknown:
        raise ValueError(f"{config_type.__name__} has no field(s) {sorted(unknown)}")
    built = {}
    for name, value in values.items():
        kind = hints[name]
        built[name] = (config_from_dict(kind, value)
                       if dataclasses.is_dataclass(kind) and isinstance(value, dict) else value)
    return config_type(**built)
