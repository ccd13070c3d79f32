"""The synthetic MSR-VTT-format toy dataset (tvr.data.toy): format, readable videos, captions
grounded in what the frames show (colour, shape, direction of motion), determinism and
idempotency; the default set unchanged by the option that varies sizes, speeds and start points,
and that option's videos varied, in the frame and still true to their captions.

Captions are parsed here with the test's own vocabulary, and each named object is found in the
decoded frames by its palette colour alone, so a caption that disagrees with the pixels fails.
"""
import csv
import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tvr.data.toy import make_toy_dataset
from tvr.data import toy_language
from tvr.data.toy_scene import COLOURS, Scene, ToyVariation, render, sample_objects

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


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "varied"
    return make_toy_dataset(root, seed=0, **SMALL, variation=ToyVariation())


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


@pytest.mark.parametrize("name", ["toy", "varied"])
def test_captions_match_the_pixels(name, request):
    """Every caption names what the frames show; every object stays whole in the frame (no
    pixel on its border) and moves far enough along its direction to read it (varied: its
    shortest path is a fifth of the frame, less the error of the decoded centroid)."""
    toy, least_move = request.getfixturevalue(name), {"toy": 0.2, "varied": 0.18}[name] * SIZE
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
                border = mask[:, [0, -1], :].sum() + mask[:, :, [0, -1]].sum()
                assert border == 0, f"{colour} leaves the frame: {caption}"
                assert shape_of(mask) == shape, caption
                first, last = (np.argwhere(m).mean(axis=0)[::-1] for m in (mask[0], mask[-1]))
                (dx, dy), (ux, uy) = last - first, UNIT[way]
                assert dx * ux + dy * uy > least_move, (caption, first, last)
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


# Digests of the default generator's output for seed 0 and SMALL, taken before the variation
# option existed (commit 138ab96): with the option off, captions and frames are the same to the
# byte. (The mp4s depend on the ffmpeg binary as well: test_deterministic_from_the_seed.)
DEFAULT_DIGESTS = {
    "MSRVTT_data.json": "fd20454cde6457f1d69439d4427239170c7b4a8f4cb46ef3ebadc2cd75c61d05",
    "MSRVTT_JSFUSION_test.csv": "f41735f8676bb6463c8e2c38e0d436d9e7773cdd2e570e0e5773b4ee574316c7",
    "MSRVTT_JSFUSION_val.csv": "089c6f25141f0d0d1800fd551bacecdeda9a68acb35073ceb7d5cec701f4db16",
    "plain/MSRVTT_JSFUSION_test.csv":
        "a866db209e645b0157aa3dbcaa3e250fdf8cdb75c4012da956ef8cdd8e53cb7d",
    "paraphrase/MSRVTT_JSFUSION_test.csv":
        "fd9264ea9a4b3b63e8693c6bdf4388d2f41ff18e6521cc4e6c63df48ac27ab25"}
DEFAULT_FRAMES_DIGEST = "517dce9565796a20d53bd0209882f2765cee59f60084caad515352256a3755d3"


def test_the_default_set_is_unchanged(toy):
    for rel, digest in DEFAULT_DIGESTS.items():
        assert hashlib.sha256((toy.root / rel).read_bytes()).hexdigest() == digest, rel
    params = json.loads((toy.root / "toy_manifest.json").read_text())["params"]
    assert params == {"version": 7, "seed": 0, "num_train": 6, "num_val": 3, "num_test": 4,
                      "captions_per_video": 3, "size": 64, "num_frames": 12, "fps": 3,
                      "two_object_prob": 0.5}
    rng = np.random.default_rng(0)
    frames = [render(sample_objects(rng, Scene(SIZE, FRAMES, 0.5, None)), SIZE, FRAMES)
              for _ in range(13)]
    assert hashlib.sha256(np.stack(frames).tobytes()).hexdigest() == DEFAULT_FRAMES_DIGEST


def test_varied_objects_vary_and_stay_in_the_frame():
    """Sizes, path lengths (speeds) and start points spread over their ranges; every object,
    whole, stays in the frame from start to end."""
    variation, rng = ToyVariation(), np.random.default_rng(5)
    objects = [o for _ in range(2000)
               for o in sample_objects(rng, Scene(SIZE, FRAMES, 0.3, variation))]
    scales = np.array([o.scale for o in objects])
    starts, ends = np.array([o.start for o in objects]), np.array([o.end for o in objects])
    travel = np.linalg.norm(ends - starts, axis=1) / SIZE
    assert scales.min() >= 0.6 and scales.max() <= 1.3 and np.ptp(scales) > 0.65
    assert travel.min() >= 0.2 - 1e-9 and travel.max() <= 0.5 and np.ptp(travel) > 0.25
    assert np.std(travel) > 0.05 and np.std(scales) > 0.15
    half_width = 1.25 * 0.15 * SIZE * scales[:, None]  # a bar's half width, the widest
    for ends_ in (starts, ends):
        assert (ends_ - half_width >= 0).all() and (ends_ + half_width <= SIZE).all()
    assert np.ptp(starts, axis=0).min() > 0.5 * SIZE  # start points all over the frame
    assert all(o.direction in UNIT for o in objects)
    moved = np.array([np.subtract(o.end, o.start) @ UNIT[o.direction] for o in objects])
    assert np.allclose(moved, travel * SIZE)  # along the named direction, nowhere else


def test_a_varied_set_is_recorded_and_reused(varied, tmp_path):
    params = json.loads((varied.root / "toy_manifest.json").read_text())["params"]
    assert params["variation"] == {"scale": [0.6, 1.3], "travel": [0.2, 0.5]}
    assert not make_toy_dataset(varied.root, seed=0, **SMALL, variation=ToyVariation()).created
    root = tmp_path / "t"
    make_toy_dataset(root, seed=0, **SMALL)
    mine = tree(root)
    assert make_toy_dataset(root, seed=0, **SMALL, variation=ToyVariation()).created
    assert tree(root)["videos/video0.mp4"] != mine["videos/video0.mp4"]
    assert make_toy_dataset(root, seed=0, **SMALL).created  # and back: never mistaken
    assert tree(root) == mine


@pytest.mark.parametrize("variation", [ToyVariation(scale=(1.0, 0.5)),
                                       ToyVariation(travel=(0.0, 0.3)),
                                       ToyVariation(scale=(1.0, 2.0), travel=(0.5, 0.6))])
def test_impossible_variations_are_refused(variation, tmp_path):
    with pytest.raises(ValueError):
        make_toy_dataset(tmp_path, **SMALL, variation=variation)
