"""The toy dataset's captions: several words for each colour, shape and direction, and caption
forms of which some are held out of training (:mod:`tvr.data.toy`).

A caption names one object's colour, shape and direction of motion. Each of the three has
several wordings (:data:`COLOUR_WORDS`, :data:`SHAPE_WORDS`, and for a direction an adverb after
a motion verb, "moves to the left", "slides west", or for up and down a verb that carries the
direction itself, "rises", "is sinking"). A caption is one *form*, a sentence frame such as
"a video of a {colour} {shape} {moving}", filled with one wording of each.

- :data:`TRAIN_FORMS` give the training, validation and test captions;
- :data:`HELD_OUT_FORMS` are never seen in training: other word orders, no article, the colour
  after the shape (a training form puts the motion first too, "rising, a green ball": a model
  that never saw the words in another order could not be asked to read them in one). They make the paraphrase test split, which asks whether the model learned
  the words rather than the sentences of its training set;
- :func:`plain_caption` gives the plain-words split: "red circle left".

Every *word* of a held-out caption also occurs in training: the demo's text tower is trained
from scratch, and a word it has never seen is, to it, noise. What is held out is the form of
the caption, how its words are put together.
"""
from __future__ import annotations

import re

import numpy as np

COLOUR_WORDS = {"red": ("red", "crimson"), "green": ("green", "emerald"),
                "blue": ("blue", "cobalt"), "yellow": ("yellow", "golden"),
                "white": ("white", "snowy"), "purple": ("purple", "violet"),
                "orange": ("orange", "amber"), "cyan": ("cyan", "turquoise"),
                "pink": ("pink", "rose"), "lime": ("lime", "chartreuse")}
SHAPE_WORDS = {"circle": ("circle", "disc", "ball", "dot"), "triangle": ("triangle", "wedge"),
               "bar": ("bar", "rectangle", "block", "brick")}
WAY_WORDS = {"left": ("left", "to the left", "leftward", "west"),
             "right": ("right", "to the right", "rightward", "east"),
             "up": ("up", "upward", "upwards", "to the top"),
             "down": ("down", "downward", "downwards", "to the bottom")}
# motion verbs without a direction: (third person, gerund)
MOTION_VERBS = (("moves", "moving"), ("slides", "sliding"), ("travels", "travelling"),
                ("drifts", "drifting"), ("goes", "going"), ("heads", "heading"))
# verbs that carry the direction themselves
DIRECTION_VERBS = {"up": (("rises", "rising"), ("climbs", "climbing")),
                   "down": (("falls", "falling"), ("sinks", "sinking"), ("drops", "dropping"))}
# The share of captions whose motion is the direction's own word ("moves left", "up"). A model
# trained from scratch must first learn to tell left from right and up from down, and the
# signal that breaks that symmetry is split over every wording of a direction; one frequent
# wording concentrates it (docs/demo.md §6).
OWN_WORD_SHARE = 0.5
# {c} colour, {s} shape, {moves} "moves left" / "rises", {moving} "moving left" / "rising"
TRAIN_FORMS = ("a {c} {s} {moves}", "the {c} {s} is {moving}", "a video of a {c} {s} {moving}",
               "a {s} coloured {c} {moves}", "{moving}, a {c} {s}", "{c} {s} {way}")
HELD_OUT_FORMS = ("{c} {s} {moving}", "{c} {s} {moves}", "the {s} coloured {c} is {moving}",
                  "a video of the {s} coloured {c} {moving}", "{moving} is the {c} {s}")


def motions(direction: str) -> list[tuple[str, str, str]]:
    """Every wording of ``direction``: ("moves <way>", "moving <way>", "<way>") for each motion
    verb and adverb, then, for up and down, ("rises", "rising", <way>) for each verb that
    carries the direction and each adverb (the plain form uses the adverb alone)."""
    ways = WAY_WORDS[direction]
    found = [(f"{moves} {way}", f"{moving} {way}", way)
             for moves, moving in MOTION_VERBS for way in ways]
    return found + [(moves, moving, way) for moves, moving in DIRECTION_VERBS.get(direction, ())
                    for way in ways]


def caption(rng: np.random.Generator, colour: str, shape: str, direction: str,
            forms: tuple[str, ...] = TRAIN_FORMS) -> str:
    """A caption of one object in one of ``forms``, each wording drawn at random; the motion
    is the direction's own word after a motion verb ("moves left") with probability
    :data:`OWN_WORD_SHARE`, else any of its wordings (:func:`motions`)."""
    form = forms[rng.integers(len(forms))]
    options = motions(direction)
    if rng.random() < OWN_WORD_SHARE:
        options = [wording for wording in options if wording[2] == direction][:len(MOTION_VERBS)]
    moves, moving, way = options[rng.integers(len(options))]
    colours, shapes = COLOUR_WORDS[colour], SHAPE_WORDS[shape]
    text = form.format(c=colours[rng.integers(len(colours))],
                       s=shapes[rng.integers(len(shapes))], moves=moves, moving=moving, way=way)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def plain_caption(colour: str, shape: str, direction: str) -> str:
    """The plain words: "red circle left"."""
    return f"{colour} {shape} {direction}"
