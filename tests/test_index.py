"""python -m tvr.index: build an index incrementally, search it two-stage and exhaustively.

A tiny model is trained here (main_retrieval.py, one epoch on generated clips); its index must
hold the features evaluation computes, rank like the evaluation engine, and follow the folder:
new files encoded alone, deleted ones dropped, unreadable ones listed, interrupted builds kept.
"""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tvr.data.frames import VideoFrameLoader
from tvr.data.transforms import build_frame_transform
from tvr.data.datasets import msrvtt
from tvr.data.toy import make_toy_dataset
from tvr.evaluation.calibration import training_vocabulary
from tvr.evaluation.engine import SimilarityEngine, stage1_vectors
from tvr.index import build as build_module
from tvr.cli.index import main as index_main
from tvr.index.build import GARE_KIND, BuildReport, build_index, load_checkpoint_model
from tvr.index.config import BuildConfig
from tvr.index.search import VideoIndex
from tvr.index.store import IndexStoreError, Manifest
from tvr.models.tokenizer import ClipTokenizer
from tvr.training.checkpoint import sampling_of

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["a red circle moves to the left", "a blue bar moves upward", "a green triangle"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, toy dataset) of a tiny model trained for one epoch on the toy clips."""
    root = tmp_path_factory.mktemp("index")
    toy = make_toy_dataset(root / "toy", num_train=16, num_val=0, num_test=8,
                           captions_per_video=2, workers=2)
    flags = ["--do_train", "1", "--epochs", "1", "--base_encoder", "tiny", "--max_words", "16",
             "--max_frames", "4", "--video_framerate", "3", "--batch_size", "8",
             "--batch_size_val", "8", "--workers", "0", "--lr", "1e-3", "--coef_lr", "1",
             "--num_hidden_layers", "2", "--train_augment", "none",
             "--anno_path", str(toy.root), "--video_path", str(toy.video_path),
             "--output_dir", str(root / "run")]
    subprocess.run([sys.executable, str(REPO / "main_retrieval.py"), *flags], cwd=REPO,
                   check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    return root / "run" / "ckpt_best.pt", toy


def build(checkpoint, folder, out, workers=0, **settings) -> BuildReport:
    """Index ``folder`` into ``out`` with ``checkpoint`` (no progress bar)."""
    return build_index(BuildConfig(str(folder), str(out), str(checkpoint), workers=workers,
                                   **settings), progress=False)


def gallery(tmp_path, toy, count):
    """A folder with the first ``count`` toy videos, and the rest kept aside."""
    videos = sorted(toy.video_path.glob("*.mp4"))
    folder = tmp_path / "gallery"
    folder.mkdir()
    for video in videos[:count]:
        shutil.copy(video, folder)
    return folder, videos[count:]


def test_incremental_build_follows_the_folder(trained, tmp_path, capsys):
    checkpoint, toy = trained
    folder, spare = gallery(tmp_path, toy, 10)
    out = tmp_path / "index"
    report = build(checkpoint, folder, out, batch_size=4, shard_size=4)
    assert len(report.encoded) == 10 and not report.removed and not report.failed

    (folder / "more").mkdir()  # two new files, one in a subfolder: only they are encoded
    shutil.copy(spare[0], folder)
    shutil.copy(spare[1], folder / "more")
    report = build(checkpoint, folder, out)
    assert sorted(report.encoded) == sorted([spare[0].name, f"more/{spare[1].name}"])
    assert not report.removed

    deleted = sorted(folder.glob("*.mp4"))[0]
    corrupt = sorted(folder.glob("*.mp4"))[1]
    deleted.unlink()
    corrupt.write_bytes(b"not a video")
    assert index_main(["build", "--checkpoint", str(checkpoint), "--videos", str(folder),
                       "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "encoded 0 videos" in printed and f"unreadable: {corrupt.name}: " in printed
    manifest = Manifest.load(out)
    assert deleted.name not in manifest.entries and corrupt.name not in manifest.entries
    assert corrupt.name in manifest.failed and len(manifest.entries) == 10
    assert manifest.checkpoint["kind"] == GARE_KIND
    assert not (out / "thumbs").joinpath(deleted.name).exists()

    index = VideoIndex.open(out)
    assert sorted(index.paths) == sorted(manifest.entries) and len(index) == 10
    report = build(checkpoint, folder, out)  # nothing to do
    assert (report.encoded, report.removed, list(report.failed)) == ([], [], [corrupt.name])


def test_an_interrupted_build_keeps_its_shards_and_resumes(trained, tmp_path, monkeypatch):
    checkpoint, toy = trained
    folder, _ = gallery(tmp_path, toy, 9)
    out = tmp_path / "index"
    real_encode, calls = build_module._encode, []

    def failing_encode(model, items, device):
        calls.append(len(items))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(model, items, device)

    monkeypatch.setattr(build_module, "_encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        build(checkpoint, folder, out, batch_size=2, shard_size=2)
    kept = set(Manifest.load(out).entries)
    assert len(kept) == 4  # two shards of two were written before the interruption
    monkeypatch.setattr(build_module, "_encode", real_encode)
    report = build(checkpoint, folder, out)
    assert len(report.encoded) == 5 and not kept & set(report.encoded)
    assert len(VideoIndex.open(out)) == 9


def test_a_new_stage1_frames_rewrites_the_stage1_vectors_from_the_stored_frames(trained,
                                                                                tmp_path):
    checkpoint, toy = trained
    folder, _ = gallery(tmp_path, toy, 6)
    out = tmp_path / "index"
    build(checkpoint, folder, out, shard_size=4)
    videos = VideoIndex.open(out).gallery.videos
    two = videos.coarse()
    assert two.shape[1] == 2  # the default for a GARE checkpoint: the mean and one frame
    report = build(checkpoint, folder, out, stage1_frames=2)
    assert report.restaged == 2 and not report.encoded
    assert "wrote 2 shards again from their stored frames" in report.format()
    three = VideoIndex.open(out).gallery.videos.coarse()
    stored = videos.parts(torch.arange(6))
    expected = stage1_vectors(stored["frames"].float(), stored["mask"].float(), 2)
    torch.testing.assert_close(three, expected, atol=2e-3, rtol=0)  # float16 files
    assert torch.equal(three[:, :2], two)
    assert build(checkpoint, folder, out, stage1_frames=2).restaged == 0


def test_search_ranks_like_the_evaluation_engine(trained, tmp_path):
    checkpoint, toy = trained
    folder, _ = gallery(tmp_path, toy, 24)
    out = tmp_path / "index"
    build(checkpoint, folder, out, workers=2)
    index = VideoIndex.open(out)
    model, info = load_checkpoint_model(checkpoint)
    sampling = sampling_of(info)

    # The index holds what evaluation computes: the dataset's clip loader, then the model.
    loader = VideoFrameLoader(sampling, build_frame_transform(model.clip.config.image_size, False))
    video, mask = loader(str(folder / index.paths[3]))
    with torch.no_grad():
        frames = model.encode_video(video[None], mask[None]).frames[0]
    stored = index.gallery.videos.parts(torch.arange(len(index)))
    assert stored["frames"].dtype == torch.float16  # what an index stores: float16 frames
    torch.testing.assert_close(stored["frames"][3].float(), frames, rtol=2e-3, atol=1e-5)

    engine = SimilarityEngine(model.similarity)
    text = index.encode_queries(QUERIES)
    expected = engine.score(engine.prepare_texts(text),
                            engine.prepare_videos(stored["frames"].float(),
                                                  stored["mask"])).float()
    exhaustive = index.search(QUERIES, top=len(index), exhaustive=True)
    two_stage = index.search(QUERIES, top=len(index), k=len(index))
    for q, (answer, staged) in enumerate(zip(exhaustive, two_stage)):
        hits = answer.hits
        order = torch.sort(expected[q], descending=True, stable=True).indices.tolist()
        assert [hit.video for hit in hits] == order
        torch.testing.assert_close(torch.tensor([hit.score for hit in hits]),
                                   expected[q, order], rtol=0, atol=1e-6)
        assert staged == answer  # two-stage with K = the gallery equals exhaustive
        times = index.manifest.entries[hits[0].path].times
        assert hits[0].time == times[hits[0].frame]
    assert index.search(QUERIES, top=3, k=5)[0].hits[0].video in \
        [h.video for h in exhaustive[0].hits[:5]]


def test_the_checkpoints_threshold_decides_no_good_match(trained, tmp_path):
    checkpoint, toy = trained
    calibration = load_checkpoint_model(checkpoint)[1]["calibration"]
    assert set(calibration) == {"threshold", "matched", "refused", "captions", "nonsense",
                                "known_tokens"}
    assert calibration["captions"] == 8 and 0 <= calibration["matched"] <= 1
    folder, _ = gallery(tmp_path, toy, 6)
    out = tmp_path / "index"
    build(checkpoint, folder, out)
    index = VideoIndex.open(out)
    assert index.threshold == calibration["threshold"]
    index.known_tokens = None  # the score alone (the vocabulary: the next test)
    best = index.search(QUERIES, top=1)
    for answer in best:
        assert answer.good == (answer.hits[0].score >= calibration["threshold"])
    scores = [answer.hits[0].score for answer in best]
    below, above = (VideoIndex.open(out, threshold=t) for t in (min(scores), max(scores) + 1e-3))
    below.known_tokens = above.known_tokens = None
    assert [a.good for a in below.search(QUERIES)] == [True] * len(QUERIES)
    assert [a.good for a in above.search(QUERIES)] == [False] * len(QUERIES)
    assert {a.reason for a in above.search(QUERIES)} == \
        {f"the best score is below {max(scores) + 1e-3:.4f}, the threshold"}


def test_words_never_seen_in_training_are_no_good_match(trained, tmp_path):
    """A text tower trained from scratch records the tokens of its training captions; a query
    of words it never saw is no good match, whatever its score."""
    checkpoint, toy = trained
    captions = [pair.caption for pair in msrvtt.load("train", toy.root).pairs]
    known = load_checkpoint_model(checkpoint)[1]["calibration"]["known_tokens"]
    assert tuple(known) == training_vocabulary(captions, ClipTokenizer())
    folder, _ = gallery(tmp_path, toy, 6)
    build(checkpoint, folder, tmp_path / "index")
    index = VideoIndex.open(tmp_path / "index", threshold=-10.0)  # every score passes
    caption, gibberish, half = index.search(
        [captions[0], "zzzz qqqq xxxx", f"zzzz {captions[0].split()[-1]}"], top=1)
    assert (caption.good, caption.unknown) == (True, ())
    assert (gibberish.good, gibberish.unknown) == (False, ("zzzz", "qqqq", "xxxx"))
    assert gibberish.reason == "most of its words were never seen in training"
    assert (half.good, half.unknown) == (True, ("zzzz",))


def test_an_index_refuses_another_checkpoint(trained, tmp_path):
    checkpoint, toy = trained
    folder, _ = gallery(tmp_path, toy, 2)
    out = tmp_path / "index"
    build(checkpoint, folder, out)
    other = tmp_path / "other.pt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["model"]["similarity.psi.q_proj.weight"] += 0.1  # a fine-tuned model, say
    torch.save(saved, other)
    with pytest.raises(IndexStoreError, match="another checkpoint"):
        build(other, folder, out)
    assert len(build(other, folder, out, rebuild=True).encoded) == 2
    with pytest.raises(IndexStoreError, match="not the checkpoint that built"):
        VideoIndex.open(out, checkpoint=str(checkpoint))


GATED_BUILD = """
import os, sys, time
from pathlib import Path
from tvr.index import build
from tvr.index.config import BuildConfig
from tvr.index.store import IndexStoreError

checkpoint, videos, out, shard_size, wait, gate = sys.argv[1:]
encode = build._encode

def gated(*args):  # says it is encoding, then waits for the test to open the gate
    Path(f"{gate}.{os.getpid()}").touch()
    while not Path(gate).exists():
        time.sleep(0.05)
    return encode(*args)

build._encode = gated
try:
    build.build_index(BuildConfig(videos, out, checkpoint, workers=0, batch_size=2,
                                  shard_size=int(shard_size), wait=wait == "wait"),
                      progress=False)
except IndexStoreError as error:
    sys.exit(f"error: {error}")
"""


def index_contents(folder):
    """{path: (entry without its shard and row, frames, mask)} of an index."""
    index = VideoIndex.open(folder)
    stored = index.gallery.videos.parts(torch.arange(len(index)))
    return {path: ({k: v for k, v in vars(index.manifest.entries[path]).items()
                    if k not in ("shard", "row")}, stored["frames"][i], stored["mask"][i])
            for i, path in enumerate(index.paths)}


@pytest.mark.parametrize("wait", [False, True])
def test_two_builds_at_once_leave_the_index_of_one(trained, tmp_path, wait):
    """Two builds of one folder (shards of 2 and of 3 videos: unsynchronised, their shards would
    overwrite each other's) started together: one builds, the other stops at once or waits."""
    checkpoint, toy = trained
    folder, _ = gallery(tmp_path, toy, 10)
    build(checkpoint, folder, tmp_path / "single")
    out, gate = tmp_path / "index", tmp_path / "gate"
    logs = [tmp_path / "build0.err", tmp_path / "build1.err"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    builds = [subprocess.Popen([sys.executable, "-c", GATED_BUILD, str(checkpoint), str(folder),
                                str(out), size, "wait" if wait else "", str(gate)],
                               stderr=log.open("w"), env=env, cwd=REPO)
              for size, log in zip(("2", "3"), logs)]
    deadline = time.time() + 300
    while True:  # until one encodes and the other has stopped, waits, or encodes too
        encoding = list(tmp_path.glob("gate.*"))
        ended = [build.poll() is not None for build in builds]
        other = any(ended) or any("waiting for" in log.read_text() for log in logs)
        if all(ended) or encoding and (other or len(encoding) == 2):
            break
        assert time.time() < deadline, [log.read_text() for log in logs]
        time.sleep(0.1)
    gate.touch()
    codes = [build.wait(timeout=300) for build in builds]
    errors = [log.read_text() for log in logs]
    first = 0 if f"gate.{builds[0].pid}" in [path.name for path in encoding] else 1
    holder = f"pid {builds[first].pid} on {socket.gethostname()}"
    if wait:
        assert codes == [0, 0], errors
        assert f"{out}: waiting for {holder}, which is writing it\n" in errors[1 - first]
    else:
        assert (codes[first], codes[1 - first]) == (0, 1), errors
        assert errors[1 - first].splitlines()[-1] == (
            f"error: another process is writing {out} ({holder}); wait for it, or pass --wait")
    got, want = index_contents(out), index_contents(tmp_path / "single")
    assert sorted(got) == sorted(want)
    for path, (entry, frames, mask) in want.items():
        assert got[path][0] == entry
        torch.testing.assert_close(got[path][1].float(), frames.float(), rtol=2e-3, atol=1e-5)
        assert torch.equal(got[path][2], mask)


def test_searches_during_a_build_read_the_old_or_the_new_index(trained, tmp_path,
                                                                monkeypatch):
    checkpoint, toy = trained
    folder, spare = gallery(tmp_path, toy, 6)
    out = tmp_path / "index"
    build(checkpoint, folder, out)
    killed = [out / f".manifest.json.{os.getpid()}.tmp", out / "shards" / ".00001.npy.1.tmp",
              out / "table" / ".00009.times.npy.1.tmp"]
    for path in killed:  # left by killed writes
        path.write_bytes(b"half")
    for video in spare[:6]:
        shutil.copy(video, folder)
    turns, real_encode = threading.Semaphore(0), build_module._encode

    def paced(*args):  # one video encoded per search
        turns.acquire()
        return real_encode(*args)

    monkeypatch.setattr(build_module, "_encode", paced)
    builder = threading.Thread(target=build, args=(checkpoint, folder, out),
                               kwargs=dict(batch_size=1, shard_size=1))
    builder.start()
    sizes = []
    try:
        while builder.is_alive():
            index = VideoIndex.open(out)
            assert [len(a.hits) for a in index.search(QUERIES, top=3)] == [3, 3, 3]
            sizes.append(len(index))
            turns.release()
    finally:
        turns.release(100)
        builder.join()
    assert sizes == sorted(sizes) and sizes[0] >= 6 and sizes[-1] <= 12
    assert any(6 < size < 12 for size in sizes)  # searched mid-build
    assert len(VideoIndex.open(out)) == 12
    assert not any(path.exists() for path in killed)
