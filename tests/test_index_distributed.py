"""A build split over 2 gloo processes on the CPU (tvr/index/shares.py) makes the index of one
process, and an interrupted one keeps what each rank finished.

The model is the zero-shot tiny CLIP of random weights (tests/fixtures_index.py): the split is
the same for a GARE checkpoint, and this one needs no training.
"""
import os

import pytest
import torch
import torch.multiprocessing as mp

from fixtures_index import tiny_clip_file
from test_distributed import free_port
from tvr.evaluation.retrieval import faiss_available
from tvr.data.toy import make_toy_dataset
from tvr.index import build as build_module
from tvr.index.build import build_index
from tvr.index.config import BuildConfig
from tvr.index.search import VideoIndex
from tvr.index.shares import SHARES
from tvr.index.store import Manifest
from tvr.training.distributed import cleanup, init_distributed

WORLD = 2
VIDEOS = 7  # shares of 4 and 3


def config(videos, clip, out) -> BuildConfig:
    """A build of shards of 2 videos whose stage 1 is a faiss IVF index (however small)."""
    return BuildConfig(str(videos), str(out), clip_path=str(clip), workers=0, batch_size=2,
                       shard_size=2, stage1_exact_max=0)


def worker(rank: int, port: int, videos: str, clip: str, out: str, fail_rank: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    context = init_distributed(device="cpu")
    if rank == fail_rank:  # interrupted after its first shard
        encode, calls = build_module._encode, []

        def failing(*args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("interrupted")
            return encode(*args)

        build_module._encode = failing
    try:
        report = build_index(config(videos, clip, out), progress=False, context=context)
        assert (report is None) == (rank != 0)
        if rank == 0:
            assert sorted(report.encoded) == sorted(Manifest.load(out).entries)
    finally:
        cleanup()


def spawn(files, out, fail_rank=-1) -> None:
    mp.spawn(worker, args=(free_port(), str(files["videos"]), str(files["clip"]), str(out),
                           fail_rank), nprocs=WORLD, join=True)


def contents(folder) -> dict:
    """{path: (entry without its shard and row, stored frames as float32, mask, stage-1
    vector)} of an index."""
    index = VideoIndex.open(folder)
    rows = torch.arange(len(index))
    stored, coarse = index.gallery.videos.parts(rows), index.gallery.videos.coarse(rows)
    return {path: ({k: v for k, v in vars(index.manifest.entries[path]).items()
                    if k not in ("shard", "row")}, stored["frames"][i].float(),
                   stored["mask"][i], coarse[i])
            for i, path in enumerate(index.paths)}


def assert_same_index(found, expected) -> None:
    found, expected = contents(found), contents(expected)
    assert sorted(found) == sorted(expected) and len(found) == VIDEOS
    for path, (entry, frames, mask, coarse) in expected.items():
        assert found[path][0] == entry, path
        # float16 frames (index format 3): one rounding step apart at most
        torch.testing.assert_close(found[path][1], frames, atol=1e-6, rtol=2e-3, msg=path)
        assert torch.equal(found[path][2], mask), path
        torch.testing.assert_close(found[path][3], coarse, atol=1e-6, rtol=2e-3, msg=path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random tiny CLIP file, 7 toy videos and their index built by one process."""
    root = tmp_path_factory.mktemp("index_distributed")
    toy = make_toy_dataset(root / "toy", num_train=VIDEOS - 1, num_val=0, num_test=1,
                           workers=1)
    clip = tiny_clip_file(root / "ViT-tiny.pt")
    single = root / "single"
    torch.set_num_threads(1)
    assert len(build_index(config(toy.video_path, clip, single), progress=False).encoded) == VIDEOS
    return {"videos": toy.video_path, "clip": clip, "single": single}


def test_two_processes_make_the_index_of_one(files, tmp_path):
    out = tmp_path / "index"
    spawn(files, out)
    assert_same_index(out, files["single"])
    assert not (out / SHARES).exists()
    manifest, single = Manifest.load(out), Manifest.load(files["single"])
    shards = {entry.shard for entry in manifest.entries.values()}
    assert len(shards) == 4 and manifest.next_shard > max(shards)  # 2 + 2 shards of 2, 2, 2, 1
    assert sorted(p.name for p in (out / "shards").glob("*.npy")) == \
        sorted(f"{shard:05d}{kind}.npy" for shard in shards for kind in ("", ".coarse"))
    # stage 1 brought up to date once, by rank 0 after the merge: its first files, over all 7
    ivf = faiss_available()
    assert manifest.stage1["kind"] == single.stage1["kind"] == ("ivf" if ivf else "exact")
    assert sorted(p.name for p in (out / "stage1").glob("*")) == \
        ["00000.faiss", "00000.ids.npy"] * ivf
    assert manifest.stage1.get("trained_on", VIDEOS) == VIDEOS
    assert manifest.config["calibration"]["threshold"] == \
        pytest.approx(single.config["calibration"]["threshold"], abs=1e-5)


def test_an_interrupted_build_keeps_each_ranks_shards(files, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(mp.ProcessRaisedException):  # rank 1's error, or rank 0's lost peer
        spawn(files, out, fail_rank=1)
    shares = {home.parent.name: Manifest.load(home.parent)
              for home in (out / SHARES).glob("*/manifest.json")}
    assert len(shares["1"].entries) == 2  # rank 1's first shard
    finished = {path for share in shares.values() for path in share.entries}
    report = build_index(config(files["videos"], files["clip"], out), progress=False)
    assert sorted(report.encoded) == sorted(set(Manifest.load(out).entries) - finished)
    assert not (out / SHARES).exists()
    assert_same_index(out, files["single"])
