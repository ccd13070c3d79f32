"""Annotation files cannot run code, may carry a UTF-8 byte-order mark, cannot point a video id
outside the video folder, and cannot hold a caption that the tokenizer would clean away.

Each dataset is loaded through its ``load(split, anno_path)`` in :data:`DATASETS`, as
``check_data`` of the command line does before any model is built.
"""
from __future__ import annotations

import codecs
import os
import pathlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures_annotations import (write_activitynet, write_csv, write_didemo, write_lsmdc,
                                  write_msrvtt, write_msvd)
from tvr.data.datasets import DATASETS, AnnotationError
from tvr.data.datasets.annotations import caption_text
from tvr.models.tokenizer import ClipTokenizer


def load(datatype, split, anno):
    return DATASETS[datatype].load(split, anno)


def refused(case, value, anno):
    """``(where, message)``: ``case`` = (datatype, split, writer, where) written with ``value``
    in ``anno`` fails to load with an AnnotationError whose message names the folder."""
    datatype, split, write, where = case
    write(anno, value)
    with pytest.raises(AnnotationError) as info:
        load(datatype, split, anno)
    assert str(anno) in str(info.value)
    return where, str(info.value)


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


# --- video ids outside the video folder --------------------------------------------------------
def _msrvtt_test(anno, video_id):
    write_msrvtt(anno, {"video0": ["c"]}, ["video0"], [])
    write_csv(anno / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
              [["r0", "m0", "video0", "fine"], ["r1", "m1", video_id, "a caption"]])


def _msrvtt_train(anno, video_id):
    write_msrvtt(anno, {"video0": ["c"], video_id: ["d"]}, ["video0", video_id], [])


OUTSIDE = {  # datatype, split, writer(anno, video_id), where the error points
    "msrvtt test": ("msrvtt", "test", _msrvtt_test, "MSRVTT_JSFUSION_test.csv:3"),
    "msrvtt train": ("msrvtt", "train", _msrvtt_train, "MSRVTT_train.9k.csv:3"),
    "msvd": ("msvd", "test", lambda a, v: write_msvd(a, {"v0": ["a"], v: ["b"]},
                                                     {"test": ["v0", v]}), "test_list.txt:2"),
    "lsmdc": ("lsmdc", "test", lambda a, v: write_lsmdc(a, "test", [("c_0", "a"), (v, "b")]),
              "publictect.csv:2"),
    "activitynet": ("activitynet", "val",
                    lambda a, v: write_activitynet(a, "val", {"v_0": (1.0, ["a"]),
                                                              v: (1.0, ["b"])}),
                    "val_ids.json [[1]]"),
    "didemo": ("didemo", "val", lambda a, v: write_didemo(a, "val", [("x", "a"), (v, "b")]),
               "val_data.json [[1]]"),
}


@pytest.mark.parametrize("video_id", ["../x", "a/../../x", "/etc/x", "..", "sub/../../x_1"])
@pytest.mark.parametrize("case", OUTSIDE, ids=list(OUTSIDE))
def test_video_id_outside_the_video_folder(tmp_path, case, video_id):
    where, message = refused(OUTSIDE[case], video_id, tmp_path / "anno")
    assert f"{where}: video id {video_id!r} points outside the video folder" in message


def test_lsmdc_movie_folder_outside_the_video_folder(tmp_path):
    """An LSMDC clip is also looked for in its movie's folder: the id up to its last ``_``."""
    write_lsmdc(tmp_path, "test", [(".._clip", "a caption")])
    with pytest.raises(AnnotationError, match=r"publictect.csv:1: video id '.._clip' points "
                                              r"outside the video folder \(as '../.._clip.mp4'\)"):
        load("lsmdc", "test", tmp_path)


@pytest.mark.parametrize("case", OUTSIDE, ids=list(OUTSIDE))
def test_video_ids_inside_the_video_folder_load(tmp_path, case):
    datatype, split, write, _ = OUTSIDE[case]
    write(tmp_path / "anno", "sub/..x_1")
    assert "sub/..x_1" in load(datatype, split, tmp_path / "anno").video_ids


# --- captions that clean to nothing ------------------------------------------------------------
EMPTY = {  # datatype, split, writer(anno, caption), where the error points
    "msrvtt test": ("msrvtt", "test",
                    lambda a, c: (write_msrvtt(a, {"video0": ["c"]}, ["video0"], []),
                                  write_csv(a / "MSRVTT_JSFUSION_test.csv",
                                            ["key", "vid_key", "video_id", "sentence"],
                                            [["r0", "m", "video0", "ok"], ["r1", "m", "v1", c]])),
                    "MSRVTT_JSFUSION_test.csv:3"),
    "msrvtt train": ("msrvtt", "train",
                     lambda a, c: write_msrvtt(a, {"video0": ["a", c]}, ["video0"], []),
                     "MSRVTT_data.json [sentences[1]]"),
    "msvd": ("msvd", "test", lambda a, c: write_msvd(a, {"v0": ["a", c]}, {"test": ["v0"]}),
             "raw-captions.pkl ['v0' caption 1]"),
    "lsmdc": ("lsmdc", "test", lambda a, c: write_lsmdc(a, "test", [("c_0", "a"), ("c_1", c)]),
              "publictect.csv:2"),
    "activitynet": ("activitynet", "val",
                    lambda a, c: write_activitynet(a, "val", {"v_0": (1.0, ["a"]),
                                                              "v_1": (1.0, [c])}),
                    "val_1.json [v_1]"),
    "didemo": ("didemo", "val", lambda a, c: write_didemo(a, "val", [("x", "a"), ("y", c)]),
               "val_data.json [[1]]"),
}


@pytest.mark.parametrize("caption", ["\x00\x07", "\x1b[31m", "&nbsp;", " \x7f\u3000 "])
@pytest.mark.parametrize("case", EMPTY, ids=list(EMPTY))
def test_caption_empty_after_cleaning(tmp_path, case, caption):
    where, message = refused(EMPTY[case], caption, tmp_path / "anno")
    assert f"{where}: empty caption" in message


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(text=st.lists(st.characters(exclude_categories=()) | st.sampled_from(
    ["&", "amp;", "nbsp;", "#32;", "\x1b[", "0", "m", " ", "\x00", "\u3000", "a"])).map("".join))
def test_caption_is_empty_exactly_when_the_tokenizer_finds_no_token(tokenizer, text):
    """Also for the loaders' shortcut past the cleaning (printable ASCII without ``&``)."""
    try:
        caption_text(text, pathlib.Path("f.json"), key="k")
    except AnnotationError as err:
        assert err.problem.startswith("empty caption") and tokenizer.tokenize(text) == []
    else:
        assert tokenizer.tokenize(text) != []
