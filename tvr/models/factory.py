"""The model of a configuration: :func:`create_model` builds it from a :class:`ModelConfig`
(tvr/models/config.py).

A trained model's configuration travels in its checkpoint (tvr/training/checkpoint.py,
``model_record``); :func:`config_from_record` turns that record back into a
:class:`ModelConfig` and the CLIP architecture, so a checkpoint alone rebuilds its model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tvr.models.clip import CLIP
from tvr.models.config import CLIPConfig, GAREConfig, ModelConfig, config_from_dict
from tvr.models.gare import GARE
from tvr.models.pretrained import load_clip


def create_model(config: ModelConfig, clip: Optional[CLIPConfig] = None) -> GARE:
    """The GARE model of ``config``. Without ``clip`` the CLIP release file of
    ``config.base_encoder`` is loaded (random weights for ``tiny``); with it, a CLIP of those
    shapes starts from random weights that a checkpoint's then replace (no release file)."""
    backbone = CLIP(clip) if clip is not None else load_clip(config.base_encoder,
                                                             config.clip_path)
    return GARE(backbone, config.gare)


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

