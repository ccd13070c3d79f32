"""Dataset loaders (docs/behaviour.md §4): every format on a fixture written in its real layout,
MSR-VTT also on the real CSVs in ``../shared``, multi-sentence bookkeeping, paragraph mode,
malformed annotation files, and skipping unreadable videos through DataLoader workers.

Videos are never decoded: :class:`FakeFrameLoader` returns deterministic tensors derived from the
file name and raises ``VideoReadError`` for chosen names.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from fixtures_annotations import (write_activitynet, write_csv, write_didemo, write_lsmdc,
                                  write_msrvtt, write_msvd, touch_videos)
from tvr.data.datasets import (AnnotationError, Annotations, CaptionItem, Pair,
                               RetrievalDataset, RetrievalItem, SkippedVideo, SkipReport,
                               VideoFiles, VideoItem, build_dataset, collate_skipping)
from tvr.data.video import VideoReadError
from tvr.models.tokenizer import ClipTokenizer

FRAMES, SIZE, SOT, EOT = 4, 8, 49406, 49407


class FakeFrameLoader:
    """``loader(path, start, end)``: 1..FRAMES real frames of noise seeded by the file name."""

    def __init__(self, bad: tuple[str, ...] = ()):
        self.bad = frozenset(bad)
        self.calls: list[tuple[str, float | None, float | None]] = []

    def __call__(self, path: str, start: float | None = None, end: float | None = None):
        self.calls.append((path, start, end))
        name = Path(path).name
        if name in self.bad:
            raise VideoReadError(f"cannot decode {path}")
        seed = zlib.crc32(name.encode())
        n = 1 + seed % FRAMES
        video = torch.zeros(FRAMES, 3, SIZE, SIZE)
        video[:n] = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        mask = torch.zeros(FRAMES, dtype=torch.long)
        mask[:n] = 1
        return video, mask


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def build(tokenizer, datatype, split, root, max_words=32, loader=None, **kwargs):
    return build_dataset(datatype, split, root / "anno", root / "videos", tokenizer,
                         loader or FakeFrameLoader(), max_words, **kwargs)


def check_item(item, dataset, index, file_name, tokenizer):
    """``item`` is caption ``index`` of ``dataset`` with the fake frames of ``file_name``."""
    assert isinstance(item, RetrievalItem)
    ids, mask = tokenizer.encode_caption(dataset.pairs[index].caption, dataset.max_words)
    assert item.text_ids.dtype == item.text_mask.dtype == item.video_mask.dtype == torch.long
    assert item.text_ids.tolist() == ids.tolist() and item.text_mask.tolist() == mask.tolist()
    video, video_mask = FakeFrameLoader()(file_name)
    assert item.video.shape == (FRAMES, 3, SIZE, SIZE) and item.video.dtype == torch.float32
    assert torch.equal(item.video, video) and torch.equal(item.video_mask, video_mask)
    assert item.index == index and item.video_index == dataset.caption_to_video[index]


# --- every format ------------------------------------------------------------------------------
def test_msrvtt_fixture_train_and_test(tmp_path, tokenizer):
    captions = {"video0": ["a cat sleeps", "a cat on a sofa"], "video1": ["men play football"],
                "video2": ["a test video"]}
    write_msrvtt(tmp_path / "anno", captions, train=["video1", "video0"],
                 test=[("video2", "a test video"), ("video0", "a cat sleeps")])
    touch_videos(tmp_path / "videos", ["video0.mp4", "video1.mp4", "video2.mp4"])
    train = build(tokenizer, "msrvtt", "train", tmp_path)
    assert train.video_ids == ["video1", "video0"]
    assert [(p.caption, p.video_id) for p in train.pairs] == [
        ("a cat sleeps", "video0"), ("a cat on a sofa", "video0"), ("men play football", "video1")]
    assert train.caption_to_video == [1, 1, 0]
    check_item(train[2], train, 2, "video1.mp4", tokenizer)
    for split in ("val", "test"):
        test = build(tokenizer, "msrvtt", split, tmp_path)
        assert test.video_ids == ["video2", "video0"] and not test.multi_sentence
        assert [p.caption for p in test.pairs] == ["a test video", "a cat sleeps"]
        check_item(test[1], test, 1, "video0.mp4", tokenizer)


def test_msrvtt_real_test_split(msrvtt_dir, tokenizer):
    test = build_dataset("msrvtt", "test", msrvtt_dir, "/nonexistent", tokenizer,
                         FakeFrameLoader(), 32)
    assert len(test) == 1000 and len(test.video_ids) == 1000 and not test.multi_sentence
    assert test.pairs[0].video_id == "video9770" == test.video_ids[0]
    assert test.pairs[0].caption == "a person is connecting something to system"
    assert test.pairs[-1].video_id == "video9871"
    assert test.caption_to_video == list(range(1000))
    assert test.video_files.candidates("video9770") == [Path("/nonexistent/video9770.mp4")]
    assert test.captions()[0].text_ids[:2].tolist() == [SOT, 320]  # "a"


def test_msrvtt_real_train_list_with_fixture_json(msrvtt_dir, tmp_path, tokenizer):
    anno = tmp_path / "anno"
    anno.mkdir()
    (anno / "MSRVTT_train.9k.csv").write_bytes((msrvtt_dir / "MSRVTT_train.9k.csv").read_bytes())
    captions = {f"video{i}": [f"caption one of {i}", f"caption two of {i}"] for i in range(10000)}
    write_msrvtt(tmp_path / "fixture", captions, train=[], test=[])
    (anno / "MSRVTT_data.json").write_bytes((tmp_path / "fixture/MSRVTT_data.json").read_bytes())
    train = build_dataset("msrvtt", "train", anno, tmp_path, tokenizer, FakeFrameLoader(), 32)
    assert len(train.video_ids) == 9000 and len(train) == 18000
    test = build_dataset("msrvtt", "test", msrvtt_dir, tmp_path, tokenizer, FakeFrameLoader(), 32)
    assert not set(train.video_ids) & set(test.video_ids)  # 1k-A is disjoint from the 9k


def test_msvd_multi_sentence_bookkeeping(tmp_path, tokenizer):
    captions = {"vA_1_5": ["one caption"], "vB_2_9": ["first of two", "second of two"],
                "vC_0_3": [f"caption {k} of five" for k in range(5)], "vT_1_2": ["train only"]}
    write_msvd(tmp_path / "anno", captions, {"train": ["vT_1_2"], "val": ["vA_1_5"],
                                             "test": ["vA_1_5", "vB_2_9", "vC_0_3"]})
    touch_videos(tmp_path / "videos", ["vA_1_5.avi", "vB_2_9.mp4", "vC_0_3.avi", "vC_0_3.mp4"])
    test = build(tokenizer, "msvd", "test", tmp_path)
    assert test.video_ids == ["vA_1_5", "vB_2_9", "vC_0_3"] and test.multi_sentence
    assert test.caption_to_video == [0, 1, 1, 2, 2, 2, 2, 2]
    assert test.video_to_captions == [[0], [1, 2], [3, 4, 5, 6, 7]]
    assert [p.caption for p in test.pairs[3:5]] == ["caption 0 of five", "caption 1 of five"]
    check_item(test[0], test, 0, "vA_1_5.avi", tokenizer)   # only the raw .avi exists
    check_item(test[4], test, 4, "vC_0_3.mp4", tokenizer)   # .mp4 is preferred
    captions_view, videos_view = test.captions(), test.videos()
    assert len(captions_view) == 8 and len(videos_view) == 3
    assert isinstance(captions_view[5], CaptionItem) and captions_view[5].index == 5
    assert torch.equal(captions_view[5].text_ids, test[5].text_ids)
    video = videos_view[1]
    assert isinstance(video, VideoItem) and video.video_index == 1
    assert torch.equal(video.video, FakeFrameLoader()("vB_2_9.mp4")[0])
    assert [p.video_id for p in build(tokenizer, "msvd", "train", tmp_path).pairs] == ["vT_1_2"]


def test_lsmdc_tab_separated(tmp_path, tokenizer):
    clips = ["1001_Movie_A_00.00.01.000-00.00.03.000", "1002_Other_00.01.00.000-00.01.02.000"]
    excluded = "0017_Pianist_00.23.28.872-00.23.34.843"
    write_lsmdc(tmp_path / "anno", "train", [(clips[0], "SOMEONE opens a door."),
                                             (excluded, "He plays."), (clips[1], "She smiles."),
                                             (clips[0], "He walks in.")])
    touch_videos(tmp_path / "videos", [f"{clips[0]}.avi", f"1002_Other/{clips[1]}.mp4"])
    loader = FakeFrameLoader()
    train = build(tokenizer, "lsmdc", "train", tmp_path, loader=loader)
    assert train.video_ids == clips and train.video_to_captions == [[0, 2], [1]]
    assert [p.caption for p in train.pairs] == ["SOMEONE opens a door.", "She smiles.",
                                                "He walks in."]
    check_item(train[1], train, 1, f"{clips[1]}.mp4", tokenizer)  # per-movie folder
    assert loader.calls[-1] == (str(tmp_path / "videos/1002_Other" / f"{clips[1]}.mp4"),
                                None, None)
    check_item(train[2], train, 2, f"{clips[0]}.avi", tokenizer)


def test_activitynet_paragraphs(tmp_path, tokenizer):
    videos = {"v_abc": (12.3, ["A man enters.", "  He sits down. ", "He leaves."]),
              "v_def": (40.0, ["Kids play football."])}
    write_activitynet(tmp_path / "anno", "val", videos)
    touch_videos(tmp_path / "videos", ["v_abc.mkv", "v_def.mp4"])
    loader = FakeFrameLoader()
    test = build(tokenizer, "activitynet", "test", tmp_path, max_words=64, loader=loader)
    assert test.video_ids == ["v_abc", "v_def"] and not test.multi_sentence
    assert test.pairs[0].caption == "A man enters. He sits down. He leaves."
    assert (test.pairs[0].start, test.pairs[0].end) == (0.0, 13.0)
    check_item(test[0], test, 0, "v_abc.mkv", tokenizer)
    assert loader.calls[-1][1:] == (0.0, 13.0)
    assert len(build(tokenizer, "activitynet", "val", tmp_path)) == 2
    short = build(tokenizer, "activitynet", "test", tmp_path, max_words=6)
    ids, mask = short[0].text_ids.tolist(), short[0].text_mask.tolist()
    assert mask == [1] * 6 and ids[0] == SOT and ids[-1] == EOT
    assert ids[1:5] == tokenizer.tokenize(test.pairs[0].caption)[:4]


def test_didemo_paragraphs(tmp_path, tokenizer):
    moments = [("12@N00_1_aa.mov", "a dog runs"), ("34@N01_2_bb", "red car passes"),
               ("12@N00_1_aa.mov", "the dog stops"), ("12@N00_1_aa.mov", "it barks")]
    write_didemo(tmp_path / "anno", "test", moments)
    touch_videos(tmp_path / "videos", ["12@N00_1_aa.mp4", "34@N01_2_bb.mp4"])
    loader = FakeFrameLoader()
    test = build(tokenizer, "didemo", "test", tmp_path, max_words=64, loader=loader)
    assert test.video_ids == ["12@N00_1_aa.mov", "34@N01_2_bb"]
    assert test.pairs[0].caption == "a dog runs the dog stops it barks"
    check_item(test[0], test, 0, "12@N00_1_aa.mp4", tokenizer)
    assert loader.calls[-1][1:] == (0.0, 31.0)
    write_didemo(tmp_path / "anno", "test", moments, listed=["34@N01_2_bb", "12@N00_1_aa.mov"])
    listed = build(tokenizer, "didemo", "test", tmp_path, max_words=5)
    assert listed.video_ids == ["34@N01_2_bb", "12@N00_1_aa.mov"]
    assert listed[1].text_ids.tolist() == [SOT, *tokenizer.tokenize("a dog runs"), EOT]


def test_unknown_datatype_and_split(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="unknown datatype 'youcook'"):
        build(tokenizer, "youcook", "train", tmp_path)
    with pytest.raises(ValueError, match="no split 'dev'"):
        build(tokenizer, "msvd", "dev", tmp_path)


@pytest.mark.parametrize("pairs, video_ids, message", [
    ([Pair("a", "x"), Pair("b", "x")], ["x", "x"], "duplicate ids"),
    ([Pair("a", "x"), Pair("b", "y")], ["x"], "caption 1 belongs to unlisted video 'y'"),
    ([Pair("a", "x")], ["x", "y"], "video 'y' has no caption"),
    ([Pair("a", "x", 0.0, 5.0), Pair("b", "x", 1.0, 5.0)], ["x"], "clip it differently"),
])
def test_base_dataset_checks_its_annotations(tokenizer, pairs, video_ids, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RetrievalDataset(Annotations(pairs, video_ids), VideoFiles(".", lambda v: [v]),
                         tokenizer, FakeFrameLoader(), 8)


# --- malformed annotation files ----------------------------------------------------------------
def _msrvtt(anno, *, test=None, train_rows=None, sentences=None):
    write_msrvtt(anno, {"video0": ["c0"], "video1": ["c1"]}, ["video0", "video1"],
                 [("video1", "c1")])
    if test is not None:
        write_csv(anno / "MSRVTT_JSFUSION_test.csv", test[0], test[1])
    if train_rows is not None:
        write_csv(anno / "MSRVTT_train.9k.csv", ["video_id"], train_rows)
    if sentences is not None:
        (anno / "MSRVTT_data.json").write_text(sentences)


def _raw(name: str, text: str):
    """A fixture maker writing ``text`` to ``<anno>/<name>``."""
    def make(anno: Path) -> None:
        anno.mkdir(exist_ok=True)
        (anno / name).write_text(text)
    return make


MSVD_OK = {"v1": ["a b"], "v2": ["c d"]}
HEADER = ["key", "vid_key", "video_id", "sentence"]
MALFORMED = {
    "missing file": ("msrvtt", "test", lambda a: a.mkdir(),
                     "MSRVTT_JSFUSION_test.csv: annotation file not found"),
    "missing column": ("msrvtt", "test",
                       lambda a: _msrvtt(a, test=(["key", "video_id"], [["r0", "video1"]])),
                       "MSRVTT_JSFUSION_test.csv:1: missing column(s) 'sentence'"),
    "empty caption": ("msrvtt", "test",
                      lambda a: _msrvtt(a, test=(HEADER, [["r0", "m", "video1", "ok"],
                                                          ["r1", "m", "video2", "  "]])),
                      "MSRVTT_JSFUSION_test.csv:3: empty caption"),
    "duplicate key": ("msrvtt", "test",
                      lambda a: _msrvtt(a, test=(HEADER, [["r0", "m", "video1", "x"],
                                                          ["r0", "m", "video2", "y"]])),
                      "MSRVTT_JSFUSION_test.csv:3: duplicate key 'r0' (first on line 2)"),
    "duplicate train id": ("msrvtt", "train",
                           lambda a: _msrvtt(a, train_rows=[["video0"], ["video1"], ["video0"]]),
                           "MSRVTT_train.9k.csv:4: duplicate video_id 'video0'"),
    "missing json key": ("msrvtt", "train",
                         lambda a: _msrvtt(a, sentences=json.dumps({"sentences": [
                             {"video_id": "video0", "caption": "x"}, {"video_id": "video1"}]})),
                         "MSRVTT_data.json [sentences[1]]: missing key 'caption'"),
    "train video without caption": ("msrvtt", "train",
                                    lambda a: _msrvtt(a, train_rows=[["video0"], ["video7"]]),
                                    "MSRVTT_data.json [video7]: no caption for video 'video7' "
                                    "(MSRVTT_train.9k.csv line 3)"),
    "msvd duplicate id": ("msvd", "test",
                          lambda a: write_msvd(a, MSVD_OK, {"test": ["v1", "v2", "v1"]}),
                          "test_list.txt:3: duplicate video id 'v1' (first on line 1)"),
    "msvd unknown id": ("msvd", "test", lambda a: write_msvd(a, MSVD_OK, {"test": ["v1", "v9"]}),
                        "raw-captions.pkl [v9]: no captions for video 'v9' "
                        "(test_list.txt line 2)"),
    "msvd empty caption": ("msvd", "val",
                           lambda a: write_msvd(a, {"v1": ["a", ""]}, {"val": ["v1"]}),
                           "raw-captions.pkl ['v1' caption 1]: empty caption"),
    "lsmdc field count": ("lsmdc", "test",
                          _raw("LSMDC16_challenge_1000_publictect.csv",
                               "c_1\t0\t1\t0\t1\tok\nc_2\t0\t1\tbad\n"),
                          "publictect.csv:2: expected 6 tab-separated fields"),
    "lsmdc empty sentence": ("lsmdc", "val",
                             lambda a: write_lsmdc(a, "val", [("c_1", "ok"), ("c_2", " ")]),
                             "LSMDC16_annos_val.csv:2: empty caption"),
    "activitynet missing key": ("activitynet", "train",
                                lambda a: (write_activitynet(a, "train", {"v_a": (3.0, ["x"])}),
                                           _raw("train.json", '{"v_a": {"duration": 3}}')(a)),
                                "train.json [v_a]: missing key 'sentences'"),
    "activitynet duplicate id": ("activitynet", "train",
                                 lambda a: write_activitynet(a, "train", {"v_a": (3.0, ["x"])},
                                                             ids=["v_a", "v_a"]),
                                 "train_ids.json [[1]]: duplicate video id 'v_a'"),
    "activitynet unlisted test video": ("activitynet", "test",
                                        lambda a: write_activitynet(
                                            a, "val", {"v_a": (3.0, ["x"]), "v_b": (3.0, ["y"])},
                                            ids=["v_a"]),
                                        "val_1.json [v_b]: video 'v_b' of the test split is "
                                        "absent from the video list"),
    "activitynet empty paragraph": ("activitynet", "val",
                                    lambda a: write_activitynet(a, "val", {"v_a": (3.0, [" "])}),
                                    "val_1.json [v_a]: empty caption"),
    "didemo unlisted test video": ("didemo", "test",
                                   lambda a: write_didemo(a, "test", [("x", "d"), ("y", "e")],
                                                          listed=["x"]),
                                   "test_data.json [y]: video 'y' of the test split is absent"),
    "didemo empty description": ("didemo", "train",
                                 lambda a: write_didemo(a, "train", [("x", "d"), ("y", "")]),
                                 "train_data.json [[1]]: empty caption"),
    "didemo invalid json": ("didemo", "val",
                            _raw("val_data.json", '[\n{"video": ]'),
                            "val_data.json:2: invalid JSON"),
    "msrvtt binary csv": ("msrvtt", "test",
                          lambda a: (a.mkdir(), (a / "MSRVTT_JSFUSION_test.csv").write_bytes(
                              b"\x89PNG\r\n\x1a\n\xff\xd8")),
                          "MSRVTT_JSFUSION_test.csv: not UTF-8 text"),
    "lsmdc binary file": ("lsmdc", "val",
                          lambda a: (a.mkdir(), (a / "LSMDC16_annos_val.csv").write_bytes(
                              b"c_1\t\xff\xfe")),
                          "LSMDC16_annos_val.csv: not UTF-8 text"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_annotations(tmp_path, tokenizer, case):
    datatype, split, make, message = MALFORMED[case]
    make(tmp_path / "anno")
    with pytest.raises(AnnotationError) as info:
        build(tokenizer, datatype, split, tmp_path)
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
    assert str(tmp_path / "anno") in str(info.value)  # the full path of the file


def test_train_split_drops_unlisted_didemo_videos(tmp_path, tokenizer):
    write_didemo(tmp_path / "anno", "train", [("x", "d"), ("y", "e")], listed=["y"])
    assert build(tokenizer, "didemo", "train", tmp_path).video_ids == ["y"]


# --- unreadable videos -------------------------------------------------------------------------
@pytest.fixture
def bad_video_set(tmp_path):
    """MSVD test split of 6 videos (2 captions each): v1 undecodable, v4 missing on disk."""
    ids = [f"v{i}" for i in range(6)]
    write_msvd(tmp_path / "anno", {v: [f"{v} one", f"{v} two"] for v in ids}, {"test": ids})
    touch_videos(tmp_path / "videos", [f"{v}.mp4" for v in ids if v != "v4"])
    bad_files = sorted([str(tmp_path / "videos/v1.mp4"), str(tmp_path / "videos/v4.mp4")])
    return tmp_path, FakeFrameLoader(bad=("v1.mp4",)), bad_files


def test_bad_video_raises_by_default(bad_video_set, tokenizer):
    root, loader, bad_files = bad_video_set
    dataset = build(tokenizer, "msvd", "test", root, loader=loader)
    with pytest.raises(VideoReadError, match=re.escape(f"cannot decode {bad_files[0]}")):
        dataset[2]
    with pytest.raises(VideoReadError, match=r"no file for video 'v4': tried .*v4\.mp4, .*v4\.avi"):
        dataset.videos()[4]
    with pytest.raises(VideoReadError):
        list(DataLoader(dataset, batch_size=4, collate_fn=collate_skipping))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_bad_videos_through_dataloader(bad_video_set, tokenizer, num_workers):
    root, loader, bad_files = bad_video_set
    dataset = build(tokenizer, "msvd", "test", root, loader=loader, skip_bad_videos=True)
    marker = dataset[2]
    assert isinstance(marker, SkippedVideo) and marker.video_id == "v1"
    report, seen = SkipReport(), []
    for batch in DataLoader(dataset, batch_size=3, num_workers=num_workers,
                            collate_fn=collate_skipping):
        report.add(batch)
        if batch.data is not None:
            assert isinstance(batch.data, RetrievalItem)
            assert batch.data.video.shape[1:] == (FRAMES, 3, SIZE, SIZE)
            assert (batch.data.video_mask.sum(1) >= 1).all()
            seen += batch.data.index.tolist()
    assert seen == [0, 1, 4, 5, 6, 7, 10, 11]  # captions of v1 (2, 3) and v4 (8, 9) dropped
    assert report.files == bad_files and len(report) == 2
    assert all(f in report.format() for f in bad_files)

    videos = DataLoader(dataset.videos(), batch_size=2, num_workers=num_workers,
                        collate_fn=collate_skipping)
    batches = list(videos)
    assert [b.data.video_index.tolist() for b in batches] == [[0], [2, 3], [5]]
    assert sorted(m.path for b in batches for m in b.skipped) == bad_files


def test_all_skipped_batch_has_no_data(bad_video_set, tokenizer):
    root, loader, bad_files = bad_video_set
    dataset = build(tokenizer, "msvd", "test", root, loader=loader, skip_bad_videos=True)
    batch = collate_skipping([dataset[2], dataset[3]])
    assert batch.data is None and [m.path for m in batch.skipped] == [bad_files[0]] * 2
    report = SkipReport()
    report.add(batch)
    assert report.files == [bad_files[0]]
    report.clear()
    assert len(report) == 0


def test_paragraph_caption_truncation_keeps_eot(tmp_path, tokenizer):
    long = " ".join(["word"] * 100)
    write_didemo(tmp_path / "anno", "val", [("x", long), ("x", "tail sentence")])
    val = build(tokenizer, "didemo", "val", tmp_path, max_words=64)
    assert val.pairs[0].caption == f"{long} tail sentence"
    ids = val.captions()[0].text_ids.tolist()
    assert len(ids) == 64 and ids[0] == SOT and ids[-1] == EOT and 0 not in ids
    assert (val.pairs[0].start, val.pairs[0].end) == (0.0, 31.0)
