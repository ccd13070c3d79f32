"""The index's store (tvr/index/store.py) on synthetic videos: memory-mapped float16 shards with
the per-video state, the stage-1 IVF index trained above a size and kept up to date as videos
come and go, and the refusal of an index of the older format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tvr.evaluation.engine import SimilarityEngine
from tvr.evaluation.retrieval import ApproximateSearch, Stage1Search, faiss_available
from tvr.index import store as index_store
from tvr.index.store import IndexStoreError, Manifest, open_gallery, update_stage1, write_shard
from tvr.index.table import Entry
from tvr.models.config import SimilarityConfig
from fixtures_similarity import trained

DIM, FRAMES, SHARD = 32, 4, 100
PER_VIDEO = 2  # stage-1 vectors per video: the mean and one frame


def add_shard(folder, manifest, engine, shard, generator, count=FRAMES):
    """Write one shard of SHARD random videos of ``count`` frames (clustered, padded) and list
    them."""
    centres = torch.randn(8, DIM, generator=generator)
    frames = centres[torch.randint(8, (SHARD,), generator=generator)].unsqueeze(1) \
        + 0.3 * torch.randn(SHARD, count, DIM, generator=generator)
    mask = torch.ones(SHARD, count)
    mask[::3, -1] = 0
    write_shard(folder, shard, engine, frames, mask, PER_VIDEO - 1)
    for row in range(SHARD):
        manifest.entries[f"{shard}/{row}.mp4"] = Entry(0, 0, "", False, shard, row, 1.0,
                                                       [0.0] * count)
    manifest.next_shard = shard + 1


@pytest.fixture
def store(tmp_path):
    engine = SimilarityEngine(trained(SimilarityConfig(dim=DIM), torch.float32))
    manifest = Manifest(".", {}, {}, {})
    generator = torch.Generator().manual_seed(0)
    for shard in range(6):
        add_shard(tmp_path, manifest, engine, shard, generator)
    return tmp_path, manifest, engine, generator


def test_stored_gallery_scores_as_the_engine_and_k_of_all_is_exhaustive(store):
    folder, manifest, engine, _ = store
    update_stage1(folder, manifest, exact_max=10**6, k=50)
    assert manifest.stage1 == {"kind": "exact"}
    gallery = open_gallery(folder, manifest)
    stored = gallery.videos.parts(torch.arange(len(gallery)))
    assert stored["frames"].dtype == torch.float16 and len(gallery) == 600
    text = torch.randn(5, DIM, generator=torch.Generator().manual_seed(1))
    expected = engine.score(engine.prepare_texts(text),
                            engine.prepare_videos(stored["frames"].float(), stored["mask"]))
    full = gallery.search(engine, text, top=600, k=600, exhaustive=True)
    torch.testing.assert_close(full.scores, expected, atol=1e-6, rtol=0)
    two_stage = gallery.search(engine, text, top=600, k=600)
    assert torch.equal(two_stage.best, full.best)
    some = torch.tensor([599, 3, 250, 3])  # any order, repeats, across shards
    assert torch.equal(gallery.videos.parts(some)["frames"], stored["frames"][some])

    loaded = Manifest.load(folder)  # saved by update_stage1: the table memory-mapped
    assert loaded.videos() is loaded.saved
    assert isinstance(loaded.saved.columns["times"], np.memmap)
    mapped = open_gallery(folder, loaded)
    assert list(mapped.videos.paths) == list(gallery.videos.paths)
    assert np.array_equal(mapped.videos.ids, gallery.videos.ids)
    again = mapped.search(engine, text, top=10, k=100)
    first = gallery.search(engine, text, top=10, k=100)
    assert torch.equal(again.best, first.best) and torch.equal(again.scores, first.scores)


def test_the_records_of_every_candidate_are_asked_for_before_any_is_copied(store, monkeypatch):
    """A search reads its candidates' records from the page cache or, all at once, from disk:
    each shard is asked for the rows of it that the search reads, before the first copy."""
    folder, manifest, _, _ = store
    update_stage1(folder, manifest, exact_max=10**6, k=50)
    videos = open_gallery(folder, manifest).videos
    asked, copied = [], []
    for shard, mapped in videos.records.items():
        monkeypatch.setattr(mapped, "read_ahead", lambda rows, shard=shard: asked.append(
            (shard, sorted(np.asarray(rows).tolist()))))
    gather = torch.index_select
    monkeypatch.setattr(torch, "index_select", lambda *args, **kwargs: (
        copied.append(len(asked)), gather(*args, **kwargs))[1])
    videos.parts(torch.tensor([599, 3, 250, 3, 120]))
    assert sorted(asked) == [(0, [3]), (1, [20]), (2, [50]), (5, [99])]
    assert copied and min(copied) == len(asked)  # every shard asked before the first copy
    asked.clear()
    videos.parts(torch.tensor([3, 4, 599, 598]))  # rows read before are not asked for again
    assert sorted(asked) == [(0, [4]), (5, [98])]


def test_records_are_aligned_and_read_as_views(tmp_path):
    """Six frames (the demo's): packed, the float32 fields of a record would fall off 4-byte
    boundaries; aligned, every field of the rows asked for is a view of one gathered copy."""
    engine = SimilarityEngine(trained(SimilarityConfig(dim=DIM), torch.float32))
    manifest = Manifest(".", {}, {}, {})
    add_shard(tmp_path, manifest, engine, 0, torch.Generator().manual_seed(0), count=6)
    update_stage1(tmp_path, manifest, exact_max=10**6, k=50)
    gallery = open_gallery(tmp_path, manifest)
    dtype = gallery.videos.records[0].array.dtype
    assert all(offset % field.base.itemsize == 0 for field, offset in dtype.fields.values())
    assert dtype.itemsize % 4 == 0
    stored = gallery.videos.parts(torch.tensor([7, 2]))
    assert stored["frames"].shape == (2, 6, DIM) and not stored["frames"].is_contiguous()
    starts = [value.data_ptr() for value in stored.values()]  # all in one gathered record
    assert max(starts) - min(starts) < dtype.itemsize
    one = gallery.videos.parts(torch.tensor([7]))  # one row: numpy calls any view contiguous
    assert all(torch.equal(one[name], stored[name][:1]) for name in stored)
    text = torch.randn(3, DIM, generator=torch.Generator().manual_seed(1))
    expected = engine.score(engine.prepare_texts(text),
                            engine.prepare_videos(stored["frames"].float(), stored["mask"]))
    found = gallery.search(engine, text, top=SHARD, k=SHARD, exhaustive=True)
    torch.testing.assert_close(found.scores[:, [7, 2]], expected, atol=1e-6, rtol=0)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_the_ivf_index_is_read_into_memory_unless_its_file_is_too_large(store, monkeypatch):
    """Read at open (every search scans an eighth of it) up to IVF_IN_MEMORY_MAX bytes, mapped
    above; both find the same candidates."""
    import faiss
    folder, manifest, engine, _ = store
    update_stage1(folder, manifest, exact_max=100, k=50)
    size = (folder / manifest.stage1["file"]).stat().st_size
    found = {}
    for limit, kind in ((size, "ArrayInvertedLists"), (size - 1, "OnDiskInvertedLists")):
        monkeypatch.setattr(index_store, "IVF_IN_MEMORY_MAX", limit)
        gallery = open_gallery(folder, manifest)
        lists = faiss.extract_index_ivf(gallery.stage1.ivf).invlists
        assert type(faiss.downcast_InvertedLists(lists)).__name__ == kind
        found[kind] = gallery.candidates(gallery.videos.coarse()[:30, 0], 40)
    assert torch.equal(found["ArrayInvertedLists"], found["OnDiskInvertedLists"])


def test_the_ivf_stage1_follows_the_videos(store):
    folder, manifest, engine, generator = store
    line = update_stage1(folder, manifest, exact_max=100, k=50)
    assert manifest.stage1["kind"] == "ivf" and manifest.stage1["trained_on"] == 600
    assert line.startswith("stage 1: faiss IVF") and "recall@50 of the exact search" in line
    assert 0.5 <= manifest.stage1["recall"] <= 1
    gallery = open_gallery(folder, manifest)
    assert isinstance(gallery.stage1, ApproximateSearch)
    vectors = gallery.videos.coarse()
    assert vectors.shape == (600, PER_VIDEO, DIM) and manifest.stage1["per_video"] == PER_VIDEO
    gallery.stage1.ivf.nprobe = gallery.stage1.ivf.nlist  # every list: exact up to SQ8
    exact = Stage1Search(vectors, "torch").top(vectors[:20, 0], 5)[1]
    found = gallery.stage1.top(vectors[:20, 0], 5)[1]
    assert (found[:, 0] == exact[:, 0]).all()
    assert all(len(set(row.tolist())) == 5 for row in found)  # each video once
    text = torch.randn(4, DIM, generator=torch.Generator().manual_seed(2))
    everything = gallery.search(engine, text, top=20, k=len(gallery))  # K = N: exhaustive
    exhaustive = gallery.search(engine, text, top=20, k=len(gallery), exhaustive=True)
    assert torch.equal(everything.best, exhaustive.best)
    torch.testing.assert_close(everything.scores, exhaustive.scores, atol=0, rtol=0)

    for path in [p for p in manifest.entries if p.startswith("2/")]:
        del manifest.entries[path]  # shard 2 deleted, shard 6 added
    add_shard(folder, manifest, engine, 6, generator)
    update_stage1(folder, manifest, exact_max=100, k=50)
    assert manifest.stage1["trained_on"] == 600 and manifest.stage1["number"] == 1
    gallery = open_gallery(folder, manifest)
    held = np.load(folder / manifest.stage1["ids"])
    assert np.array_equal(held, gallery.videos.ids) and len(gallery) == 600
    assert gallery.stage1.ivf.ntotal == 600 * PER_VIDEO

    add_shard(folder, manifest, engine, 7, generator)  # listed, not yet in the IVF index
    gallery = open_gallery(folder, manifest)
    new_rows = torch.arange(600, 700)
    assert torch.equal(gallery.stage1.missing_rows, new_rows)
    found = gallery.stage1.top(gallery.videos.coarse(new_rows)[:, 0], 3)[1]
    assert torch.equal(found[:, 0], new_rows)  # each its own best match
    assert sorted(p.name for p in (folder / "stage1").iterdir()) == \
        ["00000.faiss", "00000.ids.npy", "00001.faiss", "00001.ids.npy"]


def test_an_index_of_the_older_format_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 2}))
    with pytest.raises(IndexStoreError) as error:
        Manifest.load(tmp_path)
    message = str(error.value)
    assert "format version 2, this code reads version 4" in message
    assert "rebuild the index with --rebuild" in message and "\n" not in message
