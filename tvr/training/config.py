"""The training run's configurations: optimisation, feature mode, and the whole run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tvr.data.config import DataConfig
from tvr.evaluation.config import EvalConfig
from tvr.models.config import ModelConfig
from tvr.settings import FRACTION, NON_NEGATIVE, POSITIVE, SWITCH, check_settings, integer, \
    setting


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe and the training loop's schedule of logs and saves."""

    epochs: int = setting(5, "training epochs", integer(1))
    batch_size: int = setting(128, "GLOBAL training batch, split across processes", integer(1))
    lr: float = setting(1e-4, "learning rate", POSITIVE)
    coef_lr: float = setting(1e-3, "CLIP's learning rate is lr x coef_lr", NON_NEGATIVE)
    warmup_proportion: float = setting(
        0.1, "linear warm-up share of training, then cosine decay", FRACTION)
    weight_decay: float = setting(0.2, "weight decay", NON_NEGATIVE)
    seed: int = setting(42, "random seed", integer(0, 2**32 - 1), group="run")
    n_display: int = setting(100, "log every N steps", integer(1), group="run")
    eval_every_steps: int = setting(
        0, "also validate every N steps (0: once per epoch); the reference validates every "
           "3 x n_display steps", integer(0), group="run")
    save_every_steps: int = setting(
        0, "also write ckpt_last.pt every N steps (it is always written at the end of each "
           "epoch)", integer(0), group="run")
    device: str = setting("auto", "where to run: auto = CUDA when available, else the CPU",
                          choices=("auto", "cuda", "cpu"), group="run")
    precision: str = setting(
        "auto", "autocast of the CLIP encoders with fp32 master weights; auto = bf16 on GPUs "
                "that support it, fp32 otherwise", choices=("auto", "fp32", "bf16", "fp16"),
        group="run")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class FeatureConfig:
    """Feature mode: train and evaluate on cached outputs of a frozen CLIP
    (docs/feature_mode.md)."""

    clip_features: Optional[str] = setting(
        None, "train and evaluate on CLIP outputs cached in DIR, with the CLIP towers frozen: "
              "extracted on first use (resumable), then reused by every run with the same CLIP "
              "weights and data flags; a DIR made with others is refused. Differs from the "
              "recipe by CLIP's lr x coef_lr updates (see the docs)", kind=str)
    feature_views: int = setting(
        1, "augmented views per training video, drawn as training would (view e seeded by "
           "(seed, e, video index)); epoch e uses view e mod E. Forced to 1 with "
           "--train_augment none", integer(1))
    feature_dtype: str = setting(
        "float32", "storage precision of the cached outputs (float16 halves the size; float32 "
                   "keeps feature mode exact)", choices=("float32", "float16"))

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run of main_retrieval.py does, as the command line resolved it.

    ``resume``: the checkpoint to continue from (already resolved to a file), or None;
    ``arguments``: the resolved flags as plain values, logged and kept in checkpoints.
    """

    do_train: int = setting(0, "train (1) or not (0)", SWITCH)
    do_eval: int = setting(0, "evaluate only, e.g. a --init_model checkpoint (1) or not (0)",
                           SWITCH)
    output_dir: Optional[str] = setting(
        None, "logs, checkpoints, metrics (default outputs/<recipe>)", kind=str)
    init_model: Optional[str] = setting(
        None, "a checkpoint of this project to evaluate or fine-tune; the model is rebuilt "
              "from the configuration it records", kind=str)
    resume: Optional[str] = setting(
        None, "continue a stopped run from a checkpoint; without a value, from "
              "<output_dir>/ckpt_last.pt", kind=str, const="auto")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    arguments: dict[str, Any] = field(default_factory=dict)
    local_rank: int = 0  # the legacy launcher's --local_rank (LOCAL_RANK wins when set)

    def __post_init__(self) -> None:
        check_settings(self)
