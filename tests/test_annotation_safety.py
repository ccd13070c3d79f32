"""Annotation files cannot run code and may carry a UTF-8 byte-order mark.

Each dataset is loaded through its ``load(split, anno_path)`` in :data:`DATASETS`, as
``check_data`` of the command line does before any model is built.
"""
from __future__ import annotations

import codecs
import os
import pathlib
import pickle

import pytest

from fixtures_annotations import (write_activitynet, write_didemo, write_lsmdc, write_msrvtt,
                                  write_msvd)
from tvr.data.datasets import DATASETS, AnnotationError


def load(datatype, split, anno):
    return DATASETS[datatype].load(split, anno)


# --- pickles that run code ---------------------------------------------------------------------
class Payload:
    """Unpickling this calls ``action(argument)``: what a hostile ``raw-captions.pkl`` does."""

    def __init__(self, action, argument):
        self.action, self.argument = action, argument

    def __reduce__(self):
        return self.action, (self.argument,)


@pytest.mark.parametrize("action, refused", [
    (lambda marker: Payload(pathlib.Path.touch, marker), "pathlib.Path.touch"),
    (lambda marker: Payload(os.system, f"touch '{marker}'"), f"{os.system.__module__}.system"),
], ids=["Path.touch", "os.system"])
def test_pickle_that_runs_code_is_refused(tmp_path, action, refused):
    anno, marker = tmp_path / "anno", tmp_path / "ran"
    write_msvd(anno, {"v1": ["a dog"]}, {"test": ["v1"]})
    with open(anno / "raw-captions.pkl", "wb") as f:
        pickle.dump({"v1": [["a", "dog"]], "v2": action(marker)}, f)
    with pytest.raises(AnnotationError) as info:
        load("msvd", "test", anno)
    assert not marker.exists()
    assert str(info.value) == (f"{anno / 'raw-captions.pkl'}: refuses to load {refused}: "
                               "annotation pickles hold only dicts, lists, tuples, strings, "
                               "numbers, booleans and None")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_captions_pickle_loads_in_every_protocol(tmp_path, protocol):
    anno = tmp_path / "anno"
    write_msvd(anno, {"v1": ["unused"]}, {"test": ["v1", "v2"]})
    with open(anno / "raw-captions.pkl", "wb") as f:
        pickle.dump({"v1": [["a", "dog"], ("runs",)], "v2": [["two", "cats"]], "n": (1, 2.5)},
                    f, protocol=protocol)
    assert [(p.caption, p.video_id) for p in load("msvd", "test", anno).pairs] == [
        ("a dog", "v1"), ("runs", "v1"), ("two cats", "v2")]


# --- UTF-8 with a byte-order mark --------------------------------------------------------------
def _write_each(anno):
    """Every dataset's files, with one split of each that reads them all."""
    write_msrvtt(anno / "msrvtt", {"video0": ["c zero"], "video1": ["c one"]}, ["video0"],
                 [("video1", "c one")])
    write_msvd(anno / "msvd", {"v1": ["a b"], "v2": ["c d"]}, {"test": ["v1", "v2"]})
    write_lsmdc(anno / "lsmdc", "test", [("c_1", "he runs"), ("c_2", "she sits")])
    write_activitynet(anno / "activitynet", "val", {"v_a": (3.0, ["x y"]), "v_b": (2.0, ["z"])})
    write_didemo(anno / "didemo", "val", [("x", "d"), ("y", "e")], listed=["y", "x"])


@pytest.mark.parametrize("datatype, split", [("msrvtt", "train"), ("msrvtt", "test"),
                                             ("msvd", "test"), ("lsmdc", "test"),
                                             ("activitynet", "val"), ("didemo", "val")])
def test_text_files_with_a_byte_order_mark(tmp_path, datatype, split):
    _write_each(tmp_path)
    folder = tmp_path / datatype
    plain = load(datatype, split, folder)
    for path in folder.iterdir():
        if path.suffix != ".pkl":
            path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    assert load(datatype, split, folder) == plain
