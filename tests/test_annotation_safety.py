"""Annotation files cannot run code.

Each dataset is loaded through its ``load(split, anno_path)`` in :data:`DATASETS`, as
``check_data`` of the command line does before any model is built.
"""
from __future__ import annotations

import os
import pathlib
import pickle

import pytest

from fixtures_annotations import write_msvd
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
