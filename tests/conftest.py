"""Shared fixtures. ``../shared`` (real annotation files) sits beside a developer checkout only:
tests that need it are skipped, with the reason shown, on a fresh clone.

Every test runs under a time limit (pytest-timeout, ``TEST_TIMEOUT_S``): a test that hangs (a
deadlocked worker process, a lost rendezvous) ends the run with a stack dump of every thread
instead of stalling CI until its budget runs out. The slowest test takes under a minute here,
but for tests/test_demo.py, which trains the demo (about 4 minutes) under a limit of its own.

The warning filters of ``pytest.ini`` (a deprecation is an error) also hold in the Python
processes that tests start (main_retrieval.py, torchrun's workers, the preprocess scripts):
they are passed on in ``PYTHONWARNINGS``, after any the caller set, so that ours win.
"""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


TEST_TIMEOUT_S = 600


def pytest_configure(config):
    ours = [line.strip() for line in config.getini("filterwarnings")]
    theirs = [os.environ["PYTHONWARNINGS"]] if os.environ.get("PYTHONWARNINGS") else []
    os.environ["PYTHONWARNINGS"] = ",".join(theirs + ours)


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="thread"))


@pytest.fixture
def msrvtt_dir() -> Path:
    path = SHARED / "data" / "msrvtt"
    if not (path / "MSRVTT_JSFUSION_test.csv").is_file():
        pytest.skip(f"real MSR-VTT annotations not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
