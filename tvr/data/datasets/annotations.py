"""Reading annotation files with errors that name the file, the line or key, and the problem.

Every loader in this package reads its files through these helpers, so a malformed file (missing,
not parseable, a missing column or key, an empty caption, a duplicated id, a video id that leaves
the video folder) raises :class:`AnnotationError` instead of a ``KeyError`` deep inside a
DataLoader worker.

No annotation file can run code. JSON, CSV and plain text are parsed as data and nothing else;
pickles (MSVD's captions) are read by :class:`DataUnpickler`, which refuses every class and
function a pickle names. Text files are UTF-8, with or without a byte-order mark.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

from tvr.models.tokenizer import clean_text


class Pair(NamedTuple):
    """One caption of a video; ``start``/``end`` (seconds) clip the video, ``None``: whole."""

    caption: str
    video_id: str
    start: float | None = None
    end: float | None = None


class Annotations(NamedTuple):
    """What a dataset format's ``load(split, anno_path)`` returns."""

    pairs: list[Pair]
    video_ids: list[str]


class AnnotationError(ValueError):
    """A malformed annotation file.

    The message reads ``<file>:<line>: <problem>`` or ``<file> [<key>]: <problem>``; the parts
    are also kept as attributes (``path``, ``line``, ``key``, ``problem``).
    """

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None,
                 key: str | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if key is not None:
            where += f" [{key}]"
        super().__init__(f"{where}: {problem}")
        self.path, self.problem, self.line, self.key = Path(path), problem, line, key


def split_file(dataset: str, split: str, files: Mapping[str, str]) -> str:
    """The file name of ``split`` in ``files``; ``ValueError`` for a split the dataset lacks."""
    if split not in files:
        raise ValueError(f"{dataset} has no split {split!r}; choose from {sorted(files)}")
    return files[split]


def annotation_file(anno_path: Path, name: str) -> Path:
    """``anno_path / name``, which must be an existing file."""
    path = Path(anno_path) / name
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found")
    return path


@contextlib.contextmanager
def text_file(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text, a leading byte-order mark dropped; a file that is not UTF-8
    (e.g. a binary file given in place of an annotation file) raises :class:`AnnotationError`."""
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as f:
            yield f
    except UnicodeDecodeError as err:
        raise AnnotationError(path, f"not UTF-8 text ({err.reason}): is it the right "
                                    "file?") from err


def read_json(path: Path) -> Any:
    """The parsed JSON content of ``path``."""
    with text_file(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(path, f"invalid JSON: {err.msg}", line=err.lineno) from err
    except (ValueError, RecursionError) as err:  # an overlong integer, too deep a nesting
        raise AnnotationError(path, f"invalid JSON: {err}") from err


class DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only. Dicts, lists, tuples, strings, numbers, booleans and None have
    opcodes of their own; anything else is built by calling a class or function that the pickle
    names (``os.system``, ``pathlib.Path.touch``, ...), and naming one is refused here."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise AnnotationError(self.path, f"refuses to load {module}.{name}: annotation pickles "
                                         "hold only dicts, lists, tuples, strings, numbers, "
                                         "booleans and None")


def read_pickle(path: Path) -> Any:
    """The unpickled content of ``path``, plain data only (:class:`DataUnpickler`).

    The file is read whole first: a damaged length field then ends in "truncated" instead of
    a read of that length from the file."""
    data = path.read_bytes()
    try:
        return DataUnpickler(io.BytesIO(data), path).load()
    except AnnotationError:
        raise
    except Exception as err:  # a damaged pickle can fail with any error (pickle's docs)
        raise AnnotationError(path, f"cannot unpickle ({type(err).__name__}: {err}): is it "
                                    "the right file?") from err


def read_id_list(path: Path) -> list[tuple[int, str]]:
    """``(line, id)`` for every non-blank line of a one-id-per-line file; ids must be unique."""
    first_line: dict[str, int] = {}
    with text_file(path) as f:
        for line_no, line in enumerate(f, start=1):
            video_id = line.strip()
            if not video_id:
                continue
            if video_id in first_line:
                raise AnnotationError(path, f"duplicate video id {video_id!r} (first on line "
                                            f"{first_line[video_id]})", line=line_no)
            first_line[video_id] = line_no
    return [(line_no, video_id) for video_id, line_no in first_line.items()]


def read_csv(path: Path, columns: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` for every row of a comma-separated file with a header holding ``columns``.

    ``line`` is the 1-based line on which the row ends (the header is line 1).
    """
    with text_file(path, newline="") as f:
        reader = csv.DictReader(f)
        try:
            yield from _checked_rows(reader, columns, path)
        except csv.Error as err:  # e.g. a field over the csv module's size limit
            raise AnnotationError(path, f"invalid CSV: {err}", line=reader.line_num) from err


def _checked_rows(reader: csv.DictReader, columns: Iterable[str],
                  path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise AnnotationError(path, f"missing column(s) {', '.join(map(repr, missing))} "
                                    f"(header: {', '.join(header) or 'empty'})", line=1)
    for row in reader:
        if None in row or None in row.values():
            found = len(header) + len(row[None]) if None in row else sum(
                v is not None for v in row.values())
            raise AnnotationError(path, f"expected {len(header)} fields, found {found}",
                                  line=reader.line_num)
        yield reader.line_num, row


def caption_text(value: Any, path: Path, *, line: int | None = None,
                 key: str | None = None) -> str:
    """``value`` stripped; it must be a string that the tokenizer's cleaning
    (:func:`tvr.models.tokenizer.clean_text`) does not reduce to nothing, as it does whitespace,
    control characters, terminal escapes or ``&nbsp;``."""
    if not isinstance(value, str):
        raise AnnotationError(path, f"caption must be a string, got {type(value).__name__}",
                              line=line, key=key)
    text = value.strip()
    if not _keeps_text(text):
        raise AnnotationError(path, "empty caption (nothing is left once whitespace and control "
                                    "characters are removed): write it or delete it",
                              line=line, key=key)
    return text


def _keeps_text(text: str) -> bool:
    """Whether :func:`clean_text` leaves anything of ``text`` (stripped). The cleaning changes
    only the case and the runs of spaces of printable ASCII without ``&`` (most captions), which
    therefore skips ftfy's cost."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return bool(text)
    return bool(clean_text(text))


def check_video_id(value: Any, names: Callable[[str], Iterable[str]], path: Path, *,
                   line: int | None = None, key: str | None = None) -> str:
    """``value``, a video id: a non-blank string which, like each of its file names
    ``names(value)``, stays inside the video folder (not absolute, no ``..`` part)."""
    if not isinstance(value, str) or not value.strip():
        got = repr(value) if isinstance(value, str) else type(value).__name__
        raise AnnotationError(path, f"video id must be a non-empty string, got {got}",
                              line=line, key=key)
    for name in (value, *names(value)):
        if os.path.isabs(name) or ".." in name.replace(os.sep, "/").split("/"):
            raise AnnotationError(path, f"video id {value!r} points outside the video folder "
                                        f"(as {name!r}): ids are names under --video_path, "
                                        "without a leading '/' or a '..' part",
                                  line=line, key=key)
    return value


def required(mapping: Any, name: str, path: Path, key: str) -> Any:
    """``mapping[name]``; ``mapping`` (found at ``key`` in ``path``) must be a dict holding it."""
    if not isinstance(mapping, dict):
        raise AnnotationError(path, f"expected an object, got {type(mapping).__name__}", key=key)
    if name not in mapping:
        raise AnnotationError(path, f"missing key {name!r}", key=key)
    return mapping[name]


def check_listed(split: str, listed: Iterable[str], captioned: Iterable[str], list_file: Path,
                 caption_file: Path) -> None:
    """Every listed video has captions; in val/test every captioned video is also listed.

    In the train split, captions of videos the list leaves out are dropped (the list selects);
    in an evaluation split they would silently shrink the gallery, so they are an error.
    """
    listed, captioned = list(listed), set(captioned)
    for video_id in listed:
        if video_id not in captioned:
            raise AnnotationError(caption_file, f"no caption for video {video_id!r} listed in "
                                                f"{list_file.name}", key=video_id)
    if split != "train":
        extra = sorted(captioned.difference(listed))
        if extra:
            raise AnnotationError(caption_file, f"video {extra[0]!r} of the {split} split is "
                                                f"absent from the video list {list_file} "
                                                f"({len(extra)} such video(s))", key=extra[0])
