"""Evaluation helpers: inference-time score normalisers (docs/behaviour.md §8, §11)."""
