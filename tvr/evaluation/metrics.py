"""Retrieval metrics (docs/behaviour.md §11): R@1/5/10/50, median and mean rank, both directions.

Every function takes a (captions x videos) score matrix and ``caption_to_video`` (N_c,), the
index of each caption's video. Multi-sentence datasets: every caption is a text-to-video query;
for video-to-text every video is a query whose true items are all of its captions, and its rank
is the rank of its best-scored caption (other captions of the same video never count against it).
Every video needs at least one caption.

Ties are pessimistic and deterministic: rank = 1 + the number of OTHER (false) items scoring
greater than or EQUAL to the true item, so a tie with the true item counts against it (the
reference's argsort-based metric depends on the sort order of ties). NaN scores are an error.
R@K is a percentage; MedR is the median as numpy computes it (the mean of the two middle ranks
for an even number of queries); MeanR the mean rank.

Results are ``{"t2v": {...}, "v2t": {...}}`` dicts (either direction may be missing in a
normalised variant), :func:`compare_normalisers` returns ``{variant: results}``;
:func:`format_table` and :func:`save_json` write them. :func:`normaliser_ranks` keeps the
per-query ranks the results summarise (``{variant: {"t2v": ranks, "v2t": ranks}}``), so that a
metrics file can carry them (:func:`rank_lists`) for a reader to recompute the recalls or
bootstrap their intervals (:mod:`tvr.evaluation.bootstrap`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

from tvr.evaluation.normalizers import dual_softmax, ncl_normalize, qb_norm

RECALLS = (1, 5, 10, 50)
Metrics = dict[str, float]
Results = dict[str, Metrics]
Ranks = dict[str, Tensor]  # {"t2v": (N_c,), "v2t": (N_v,)} 1-based ranks, either may be missing

_CHUNK_ELEMENTS = 1 << 24  # bound on the boolean comparison matrices


def _check(scores: Tensor, caption_to_video: Tensor) -> Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (captions x videos), got {tuple(scores.shape)}")
    index = torch.as_tensor(caption_to_video, device=scores.device).long()
    if index.shape != (scores.shape[0],):
        raise ValueError(f"caption_to_video must be ({scores.shape[0]},), got {tuple(index.shape)}")
    if len(index) and (index.min() < 0 or index.max() >= scores.shape[1]):
        raise ValueError(f"caption_to_video values must be in [0, {scores.shape[1]})")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return index


def text_to_video_ranks(scores: Tensor, caption_to_video: Tensor) -> Tensor:
    """(N_c,) 1-based rank of each caption's video among all videos (pessimistic ties)."""
    index = _check(scores, caption_to_video)
    true = scores.gather(1, index.unsqueeze(1))
    step = max(1, _CHUNK_ELEMENTS // max(1, scores.shape[1]))
    return torch.cat([(scores[s:s + step] >= true[s:s + step]).sum(1)
                      for s in range(0, scores.shape[0], step)]).cpu()


def video_to_text_ranks(scores: Tensor, caption_to_video: Tensor) -> Tensor:
    """(N_v,) 1-based rank of each video's best-scored caption among all captions:
    1 + #{captions of other videos scoring >= that caption} (pessimistic ties)."""
    index = _check(scores, caption_to_video)
    n_v = scores.shape[1]
    if torch.bincount(index, minlength=n_v).min() == 0:
        raise ValueError("every video needs at least one caption for video-to-text metrics")
    true = scores.gather(1, index.unsqueeze(1)).squeeze(1)
    best = torch.full((n_v,), float("-inf"), dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, index, true, reduce="amax")
    step = max(1, _CHUNK_ELEMENTS // max(1, n_v))
    at_least = sum((scores[s:s + step] >= best).sum(0) for s in range(0, scores.shape[0], step))
    own = torch.bincount(index[true >= best[index]], minlength=n_v)   # its own captions tied at best
    return (1 + at_least - own).cpu()


def summarize_ranks(ranks: Tensor) -> Metrics:
    """R@1/5/10/50 (percent), MedR, MeanR and the number of queries from 1-based ranks."""
    ranks = ranks.double()
    out = {f"R{k}": 100.0 * (ranks <= k).double().mean().item() for k in RECALLS}
    out["MedR"] = ranks.quantile(0.5).item()
    out["MeanR"] = ranks.mean().item()
    out["queries"] = float(len(ranks))
    return out


def retrieval_metrics(scores: Tensor, caption_to_video: Tensor,
                      v2t_scores: Optional[Tensor] = None) -> Results:
    """Both directions from a (captions x videos) matrix. ``v2t_scores`` (same layout) replaces
    ``scores`` for video-to-text, for normalisations that differ by direction."""
    v2t = scores if v2t_scores is None else v2t_scores
    return {"t2v": summarize_ranks(text_to_video_ranks(scores, caption_to_video)),
            "v2t": summarize_ranks(video_to_text_ranks(v2t, caption_to_video))}


def normaliser_ranks(scores: Tensor, caption_to_video: Tensor, *,
                     dsl_temp: Optional[float] = None,
                     bank_t2v: Optional[Tensor] = None, bank_v2t: Optional[Tensor] = None,
                     qb_beta: float = 20.0, qb_k: int = 1,
                     ncl_tau: Optional[float] = None, ncl_iters: int = 10,
                     ncl_tol: float = 1e-4) -> dict[str, Ranks]:
    """Per-query ranks of the raw scores and of the inference normalisers of
    :mod:`tvr.evaluation.normalizers`, side by side: ``{variant: {"t2v": ..., "v2t": ...}}``.

    Variants: "raw" always; "DSL" when ``dsl_temp`` is given; "QB-Norm" and, with ``ncl_tau``,
    "NCL" for each direction whose bank is given. Banks are (bank queries x gallery):
    ``bank_t2v`` = training captions x test videos (``engine.score(train_texts, videos)``),
    ``bank_v2t`` = training videos x test captions (``engine.score(texts, train_videos).T``).
    Each normaliser sees the queries on its rows: the scores for text-to-video, their transpose
    for video-to-text.
    """
    index = _check(scores, caption_to_video)

    def variant(t2v: Optional[Tensor], v2t_queries_first: Optional[Tensor]) -> Ranks:
        out: Ranks = {}
        if t2v is not None:
            out["t2v"] = text_to_video_ranks(t2v, index)
        if v2t_queries_first is not None:
            out["v2t"] = video_to_text_ranks(v2t_queries_first.T, index)
        return out

    ranks = {"raw": variant(scores, scores.T)}
    if dsl_temp is not None:
        ranks["DSL"] = variant(dual_softmax(scores, dsl_temp), dual_softmax(scores.T, dsl_temp))
    if bank_t2v is not None or bank_v2t is not None:
        ranks["QB-Norm"] = variant(
            None if bank_t2v is None else qb_norm(scores, bank_t2v, qb_beta, qb_k),
            None if bank_v2t is None else qb_norm(scores.T, bank_v2t, qb_beta, qb_k))
        if ncl_tau is not None:
            ranks["NCL"] = variant(
                None if bank_t2v is None else ncl_normalize(scores, bank_t2v, ncl_tau, ncl_iters, ncl_tol),
                None if bank_v2t is None else ncl_normalize(scores.T, bank_v2t, ncl_tau, ncl_iters, ncl_tol))
    return ranks


def summarize_variants(ranks: Mapping[str, Ranks]) -> dict[str, Results]:
    """:func:`summarize_ranks` of every variant and direction of :func:`normaliser_ranks`."""
    return {name: {direction: summarize_ranks(r) for direction, r in directions.items()}
            for name, directions in ranks.items()}


def rank_lists(ranks: Mapping[str, Ranks]) -> dict[str, dict[str, list[int]]]:
    """:func:`normaliser_ranks` as JSON-ready lists of ints, in the split's query order."""
    return {name: {direction: r.tolist() for direction, r in directions.items()}
            for name, directions in ranks.items()}


def compare_normalisers(scores: Tensor, caption_to_video: Tensor,
                        **options: Any) -> dict[str, Results]:
    """The metrics of :func:`normaliser_ranks` (same arguments): ``{variant: results}``."""
    return summarize_variants(normaliser_ranks(scores, caption_to_video, **options))


def _as_variants(results: Union[Results, Mapping[str, Results]]) -> Mapping[str, Results]:
    """A single ``{"t2v", "v2t"}`` result becomes ``{"raw": result}``."""
    return {"raw": results} if set(results) <= {"t2v", "v2t"} else results


def format_table(results: Union[Results, Mapping[str, Results]]) -> str:
    """Markdown table, one row per (variant, direction)."""
    lines = ["| variant | direction | R@1 | R@5 | R@10 | R@50 | MedR | MeanR |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"t2v": "text-to-video", "v2t": "video-to-text"}
    for name, result in _as_variants(results).items():
        for direction in ("t2v", "v2t"):
            if direction in result:
                m = result[direction]
                recalls = " | ".join(f"{m[f'R{k}']:.1f}" for k in RECALLS)
                lines.append(f"| {name} | {names[direction]} | {recalls} | "
                             f"{m['MedR']:.1f} | {m['MeanR']:.1f} |")
    return "\n".join(lines) + "\n"


def _indented(value: Any, depth: int = 0) -> str:
    """JSON with one key of an object a line (indent 2) and any other value, a list of ranks
    included, on one line: readable, and thousands of ranks do not make thousands of lines."""
    if not isinstance(value, Mapping) or not value:
        return json.dumps(value)
    inner = "  " * (depth + 1)
    items = [f"{inner}{json.dumps(str(key))}: {_indented(item, depth + 1)}"
             for key, item in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"


def save_json(results: Union[Results, Mapping[str, Any]], path: Union[str, Path]) -> None:
    """Write the results (variants as in :func:`format_table`, other keys as they are) as
    indented JSON, lists on one line."""
    Path(path).write_text(_indented(_as_variants(results)) + "\n")
