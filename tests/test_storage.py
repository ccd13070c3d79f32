"""tvr.storage: atomic writes, versioned manifests and the mismatch check every store uses; one
writer per store, and the temporary files of killed writes removed."""
import json
import mmap
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tvr.storage import (ConfigMismatchError, MappedNpy, StoreBusyError, atomic_save,
                         atomic_write, atomic_write_json, differences, read_manifest,
                         remove_stale_temporaries, require_same, writer_lock)


class StoreError(ValueError):
    pass


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = atomic_write(tmp_path / "data.bin", lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_the_data_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    path = atomic_write(tmp_path / "new" / "data.bin", lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert events == ["fsync", "replace", "fsync"]  # the file, then the folder


def test_atomic_save_writes_a_file_torch_loads_with_weights_only(tmp_path):
    value = {"weights": torch.arange(6.0).reshape(2, 3), "step": 3}
    loaded = torch.load(atomic_save(value, tmp_path / "a.pt"), weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["weights"], value["weights"])


def test_json_is_compact_in_order_or_pretty_and_sorted(tmp_path):
    value = {"b": [1, 2], "a": {"c": None}}
    compact = atomic_write_json(tmp_path / "compact.json", value).read_text()
    pretty = atomic_write_json(tmp_path / "pretty.json", value, pretty=True).read_text()
    assert compact == '{"b": [1, 2], "a": {"c": null}}'
    assert pretty == json.dumps(value, indent=1, sort_keys=True)
    assert json.loads(compact) == json.loads(pretty) == value


def test_a_manifest_of_this_version_is_read(tmp_path):
    path = atomic_write_json(tmp_path / "manifest.json", {"format": 2, "key": {"a": 1}})
    assert read_manifest(path, "format", 2, StoreError, "rebuild it") == {"format": 2,
                                                                          "key": {"a": 1}}


@pytest.mark.parametrize("record", [{"format": 1}, {"version": 2}, [2]])
def test_a_manifest_of_another_version_is_refused(tmp_path, record):
    path = atomic_write_json(tmp_path / "manifest.json", record)
    found = record.get("format") if isinstance(record, dict) else None
    with pytest.raises(StoreError) as error:
        read_manifest(path, "format", 2, StoreError, "rebuild it with --rebuild")
    assert str(error.value) == (f"{path}: format version {found}, this code reads version 2; "
                                f"rebuild it with --rebuild")


@pytest.mark.parametrize("content", [None, "", "{not json"])
def test_a_missing_or_unreadable_manifest_is_refused(tmp_path, content):
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StoreError, match=r"manifest\.json: not a readable manifest \(.+\); "
                                         r"rebuild it$"):
        read_manifest(path, "format", 1, StoreError, "rebuild it")


def test_differences_name_every_differing_nested_field():
    stored = {"clip": {"sha256": "aa", "layers": 12}, "video": {"max_frames": 4, "fps": 1},
              "views": 1, "gone": "x"}
    wanted = {"clip": {"sha256": "bb", "layers": 12}, "video": {"max_frames": 3, "fps": 1},
              "views": {"train": 2}, "new": True}
    assert differences(stored, wanted) == [
        "clip.sha256: stored 'aa', this run 'bb'",
        "gone: stored 'x', this run None",
        "new: stored None, this run True",
        "video.max_frames: stored 4, this run 3",
        "views: stored 1, this run {'train': 2}",
    ]


def test_require_same_names_the_store_each_field_both_values_and_the_remedy():
    stored = {"video": {"max_frames": 4, "fps": 1}, "dtype": "fp32"}
    require_same(stored, {"dtype": "fp32", "video": {"fps": 1, "max_frames": 4}}, StoreError,
                 "never raised", "nothing to do")
    with pytest.raises(ConfigMismatchError) as error:
        require_same(stored, {"video": {"max_frames": 3, "fps": 2}, "dtype": "fp32"},
                     ConfigMismatchError, "store S was made otherwise", "Make it again")
    assert str(error.value) == ("store S was made otherwise: video.fps: stored 1, this run 2; "
                                "video.max_frames: stored 4, this run 3. Make it again")


JSON = st.recursive(st.booleans() | st.integers() | st.text(max_size=3)
                    | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=12)


@given(JSON, JSON)
def test_differences_are_empty_exactly_for_equal_values(stored, wanted):
    assert differences(stored, stored) == []
    assert (differences(stored, wanted) == []) == (stored == wanted)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writes_temporary_file_goes_and_a_live_writers_stays(tmp_path):
    dead, live = dead_pid(), os.getppid()
    (tmp_path / "shards").mkdir()
    stale = [tmp_path / f".ckpt_last.pt.{dead}.tmp", tmp_path / "shards" / f".00001.pt.{dead}.tmp"]
    kept = [tmp_path / f".ckpt_last.pt.{live}.tmp", tmp_path / ".notes.tmp",
            tmp_path / f"ckpt.{dead}.tmp"]  # a live writer's, and files atomic_write does not make
    for path in stale + kept:
        path.write_bytes(b"half")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.rglob("*.tmp")) == sorted(kept)
    assert remove_stale_temporaries(tmp_path, every=True) == [kept[0]]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    store = tmp_path / "store"
    with writer_lock(store, "wait for it, or pass --wait"):
        lock = tmp_path / ".store.lock"  # beside the folder: a writer may delete the folder
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        assert lock.read_text() == holder + "\n"
        with pytest.raises(StoreBusyError) as error:
            with writer_lock(store, "wait for it, or pass --wait"):
                pass
        assert str(error.value) == (f"another process is writing {store} ({holder}); wait for "
                                    f"it, or pass --wait")
        with pytest.raises(KeyError):  # the store's own error
            with writer_lock(store, "", error=KeyError):
                pass
    assert lock.read_text() == ""
    with writer_lock(store, ""):  # free again
        pass


def test_a_waiting_writer_says_whom_for_and_goes_on_after_it(tmp_path, capsys):
    events = []

    def second():
        with writer_lock(tmp_path / "store", "", wait=True):
            events.append("second writes")

    with writer_lock(tmp_path / "store", ""):
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive() and not events  # waiting
        events.append("first done")
    waiter.join(timeout=30)
    assert events == ["first done", "second writes"]
    assert capsys.readouterr().err == (f"{tmp_path / 'store'}: waiting for pid {os.getpid()} on "
                                      f"{socket.gethostname()}, which is writing it\n")


def test_the_lock_holder_removes_every_temporary_file(tmp_path):
    leftover = atomic_write(tmp_path / "store" / "a.bin", lambda f: f.write(b"a")).with_name(
        f".a.bin.{os.getpid()}.tmp")
    leftover.write_bytes(b"half")
    with writer_lock(tmp_path / "store", ""):
        assert os.listdir(tmp_path / "store") == ["a.bin"]


RECORD = np.dtype([("frames", "<f2", (3, 5)), ("mask", "u1", (3,)), ("gram", "<f4", (2, 2))],
                  align=True)


def _records(n: int) -> np.ndarray:
    records = np.zeros(n, RECORD)
    records["frames"] = np.arange(n * 15).reshape(n, 3, 5) / 7
    records["mask"] = np.arange(n * 3).reshape(n, 3) % 2
    records["gram"] = np.arange(n * 4).reshape(n, 2, 2) - 3.5
    return records


@pytest.mark.parametrize("array", [_records(40), _records(0), np.arange(24.).reshape(2, 3, 4),
                                   np.asfortranarray(np.arange(12).reshape(3, 4))],
                         ids=["records", "empty", "float64", "fortran"])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_a_mapped_npy_file_is_the_array_np_load_reads(tmp_path, array, version):
    path = tmp_path / "a.npy"
    with open(path, "wb") as file:
        np.lib.format.write_array(file, array, version=version)
    mapped = MappedNpy(path)
    assert mapped.array.dtype == array.dtype and mapped.array.shape == array.shape
    assert np.array_equal(mapped.array, np.load(path))
    mapped.array[...] = 0  # copy-on-write: the file keeps its bytes
    assert np.array_equal(np.load(path), array)


def test_a_mapped_npy_file_of_objects_or_not_npy_is_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(ValueError, match="objects"):
        MappedNpy(tmp_path / "objects.npy")
    with pytest.raises(ValueError):
        MappedNpy(tmp_path / "text.npy")


class _Advice:
    """Stands for a mapped file's map: records what is asked of madvise."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def madvise(self, option: int, start: int, length: int) -> None:
        self.calls.append((option, start, length))


@pytest.mark.skipif(not hasattr(mmap, "MADV_WILLNEED"), reason="no madvise here")
def test_read_ahead_asks_for_exactly_the_pages_of_each_run_of_rows(tmp_path):
    np.save(tmp_path / "r.npy", _records(1000))
    mapped = MappedNpy(tmp_path / "r.npy")
    mapped._map = advice = _Advice()
    size = RECORD.itemsize  # 52 bytes
    ends = mapped.offset + np.arange(1, 1001) * size
    straddling = int(np.flatnonzero(ends % mmap.PAGESIZE < size)[0])  # ends on the next page
    mapped.read_ahead(np.array([999, 0, 1, 5, straddling, straddling + 1, 999]))
    runs = [(0, 1), (5, 5), (straddling, straddling + 1), (999, 999)]  # sorted, adjacent merged
    assert len(advice.calls) == len(runs)
    for (first, last), (option, start, length) in zip(runs, advice.calls):
        begin, end = mapped.offset + first * size, mapped.offset + (last + 1) * size
        assert option == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0
        assert start <= begin < start + mmap.PAGESIZE and start + length == end
    advice.calls.clear()
    mapped.read_ahead([])  # no rows: nothing asked (it used to index an empty array)
    assert advice.calls == []
