"""A zero-shot index (``build --clip_path``): plain CLIP, mean of unit frame embeddings, cosine.

The CLIP file is the tiny CLIP with random weights saved in the OpenAI key layout; its scores
are checked against CLIP run directly on the same frames, and the index follows its folder as a
GARE index does.
"""
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fixtures_index import tiny_checkpoint, tiny_clip_file
from tvr.cli.index import main
from tvr.data.config import SamplingConfig
from tvr.data.frames import frame_transform, frames_to_input, sample_frames
from tvr.data.toy import make_toy_dataset
from tvr.evaluation.engine import coarse_vectors
from tvr.index.search import VideoIndex
from tvr.index.server import create_app
from tvr.index.store import Manifest
from tvr.index.zero_shot import MAX_WORDS, REFUSED, ZERO_SHOT
from tvr.models.pretrained import clip_from_state_dict, read_state_dict
from tvr.models.tokenizer import ClipTokenizer

QUERY = "a red circle moves to the left"
SCORER = "CLIP tiny zero-shot (mean of frame embeddings, cosine)"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """A random tiny CLIP file, a folder of 6 toy videos and 2 spare ones."""
    root = tmp_path_factory.mktemp("zero_shot")
    toy = make_toy_dataset(root / "toy", num_train=6, num_val=0, num_test=2, workers=1)
    videos = sorted(toy.video_path.glob("*.mp4"))
    folder = root / "videos"
    folder.mkdir()
    for video in videos[:6]:
        shutil.copy(video, folder)
    return SimpleNamespace(clip=tiny_clip_file(root / "ViT-tiny.pt"), videos=folder,
                           spare=videos[6:], root=root)


def build(files, out, *flags) -> int:
    return main(["build", "--clip_path", str(files.clip), "--videos", str(files.videos),
                 "--out", str(out), "--workers", "0", *flags])


@torch.no_grad()
def direct_scores(clip_file, folder, query) -> dict[str, float]:
    """{file name: cosine of the query's CLIP embedding with the unit mean of the video's unit
    frame embeddings}, computed here from CLIP itself."""
    clip = clip_from_state_dict(read_state_dict(clip_file)).eval()
    ids, _ = ClipTokenizer().encode_caption(query, MAX_WORDS)
    text = F.normalize(clip.encode_text(torch.from_numpy(ids)[None]), dim=-1)[0]
    transform, sampling = frame_transform(clip.config.image_size, False), SamplingConfig()
    scores = {}
    for path in sorted(folder.glob("*.mp4")):
        frames = sample_frames(str(path), sampling).frames
        video, mask = frames_to_input(frames, transform, sampling.max_frames)
        real = F.normalize(clip.encode_image(video[mask.bool()]), dim=-1)
        scores[path.name] = float(F.normalize(real.mean(0), dim=0) @ text)
    return scores


def test_search_ranks_by_the_cosine_of_plain_clip(files, tmp_path, capsys):
    out = tmp_path / "index"
    assert build(files, out) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("encoded 6 videos") and "'no good match' below" in printed
    manifest = Manifest.load(out)
    assert manifest.checkpoint["kind"] == ZERO_SHOT and manifest.config["max_words"] == MAX_WORDS
    videos = VideoIndex.open(out).gallery.videos  # the format-3 store, as a GARE index's
    stored = videos.parts(torch.arange(6))
    assert set(stored) == {"frames", "mask"} and stored["frames"].dtype == torch.float16
    torch.testing.assert_close(stored["frames"].float().norm(dim=-1)[stored["mask"].bool()],
                               torch.ones(int(stored["mask"].sum())), atol=2e-3, rtol=0)
    torch.testing.assert_close(videos.coarse()[:, 0], coarse_vectors(stored["frames"].float(),
                                                                  stored["mask"]), atol=1e-3, rtol=0)
    assert videos.coarse().shape[1] == 1  # the mean only: stage 1 is the score itself

    expected = direct_scores(files.clip, files.videos, QUERY)
    order = sorted(expected, key=expected.get, reverse=True)
    assert len(set(round(s, 4) for s in expected.values())) == 6  # a strict order to check
    for exhaustive in (False, True):
        hits = VideoIndex.open(out).search([QUERY], top=6, k=3, exhaustive=exhaustive)[0].hits
        assert [hit.path for hit in hits[:3]] == order[:3]
        for hit in hits[:3]:
            assert hit.score == pytest.approx(expected[hit.path], abs=1e-5)

    assert main(["search", str(out), QUERY, "--top", "3", "--min_score", "-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"scored by {SCORER}"
    assert [line.split()[-1].rsplit("/", 1)[-1] for line in lines[2:]] == order[:3]
    assert [float(line.split()[1]) for line in lines[2:]] == \
        pytest.approx([expected[name] for name in order[:3]], abs=1e-4)


def test_threshold_refuses_most_nonsense_on_this_gallery(files, tmp_path):
    out = tmp_path / "index"
    assert build(files, out) == 0
    calibration = Manifest.load(out).config["calibration"]
    assert calibration["videos"] == 6 and calibration["nonsense"] == 256
    assert REFUSED - 0.01 <= calibration["refused"] <= REFUSED
    index = VideoIndex.open(out)
    assert index.threshold == calibration["threshold"]
    best = index.search(["qzvk xoat", QUERY], top=1)
    assert all((answer.good is False) == (answer.hits[0].score < index.threshold)
               for answer in best)
    assert VideoIndex.open(out, threshold=-1.0).search([QUERY], top=1)[0].good is True


def test_a_rebuild_encodes_only_what_changed(files, tmp_path, capsys):
    folder, out = tmp_path / "videos", tmp_path / "index"
    shutil.copytree(files.videos, folder)
    moved = SimpleNamespace(**{**vars(files), "videos": folder})
    assert build(moved, out, "--shard_size", "4") == 0
    shutil.copy(files.spare[0], folder)
    (folder / "video0.mp4").unlink()
    capsys.readouterr()
    assert build(moved, out) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("encoded 1 videos") and "removed 1" in printed
    manifest = Manifest.load(out)
    assert sorted(manifest.entries) == sorted(p.name for p in folder.glob("*.mp4"))
    assert manifest.entries[files.spare[0].name].shard == 2  # shards 0 and 1 kept
    assert manifest.config["calibration"]["videos"] == 6
    assert build(moved, out) == 0
    assert capsys.readouterr().out.startswith("encoded 0 videos")


def test_the_page_names_the_model(files, tmp_path):
    out = tmp_path / "index"
    assert build(files, out) == 0
    page = create_app(VideoIndex.open(out)).test_client().get("/", query_string={"q": QUERY})
    assert page.status_code == 200 and f"scored by {SCORER}" in page.get_data(as_text=True)


def test_one_line_errors(files, tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt_best.pt")
    out = tmp_path / "index"
    common = ["build", "--videos", str(files.videos), "--out", str(out), "--workers", "0"]
    for extra, problem in [([], "one is required"),
                           (["--checkpoint", str(checkpoint), "--clip_path", str(files.clip)],
                            "not both")]:
        with pytest.raises(SystemExit) as stop:
            main([*common, *extra])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert stop.value.code == 2 and error.endswith(problem) and "--clip_path" in error

    not_clip = tmp_path / "notes.pt"
    torch.save({"weights": torch.zeros(2)}, not_clip)
    assert main([*common, "--clip_path", str(not_clip)]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"--clip_path {not_clip}: not a CLIP ViT file" in error

    assert main([*common, "--checkpoint", str(checkpoint)]) == 0
    assert main([*common, "--clip_path", str(files.clip)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "built with another checkpoint or model" in error and ZERO_SHOT in error
    assert "--rebuild" in error

    assert main([*common, "--clip_path", str(files.clip), "--rebuild"]) == 0
    assert main(["search", str(out), QUERY, "--checkpoint", str(checkpoint)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "built zero-shot" in error and "without --checkpoint" in error
