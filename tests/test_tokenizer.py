"""CLIP tokenizer: ids equal the reference CLIP tokenizer's on real MSR-VTT captions and hard cases;
the docs/behaviour.md §2 caption encoding.

The reference is open_clip's SimpleTokenizer, OpenAI's tokenizer with one change: its special
tokens are spelled <start_of_text>/<end_of_text> instead of OpenAI's <|startoftext|>/<|endoftext|>
(same ids). :func:`reference_ids` translates the spelling so that OpenAI's behaviour is checked.
"""
import csv

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from tvr.models.tokenizer import ClipTokenizer

HARD_CASES = [
    "Tom &amp; Jerry &lt;3 &#39;quoted&#39; &amp;amp;",  # HTML entities, doubly escaped too
    "café naïve résumé Ångström Straße ﬁne",  # accents, ligature
    "a dog 🐶 runs 🏃‍♂️ fast 👍🏽!!",  # emoji with modifiers and joiners
    "一个男人在厨房里做饭 한국어 日本語のテキスト",  # CJK, Hangul, kana
    "mojibake: cafÃ© donâ€™t",  # ftfy repairs this
    "  tabs\tand\nnewlines   everywhere  ",
    "numbers 1234567 and 3.14 and x2",
    "it's they're we've i'm you'll he'd IT'S",
    "<|startoftext|> special <|endoftext|> tokens typed by a user",
    "very long " + "supercalifragilisticexpialidocious antidisestablishmentarianism " * 40,
    "",  # empty
    "   \t\n ",  # whitespace only
    "\u200b\u00ad",  # zero-width space and soft hyphen: invisible, but kept as tokens
    "\x00\x07\x1b",  # control characters: ftfy removes them, nothing is left
]


OPENAI_SPECIALS = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}


@pytest.fixture(scope="module")
def tokenizers():
    return ClipTokenizer(), SimpleTokenizer()


def reference_ids(reference: SimpleTokenizer, text: str) -> list[int]:
    for openai_name, open_clip_name in OPENAI_SPECIALS.items():
        text = text.replace(openai_name, open_clip_name)
    return reference.encode(text)


def test_vocabulary(tokenizers):
    ours, reference = tokenizers
    assert ours.vocab_size == 49408 == len(reference.encoder)
    assert (ours.sot_id, ours.eot_id) == (49406, 49407)
    renamed = {OPENAI_SPECIALS.get(token, token): i for token, i in ours.encoder.items()}
    assert renamed == reference.encoder


def test_ids_equal_reference_on_every_msrvtt_test_caption(tokenizers, msrvtt_dir):
    ours, reference = tokenizers
    with open(msrvtt_dir / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        captions = [row["sentence"] for row in csv.DictReader(f)]
    assert len(captions) == 1000
    mismatches = [c for c in captions if ours.tokenize(c) != reference_ids(reference, c)]
    assert mismatches == []


@pytest.mark.parametrize("text", HARD_CASES)
def test_ids_equal_reference_on_hard_cases(tokenizers, text):
    ours, reference = tokenizers
    assert ours.tokenize(text) == reference_ids(reference, text)


@pytest.mark.parametrize("max_words", [2, 3, 8, 32, 64, 77])
def test_encode_caption_layout(tokenizers, max_words):
    ours, reference = tokenizers
    text = HARD_CASES[9]  # long: truncated at every max_words here
    ids, mask = ours.encode_caption(text, max_words)
    expected = [49406] + reference_ids(reference, text)[:max_words - 2] + [49407]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (max_words,)
    assert ids.tolist() == expected
    assert mask.tolist() == [1] * max_words


def test_short_caption_is_padded_with_zeros(tokenizers):
    ids, mask = tokenizers[0].encode_caption("a cat", 8)
    assert ids.tolist() == [49406, 320, 2368, 49407, 0, 0, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ids.argmax() == 3  # EOT is the highest id: the model pools there


@pytest.mark.parametrize("text", ["", "   \t\n ", "\x00\x07\x1b"])
def test_empty_after_cleaning_is_sot_eot(tokenizers, text):
    ids, mask = tokenizers[0].encode_caption(text, 6)
    assert ids.tolist() == [49406, 49407, 0, 0, 0, 0]
    assert mask.tolist() == [1, 1, 0, 0, 0, 0]


def test_max_words_below_two_is_rejected(tokenizers):
    with pytest.raises(ValueError, match="at least 2"):
        tokenizers[0].encode_caption("a cat", 1)


def test_decode_round_trip(tokenizers):
    ours = tokenizers[0]
    text = "a man is slicing tomatoes, café 🐶 日本"
    assert ours.decode(ours.tokenize(text)) == "a man is slicing tomatoes , café 🐶 日本"
