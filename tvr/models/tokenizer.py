"""The CLIP byte-level BPE tokenizer and the caption encoding of docs/behaviour.md §2.

Text is cleaned as OpenAI's CLIP does (ftfy, HTML unescape twice, whitespace collapse, lower
case), split with CLIP's regular expression, each piece mapped byte-wise to printable unicode and
merged with the 48,894 BPE merges of ``bpe_simple_vocab_16e6.txt.gz`` (shipped in this package),
giving the 49,408-token vocabulary with ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407.

:func:`encode_caption` turns one caption into fixed-length ids and mask:
``[SOT] + tokens[:max_words - 2] + [EOT]``, padded with 0 to ``max_words``; the mask is 1 on the
real tokens. A caption that is empty after cleaning (``""``, whitespace, a lone control
character, ...) is encoded as ``[SOT, EOT]``: a valid two-token sequence whose EOT embedding the
model can still compute. Callers that want to reject empty captions (the dataset loaders do)
check :meth:`ClipTokenizer.tokenize` themselves.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

VOCAB_FILE = Path(__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses: vocab = 2 * 256 bytes + merges + 2 special
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table used by CLIP's BPE.

    Printable latin-1 bytes map to themselves; the remaining 68 bytes map to code points 256+
    in byte order, so no byte becomes whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """ftfy fix, HTML unescape (twice, for doubly-escaped entities), collapse whitespace, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """CLIP's BPE tokenizer: text -> token ids, with a per-word merge cache."""

    def __init__(self, vocab_file: str | Path = VOCAB_FILE):
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            merge_lines = f.read().split("\n")[1:NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in merge_lines]
        units = list(byte_to_unicode().values())
        vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.cache = {SOT: SOT, EOT: EOT}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> list[str]:
        """Merge the symbols of one pre-split piece (non-empty) by ascending merge rank."""
        if piece in self.cache:
            return self.cache[piece].split(" ")
        symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.merge_rank.get(p, float("inf")))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[piece] = " ".join(symbols)
        return symbols

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT; ``[]`` when nothing is left after cleaning."""
        ids = []
        for piece in _SPLIT.findall(clean_text(text)):
            unicode_piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(unicode_piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (cleaned and lower-cased, as tokenised); for inspection and tests."""
        byte_decoder = {u: b for b, u in self.byte_encoder.items()}
        text = "".join(self.decoder[i] for i in ids).replace("</w>", " ")
        data = bytes(0x20 if c == " " else byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").strip()

    def encode_caption(self, text: str, max_words: int) -> tuple[np.ndarray, np.ndarray]:
        """docs/behaviour.md §2: ``[SOT] + tokens[:max_words - 2] + [EOT]`` padded with 0 to
        ``max_words``.

        Returns ``(ids, mask)``, both int64 arrays of length ``max_words``; ``mask`` is 1 on the
        real tokens. Empty-after-cleaning text gives ``[SOT, EOT]`` (see the module docstring).
        """
        if max_words < 2:
            raise ValueError(f"max_words must be at least 2 (SOT and EOT), got {max_words}")
        tokens = [self.sot_id, *self.tokenize(text)[:max_words - 2], self.eot_id]
        ids = np.zeros(max_words, dtype=np.int64)
        mask = np.zeros(max_words, dtype=np.int64)
        ids[:len(tokens)] = tokens
        mask[:len(tokens)] = 1
        return ids, mask
