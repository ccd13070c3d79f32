"""CLIP eval transform and the clip-consistent RandAugment training transform (docs/behaviour.md
§3)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from tvr.data.transforms import (CLIP_MEAN, CLIP_STD, FrameEvalTransform, FrameTrainTransform,
                                 build_frame_transform, timm_rand_augment)

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
LEVEL = 1 / 255 / min(CLIP_STD)  # one uint8 step after normalisation


def _clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A uint8 (T, 3, H, W) clip of smooth random images (so resizing is well conditioned)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, height // 4 + 1, width // 4 + 1, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return (smooth * 255).round().to(torch.uint8)


def test_eval_transform_crop_and_normalise_exactly():
    """Short side already S: no resize; the center crop and the normalisation are exact."""
    clip = _clip(2, 32, 42)
    out = FrameEvalTransform(32)(clip)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    expected = (clip[:, :, :, 5:37].float() / 255 - MEAN) / STD
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("height,width", [(40, 56), (56, 40), (45, 45)])
def test_eval_transform_matches_the_reference_pil_pipeline(height, width):
    """Resize short side (bicubic, antialiased) then crop, vs the reference's PIL pipeline:
    within two uint8 levels per pixel (tensor vs PIL bicubic kernels), and nearly always equal."""
    size = 32
    clip = _clip(3, height, width, seed=height)
    out = FrameEvalTransform(size)(clip)
    expected = []
    for frame in clip.permute(0, 2, 3, 1).numpy():
        image = Image.fromarray(frame)
        scale = size / min(height, width)
        new_w, new_h = ((int(width * scale), size) if height <= width
                        else (size, int(height * scale)))
        image = image.resize((new_w, new_h), Image.BICUBIC)
        left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
        image = image.crop((left, top, left + size, top + size))
        expected.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    expected = (torch.stack(expected).float() / 255 - MEAN) / STD
    diff = (out - expected).abs()
    assert out.shape == (3, 3, size, size)
    assert diff.max() <= 2 * LEVEL * 1.001
    assert (diff < 1e-5).float().mean() > 0.9


def test_transforms_reject_non_uint8_clips():
    with pytest.raises(ValueError, match="uint8"):
        FrameEvalTransform(8)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        FrameTrainTransform(8)(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_rand_augment_mapping_of_timm_policy():
    """rand-m7-n4-mstd0.5-inc1: four layers of one op with probability 0.5, magnitude 7/10."""
    layers = timm_rand_augment().transforms
    assert len(layers) == 4
    for layer in layers:
        assert isinstance(layer, v2.RandomApply) and layer.p == 0.5
        (op,) = layer.transforms
        assert isinstance(op, v2.RandAugment)
        assert (op.num_ops, op.magnitude, op.num_magnitude_bins) == (1, 7, 11)
        assert op.interpolation == v2.InterpolationMode.BILINEAR
    assert isinstance(build_frame_transform(16, train=True), FrameTrainTransform)
    assert type(build_frame_transform(16, train=False)) is FrameEvalTransform


def test_train_transform_same_image_gives_same_frames():
    frame = _clip(1, 36, 48, seed=3)
    clip = frame.expand(5, -1, -1, -1).contiguous()
    transform = FrameTrainTransform(32)
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(clip)
        assert out.shape == (5, 3, 32, 32)
        for t in range(1, 5):
            assert torch.equal(out[t], out[0])


def test_train_transform_applies_one_draw_to_every_frame():
    """Different frames: the clip's output equals the same seeded draw applied frame by frame."""
    clip = _clip(4, 36, 48, seed=4)
    transform = FrameTrainTransform(32)
    for seed in range(12):
        torch.manual_seed(seed)
        whole = transform(clip)
        for t in range(4):
            torch.manual_seed(seed)
            single = transform(clip[t:t + 1])
            torch.testing.assert_close(whole[t:t + 1], single, rtol=0, atol=1e-5)


def test_train_transform_differs_between_draws():
    clip = _clip(3, 36, 48, seed=5)
    transform = FrameTrainTransform(32)
    eval_out = FrameEvalTransform(32)(clip)
    outs = []
    for seed in range(10):
        torch.manual_seed(seed)
        outs.append(transform(clip))
    distinct = {tuple(o.flatten()[::97].tolist()) for o in outs}
    assert len(distinct) >= 8
    assert sum(not torch.allclose(o, eval_out) for o in outs) >= 8
    torch.manual_seed(0)
    assert not torch.equal(transform(clip), transform(clip))
