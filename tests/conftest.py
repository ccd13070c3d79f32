"""Shared fixtures. ``../shared`` (real annotation files) sits beside a developer checkout only:
tests that need it are skipped, with the reason shown, on a fresh clone."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def msrvtt_dir() -> Path:
    path = SHARED / "data" / "msrvtt"
    if not (path / "MSRVTT_JSFUSION_test.csv").is_file():
        pytest.skip(f"real MSR-VTT annotations not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
