"""The "no good match" threshold (tvr/evaluation/calibration.py): nonsense queries are what
they say, and the threshold is the best separation of match scores from nonsense scores."""
import re

import pytest
import torch

from tvr.evaluation.calibration import (calibrate, mostly_unknown, nonsense_queries,
                                        training_vocabulary, unknown_words)
from tvr.models.tokenizer import ClipTokenizer


def test_nonsense_queries_are_fixed_strings_of_random_letters():
    queries = nonsense_queries(200)
    assert queries == nonsense_queries(200) and queries != nonsense_queries(200, seed=1)
    assert len(set(queries)) == 200
    for query in queries:
        assert re.fullmatch(r"[a-z]{2,8}( [a-z]{2,8}){0,3}", query), query
    assert {len(q.split()) for q in queries} == {1, 2, 3, 4}


def test_separable_scores_get_the_midpoint_and_perfect_shares():
    calibration = calibrate(torch.tensor([0.8, 0.7, 0.9]), torch.tensor([0.3, 0.5, 0.4, 0.2]))
    assert calibration.threshold == pytest.approx(0.6)
    assert (calibration.matched, calibration.refused) == (1.0, 1.0)
    assert (calibration.captions, calibration.nonsense) == (3, 4)


def brute_force_best(matches: torch.Tensor, nonsense: torch.Tensor) -> float:
    """The best mean of the two shares over a fine grid of thresholds."""
    grid = torch.linspace(-1.5, 1.5, 30001, dtype=torch.float64)
    kept = (matches[None] >= grid[:, None]).double().mean(1)
    refused = (nonsense[None] < grid[:, None]).double().mean(1)
    return float(((kept + refused) / 2).max())


@pytest.mark.parametrize("seed", range(5))
def test_overlapping_scores_get_the_best_balanced_threshold(seed):
    generator = torch.Generator().manual_seed(seed)
    matches = 0.6 + 0.15 * torch.randn(40, generator=generator, dtype=torch.float64)
    nonsense = 0.4 + 0.15 * torch.randn(70, generator=generator, dtype=torch.float64)
    calibration = calibrate(matches, nonsense)
    assert calibration.matched == (matches >= calibration.threshold).double().mean()
    assert calibration.refused == (nonsense < calibration.threshold).double().mean()
    balanced = (calibration.matched + calibration.refused) / 2
    assert balanced == pytest.approx(brute_force_best(matches, nonsense), abs=1e-12)
    assert 0.5 < balanced < 1.0
    assert calibration.as_dict()["threshold"] == calibration.threshold


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


def test_the_vocabulary_is_the_token_ids_of_the_captions(tokenizer):
    captions = ["a red circle moves left", "The blue bar rises."]
    known = training_vocabulary(captions, tokenizer)
    assert list(known) == sorted(set(known))
    assert set(known) == {t for c in captions for t in tokenizer.tokenize(c)}


@pytest.mark.parametrize("query, unknown, refused", [
    ("a red circle moves left", [], False),
    ("A RED circle, moving left!", ["moving"], False),  # case and punctuation are no words
    ("zzzz qqqq xxxx", ["zzzz", "qqqq", "xxxx"], True),
    ("red zzzz", ["zzzz"], False),  # half unknown: the score decides
    ("red zzzz qqqq", ["zzzz", "qqqq"], True),
    ("reddish circles", ["reddish", "circles"], True),  # known prefixes are other tokens
])
def test_words_never_seen_in_training(tokenizer, query, unknown, refused):
    known = training_vocabulary(["a red circle moves left", "the blue bar rises"], tokenizer)
    assert unknown_words(query, known, tokenizer) == unknown
    assert mostly_unknown(query, unknown_words(query, known, tokenizer)) is refused
