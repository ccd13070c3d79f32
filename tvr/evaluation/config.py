"""How a split is evaluated (:class:`EvalConfig`) and the names of the scoring engines and
stage-1 backends, without torch: the flags that declare them are parsed before any model module
is imported."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from tvr.settings import Bounds, POSITIVE, check_settings, integer, setting

EngineMode = Literal["auto", "folded", "naive"]  # tvr/evaluation/engine.py's build_engine
ENGINE_MODES: tuple[EngineMode, ...] = ("auto", "folded", "naive")
Stage1 = Literal["auto", "faiss", "torch"]  # tvr/evaluation/retrieval.py's Stage1Search


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation batch, the scoring path and the optional re-ranked variants."""

    batch_size_val: int = setting(128, "evaluation batch", integer(1), group="optimisation")
    eval_dsl_temp: Optional[float] = setting(
        None, "also report dual-softmax (DSL) re-ranked metrics at this temperature (e.g. 0.01)",
        Bounds(0, low_open=True, optional=True), kind=float)
    eval_bank_size: int = setting(
        0, "also report QB-Norm and NCL test-time normalisation, with this many training "
           "captions and videos as the query bank (0: off)", integer(0))
    qb_beta: float = setting(20.0, "QB-Norm's inverse temperature", POSITIVE)
    qb_k: int = setting(1, "QB-Norm's activation top-k", integer(1))
    eval_engine: str = setting(
        "auto", "evaluation scorer: the folded engine, checked against the per-pair module on a "
                "sample block and falling back to it on a mismatch (auto); folded only (a "
                "mismatch is an error); or the per-pair module (naive)", choices=ENGINE_MODES)

    def __post_init__(self) -> None:
        check_settings(self)
