"""How well "no good match" tells nonsense from descriptions on the demo (docs/demo.md §6).

For each demo checkpoint given, index the toy videos with it (``python -m tvr.index build``)
and search, top 1, five kinds of query; print how many of each were answered "no good match",
and for how many the reason was words never seen in training (tvr/evaluation/calibration.py):

- gibberish: :data:`GIBBERISH` ("zzzz qqqq xxxx", ...; tests/test_demo.py asserts they are
  refused);
- nonsense: ``nonsense_queries(50, seed=1)`` (random letters; not the calibration's seed 0);
- function words: three of the captions' words that name no colour, shape or direction
  ("heading of the"), which describe nothing, though every word is known;
- plain and held-out: the first 20 test captions of ``data/toy/plain`` and
  ``data/toy/paraphrase`` (real descriptions, which should not be refused).

    python -m bench.demo_no_match outputs/demo/ckpt_best.pt [more checkpoints]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import tempfile
from pathlib import Path

import numpy as np

from tvr.cli.index import main as index_main
from tvr.data import toy_language
from tvr.evaluation.calibration import nonsense_queries

TOY = Path(__file__).resolve().parents[1] / "data" / "toy"
GIBBERISH = ["zzzz qqqq xxxx", "qwerty uiop asdf", "blorp fnord"]
FUNCTION_WORDS = ["the", "a", "video", "of", "is", "coloured"] + \
    [verb for pair in toy_language.MOTION_VERBS for verb in pair]


def queries() -> dict[str, list[str]]:
    rng = np.random.default_rng(7)
    kinds = {"gibberish": GIBBERISH, "nonsense": nonsense_queries(50, seed=1),
             "function words": [" ".join(rng.choice(FUNCTION_WORDS, 3, replace=False))
                                for _ in range(50)]}
    for name in ("plain", "paraphrase"):
        with open(TOY / name / "MSRVTT_JSFUSION_test.csv", newline="") as f:
            kinds[name] = [row["sentence"] for row in csv.DictReader(f)][:20]
    return kinds


def refusals(index: Path, texts: list[str]) -> dict[str, str]:
    """Query -> the reason printed after "no good match", for the refused ones."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert index_main(["search", str(index), *texts, "--top", "1"]) == 0
    refused, query = {}, None
    for line in printed.getvalue().splitlines():
        query = line if not line.startswith("  ") else query
        if line.startswith("  no good match"):
            refused[query] = line
    return refused


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="demo ckpt_best.pt files")
    args = parser.parse_args(argv)
    kinds = queries()
    print("| checkpoint | " + " | ".join(kinds) + " |")
    print("|" + "---|" * (len(kinds) + 1))
    for checkpoint in args.checkpoints:
        with tempfile.TemporaryDirectory() as folder:
            index = Path(folder) / "index"
            with contextlib.redirect_stdout(io.StringIO()):
                assert index_main(["build", "--checkpoint", checkpoint, "--videos",
                                   str(TOY / "videos"), "--out", str(index)]) == 0
            refused = refusals(index, [q for texts in kinds.values() for q in texts])
        cells = []
        for texts in kinds.values():
            words = sum("never seen" in refused.get(q, "") for q in texts)
            cells.append(f"{sum(q in refused for q in texts)} of {len(texts)} ({words} words)")
        print(f"| {checkpoint} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
