"""--noisy_pairs P (tvr/data/noise.py): a fraction of the training captions paired with another
video, for robustness tests. The draw itself, the dataset it re-pairs, the flag, the trainer
(training split only, logged, recorded) in both modes, and a toy run from the command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tvr.cli.flags import run_config
from tvr.cli.retrieval import parse_args
from tvr.data.datasets import Annotations, Pair, RetrievalDataset, VideoFiles
from tvr.data.noise import NoiseReport, add_noise, reassign_videos
from tvr.data.toy import make_toy_dataset
from tvr.evaluation.metrics import compare_normalisers
from tvr.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--base_encoder", "tiny", "--max_words", "16", "--max_frames", "4",
         "--video_framerate", "3", "--batch_size", "8", "--batch_size_val", "16", "--workers", "0",
         "--lr", "1e-3", "--num_hidden_layers", "2", "--train_augment", "none", "--device", "cpu"]


@st.composite
def pairings(draw) -> tuple[list[int], int]:
    videos = draw(st.integers(2, 30))
    return draw(st.lists(st.integers(0, videos - 1), min_size=1, max_size=200)), videos


@settings(max_examples=200, deadline=None, derandomize=True)
@given(pairings(), st.floats(0, 1, exclude_max=True), st.integers(0, 2**32 - 1))
def test_exactly_round_p_n_captions_move_each_to_another_video(pairing, fraction, seed):
    captions, videos = pairing
    noisy = reassign_videos(captions, videos, fraction, seed)
    moved = noisy != np.asarray(captions)
    assert moved.sum() == round(fraction * len(captions))
    assert noisy.min() >= 0 and noisy.max() < videos
    assert np.array_equal(noisy, reassign_videos(captions, videos, fraction, seed))


def test_the_new_video_is_uniform_over_the_other_videos():
    noisy = reassign_videos([0] * 20000, 5, 0.5, seed=3)
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 10000  # the captions left alone: a moved one never lands on its own
    assert all(abs(c - 2500) < 200 for c in counts[1:]), counts  # ~ 4.4 standard deviations


def test_seeds_choose_different_captions_and_zero_changes_nothing():
    captions = [i // 20 for i in range(2000)]
    draws = [reassign_videos(captions, 100, 0.2, seed) for seed in range(5)]
    chosen = {tuple(np.flatnonzero(d != np.asarray(captions))) for d in draws}
    assert len(chosen) == 5
    clean = reassign_videos(captions, 100, 0.0, seed=7)
    assert clean.tolist() == captions


@pytest.mark.parametrize("fraction, videos", [(1.0, 10), (-0.1, 10), (0.5, 1)])
def test_a_fraction_outside_0_1_or_a_single_video_is_refused(fraction, videos):
    with pytest.raises(ValueError):
        reassign_videos([0] * 10, videos, fraction, seed=0)


def test_the_report_line_and_its_metrics_entry():
    report = NoiseReport(0.2, 36000, 180000)
    assert str(report) == ("noisy_pairs 0.2: 36,000 of 180,000 training captions re-assigned "
                           "to another video")
    assert report.record() == {"fraction": 0.2, "reassigned": 36000}


class Tokens:
    """A tokenizer stand-in: the caption's length as its one token."""

    @staticmethod
    def encode_caption(text: str, max_words: int):
        return np.array([len(text)]), np.array([1])


def test_one_caption_per_video_is_re_paired_and_every_video_keeps_its_window(tmp_path):
    """ActivityNet-like: one caption per video, a window each. Re-paired captions read their new
    video with that video's window; a video left without captions stays listed, with its own."""
    ids = [f"v{i}" for i in range(6)]
    for video_id in ids:
        (tmp_path / f"{video_id}.mp4").write_bytes(b"")
    pairs = [Pair(f"caption of {v}", v, 0.0, float(10 + i)) for i, v in enumerate(ids)]
    read = []

    def frames(path, start, end):
        read.append((Path(path).stem, start, end))
        return torch.zeros(1, 3, 2, 2), torch.ones(1, dtype=torch.long)

    files = VideoFiles(tmp_path, lambda video_id: [f"{video_id}.mp4"])
    dataset = RetrievalDataset(Annotations(pairs, ids), files, Tokens(), frames, max_words=4,
                               name="toy/train")
    report = add_noise(dataset, 0.5, seed=1)
    assert report == NoiseReport(0.5, 3, 6)
    moved = [i for i, v in enumerate(dataset.caption_to_video) if v != i]
    assert len(moved) == 3 and dataset.pairs == pairs and dataset.video_ids == ids
    assert dataset.video_bounds == [(0.0, float(10 + i)) for i in range(6)]
    assert sorted(c for captions in dataset.video_to_captions for c in captions) == list(range(6))
    assert any(not captions for captions in dataset.video_to_captions)
    for i in moved:
        item = dataset[i]
        v = dataset.caption_to_video[i]
        assert item.video_index == v and read[-1] == (ids[v], 0.0, float(10 + v))


def test_the_flag_parses_and_refuses_1_and_minus_0_1_in_one_line(capsys):
    base = ["--anno_path", "anns", "--video_path", "videos"]
    assert run_config(parse_args(base)).data.noisy_pairs == 0.0
    assert run_config(parse_args([*base, "--noisy_pairs", "0.2"])).data.noisy_pairs == 0.2
    for value in ("1.0", "-0.1"):
        with pytest.raises(SystemExit) as stop:
            parse_args([*base, "--noisy_pairs", value])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(lines) == 2, lines  # argparse's usage, the error
        assert lines[1] == ("main_retrieval.py: error: argument --noisy_pairs: must be a finite "
                            f"number in [0, 1), got {value}")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=24, num_val=0,
                            num_test=12, captions_per_video=2, workers=2)


def trainer_of(toy, out: Path, *extra: str) -> Trainer:
    return Trainer(run_config(parse_args([*SMALL, "--anno_path", str(toy.root), "--video_path",
                                          str(toy.video_path), "--output_dir", str(out),
                                          *extra])))


def annotated(dataset: RetrievalDataset) -> list[int]:
    """The pairing that the annotations of ``dataset`` give."""
    return [dataset.video_ids.index(pair.video_id) for pair in dataset.pairs]


@pytest.mark.parametrize("fraction, moved", [("0", 0), ("0.5", 24)])
def test_the_trainer_re_pairs_the_training_split_only_and_records_it(toy, tmp_path, fraction,
                                                                       moved):
    trainer = trainer_of(toy, tmp_path, "--noisy_pairs", fraction)
    try:
        train = trainer.training_split()
        val, test, bank = trainer.split("val"), trainer.split("test"), trainer.split("train")
        scores = torch.eye(len(test.video_ids))[test.caption_to_video]
        trainer.write_results({"raw": compare_normalisers(scores, torch.tensor(
            test.caption_to_video))["raw"], "ranks": {}, "skipped_videos": []}, "test")
    finally:
        trainer.monitor.close()
    assert sum(a != b for a, b in zip(train.caption_to_video, annotated(train))) == moved
    for clean in (val, test, bank):
        assert clean.caption_to_video == annotated(clean)
    record = json.loads((tmp_path / "metrics_test.json").read_text())
    assert record["noisy_pairs"] == {"fraction": float(fraction), "reassigned": moved}
    line = "noisy_pairs 0.5: 24 of 48 training captions re-assigned to another video"
    assert (line in (tmp_path / "log.txt").read_text()) == bool(moved)


def test_feature_mode_trains_on_the_noisy_pairs_from_the_clean_store(toy, tmp_path):
    """The noise changes which video a caption meets, not what is cached: a store extracted by
    a clean run serves the noisy one (nothing extracted again), and its batches pair each
    caption's cached outputs with those of its new video."""
    store = ["--clip_features", str(tmp_path / "store")]
    clean = trainer_of(toy, tmp_path / "clean", *store)
    try:
        clean_split = clean.training_split()
        clean.source.stored(clean_split, train=True)
    finally:
        clean.monitor.close()
    noisy = trainer_of(toy, tmp_path / "noisy", *store, "--noisy_pairs", "0.5")
    try:
        split = noisy.training_split()
        batches, sampler, _ = noisy.source.train_loader(split, 0, 1, 8)
    finally:
        noisy.monitor.close()
    log = (tmp_path / "noisy" / "log.txt").read_text()
    assert "extracting" not in log and "read from" in log
    stored = noisy.source.opened["train"]
    order = np.fromiter(iter(sampler), dtype=np.int64)
    pairing = np.asarray(split.caption_to_video)
    assert (pairing[order] != np.asarray(clean_split.caption_to_video)[order]).any()
    for k, batch in enumerate(batches):
        rows = order[8 * k:8 * (k + 1)]
        assert np.array_equal(batch.data.sentence.numpy(), stored.sentence[rows])
        assert np.array_equal(batch.data.frames.numpy(), stored.frames[0][pairing[rows]])


def test_a_noisy_run_records_the_noise_in_its_checkpoints_and_metrics(toy, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "main_retrieval.py"), "--do_train", "1", "--epochs",
               "1", "--noisy_pairs", "0.5", *SMALL, "--anno_path", str(toy.root),
               "--video_path", str(toy.video_path), "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    for name in ("ckpt_best.pt", "ckpt_last.pt"):
        assert torch.load(out / name, weights_only=True)["args"]["noisy_pairs"] == 0.5, name
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert metrics["noisy_pairs"] == {"fraction": 0.5, "reassigned": 24}
    assert ("noisy_pairs 0.5: 24 of 48 training captions re-assigned to another video"
            in (out / "log.txt").read_text())
