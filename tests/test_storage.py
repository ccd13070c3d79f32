"""tvr.storage: the atomic writes every store uses."""
import json
import os

import pytest
import torch

from tvr.storage import atomic_save, atomic_write, atomic_write_json


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
