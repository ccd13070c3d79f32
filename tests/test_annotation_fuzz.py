"""Fuzzing every dataset's ``load(split, anno_path)``: whatever its files hold (arbitrary bytes,
a truncated or corrupted file, the real structure with any part replaced by other data, text
edited at random, a missing file), the loader returns :class:`Annotations` that a
:class:`RetrievalDataset` accepts, or raises an :class:`AnnotationError` naming the file; an
unknown split is the documented ``ValueError``. No other exception escapes.

Examples are derived from a fixed seed (``derandomize``), so CI sees the same files each run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_annotations import (write_activitynet, write_didemo, write_lsmdc, write_msrvtt,
                                  write_msvd)
from tvr.data.datasets import DATASETS, AnnotationError, Annotations, RetrievalDataset, VideoFiles
from tvr.models.tokenizer import clean_text

# each case: (datatype, split, writer of a valid annotation folder)
CASES = {
    "msrvtt-train": ("msrvtt", "train", lambda a: write_msrvtt(
        a, {"video0": ["a cat", "a dog"], "video1": ["men run"]}, ["video0", "video1"], [])),
    "msrvtt-test": ("msrvtt", "test", lambda a: (write_msrvtt(
        a, {}, [], [("video0", "a cat"), ("video1", "men, \"quoted\", run")]),
        (a / "MSRVTT_data.json").unlink(), (a / "MSRVTT_train.9k.csv").unlink())),
    "msvd": ("msvd", "test", lambda a: write_msvd(
        a, {"v_1": ["a b", "c"], "v_2": ["d e"]}, {"test": ["v_1", "v_2"]})),
    "lsmdc": ("lsmdc", "val", lambda a: write_lsmdc(
        a, "val", [("1_M_00.01", "He runs."), ("1_M_00.02", "She sits."), ("1_M_00.01", "Ok")])),
    "activitynet": ("activitynet", "train", lambda a: write_activitynet(
        a, "train", {"v_a": (3.5, ["A man.", "He sits."]), "v_b": (2.0, ["Kids play."])})),
    "didemo": ("didemo", "test", lambda a: write_didemo(
        a, "test", [("x@1.mov", "a dog"), ("y", "a car"), ("x@1.mov", "it stops")],
        listed=["y", "x@1.mov"])),
}


def _valid_files(write) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        return {path.name: path.read_bytes() for path in Path(tmp).iterdir()}


VALID = {case: _valid_files(write) for case, (_, _, write) in CASES.items()}

NAMES = st.sampled_from(["", " ", "\x00", "../x", "/abs", "..", "&nbsp;", "\n", "v_a", "video0",
                         "v_1", "y", "1_M_00.01", "duration", "sentences", "caption"])
NUMBERS = st.sampled_from([float("nan"), float("inf"), 10**400, 1e308, True, 0, -1, 0.5])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | NAMES | NUMBERS)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6) | NAMES, inner, max_size=4),
                    max_leaves=10)
PLAIN = st.recursive(SCALARS | st.binary(max_size=6), lambda inner: st.lists(inner, max_size=4)
                     | st.tuples(inner, inner) | st.dictionaries(SCALARS, inner, max_size=4),
                     max_leaves=10)


def _either(*choices: st.SearchStrategy) -> st.SearchStrategy:
    """One of ``choices``, each as likely (``|`` would weigh each branch of a union alike)."""
    return st.sampled_from(choices).flatmap(lambda chosen: chosen)


def _replaced(value, leaves: st.SearchStrategy) -> st.SearchStrategy:
    """``value`` (nested dicts and lists) with one node, perhaps ``value`` itself, replaced."""
    keys = list(value) if isinstance(value, dict) else (
        list(range(len(value))) if isinstance(value, list) else [])
    if not keys:
        return leaves

    def put(key, new):
        copy = dict(value) if isinstance(value, dict) else list(value)
        copy[key] = new
        return copy
    inside = st.sampled_from(keys).flatmap(
        lambda key: _replaced(value[key], leaves).map(lambda new: put(key, new)))
    return _either(leaves, *[inside] * 5)


def _csv_text(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


PIECES = (st.text(st.sampled_from(",\t\n\r\"' \x00\ufeff/.&;") | st.characters(), max_size=12)
          | st.sampled_from(["x" * 131_073,  # one field over the csv module's size limit
                             "[" * 100_000,  # JSON nested deeper than the parser recurses
                             "9" * 5_000]))  # an integer longer than Python converts


def _edited_text(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` with a stretch replaced by random text, or a text of random rows."""
    text = valid.decode()
    edit = st.tuples(st.integers(0, len(text)), st.integers(0, 30), PIECES).map(
        lambda e: (text[:e[0]] + e[2] + text[e[0] + e[1]:]).encode())
    return _either(edit, edit, st.lists(st.lists(PIECES, max_size=6), max_size=4).map(_csv_text))


def _overwritten(data: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for at, new in edits:
        data = data[:at] + new + data[at + 1:]
    return data


def _contents(name: str, valid: bytes) -> st.SearchStrategy[bytes | None]:
    """What a fuzzed file holds; ``None``: the file is absent."""
    damaged = st.one_of(
        st.none(), st.binary(max_size=64), st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.lists(st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=2)),
                 min_size=1, max_size=3).map(lambda edits: _overwritten(valid, edits)))
    if name.endswith(".json"):
        replaced = _replaced(json.loads(valid), _either(NUMBERS, SCALARS, JSON)).map(
            lambda v: json.dumps(v).encode())
        edited = _either(replaced, replaced, _edited_text(valid))
    elif name.endswith(".pkl"):
        edited = st.tuples(_replaced(pickle.loads(valid), _either(SCALARS, PLAIN)),
                           st.integers(0, pickle.HIGHEST_PROTOCOL)).map(
            lambda e: pickle.dumps(*e))
    else:
        edited = _edited_text(valid)
    return _either(damaged, edited, edited, edited)


def _inside(root: str, name: str) -> bool:
    return os.path.normpath(os.path.join(root, name)).startswith(root + os.sep)


def _check(annotations: Annotations, datatype: str, root: str) -> None:
    """A parsed result is a usable dataset: non-empty captions, ids that name files under the
    video folder, and everything :class:`RetrievalDataset` checks."""
    assert isinstance(annotations, Annotations)
    assert all(isinstance(p.caption, str) and clean_text(p.caption) for p in annotations.pairs)
    names = DATASETS[datatype].video_names
    assert all(_inside(root, v) and all(_inside(root, n) for n in names(v))
               for v in annotations.video_ids)
    RetrievalDataset(annotations, VideoFiles(root, names), None, None, 8)


@pytest.mark.parametrize("case", CASES)
def test_valid_files_load(case):
    """The fuzzing starts from files that load."""
    datatype, split, _ = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        for name, valid in VALID[case].items():
            (Path(tmp) / name).write_bytes(valid)
        annotations = DATASETS[datatype].load(split, Path(tmp))
    assert len(annotations.pairs) >= 2 and len(annotations.video_ids) == 2


def _pickle_with_byte(at: int, value: bytes) -> bytes:
    return _overwritten(VALID["msvd"]["raw-captions.pkl"], [(at, value)])


DURATION = (b'{"v_a": {"duration": %s, "sentences": ["a"]}, '
            b'"v_b": {"duration": 2, "sentences": ["b"]}}')
# (case, file, content, message): files that made the earlier loaders fail with another exception,
# found by the fuzzing or while writing it, and a boolean duration, which they read as 1 second
FOUND = {
    "nan duration": ("activitynet", "train.json", DURATION % b"NaN",
                     "train.json [v_a]: 'duration' must be a positive number of seconds, got nan"),
    "infinite duration": ("activitynet", "train.json", DURATION % b"1e400", "got inf"),
    "huge duration": ("activitynet", "train.json", DURATION % (b"1" + b"0" * 400),
                      "'duration' must be a positive number of seconds, got 1000"),
    "boolean duration": ("activitynet", "train.json", DURATION % b"true", "got True"),
    "deep json": ("didemo", "test_data.json", b"[" * 100_000, "test_data.json: invalid JSON: "
                                                               "maximum recursion depth"),
    "long integer": ("didemo", "test_data.json", b"9" * 5000,
                     "test_data.json: invalid JSON: Exceeds the limit (4300 digits)"),
    "long csv field": ("msrvtt-test", "MSRVTT_JSFUSION_test.csv",
                       b"key,vid_key,video_id,sentence\n" + b"x" * 131_073,
                       "MSRVTT_JSFUSION_test.csv:1: invalid CSV: field larger than field limit"),
    "pickle length": ("msvd", "raw-captions.pkl", _pickle_with_byte(8, b"\x01"),
                      "raw-captions.pkl: cannot unpickle (UnpicklingError: pickle data was "
                      "truncated)"),
    "id not a string": ("msrvtt-train", "MSRVTT_data.json",
                        b'{"sentences": [{"video_id": ["v"], "caption": "c"}]}',
                        "MSRVTT_data.json [sentences[0]]: video id must be a non-empty string, "
                        "got list"),
}


@pytest.mark.parametrize("found", FOUND)
def test_what_fuzzing_found(found):
    case, name, content, message = FOUND[found]
    datatype, split, _ = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        for file, valid in VALID[case].items():
            (Path(tmp) / file).write_bytes(content if file == name else valid)
        with pytest.raises(AnnotationError) as info:
            DATASETS[datatype].load(split, Path(tmp))
    assert str(info.value).startswith(tmp + os.sep) and message in str(info.value)


@pytest.mark.parametrize("case", CASES)
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_load_parses_or_raises_annotation_error(case, data):
    datatype, split, _ = CASES[case]
    files = VALID[case]
    changed = data.draw(st.lists(st.sampled_from(sorted(files)), min_size=1, unique=True),
                        label="changed files")
    split = data.draw(st.sampled_from([split] * 9 + ["dev"]), label="split")
    with tempfile.TemporaryDirectory() as tmp:
        for name, valid in files.items():
            (Path(tmp) / name).write_bytes(valid)
        for name in changed:
            content = data.draw(_contents(name, files[name]), label=name)
            if content is None:
                (Path(tmp) / name).unlink()
            else:
                (Path(tmp) / name).write_bytes(content)
        try:
            annotations = DATASETS[datatype].load(split, Path(tmp))
        except AnnotationError as err:
            assert str(err).startswith(tmp + os.sep), err
            return
        except ValueError as err:
            assert split == "dev" and f"{datatype} has no split 'dev'" in str(err)
            return
        _check(annotations, datatype, tmp)
