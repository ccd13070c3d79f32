"""tvr: text-video retrieval with GARE (gap-aware retrieval) and NCL on a CLIP backbone."""
