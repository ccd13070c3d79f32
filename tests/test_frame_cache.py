"""The frame cache (tvr/data/frame_cache.py, tvr/data/cached_frames.py,
preprocess/build_frame_cache.py): same frames as the video path, refused when built otherwise,
resumable, bad videos reported."""
import json
import os
import socket
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tvr.data.cached_frames import CachedFrameLoader
from tvr.data.config import CacheParams, SamplingConfig
from tvr.data.datasets import collate_skipping
from tvr.data.device_loader import DeviceLoader
from tvr.data.frame_cache import (FrameCache, FrameCacheError, FrameCacheWriter, cache_key,
                                  decode_jpegs, resize_short_side)
from tvr.data.loaders import SeededItems, build_split
from tvr.data.toy import make_toy_dataset
from tvr.data.transforms import build_frame_transform
from tvr.data.frames import VideoFrameLoader, sample_frames
from tvr.data.video import VideoReadError
from tvr.cli.flags import run_config
from tvr.cli.retrieval import parse_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "preprocess"))
import build_frame_cache  # noqa: E402  (a script folder, not a package)

SAMPLING = SamplingConfig(video_framerate=3.0, max_frames=4, video_backend="opencv")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=10, num_val=0, num_test=6,
                            captions_per_video=2, workers=2)


def entries_of(toy, windows=((None, None), (1.0, 3.0), (2.0, 2.0))):
    """(key, path, start, end) for every toy video, with a few caption windows."""
    paths = sorted(Path(toy.video_path).glob("*.mp4"))
    return [(cache_key(path.name, start, end), str(path), start, end)
            for path in paths for start, end in windows]


def decoded(path, start, end, params):
    sampled = sample_frames(path, params.sampling, start, end)
    return resize_short_side(sampled.frames, params.short_side), sampled.indices


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("fmt, short_side", [("raw", 224), ("raw", 48), ("jpeg", 224)])
def test_cached_frames_are_the_decoded_frames(toy, tmp_path, fmt, short_side):
    params = CacheParams(SAMPLING, short_side=short_side, format=fmt)
    entries = entries_of(toy)
    assert build_frame_cache.build_cache(entries, tmp_path, params, workers=2) == {}
    cache = FrameCache(tmp_path)
    assert sorted(cache.entries) == sorted(key for key, *_ in entries)
    worst = float("inf")
    for key, path, start, end in entries:
        frames, indices = cache.frames(key)
        want, want_indices = decoded(path, start, end, params)
        np.testing.assert_array_equal(indices, want_indices)
        assert frames.shape == want.shape and min(frames.shape[1:3]) == min(64, short_side)
        if fmt == "raw":
            np.testing.assert_array_equal(frames, want)
        else:
            worst = min(worst, psnr(frames, want))
    if fmt == "jpeg":
        assert 40 <= worst < float("inf")


def stored_jpegs(toy, tmp_path):
    """A JPEG cache of the toy videos, and every entry's stored bytes, lengths and shape."""
    build_frame_cache.build_cache(entries_of(toy), tmp_path, CacheParams(SAMPLING), workers=2)
    cache = FrameCache(tmp_path)
    return cache, [(*cache.stored(key), entry["shape"]) for key, (_, entry)
                   in sorted(cache.entries.items())]


def test_jpegs_decode_to_the_pixels_torchvision_gave(toy, tmp_path):
    """Caches built (and tested) while torchvision decoded them read back the same."""
    io = pytest.importorskip("torchvision.io")
    if not hasattr(io, "decode_jpeg"):
        pytest.skip("this torchvision no longer decodes JPEG: nothing left to compare with")
    _, stored = stored_jpegs(toy, tmp_path)
    for data, lengths, shape in stored:
        with warnings.catch_warnings():  # its deprecation is why it is only compared with here
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            want = io.decode_jpeg(list(torch.from_numpy(data).split(lengths)))
        got = decode_jpegs(data, lengths, shape)
        assert got.shape == (len(lengths), *shape, 3)
        np.testing.assert_array_equal(got, torch.stack(want).permute(0, 2, 3, 1).numpy())


def test_a_damaged_jpeg_shard_is_a_one_line_error(toy, tmp_path):
    cache, stored = stored_jpegs(toy, tmp_path)
    data, lengths, shape = stored[0]
    assert decode_jpegs(data, lengths, [shape[0] + 1, shape[1]]) is None
    assert decode_jpegs(data[:len(data) // 2], lengths, shape) is None
    (tmp_path / "shard_00000.bin").write_bytes(bytes(len(data) * len(stored)))
    key = sorted(cache.entries)[0]
    with pytest.raises(FrameCacheError) as error:
        FrameCache(tmp_path).frames(key)
    assert str(error.value) == (f"frame cache {tmp_path}: a stored frame of {key} is not a "
                                f"{shape[0]} x {shape[1]} JPEG (a damaged shard); "
                                f"rebuild it with preprocess/build_frame_cache.py, or drop "
                                f"--frame_cache")


@pytest.mark.parametrize("framerate", [3, 3.0])
def test_parameters_file_is_flat_and_reads_back(tmp_path, framerate):
    params = CacheParams(replace(SAMPLING, video_framerate=framerate), format="raw", quality=90)
    FrameCacheWriter(tmp_path, params).close()
    record = json.loads((tmp_path / "frame_cache.json").read_text())
    assert record == {"version": 1, "video_framerate": 3.0, "max_frames": 4,
                      "video_backend": "opencv", "short_side": 224, "format": "raw",
                      "quality": 90}
    assert isinstance(record["video_framerate"], float)
    assert FrameCache(tmp_path).params == params == CacheParams.from_record(record)


def test_cached_loader_gives_the_video_loader_output(toy, tmp_path):
    params = CacheParams(SAMPLING, format="raw")
    entries = entries_of(toy)
    build_frame_cache.build_cache(entries, tmp_path, params)
    cached = CachedFrameLoader(FrameCache(tmp_path), str(toy.video_path), 32, augment=False)
    video = VideoFrameLoader(SAMPLING, build_frame_transform(32, train=False))
    for _, path, start, end in entries:
        got, got_mask = cached(path, start, end)
        want, want_mask = video(path, start, end)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert torch.equal(got_mask, want_mask)


def test_device_decoding_matches_loader_decoding_augmentation_included(toy, tmp_path):
    params = CacheParams(SAMPLING)
    entries = entries_of(toy, windows=((None, None),))
    build_frame_cache.build_cache(entries, tmp_path, params)
    cache = FrameCache(tmp_path)
    paths = [path for _, path, _, _ in entries]

    class Clips(torch.utils.data.Dataset):
        def __init__(self, on_device):
            self.load = CachedFrameLoader(cache, str(toy.video_path), 32, augment=True,
                                          on_device=on_device)

        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            from tvr.data.datasets import VideoItem
            return VideoItem(*self.load(paths[i]), i)

    def batches(on_device):
        items = SeededItems(Clips(on_device), seed=3)
        loader = DataLoader(items, batch_size=4, collate_fn=collate_skipping)
        return [(b.data.video, b.data.video_mask)
                for b in DeviceLoader(loader, torch.device("cpu"))]

    in_loader, on_device = batches(False), batches(True)
    assert len(in_loader) == len(on_device) == 4
    for (a, a_mask), (b, b_mask) in zip(in_loader, on_device):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert torch.equal(a_mask, b_mask)
    assert not torch.equal(in_loader[0][0][0], batches(False)[0][0][1])  # augmentation is on


def test_other_sampling_parameters_are_refused(toy, tmp_path):
    params = CacheParams(SAMPLING)
    build_frame_cache.build_cache(entries_of(toy), tmp_path, params)
    with pytest.raises(FrameCacheError,
                       match="other parameters: max_frames: stored 4, this run 6. Choose"):
        FrameCacheWriter(tmp_path, CacheParams(replace(SAMPLING, max_frames=6)))

    def data(framerate: int, frames: int):
        return run_config(parse_args([
            "--anno_path", str(toy.root), "--video_path", str(toy.video_path), "--recipe",
            "demo", "--max_frames", str(frames), "--video_framerate", str(framerate),
            "--frame_cache", str(tmp_path)])).data

    with pytest.raises(FrameCacheError, match=r"--video_framerate 3.0 \(this run: 1\)"):
        build_split(data(1, 4), "test", 32, 16)
    with pytest.raises(FrameCacheError, match=r"--max_frames 4 \(this run: 6\)"):
        build_split(data(3, 6), "test", 32, 16)
    with pytest.raises(FrameCacheError, match="short side 224 px"):
        build_split(data(3, 4), "test", 336, 16)


def test_an_interrupted_build_resumes_without_redoing_complete_shards(toy, tmp_path,
                                                                      monkeypatch):
    params = CacheParams(SAMPLING, format="raw")
    entries = entries_of(toy)
    first = FrameCacheWriter(tmp_path, params, shard_bytes=1)  # one entry per shard
    for key, path, start, end in entries[:5]:
        first.add(key, *decoded(path, start, end, params))
    # killed while the sixth entry was being written: its shard has no index, and the process
    # and its lock are gone
    (tmp_path / "shard_00005.bin").write_bytes(b"partial")
    (tmp_path / f".shard_00005.json.{os.getpid()}.tmp").write_text("{")
    del first
    calls = []
    real = build_frame_cache.decode
    monkeypatch.setattr(build_frame_cache, "decode",
                        lambda path, *rest: calls.append(path) or real(path, *rest))
    assert build_frame_cache.build_cache(entries, tmp_path, params) == {}
    assert len(calls) == len(entries) - 5
    cache = FrameCache(tmp_path)
    assert sorted(cache.entries) == sorted(key for key, *_ in entries)
    for key, path, start, end in entries:
        np.testing.assert_array_equal(cache.frames(key)[0], decoded(path, start, end, params)[0])
    assert not list(tmp_path.glob(".*.tmp"))  # the killed write's temporary file is gone


def test_a_second_build_stops_or_waits_then_adds_the_rest(toy, tmp_path, monkeypatch, capsys):
    from test_main_retrieval import SMALL, data_flags
    params = CacheParams(SAMPLING, format="raw")
    entries = entries_of(toy, windows=((None, None),))
    cache = tmp_path / "cache"
    first = FrameCacheWriter(cache, params)
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    with pytest.raises(FrameCacheError) as error:
        build_frame_cache.build_cache(entries, cache, params)
    assert str(error.value) == (f"another process is writing {cache} ({holder}); wait for it, "
                                f"or pass --wait")
    assert build_frame_cache.main(["--output", str(cache), "--no_progress", *SMALL,
                                   *data_flags(toy)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"build_frame_cache.py: error: {error.value}"

    calls = []
    real = build_frame_cache.decode
    monkeypatch.setattr(build_frame_cache, "decode",
                        lambda path, *rest: calls.append(path) or real(path, *rest))
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(build_frame_cache.build_cache, entries, cache, params, wait=True)
        printed, deadline = "", time.time() + 60
        while "waiting" not in printed:
            assert not second.done() and time.time() < deadline, "the second build did not wait"
            time.sleep(0.05)
            printed += capsys.readouterr().err
        assert printed == f"{cache}: waiting for {holder}, which is writing it\n"
        for key, path, start, end in entries[:3]:
            first.add(key, *decoded(path, start, end, params))
        first.close()
        assert second.result(timeout=120) == {}
    assert sorted(calls) == sorted(path for _, path, _, _ in entries[3:])  # only the rest
    assert sorted(FrameCache(cache).entries) == sorted(key for key, *_ in entries)


def test_a_reader_during_a_build_sees_whole_shards(toy, tmp_path):
    params = CacheParams(SAMPLING, format="raw")
    entries = entries_of(toy)[:7]
    writer = FrameCacheWriter(tmp_path, params, shard_bytes=100_000)  # a few entries a shard
    behind = []
    for added, (key, path, start, end) in enumerate(entries, 1):
        writer.add(key, *decoded(path, start, end, params))
        reader = FrameCache(tmp_path)
        complete = entries[:len(reader.entries)]  # the entries of the shards with an index
        assert sorted(reader.entries) == sorted(k for k, *_ in complete)
        for key, path, start, end in complete:
            np.testing.assert_array_equal(reader.frames(key)[0],
                                          decoded(path, start, end, params)[0])
        behind.append(added - len(complete))
    assert max(behind) > 0  # the reader came while a shard was open
    writer.close()
    assert len(FrameCache(tmp_path).entries) == len(entries)


def test_unreadable_videos_are_reported_and_fail_or_skip_at_load(toy, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = Path(toy.video_path) / "video0.mp4"
    (videos / "good.mp4").write_bytes(good.read_bytes())
    (videos / "broken.mp4").write_bytes(b"not a video")
    entries = [(cache_key(name, None, None), str(videos / name), None, None)
             for name in ("good.mp4", "broken.mp4", "absent.mp4")]
    bad = build_frame_cache.build_cache(entries, tmp_path / "cache", CacheParams(SAMPLING))
    assert sorted(Path(p).name for p in bad) == ["absent.mp4", "broken.mp4"]
    loader = CachedFrameLoader(FrameCache(tmp_path / "cache"), str(videos), 32, augment=False)
    assert loader(str(videos / "good.mp4"))[1].sum() >= 1
    with pytest.raises(VideoReadError, match="broken.mp4.*records it as unreadable"):
        loader(str(videos / "broken.mp4"))


def test_runs_read_the_cache_and_train_as_from_the_videos(toy, tmp_path):
    """The CLI builds the cache from main_retrieval.py's flags; training on it (decoded in the
    loader, or batched on the run's device) gives the losses of training on the videos."""
    from test_main_retrieval import SMALL, data_flags, run_main, train_losses
    flags = ["--do_train", "1", "--epochs", "2", *SMALL, *data_flags(toy)]
    cache = tmp_path / "cache"
    assert build_frame_cache.main(["--output", str(cache), "--format", "raw", "--no_progress",
                                   *SMALL, *data_flags(toy)]) == 0
    run_main([*flags, "--output_dir", str(tmp_path / "videos")])
    run_main([*flags, "--frame_cache", str(cache), "--output_dir", str(tmp_path / "cached")])
    run_main([*flags, "--frame_cache", str(cache), "--frame_decode", "device",
              "--output_dir", str(tmp_path / "device")])
    want = train_losses(tmp_path / "videos")
    assert len(want) >= 3
    assert train_losses(tmp_path / "cached") == pytest.approx(want, rel=1e-6)
    assert train_losses(tmp_path / "device") == pytest.approx(want, rel=1e-6)
    missing = run_main([*flags, "--frame_cache", str(tmp_path / "nowhere"), "--output_dir",
                        str(tmp_path / "missing")], check=False)
    assert missing.returncode != 0 and "nowhere" in missing.stderr


@pytest.mark.parametrize("flag, value, expected", [
    ("--quality", "0", "[1, 100]"), ("--quality", "101", "[1, 100]"),
    ("--short_side", "0", "[1, 4096]"), ("--workers", "-1", "[0, 256]"),
    ("--workers", "100000", "[0, 256]"), ("--format", "png", "invalid choice"),
])
def test_a_bad_build_flag_is_one_line(flag, value, expected, toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        build_frame_cache.main(["--anno_path", str(toy.root), "--video_path",
                                str(toy.video_path), "--output", str(tmp_path / "cache"),
                                f"{flag}={value}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and lines[-1].startswith("build_frame_cache.py: error: ")
    assert f"argument {flag}:" in lines[-1] and expected in lines[-1]
    assert not (tmp_path / "cache").exists()


def test_a_malformed_annotation_file_is_one_line(tmp_path, capsys):
    (tmp_path / "anns").mkdir()
    (tmp_path / "anns" / "MSRVTT_train.9k.csv").write_text("garbage\n")
    code = build_frame_cache.main(["--anno_path", str(tmp_path / "anns"), "--video_path",
                                   str(tmp_path), "--output", str(tmp_path / "cache"),
                                   "--splits", "train"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"build_frame_cache.py: error: {tmp_path / 'anns' / 'MSRVTT_train.9k.csv'}:1: missing "
        f"column(s) 'video_id' (header: garbage)")
