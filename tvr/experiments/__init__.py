"""Reproduce the paper's tables: each a list of rows run through main_retrieval.py, resumable,
reported beside the published numbers with error bars (``python -m tvr.experiments --help``)."""
