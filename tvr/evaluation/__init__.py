"""Evaluation helpers: inference-time score normalisers (SPEC §8, §11)."""
