"""Models: the CLIP backbone and its tokenizer (and, built on them, the GARE retrieval model)."""
from tvr.models.clip import CLIP, CLIP_CONFIGS, CLIPConfig
from tvr.models.pretrained import CheckpointNotFoundError, find_checkpoint, load_clip
from tvr.models.tokenizer import ClipTokenizer

__all__ = ["CLIP", "CLIP_CONFIGS", "CLIPConfig", "CheckpointNotFoundError", "ClipTokenizer",
           "find_checkpoint", "load_clip"]
