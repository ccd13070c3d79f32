"""What a toy video shows and how it is drawn (:mod:`tvr.data.toy`): one or two coloured
shapes moving in a straight line on a dark background, each on a default path or, with a
:class:`ToyVariation`, with a size, speed and start point drawn from its ranges, and the frames
of such a video. Either way a leftward path is the time reversal of a rightward one with the
same distribution of positions (likewise up and down).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 40), "blue": (50, 80, 240),
           "yellow": (240, 220, 40), "white": (240, 240, 240), "purple": (160, 60, 200),
           "orange": (250, 140, 20), "cyan": (40, 210, 220), "pink": (250, 130, 190),
           "lime": (160, 250, 80)}
SHAPES = ("circle", "triangle", "bar")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image x, y
BACKGROUND = (30, 30, 30)
_SHIFT = 4  # cv2 drawing with 1/16-pixel precision
BAR_HALF_SIZE = (1.25, 0.5)  # half width and half height of a bar, in object radii


@dataclass(frozen=True)
class MovingShape:
    """One object: what it is, where it goes, its centre (pixels) at the first/last frame, and
    its size relative to the default object's."""

    colour: str
    shape: str
    direction: str
    start: tuple[float, float]
    end: tuple[float, float]
    scale: float = 1.0  # its radius in units of object_radius(size)

    def centre(self, t: float) -> tuple[float, float]:
        """Centre at time ``t`` in [0, 1] (linear motion)."""
        return (self.start[0] + t * (self.end[0] - self.start[0]),
                self.start[1] + t * (self.end[1] - self.start[1]))


@dataclass(frozen=True)
class ToyVariation:
    """Ranges from which :func:`tvr.data.toy.make_toy_dataset` draws each object's size, speed
    and start point (uniformly) instead of the default paths. ``scale``: the object's radius in
    units of :func:`object_radius`; ``travel``: the length of its path as a share of the frame
    side (its speed, as every video lasts ``num_frames`` frames); the start point is then drawn
    where the whole path, and the whole object along it, stays in the frame. A path longer than
    the frame allows for a large object is cut to fit. The defaults keep every path at least a
    fifth of the frame, longer than the diameter of the smallest object (radius 0.09 of the
    frame side, 5.8 pixels at 64): its direction stays readable.
    """

    scale: tuple[float, float] = (0.6, 1.3)
    travel: tuple[float, float] = (0.2, 0.5)

    def check(self, size: int) -> None:
        """ValueError unless the ranges are ordered and positive and the shortest path fits the
        ``size`` x ``size`` frame with the largest object."""
        (small, large), (short, long) = self.scale, self.travel
        if not (0 < small <= large and 0 < short <= long):
            raise ValueError(f"ToyVariation needs 0 < low <= high, got {self}")
        if short * size > size - 2 * _margin(large * object_radius(size)):
            raise ValueError(f"a path of {short} x {size} pixels with objects of scale {large} "
                             f"does not fit a {size}-pixel frame")


def object_radius(size: int) -> float:
    """Radius (pixels) of every object in a ``size`` x ``size`` frame (a bar's size is
    :data:`BAR_HALF_SIZE` in radii)."""
    return 0.15 * size


def _margin(radius: float) -> float:
    """Distance from the frame's edge that keeps the widest shape of ``radius`` inside."""
    return BAR_HALF_SIZE[0] * radius + 2


def _path(rng: np.random.Generator, size: int, variation: ToyVariation | None
          ) -> tuple[float, float, float, float]:
    """(scale, low, high, across): the object's scale, the ends of its path along its axis of
    motion and its position across it (pixels)."""
    if variation is None:
        margin = _margin(object_radius(size))
        # the path spans at least half the frame: a larger move is easier to see in a few frames
        low, high = rng.uniform(margin, 0.25 * size), rng.uniform(0.75 * size, size - margin)
        return 1.0, low, high, rng.uniform(margin, size - margin)
    scale = rng.uniform(*variation.scale)
    margin = _margin(scale * object_radius(size))
    room = size - 2 * margin
    length = min(rng.uniform(*variation.travel) * size, room)
    low = margin + rng.uniform(0.0, room - length)
    return scale, low, low + length, rng.uniform(margin, size - margin)


def _sample_object(rng: np.random.Generator, size: int, colour: str,
                   variation: ToyVariation | None) -> MovingShape:
    """One object of ``colour``: random shape, direction and path (:func:`_path`); a path
    against the axis is the time reversal of one along it, drawn alike."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    scale, low, high, across = _path(rng, size, variation)
    dx, dy = DIRECTIONS[direction]
    along = (low, high) if dx + dy > 0 else (high, low)
    if dx:
        return MovingShape(colour, shape, direction, (along[0], across), (along[1], across),
                           scale)
    return MovingShape(colour, shape, direction, (across, along[0]), (across, along[1]), scale)


def _apart(objects: list[MovingShape], size: int, num_frames: int) -> bool:
    """True when no two objects come close enough to touch in any frame."""
    if len(objects) < 2:
        return True
    times = np.linspace(0.0, 1.0, num_frames)
    a, b = (np.array([o.centre(t) for t in times]) for o in objects)
    reach = 1.4 * object_radius(size) * (objects[0].scale + objects[1].scale)
    return bool(np.linalg.norm(a - b, axis=1).min() > reach)


@dataclass(frozen=True)
class Scene:
    """How every video's objects are drawn: frame side, frames, the chance of a second object,
    and the ranges of sizes, speeds and start points (None: the default paths)."""

    size: int
    num_frames: int
    two_object_prob: float
    variation: ToyVariation | None


def sample_objects(rng: np.random.Generator, scene: Scene) -> list[MovingShape]:
    """One or two non-overlapping objects of different colours."""
    count = 2 if rng.random() < scene.two_object_prob else 1
    while True:
        colours = rng.choice(list(COLOURS), size=count, replace=False)
        objects = [_sample_object(rng, scene.size, str(c), scene.variation) for c in colours]
        if _apart(objects, scene.size, scene.num_frames):
            return objects


def render(objects: list[MovingShape], size: int, num_frames: int) -> np.ndarray:
    """The video as ``num_frames x size x size x 3`` uint8 RGB frames."""
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    scale = 1 << _SHIFT
    for i, t in enumerate(np.linspace(0.0, 1.0, num_frames)):
        frame = np.full((size, size, 3), BACKGROUND, np.uint8)
        for obj in objects:
            radius = object_radius(size) * obj.scale
            x, y = obj.centre(float(t))
            colour = COLOURS[obj.colour]
            if obj.shape == "circle":
                cv2.circle(frame, (round(x * scale), round(y * scale)), round(radius * scale),
                           colour, -1, cv2.LINE_8, _SHIFT)
                continue
            if obj.shape == "bar":
                w, h = (half * radius for half in BAR_HALF_SIZE)
                corners = [(x - w, y - h), (x + w, y - h), (x + w, y + h), (x - w, y + h)]
            else:  # equilateral triangle pointing up, centroid at (x, y)
                corners = [(x, y - radius), (x + 0.87 * radius, y + 0.5 * radius),
                           (x - 0.87 * radius, y + 0.5 * radius)]
            points = np.round(np.array(corners) * scale).astype(np.int32)
            cv2.fillPoly(frame, [points], colour, cv2.LINE_8, _SHIFT)
        frames[i] = frame
    return frames
