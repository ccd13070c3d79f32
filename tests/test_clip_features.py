"""Feature mode (--clip_features): frozen CLIP, cached outputs (docs/feature_mode.md).

Tiny CLIP on a small generated toy set (CPU). The central check: with --coef_lr 0 and the same
augmentation draws (--augment_per video in the full model, --feature_views E in feature mode),
training from cached CLIP outputs gives the full model's losses step for step.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tvr.data.clip_features import FeatureStore, FeatureStoreMismatch
from tvr.cli.flags import run_config
from tvr.cli.retrieval import parse_args
from tvr.data.loaders import build_split
from tvr.data.toy import make_toy_dataset
from tvr.models.factory import create_model
from tvr.training.feature_mode import FeatureMode, store_key
from tvr.storage import StoreBusyError
from tvr.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--base_encoder", "tiny", "--max_words", "16", "--max_frames", "4",
         "--video_framerate", "3", "--batch_size", "8", "--batch_size_val", "16", "--workers", "0",
         "--lr", "1e-3", "--num_hidden_layers", "2", "--n_display", "1", "--eval_every_steps",
         "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=24, num_val=0,
                            num_test=12, captions_per_video=2, workers=2)


def flags(toy, out, *extra) -> list[str]:
    return [*SMALL, "--anno_path", str(toy.root), "--video_path", str(toy.video_path),
            "--output_dir", str(out), *extra]


def configure(argv: list[str]):
    return run_config(parse_args(argv))


def split_of(config, model, split="train"):
    return build_split(config.data, split, model.clip.config.image_size, config.model.max_words,
                       train=True)


def train_losses(output_dir: Path) -> dict[int, float]:
    lines = (output_dir / "scalars.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["prefix"] == "train"}


def train_in_process(toy, out: Path, *extra: str) -> dict[int, float]:
    """Trainer.train (training and per-epoch validation, no final test) -> step: loss."""
    trainer = Trainer(configure(["--do_train", "1", *flags(toy, out, *extra)]))
    try:
        trainer.train(trainer.split("train", train=True), trainer.split("val"))
    finally:
        trainer.monitor.close()
    return train_losses(out)


def run_main(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "main_retrieval.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def test_feature_mode_trains_with_the_full_models_losses(toy, tmp_path):
    """Two epochs (12 steps) with RandAugment, two views: equal losses at coef_lr 0; the full
    model with CLIP training (coef_lr 1e-3, the recipe) departs from them, so the check bites."""
    common = ["--epochs", "2", "--train_augment", "randaugment"]
    full = train_in_process(toy, tmp_path / "full", *common, "--coef_lr", "0",
                            "--augment_per", "video")
    store = tmp_path / "store"
    cached = train_in_process(toy, tmp_path / "features", *common, "--coef_lr", "0",
                              "--clip_features", str(store), "--feature_views", "2")
    assert sorted(full) == sorted(cached) == list(range(1, 13))
    for step in full:
        assert cached[step] == pytest.approx(full[step], rel=1e-5, abs=0), step

    frames = np.load(store / "train.augmented" / "video_frames.npy")
    assert frames.shape == (2, 24, 4, 128)
    assert not np.allclose(frames[0], frames[1])  # two different augmentation draws

    moving = train_in_process(toy, tmp_path / "moving", *common, "--coef_lr", "1e-3",
                              "--augment_per", "video")
    gaps = [abs(moving[s] - cached[s]) / abs(cached[s]) for s in cached]
    assert gaps[0] < 1e-5 and gaps[1] < 1e-5  # BertAdam's first update has learning rate 0
    assert max(gaps) > 1e-4, gaps


def test_a_store_of_other_weights_or_flags_is_refused(toy, tmp_path):
    config = configure(flags(toy, tmp_path / "out", "--clip_features", str(tmp_path / "store")))
    torch.manual_seed(0)
    model = create_model(config.model)
    key = store_key(config, model, "fp32")
    FeatureStore(tmp_path / "store", key)
    FeatureStore(tmp_path / "store", key)  # the same key opens it again

    with torch.no_grad():
        model.clip.visual.proj.add_(1e-3)
    with pytest.raises(FeatureStoreMismatch, match=r"clip\.sha256: stored"):
        FeatureStore(tmp_path / "store", store_key(config, model, "fp32"))

    other = configure(flags(toy, tmp_path / "out", "--max_frames", "3", "--feature_views", "2"))
    with pytest.raises(FeatureStoreMismatch) as error:
        FeatureStore(tmp_path / "store", store_key(other, model, "fp32"))
    message = str(error.value)
    assert "video.max_frames: stored 4, this run 3" in message
    assert "train_views.views: stored 1, this run 2" in message

    words = configure(flags(toy, tmp_path / "out", "--psi_context", "words"))
    with pytest.raises(FeatureStoreMismatch, match="words: stored False, this run True"):
        FeatureStore(tmp_path / "store", store_key(words, create_model(words.model), "fp32"))


def test_a_store_with_word_states_serves_a_run_without_them(toy, tmp_path):
    words = configure(flags(toy, tmp_path / "out", "--psi_context", "words"))
    torch.manual_seed(0)
    model = create_model(words.model)
    FeatureStore(tmp_path / "store", store_key(words, model, "fp32"))
    plain = configure(flags(toy, tmp_path / "out"))
    assert FeatureStore(tmp_path / "store", store_key(plain, model, "fp32")).has_words


ARRAYS = {"text_sentence": ((2, 3), "float32"), "text_mask": ((2, 4), "uint8"),
          "video_frames": ((1, 2, 4, 3), "float32"), "video_mask": ((2, 4), "uint8")}


def test_one_writer_at_a_time_and_no_run_loses_anothers_split(tmp_path):
    root = tmp_path / "store"
    first, second = FeatureStore(root, {"k": 1}), FeatureStore(root, {"k": 1})  # two runs
    (root / "train").mkdir()
    killed = [root / f".manifest.json.{os.getpid()}.tmp", root / "train" / ".progress.json.1.tmp"]
    for path in killed:
        path.write_text("{")
    with first.writer("train", {"views": 1}, ARRAYS) as writer:
        assert not any(path.exists() for path in killed)  # removed under the lock
        with pytest.raises(StoreBusyError) as error:
            second.writer("test", {"views": 1}, ARRAYS)
        assert str(error.value) == (
            f"another process is writing {root} (pid {os.getpid()} on {socket.gethostname()}); "
            f"wait for it to finish, then run again")
        writer.finish({})
    with second.writer("test", {"views": 1}, ARRAYS) as writer:
        writer.finish({})
    assert sorted(FeatureStore(root, {"k": 1}).manifest["splits"]) == ["test", "train"]


def test_an_interrupted_extraction_resumes_to_the_same_arrays(toy, tmp_path, monkeypatch):
    config = configure(flags(toy, tmp_path / "out", "--clip_features", str(tmp_path / "a"),
                            "--feature_views", "2", "--batch_size_val", "5"))
    torch.manual_seed(0)
    model = create_model(config.model)
    dataset = split_of(config, model)
    logs = []
    whole = FeatureMode(config, model, torch.device("cpu"), contextlib.nullcontext, "fp32", 1,
                        logs.append)
    reference = whole.stored(dataset, train=True)

    config = replace(config, features=replace(config.features, clip_features=str(tmp_path / "b")))
    interrupted = FeatureMode(config, model, torch.device("cpu"), whole.autocast, "fp32", 1,
                              logs.append)
    calls = {"n": 0}
    original = model.frame_embeddings

    def failing(video):
        calls["n"] += 1
        if calls["n"] == 7:  # view 2, second batch
            raise KeyboardInterrupt
        return original(video)

    monkeypatch.setattr(model, "frame_embeddings", failing)
    with pytest.raises(KeyboardInterrupt):
        interrupted.stored(dataset, train=True)
    progress = json.loads((tmp_path / "b" / "train.augmented" / "progress.json").read_text())
    assert progress["done"] == {"text": 48, "video0": 24, "video1": 5}
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["splits"] == {}

    monkeypatch.setattr(model, "frame_embeddings", original)
    resumed = FeatureMode(config, model, torch.device("cpu"), whole.autocast, "fp32", 1,
                          logs.append).stored(dataset, train=True)
    assert any("resuming train.augmented" in line for line in logs)
    for name in ("sentence", "text_mask", "frames", "video_mask"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
    assert not (tmp_path / "b" / "train.augmented" / "progress.json").exists()


def test_unreadable_videos_are_left_out_of_the_store_and_reported(toy, tmp_path):
    data = tmp_path / "toy"
    shutil.copytree(toy.root, data)
    train_ids = (data / "MSRVTT_train.9k.csv").read_text().split()[1:]
    corrupt = data / "videos" / f"{train_ids[3]}.mp4"
    corrupt.write_bytes(b"not a video at all")
    config = configure([*SMALL, "--anno_path", str(data), "--video_path", str(data / "videos"),
                       "--train_augment", "none", "--skip_bad_videos",
                       "--clip_features", str(tmp_path / "store")])
    torch.manual_seed(0)
    model = create_model(config.model)
    dataset = split_of(config, model)
    logs = []
    features = FeatureMode(config, model, torch.device("cpu"), contextlib.nullcontext, "fp32", 1,
                           logs.append)
    batches, sampler, _ = features.train_loader(dataset, 0, 1, 8)
    stored = features.opened["train"]
    assert [s["video_id"] for s in stored.skipped] == [train_ids[3]]
    assert sampler.num_samples == 46  # its two captions are left out
    seen = [int(i) for i in np.fromiter(iter(sampler), dtype=np.int64)]
    assert all(dataset.caption_to_video[batches.captions[i]] != 3 for i in seen)
    assert any(str(corrupt) in line and "left out" in line for line in logs)
    assert len(list(batches)) == len(batches) == 5


def test_feature_mode_end_to_end_and_its_checkpoints_are_full_models(toy, tmp_path):
    """One epoch in feature mode from the command line; its checkpoint is a normal model: the
    full evaluation path gives the metrics of the cached one. A store of other flags is
    refused with exit status 2."""
    store, out = tmp_path / "store", tmp_path / "run"
    run_main(["--do_train", "1", "--epochs", "1", "--coef_lr", "1e-3",
              *flags(toy, out, "--clip_features", str(store))])
    log = (out / "log.txt").read_text()
    assert "feature mode: extracting train.augmented" in log and "tensors frozen" in log
    metrics = json.loads((out / "metrics_test.json").read_text())["raw"]
    assert sorted(train_losses(out)) == list(range(1, 7))

    ckpt = str(out / "ckpt_best.pt")
    full = run_main(["--do_eval", "1", "--init_model", ckpt, *flags(toy, tmp_path / "full")])
    assert json.loads((tmp_path / "full" / "metrics_test.json").read_text())["raw"] == metrics
    cached = run_main(["--do_eval", "1", "--init_model", ckpt,
                       *flags(toy, tmp_path / "cached", "--clip_features", str(store))])
    assert json.loads((tmp_path / "cached" / "metrics_test.json").read_text())["raw"] == metrics
    assert "feature mode: extracting" not in (tmp_path / "cached" / "log.txt").read_text()
    assert full.returncode == cached.returncode == 0

    refused = run_main(["--do_train", "1", "--epochs", "1",
                        *flags(toy, tmp_path / "refused", "--clip_features", str(store),
                               "--max_frames", "3")], check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "video.max_frames: stored 4, this run 3" in refused.stderr
