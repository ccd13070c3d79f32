"""The built-in demo's own steps around a run: its data, and its report on other wordings.

``python main_retrieval.py`` without ``--anno_path`` writes the toy dataset (tvr/data/toy.py)
to ``data/toy`` and trains on it (the ``demo`` recipe). After the test split, the best
checkpoint is also tested on the same test videos described in other words
(:data:`tvr.data.toy.PHRASINGS`: caption forms held out of training, and plain words), each an
annotation folder of its own under ``data/toy``; their metrics go to
``<output_dir>/metrics_<name>.json`` and ``.md``, and one table sums up the three.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tvr.cli.checks import shown
from tvr.data.loaders import build_split
from tvr.data.toy import PHRASINGS, ToyDataset, make_toy_dataset
from tvr.evaluation.evaluate import evaluate, write_results
from tvr.training.checkpoint import BEST, load_model
from tvr.training.config import RunConfig


def prepare(anno_path: str) -> ToyDataset:
    """The toy dataset in ``anno_path``, written unless it is already there."""
    toy = make_toy_dataset(anno_path)
    print(f"demo: toy dataset in {toy.root} ({toy.num_train} train / {toy.num_val} val / "
          f"{toy.num_test} test videos; chance text-to-video R@1 = "
          f"{100 * toy.chance_t2v_r1:.1f}%)", file=sys.stderr)
    return toy


def test_phrasings(config: RunConfig) -> dict[str, dict[str, Any]]:
    """The metrics of the run's best checkpoint (or, evaluating only, its ``--init_model``) on
    each of the test split's other wordings (written to the output folder as
    ``metrics_<name>.json`` and ``.md``)."""
    out = Path(config.output_dir)
    model = load_model(out / BEST if config.do_train else config.init_model)[0].eval()
    found = {}
    for name in PHRASINGS:
        data = replace(config.data, anno_path=str(Path(config.data.anno_path) / name))
        split = build_split(data, "test", model.clip.config.image_size, config.model.max_words)
        results = evaluate(model, split, batch_size=config.eval.batch_size_val,
                           workers=config.data.workers,
                           device=next(model.parameters()).device,
                           is_main=True)
        write_results(results, out, name)
        found[name] = results["raw"]["t2v"]
    return found


def summary(test: dict[str, Any], phrasings: dict[str, dict[str, Any]], anno_path: str) -> str:
    """The demo's closing table: text-to-video R@1 and R@5 per wording of the test captions."""
    rows = [("the training forms", shown(Path(anno_path)), test)]
    rows += [(PHRASINGS[name], shown(Path(anno_path) / name), phrasings[name])
             for name in PHRASINGS]
    lines = ["demo: text-to-video retrieval of the test videos, by the words of the queries",
             "| queries | annotations | R@1 | R@5 |", "|---|---|---|---|"]
    lines += [f"| {what} | {where} | {metrics['R1']:.1f} | {metrics['R5']:.1f} |"
              for what, where, metrics in rows]
    return "\n".join(lines)
