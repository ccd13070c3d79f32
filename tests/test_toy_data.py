"""The synthetic MSR-VTT-format toy dataset (tvr.data.toy): format, readable videos, captions
grounded in what the frames show (colour, shape, direction of motion), determinism and
idempotency.

Captions are parsed here with the test's own vocabulary, and each named object is found in the
decoded frames by its palette colour alone, so a caption that disagrees with the pixels fails.
"""
import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tvr.data.toy import COLOURS, make_toy_dataset
from tvr.data import toy_language

SMALL = dict(num_train=6, num_val=3, num_test=4, captions_per_video=3, two_object_prob=0.5,
             workers=2)
SIZE, FRAMES = 64, 12  # the generator's defaults, used by SMALL
# The test's own reading of the captions' words (not the generator's tables).
COLOUR_OF = {**{c: c for c in COLOURS}, "crimson": "red", "emerald": "green", "cobalt": "blue",
             "golden": "yellow", "snowy": "white", "violet": "purple", "amber": "orange",
             "turquoise": "cyan", "rose": "pink", "chartreuse": "lime"}
SHAPE_OF = {"circle": "circle", "disc": "circle", "ball": "circle", "dot": "circle",
            "triangle": "triangle", "wedge": "triangle", "bar": "bar", "rectangle": "bar",
            "block": "bar", "brick": "bar"}
WAY_OF = {"left": "left", "leftward": "left", "west": "left", "right": "right",
          "rightward": "right", "east": "right", "up": "up", "upward": "up", "upwards": "up",
          "top": "up", "rises": "up", "rising": "up", "climbs": "up", "climbing": "up",
          "down": "down", "downward": "down", "downwards": "down", "bottom": "down",
          "falls": "down", "falling": "down", "sinks": "down", "sinking": "down",
          "drops": "down", "dropping": "down"}
UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "a"
    return make_toy_dataset(root, seed=0, **SMALL)


def read_frames(path: Path) -> np.ndarray:
    """All frames of ``path`` as T x H x W x 3 RGB float."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1].astype(float))
    cap.release()
    return np.stack(frames)


def parse(caption: str) -> list[tuple[str, str, str]]:
    """(colour, shape, direction) of every clause of a caption."""
    objects = []
    for clause in caption.split(" and "):
        words = clause.replace(",", " ").split()
        colour = [COLOUR_OF[w] for w in words if w in COLOUR_OF]
        shape = [SHAPE_OF[w] for w in words if w in SHAPE_OF]
        way = [WAY_OF[w] for w in words if w in WAY_OF]
        assert len(colour) == len(shape) == len(way) == 1, f"cannot parse {clause!r}"
        objects.append((colour[0], shape[0], way[0]))
    return objects


def read_pairs(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
    return rows


def shape_of(masks: np.ndarray) -> str:
    """Shape from binary masks of one object (medians over frames): a bar is much wider than
    high; a triangle pointing up has its mass low in its box; a circle neither."""
    aspects, lows = [], []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        height = np.ptp(ys) + 1
        aspects.append((np.ptp(xs) + 1) / height)
        lows.append((ys.mean() - (ys.min() + ys.max()) / 2) / height)
    if np.median(aspects) > 1.7:
        return "bar"
    return "triangle" if np.median(lows) > 0.08 else "circle"


def test_msrvtt_format(toy):
    assert toy.created and toy.chance_t2v_r1 == pytest.approx(1 / 4)
    with open(toy.root / "MSRVTT_train.9k.csv") as f:
        train = [row["video_id"] for row in csv.DictReader(f)]
    val = read_pairs(toy.root / "MSRVTT_JSFUSION_val.csv")
    test = read_pairs(toy.root / "MSRVTT_JSFUSION_test.csv")
    data = json.loads((toy.root / "MSRVTT_data.json").read_text())
    assert (len(train), len(val), len(test)) == (6, 3, 4)
    val_ids, test_ids = [r["video_id"] for r in val], [r["video_id"] for r in test]
    assert len(set(train) | set(val_ids) | set(test_ids)) == 13  # three disjoint splits
    assert {v["video_id"] for v in data["videos"]} == set(train) | set(val_ids) | set(test_ids)
    sentences = data["sentences"]
    assert len({s["sen_id"] for s in sentences}) == len(sentences)
    for vid in train:
        captions = [s["caption"] for s in sentences if s["video_id"] == vid]
        assert len(captions) == len(set(captions)) == 3
    for rows in (val, test):
        contents = [frozenset(parse(row["sentence"])) for row in rows]
        assert len(set(contents)) == len(contents), "two videos of a split with one content"
        for row in rows:
            assert [s["caption"] for s in sentences if s["video_id"] == row["video_id"]] == \
                [row["sentence"]]
    assert sorted(p.name for p in toy.video_path.iterdir()) == \
        sorted(f"{v}.mp4" for v in train + val_ids + test_ids)


def test_other_wordings_of_the_test_split(toy):
    """The paraphrase and plain folders describe the test videos again, in other words."""
    test = read_pairs(toy.root / "MSRVTT_JSFUSION_test.csv")
    training = {s["caption"] for s in json.loads((toy.root / "MSRVTT_data.json").read_text())[
        "sentences"]}
    for name in ("paraphrase", "plain"):
        other = read_pairs(toy.root / name / "MSRVTT_JSFUSION_test.csv")
        assert [r["video_id"] for r in other] == [r["video_id"] for r in test]
        for mine, theirs in zip(test, other):
            assert sorted(parse(theirs["sentence"])) == sorted(parse(mine["sentence"]))
            assert theirs["sentence"] not in training
    for row in read_pairs(toy.root / "plain" / "MSRVTT_JSFUSION_test.csv"):
        for clause in row["sentence"].split(" and "):  # "red circle left"
            colour, shape, way = clause.split()
            assert colour in COLOURS and shape in SHAPE_OF.values() and way in UNIT


def test_held_out_forms_are_new_sentences_of_known_words():
    rng = np.random.default_rng(0)
    contents = [(c, s, d) for c in COLOURS for s in ("circle", "triangle", "bar") for d in UNIT]
    train = {toy_language.caption(rng, *contents[i % len(contents)]) for i in range(20000)}
    held = {toy_language.caption(rng, *contents[i % len(contents)],
                                 forms=toy_language.HELD_OUT_FORMS)
            for i in range(5000)}
    assert not train & held
    assert {w for c in held for w in c.split()} <= {w for c in train for w in c.split()}
    assert all(parse(c)[0] in contents for c in held | set(list(train)[:2000]))


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_the_directions_own_word_is_the_most_frequent(direction, monkeypatch):
    """A share toy_language.OWN_WORD_SHARE of the captions says the direction's own word
    after a motion verb; the rest draw from all its wordings, which still occur."""
    def with_word(share):
        monkeypatch.setattr(toy_language, "OWN_WORD_SHARE", share)
        rng = np.random.default_rng(1)
        captions = [toy_language.caption(rng, "red", "circle", direction) for _ in range(4000)]
        return np.mean([re.search(rf"\b{direction}\b", c) is not None for c in captions]), \
            captions
    uniform, captions = with_word(0.0)
    share = 0.5
    assert with_word(share)[0] == pytest.approx(share + (1 - share) * uniform, abs=0.03)
    assert uniform < 0.6 and len({c.split()[-1] for c in captions}) >= 4


def test_captions_match_the_pixels(toy):
    data = json.loads((toy.root / "MSRVTT_data.json").read_text())
    assert any(len(parse(s["caption"])) == 2 for s in data["sentences"])
    for video in data["videos"]:
        path = toy.video_path / f"{video['video_id']}.mp4"
        cap = cv2.VideoCapture(str(path))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(3.0)
        cap.release()
        frames = read_frames(path)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        masks = {colour: np.linalg.norm(frames - np.array(rgb), axis=-1) < 60
                 for colour, rgb in COLOURS.items()}
        for caption in (s["caption"] for s in data["sentences"]
                        if s["video_id"] == video["video_id"]):
            objects = parse(caption)
            named = {colour for colour, _, _ in objects}
            assert all(masks[c].sum() == 0 for c in COLOURS if c not in named), caption
            for colour, shape, way in objects:
                mask = masks[colour]
                assert mask.sum(axis=(1, 2)).min() > 20, f"{colour} missing in a frame: {caption}"
                assert shape_of(mask) == shape, caption
                first, last = (np.argwhere(m).mean(axis=0)[::-1] for m in (mask[0], mask[-1]))
                (dx, dy), (ux, uy) = last - first, UNIT[way]
                assert dx * ux + dy * uy > 0.2 * SIZE, (caption, first, last)
                assert abs(dx * uy - dy * ux) < 2, (caption, first, last)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_deterministic_from_the_seed(toy, tmp_path):
    again = make_toy_dataset(tmp_path / "same", seed=0, **SMALL)
    assert tree(again.root) == tree(toy.root)
    other = tree(make_toy_dataset(tmp_path / "other", seed=1, **SMALL).root)
    mine = tree(toy.root)
    assert other["MSRVTT_data.json"] != mine["MSRVTT_data.json"]
    assert other["videos/video0.mp4"] != mine["videos/video0.mp4"]


def test_idempotent_and_repairs(tmp_path):
    first = make_toy_dataset(tmp_path / "t", seed=3, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in first.root.rglob("*")}
    second = make_toy_dataset(tmp_path / "t", seed=3, **SMALL)
    assert first.created and not second.created
    assert {p: p.stat().st_mtime_ns for p in first.root.rglob("*")} == stamps
    (first.video_path / "video2.mp4").unlink()  # incomplete: made again
    assert make_toy_dataset(tmp_path / "t", seed=3, **SMALL).created
    assert (first.video_path / "video2.mp4").is_file()
    smaller = make_toy_dataset(tmp_path / "t", seed=3, **{**SMALL, "num_test": 2})
    assert smaller.created and smaller.num_test == 2
    assert len(list(smaller.video_path.iterdir())) == 11  # the old set's extra videos are gone
    manifest = smaller.root / "toy_manifest.json"
    older = json.loads(manifest.read_text())
    older["params"]["version"] -= 1  # written by an older generator: made again
    manifest.write_text(json.dumps(older))
    again = make_toy_dataset(tmp_path / "t", seed=3, **{**SMALL, "num_test": 2})
    assert again.created and json.loads(manifest.read_text())["params"]["version"] == \
        older["params"]["version"] + 1


def test_refuses_a_folder_that_is_not_a_toy_set(tmp_path):
    (tmp_path / "MSRVTT_data.json").write_text("{}")
    with pytest.raises(ValueError, match="refusing"):
        make_toy_dataset(tmp_path, **SMALL)
