"""Transforms of one video's frames (docs/behaviour.md §3): uint8 (T, 3, H, W) in, float
(T, 3, S, S) out.

``clip_eval_transform(S)`` is CLIP's preprocessing: resize the short side to S (bicubic,
antialiased, on uint8 like PIL, so the result is rounded to uint8 as in the reference), center
crop S x S, scale to [0, 1], normalise with CLIP's mean and std.

``FrameTrainTransform(S)`` is the reference's training augmentation, timm RandAugment
``"rand-m7-n4-mstd0.5-inc1"`` with the same random parameters for every frame of a video, followed
by the eval transform. It uses torchvision.transforms.v2 only: the frames are a ``tv_tensors.Video``
and a v2 transform draws its parameters once per call, so one draw covers all frames. The mapping
of the timm policy (as the reference configures it: bicubic, fill 128, translate 0.45 of the
image size) onto torchvision, see :func:`timm_rand_augment`:

========================  =============================================  ======================
timm                      torchvision (chosen)                           match
========================  =============================================  ======================
n4, each op applied       4 x ``RandomApply([RandAugment(num_ops=1)],    exact
with probability 0.5      p=0.5)``: an op is drawn uniformly, with
                          replacement, per layer, as in timm
m7 on a 0..10 scale       ``magnitude=7`` of ``num_magnitude_bins=11``   exact
                          (bin k is k/10 of each op's maximum)
mstd0.5: magnitude drawn  not expressible (``RandAugment`` has a fixed   no: fixed at the mean
~ N(7, 0.5) per op        magnitude); fixed at 7                         (timm: 7 +- 0.5)
inc1: "increasing" ops    all torchvision ops grow in severity with      yes, except Posterize
                          magnitude: Brightness/Color/Contrast/
                          Sharpness 1 +- 0.63 (random sign), Solarize
                          threshold 255 x 0.3 (inverts >= 77 as timm),
                          Rotate 21 deg, Shear 0.21, Translate
                          0.317 x size (timm 0.315); Posterize keeps 5
                          bits (timm PosterizeIncreasing keeps 2)
op set                    14 ops: timm's 15 minus Invert and             no
                          SolarizeAdd, plus Identity
interpolation, fill       ``BILINEAR``, ``fill=128`` (timm: PIL          fill yes; bicubic no:
                          bicubic, fill (128, 128, 128))                 tensor affine/rotate
                                                                         offer nearest and
                                                                         bilinear only
========================  =============================================  ======================

Ops that use image statistics (AutoContrast, Equalize, Contrast's mean) compute them per frame,
as the reference's frame-by-frame PIL ops do. All randomness comes from torch's generator, so
DataLoader workers draw different parameters and ``torch.manual_seed`` makes a call repeatable.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RAND_AUGMENT_LAYERS = 4
RAND_AUGMENT_PROB = 0.5
RAND_AUGMENT_MAGNITUDE = 7
RAND_AUGMENT_BINS = 11
RAND_AUGMENT_FILL = 128


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError("expected uint8 frames of shape (T, 3, H, W), got "
                         f"{frames.dtype} {tuple(frames.shape)}")


class ScaleNormalize(torch.nn.Module):
    """uint8 -> float32 ``(x / 255 - mean) / std`` per channel, as ``ToDtype(scale=True)`` then
    ``Normalize`` but in one fused multiply-add (equal to 1e-6; speed: bench/README.md)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        mean_t, std_t = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(-1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(-1, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out = frames.to(torch.float32)
        return out.mul_(self.scale.to(out.device)).add_(self.shift.to(out.device))


def clip_eval_transform(size: int) -> v2.Compose:
    """CLIP's eval preprocessing at resolution ``size`` (224 for the real models)."""
    return v2.Compose([
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        ScaleNormalize(CLIP_MEAN, CLIP_STD),
    ])


def timm_rand_augment() -> v2.Compose:
    """timm's ``"rand-m7-n4-mstd0.5-inc1"`` as closely as torchvision expresses it (module
    docstring): four layers, each applying one uniformly drawn RandAugment op w.p. 0.5."""
    layer = v2.RandAugment(num_ops=1, magnitude=RAND_AUGMENT_MAGNITUDE,
                           num_magnitude_bins=RAND_AUGMENT_BINS,
                           interpolation=v2.InterpolationMode.BILINEAR, fill=RAND_AUGMENT_FILL)
    return v2.Compose([v2.RandomApply([layer], p=RAND_AUGMENT_PROB)
                       for _ in range(RAND_AUGMENT_LAYERS)])


class FrameEvalTransform:
    """``transform(frames)``: uint8 (T, 3, H, W) -> float (T, 3, size, size), see
    :func:`clip_eval_transform`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.transform = clip_eval_transform(size)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        _check_frames(frames)
        return self.transform(frames)


class FrameTrainTransform(FrameEvalTransform):
    """``transform(frames)``: :func:`timm_rand_augment` with one parameter draw for all the
    frames, then the eval transform; uint8 (T, 3, H, W) -> float (T, 3, size, size)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.augment = timm_rand_augment()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        _check_frames(frames)
        augmented = self.augment(tv_tensors.Video(frames)).as_subclass(torch.Tensor)
        return self.transform(augmented)


def build_frame_transform(size: int, train: bool) -> FrameEvalTransform:
    """The train (augmenting) or eval transform at resolution ``size``."""
    return FrameTrainTransform(size) if train else FrameEvalTransform(size)
