"""Is the best video a good match? A "no good match" threshold learned on the validation split.

A contrastive model has no "none of these": every sentence, nonsense included, has a best
video. The threshold tells a match from a guess by the GARE score of the best video, learned
where both kinds are known, on the validation split (:func:`calibrate`):

- *matches*: the score of each validation caption with its own video;
- *nonsense*: the best score over the validation videos of each of :data:`NONSENSE` queries of
  random letters ("qzvk xoat", :func:`nonsense_queries`, drawn from a fixed seed);

and the threshold is the score that best separates the two (the largest mean of the share of
matches at or above it and the share of nonsense below it). Both shares are kept with it, so
a checkpoint says how well its threshold works. A search whose best video scores below it
answers "no good match" (tvr/index/search.py). It holds for galleries like the validation
split's; a caller can pass another (``--min_score``).

A text tower trained from scratch (``--base_encoder tiny``, the demo) has a second, sharper
signal: the words it never saw. The embedding of a token absent from every training caption
is its random initialisation, so a score that rests on such words says nothing; and nonsense
built of unseen words lands among the captions (docs/demo.md §6). Such a run records the
token ids of its training captions (``known_tokens``, :func:`training_vocabulary`), and a
query most of whose words use an unseen token is "no good match" whatever its score
(:func:`unknown_words`, :func:`mostly_unknown`). A CLIP-initialised text tower has learned
every token, and records none.
"""
from __future__ import annotations

import contextlib
import re
import string
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from tvr.evaluation.encode import encode_sentences
from tvr.evaluation.engine import Prepared, SimilarityEngine
from tvr.models.gare import GARE
from tvr.models.tokenizer import ClipTokenizer

NONSENSE = 256  # nonsense queries drawn for a calibration
NONSENSE_SEED = 0


@dataclass(frozen=True)
class Calibration:
    """The score threshold and how well it separated the validation split's matches (share
    kept: ``matched``) from nonsense (share refused: ``refused``), and the token ids of the
    training captions when the text tower was trained from scratch (``known_tokens``, module
    docstring); stored in checkpoints as a dict."""

    threshold: float
    matched: float
    refused: float
    captions: int
    nonsense: int
    known_tokens: Optional[tuple[int, ...]] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def nonsense_queries(count: int = NONSENSE, seed: int = NONSENSE_SEED) -> list[str]:
    """``count`` strings of one to four random lower-case "words" of two to eight letters."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    return [" ".join("".join(rng.choice(letters, rng.integers(2, 9)))
                     for _ in range(rng.integers(1, 5))) for _ in range(count)]


def calibrate(matches: Tensor, nonsense: Tensor) -> Calibration:
    """The threshold between the scores of captions with their own videos (``matches``) and
    the best scores of nonsense queries (``nonsense``): every midpoint between two sorted
    scores is tried, and of the best, the middle one is kept."""
    matches, nonsense = matches.double().flatten(), nonsense.double().flatten()
    values = torch.sort(torch.cat([matches, nonsense])).values
    candidates = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    kept = (matches[None, :] >= candidates[:, None]).double().mean(dim=1)
    refused = (nonsense[None, :] < candidates[:, None]).double().mean(dim=1)
    balanced = kept + refused
    best = torch.nonzero(balanced == balanced.max()).view(-1)
    pick = int(best[len(best) // 2])
    return Calibration(float(candidates[pick]), float(kept[pick]), float(refused[pick]),
                       len(matches), len(nonsense))


@torch.no_grad()
def nonsense_scores(model: GARE, engine: SimilarityEngine, videos: Prepared, max_words: int,
                    autocast: Callable[[], contextlib.AbstractContextManager]
                    = contextlib.nullcontext) -> Tensor:
    """The best score over ``videos`` (prepared by ``engine``) of each nonsense query."""
    text = encode_sentences(model, nonsense_queries(), max_words, autocast=autocast)
    texts = engine.prepare_texts(text.sentence, text.words if model.uses_words else None,
                                 text.mask)
    return engine.score(texts, videos).float().max(dim=1).values.cpu()


def training_vocabulary(captions: Iterable[str], tokenizer: ClipTokenizer) -> tuple[int, ...]:
    """The sorted token ids that occur in ``captions``."""
    return tuple(sorted({token for text in captions for token in tokenizer.tokenize(text)}))


def words(text: str) -> list[str]:
    """The words of ``text``: its runs of letters and digits, lower-cased (punctuation is no
    word)."""
    return re.findall(r"[^\W_]+", text.lower())


def unknown_words(text: str, known_tokens: Iterable[int], tokenizer: ClipTokenizer
                  ) -> list[str]:
    """The :func:`words` of ``text`` with a token outside ``known_tokens``."""
    known = set(known_tokens)
    return [word for word in words(text) if not known.issuperset(tokenizer.tokenize(word))]


def mostly_unknown(text: str, unknown: list[str]) -> bool:
    """Whether more than half of the :func:`words` of ``text`` are ``unknown``."""
    return 2 * len(unknown) > len(words(text))
