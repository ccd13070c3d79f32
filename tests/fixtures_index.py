"""A tiny untrained checkpoint for the tests of the video index (tests only): written in a
second, with the record and sampling of a real one, so an index of toy videos builds fast; an
index of toy videos; a CLIP file of random weights for zero-shot indexes; and an application
served by waitress in a thread."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import flask
import torch

from tvr.cli.flags import run_config
from tvr.cli.retrieval import parse_args
from tvr.data.toy import make_toy_dataset
from tvr.index.build import build_index
from tvr.index.config import BuildConfig
from tvr.index.search import VideoIndex
from tvr.index.server import listen, wsgi_server
from tvr.models.clip import CLIP
from tvr.models.config import CLIP_CONFIGS
from tvr.models.factory import create_model
from tvr.training import checkpoint as ckpt

TINY_FLAGS = ["--base_encoder", "tiny", "--num_hidden_layers", "2", "--max_frames", "4",
              "--max_words", "16", "--video_framerate", "3"]
NESTED = "more clips/clip #1.mp4"  # a video in a subfolder, its name needing URL quoting


def tiny_checkpoint(path: Path) -> Path:
    """A ``ckpt_best.pt`` at ``path`` of an untrained tiny model (:data:`TINY_FLAGS`)."""
    config = run_config(parse_args([*TINY_FLAGS, "--anno_path", "a", "--video_path", "v"]))
    model = create_model(config.model)
    record = ckpt.model_record(config.model, config.data.sampling, model)
    return ckpt.save_model(path, model, config=record, epoch=0, global_step=0, metric=None,
                           args=config.arguments)


def build(checkpoint: Path, videos: Path, out: Path) -> None:
    """Index ``videos`` into ``out`` (no loader processes, no progress bar); every file reads."""
    report = build_index(BuildConfig(str(videos), str(out), str(checkpoint), workers=0),
                         progress=False)
    assert report.encoded and not report.failed, report.format()


def tiny_clip_file(path: Path, seed: int = 0) -> Path:
    """A CLIP file at ``path``: the tiny CLIP with random weights, saved as a state dict in the
    OpenAI key layout (what tvr/models/pretrained.py reads from a release file)."""
    torch.manual_seed(seed)
    torch.save(CLIP(CLIP_CONFIGS["tiny"]).state_dict(), path)
    return path


def toy_index(root: Path, checkpoint: Path) -> VideoIndex:
    """An index (``root/index``) of 10 toy videos (``root/toy``, one moved to :data:`NESTED`)
    by ``checkpoint``'s model, opened for search."""
    toy = make_toy_dataset(root / "toy", num_train=6, num_val=0, num_test=4, workers=1)
    (toy.video_path / NESTED).parent.mkdir()
    (toy.video_path / "video9.mp4").rename(toy.video_path / NESTED)
    build(checkpoint, toy.video_path, root / "index")
    index = VideoIndex.open(root / "index")
    assert len(index) == 10
    return index


@contextmanager
def served(app: flask.Flask, threads: int = 4) -> Iterator[str]:
    """``app`` served by waitress as ``serve`` runs it (:func:`tvr.index.server.wsgi_server`)
    on a free local port, in a thread, until the block ends: its URL."""
    with listen("127.0.0.1", 0) as listener:
        server = wsgi_server(app, listener, threads)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
        finally:
            server.trigger.pull_trigger(server.close)  # closed by its own loop's thread,
            # which then ends, nothing being left to serve
            thread.join(timeout=60)
            server.task_dispatcher.shutdown()
    assert not thread.is_alive(), "waitress did not stop"
