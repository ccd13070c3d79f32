"""The table of an index's videos (tvr/index/table.py): it gives back every entry as recorded,
paths of any characters and any number of frame times included, in gallery order, from files
the store writes under a new number before the manifest that names them; an index of format 3
is converted by a build and refused by search and serve."""
from __future__ import annotations

import json
import shutil

import numpy as np
import numpy.lib.recfunctions  # noqa: F401  (np.lib.recfunctions)
import pytest

from tvr.cli.index import main as index_main
from tvr.index.search import VideoIndex
from tvr.index.store import MANIFEST, IndexStoreError, Manifest
from tvr.index.table import Entry, VideoTable
from fixtures_index import tiny_checkpoint, toy_index

PATHS = ["clip.mp4", "café/été 2.mp4", "北京/视频.mkv", "z/undecodable \udcff.avi",
         "emoji 🎬.webm", "a/b/c/deep.mov"]


def entries() -> dict[str, Entry]:
    """Entries listed out of gallery order, with 0 to 7 frame times, across three shards."""
    made = {}
    for i, path in enumerate(PATHS):
        times = [round(0.333 * k + i, 3) for k in range(i + 2 if i % 3 else 0)]
        made[path] = Entry(size=10**10 + i, mtime_ns=1_700_000_000_123_456_789 + i,
                           real_path=f"/données/{path}", followed_link=i % 2 == 1,
                           shard=(5 - i) // 2, row=i % 2, duration=12.345 + i, times=times)
    return made


def test_the_table_gives_back_every_entry_in_gallery_order():
    given = entries()
    table = VideoTable.from_entries(given)
    order = sorted(given, key=lambda path: (given[path].shard, given[path].row))
    assert list(table.paths) == order and len(table) == len(given)
    assert table.entries() == given and list(table.entries()) == order
    for row, path in enumerate(order):
        assert table.find(path) == row
        assert table.entry(row) == given[path]
        assert table.times(row) == given[path].times
        assert table.real_paths[row] == given[path].real_path
    assert table.find("missing.mp4") is None and table.find("") is None
    assert table.find("z") is None and table.find("zz") is None  # past the last path
    empty = VideoTable.from_entries({})
    assert len(empty) == 0 and empty.entries() == {} and empty.find("clip.mp4") is None


def test_a_table_out_of_gallery_order_is_refused():
    columns = dict(VideoTable.from_entries(entries()).columns)
    columns["row"] = columns["row"][::-1].copy()
    with pytest.raises(ValueError, match="gallery order"):
        VideoTable(columns)
    del columns["times"]
    with pytest.raises(ValueError, match="no column times"):
        VideoTable(columns)


def test_the_manifest_saves_its_table_under_a_new_number(tmp_path):
    manifest = Manifest("/videos", {}, {}, {})
    manifest.entries.update(entries())
    for _ in range(3):
        manifest.save(tmp_path)
    header = json.loads((tmp_path / MANIFEST).read_text())
    assert header["format_version"] == 4 and header["table"] == 2 and "entries" not in header
    numbers = {path.name.split(".")[0] for path in (tmp_path / "table").iterdir()}
    assert numbers == {"00001", "00002"}  # the one named, and the previous one
    loaded = Manifest.load(tmp_path)
    assert loaded.videos() is loaded.saved  # memory-mapped, no entry made
    assert loaded.saved.entries() == entries()
    assert loaded.entries == entries()  # the writers' view, made on first use
    del loaded.entries["clip.mp4"]
    assert "clip.mp4" not in list(loaded.videos().paths)


def test_a_table_that_cannot_be_read_is_refused_in_one_line(tmp_path):
    manifest = Manifest("/videos", {}, {}, {})
    manifest.entries.update(entries())
    manifest.save(tmp_path)
    (tmp_path / "table" / "00000.row.npy").unlink()
    with pytest.raises(IndexStoreError) as error:
        Manifest.load(tmp_path)
    message = str(error.value)
    assert "the table of the index's videos cannot be read" in message
    assert "--rebuild" in message and "\n" not in message


def test_a_format_3_manifest_is_refused_unless_converted(tmp_path):
    given = entries()
    old = {"format_version": 3, "videos_root": "/videos", "checkpoint": {}, "config": {},
           "sampling": {}, "next_shard": 3, "stage1": {"kind": "exact"}, "failed": {},
           "entries": {path: vars(entry) for path, entry in given.items()}}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    with pytest.raises(IndexStoreError) as error:
        Manifest.load(tmp_path)
    message = str(error.value)
    assert "format version 3, this code reads version 4" in message and "\n" not in message
    assert f"python -m tvr.index build ... --out {tmp_path}" in message
    converted = Manifest.load(tmp_path, convert=True)
    assert converted.converted and converted.entries == given
    converted.save(tmp_path)
    again = Manifest.load(tmp_path)
    assert not again.converted and again.saved.entries() == given
    assert (again.next_shard, again.stage1) == (3, {"kind": "exact"})
    assert np.array_equal(again.saved.columns["shard"], sorted(e.shard for e in given.values()))


def test_build_converts_a_format_3_index_and_search_refuses_it(tmp_path, capsys):
    """An index of format 3 (its entries in manifest.json): search and serve say in one line
    to run the build again; the build converts it without encoding any video again."""
    checkpoint = tiny_checkpoint(tmp_path / "ckpt_best.pt")
    out = tmp_path / "index"
    before = toy_index(tmp_path, checkpoint).search(["a red circle"], top=10)
    manifest = Manifest.load(out)
    header = json.loads((out / MANIFEST).read_text())
    del header["table"]
    header.update(format_version=3,
                  entries={path: vars(entry) for path, entry in manifest.entries.items()})
    (out / MANIFEST).write_text(json.dumps(header))
    shutil.rmtree(out / "table")
    coarse = sorted((out / "shards").glob("*.coarse.npy"))
    originals = [np.load(path) for path in coarse]
    for path, array in zip(coarse, originals):
        np.save(path, array[:, 0])  # format 3's stage-1 vectors: one mean a video
    first = out / "shards" / "00000.npy"
    records = np.load(first)
    packed = np.dtype([(name, records.dtype.fields[name][0]) for name in records.dtype.names])
    np.save(first, records.astype(packed))  # format 3's records: fields not aligned
    assert not np.load(first).dtype.isalignedstruct
    for command in (["search", str(out), "a red circle"], ["serve", str(out)]):
        assert index_main(command) == 1
        error = capsys.readouterr().err
        assert len(error.splitlines()) == 1 and "format version 3" in error
        assert f"python -m tvr.index build ... --out {out}" in error
    assert index_main(["build", "--checkpoint", str(checkpoint), "--videos",
                       manifest.videos_root, "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "converted the index from format 3 to format 4" in printed
    assert f"wrote {len(coarse)} shards again from their stored frames" in printed
    assert "encoded 0 videos" in printed
    assert Manifest.load(out).saved.entries() == manifest.entries
    for path, array in zip(coarse, originals):  # rewritten from the stored frames
        assert np.array_equal(np.load(path), array) and array.shape[1] == 2
    assert np.load(first).dtype == records.dtype and np.array_equal(np.load(first), records)
    assert VideoIndex.open(out).search(["a red circle"], top=10) == before


def test_stored_state_of_another_kind_is_refused_then_written_anew_by_build(tmp_path):
    """Shards whose records lack a part the engine reads (another version of the code wrote
    them): search says to run the build, which writes them again from their frames."""
    checkpoint = tiny_checkpoint(tmp_path / "ckpt_best.pt")
    out = tmp_path / "index"
    before = toy_index(tmp_path, checkpoint).search(["a red circle"], top=10)
    first = out / "shards" / "00000.npy"
    records = np.load(first)
    kept = [name for name in records.dtype.names if name != "w_forms"]
    np.save(first, np.lib.recfunctions.repack_fields(records[kept]))
    with pytest.raises(IndexStoreError, match=r"\(no w_forms\); run the build command") as error:
        VideoIndex.open(out).search(["a red circle"], top=10)
    assert "\n" not in str(error.value)
    videos = Manifest.load(out).videos_root
    assert index_main(["build", "--checkpoint", str(checkpoint), "--videos", videos, "--out",
                       str(out), "--workers", "0"]) == 0
    assert np.load(first).dtype == records.dtype
    assert VideoIndex.open(out).search(["a red circle"], top=10) == before
