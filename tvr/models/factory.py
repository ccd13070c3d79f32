"""The model of a configuration: :class:`ModelConfig` and :func:`create_model`.

A trained model's configuration travels in its checkpoint (tvr/training/checkpoint.py,
``model_record``); :func:`config_from_record` turns that record back into a
:class:`ModelConfig` and the CLIP architecture, so a checkpoint alone rebuilds its model.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from tvr.models.clip import CLIP, CLIP_CONFIGS, CLIPConfig
from tvr.models.gare import GARE, GAREConfig
from tvr.models.pretrained import load_clip
from tvr.settings import check_settings, integer, setting

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


def create_model(config: ModelConfig, clip: Optional[CLIPConfig] = None) -> GARE:
    """The GARE model of ``config``. Without ``clip`` the CLIP release file of
    ``config.base_encoder`` is loaded (random weights for ``tiny``); with it, a CLIP of those
    shapes starts from random weights that a checkpoint's then replace (no release file)."""
    backbone = CLIP(clip) if clip is not None else load_clip(config.base_encoder,
                                                             config.clip_path)
    return GARE(backbone, config.gare)


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


def config_from_record(record: dict[str, Any], clip_path: Optional[str] = None
                       ) -> tuple[ModelConfig, CLIPConfig]:
    """The model configuration and CLIP architecture that a checkpoint's record holds."""
    model = ModelConfig(base_encoder=record["base_encoder"], clip_path=clip_path,
                        max_words=record["max_words"],
                        gare=config_from_dict(GAREConfig, record["gare"]))
    return model, CLIPConfig(**record["clip"])


def record_of(config: ModelConfig, model: GARE) -> dict[str, Any]:
    """The model part of a checkpoint's record: enough to rebuild ``model`` without a flag."""
    return {"base_encoder": config.base_encoder, "max_words": config.max_words,
            "clip": dataclasses.asdict(model.clip.config), "gare": dataclasses.asdict(model.config)}

